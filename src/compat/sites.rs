//! Cross-Node data-plane routing: the part of `g.net_out` that bytesandbrains
//! 0.3.8 leaves to the host.
//!
//! # The engine limitation
//!
//! A Module compiled with `g.net_out(port, peers, value)` yields a sender
//! target holding a `wire.Send` and a receiver target holding a synthesized
//! `wire.Recv`. The receiving engine routes a data-plane `SlotFill` by its
//! `dest_suffix`, `/site/<NodeSiteId>`. But `NodeSiteId`s are allocated per
//! Node in install order, so the sender cannot know the receiver's, and in
//! 0.3.8 nothing stamps them: `wire.Send` copies the suffix verbatim from its
//! `ai.bytesandbrains.dest_suffix.<input>` attribute, the compiler never sets
//! that attribute, and the receiver drops every such fill with
//! `WireDecodeFailed { detail: "address shape neither data-plane nor
//! control-plane" }`. The Send also ships a fill for each of its other inputs
//! (its `#__trigger_deadline` gate, a peer list not named `peers`), which have
//! no meaning on any receiver and fail the same way.
//!
//! # The bridge
//!
//! Both ends agree on a name instead of a number. A Send's data output is
//! renamed `<port>__send_sentinel_<idx>` and the matching Recv carries
//! `ai.bytesandbrains.synthesized_from_send = <port>`, so `<port>` names the
//! edge on both sides, whatever each Node installed and in which order.
//!
//! - On install ([`crate::Behaviour::new`]) every Send's data input gets the
//!   suffix `/site/<portable id of port>` ([`portable_site_id`]); its other
//!   value inputs get a local-only marker.
//! - Outbound, fills with the marker are removed.
//! - Inbound, a `/site/<portable id>` suffix is rewritten to the receiving
//!   Node's own `NodeSiteId` for that port's Recv, taken from its entry
//!   graphs (library copies of other partitions hold the same Recv; they are
//!   not where values are read).
//!
//! The bridge sees the graphs installed when the behaviour is created;
//! install every target before wrapping the Node.
//!
//! Portable ids have the top bit set; engine-allocated ids count up from 0,
//! so the two never meet.
//!
//! Limits: `<port>` is the edge's name, so a Node that installs two entry
//! graphs with Recvs for equal port names cannot tell them apart (the first
//! installed wins, with a warning). The engine itself already requires
//! distinct value names across a Node's entry graphs.
//!
//! When upstream starts stamping the suffix itself, the bridge leaves that
//! Send alone, and the test `tests/data_plane.rs::upstream_still_leaves_send_suffixes_empty`
//! fails so the bridge can be retired.

use std::collections::HashMap;

use bb_ir::keys::DEST_SUFFIX_ATTR_PREFIX;
use bb_ir::proto::onnx::NodeProto;
use bb_runtime::engine::GraphSlot;
use bb_runtime::envelope::WireEnvelope;
use bb_runtime::framework::Address;
use bb_runtime::ids::NodeSiteId;

use super::WIRE_DOMAIN;

const SYNTHESIZED_FROM_SEND: &str = "ai.bytesandbrains.synthesized_from_send";
const SEND_SENTINEL: &str = "__send_sentinel_";
/// Send inputs `wire.Send` itself never turns into fills.
const NON_FILL_INPUTS: [&str; 6] = ["dest", "dest_peer", "peer", "peers", "peer_id", "req_id"];

/// Marks the top bit: the range engine-allocated `NodeSiteId`s never reach.
const PORTABLE_BIT: u64 = 1 << 63;

/// The site id both ends of the edge `port` agree on: FNV-1a of the port
/// name with the top bit set. Stable across processes, builds and versions.
pub fn portable_site_id(port: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in port.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash | PORTABLE_BIT
}

/// Suffix of fills that exist only on the sending Node. `u64::MAX` is a
/// portable id no port can be mapped to on a receiver.
fn local_only_suffix() -> Vec<u8> {
    Address::empty().site(NodeSiteId::from(u64::MAX)).to_bytes()
}

/// What a Node needs to send and receive data-plane values across Nodes.
#[derive(Debug, Clone)]
pub(crate) struct Sites {
    /// Portable id -> this Node's Recv payload site.
    inbound: HashMap<u64, NodeSiteId>,
    local_only: Vec<u8>,
}

impl Sites {
    pub(crate) fn new() -> Self {
        Self {
            inbound: HashMap::new(),
            local_only: local_only_suffix(),
        }
    }

    /// Stamps the graph's Sends and, for an entry graph, learns its Recv
    /// sites. Called for every installed graph, in install order.
    pub(crate) fn bridge(&mut self, name: &str, graph: &mut GraphSlot) {
        for send in graph
            .function
            .node
            .iter_mut()
            .filter(|n| is_wire(n, "Send"))
        {
            stamp_send(send, &self.local_only);
        }
        if !graph.is_entry_point {
            return;
        }
        for recv in graph.function.node.iter().filter(|n| is_wire(n, "Recv")) {
            let port = recv_port(recv);
            let site = recv.output.first().and_then(|o| graph.site_names.get(o));
            let (Some(port), Some(site)) = (port, site) else {
                continue;
            };
            let id = portable_site_id(port);
            if let Some(first) = self.inbound.get(&id) {
                tracing::warn!(
                    port,
                    graph = name,
                    kept = %first,
                    "two installed Recvs for one port; values go to the first installed"
                );
            } else {
                self.inbound.insert(id, *site);
            }
        }
    }

    /// Removes fills that only mean something on this Node.
    pub(crate) fn outbound(&self, envelope: &mut WireEnvelope) {
        envelope.fills.retain(|f| f.dest_suffix != self.local_only);
    }

    /// Rewrites portable site ids to this Node's own. `Err` carries the
    /// first portable id this Node has no receiving graph for: the engine
    /// 0.3.8 would write such a fill into a slot nothing reads, and say
    /// nothing.
    pub(crate) fn inbound(&self, envelope: &mut WireEnvelope) -> Result<(), u64> {
        for fill in &mut envelope.fills {
            let Ok(addr) = Address::from_bytes(&fill.dest_suffix) else {
                continue;
            };
            let Some(id) = addr.site_id().map(NodeSiteId::as_u64) else {
                continue;
            };
            if id & PORTABLE_BIT == 0 {
                continue;
            }
            let Some(local) = self.inbound.get(&id) else {
                return Err(id);
            };
            fill.dest_suffix = Address::empty().site(*local).to_bytes();
        }
        Ok(())
    }

    #[cfg(test)]
    fn receives(&self, port: &str) -> Option<NodeSiteId> {
        self.inbound.get(&portable_site_id(port)).copied()
    }
}

pub(crate) fn is_wire(node: &NodeProto, op_type: &str) -> bool {
    node.domain == WIRE_DOMAIN && node.op_type == op_type
}

/// The `<port>` of a Send whose data output is `<port>__send_sentinel_<idx>`.
pub(crate) fn send_port(send: &NodeProto) -> Option<&str> {
    let output = send.output.first()?;
    let (port, idx) = output.rsplit_once(SEND_SENTINEL)?;
    idx.bytes().all(|b| b.is_ascii_digit()).then_some(port)
}

/// The `<port>` a synthesized Recv receives.
pub(crate) fn recv_port(recv: &NodeProto) -> Option<&str> {
    recv.metadata_props
        .iter()
        .find(|p| p.key == SYNTHESIZED_FROM_SEND)
        .map(|p| p.value.as_str())
}

fn has_suffix_attribute(send: &NodeProto, input: &str) -> bool {
    send.attribute
        .iter()
        .any(|a| a.name.strip_prefix(DEST_SUFFIX_ATTR_PREFIX) == Some(input))
}

fn stamp_send(send: &mut NodeProto, local_only: &[u8]) {
    let Some(port) = send_port(send).map(str::to_owned) else {
        // Not a cross-partition Send (no synthesized Recv): nothing to route.
        return;
    };
    let inputs = send.input.clone();
    for (i, input) in inputs.iter().enumerate() {
        if input.is_empty()
            || input.ends_with("_suffix")
            || NON_FILL_INPUTS.contains(&input.as_str())
            || has_suffix_attribute(send, input)
        {
            continue;
        }
        // The DSL's Send is (data, peers, ..): input 0 carries the value.
        let suffix = if i == 0 {
            Address::empty()
                .site(NodeSiteId::from(portable_site_id(&port)))
                .to_bytes()
        } else {
            local_only.to_vec()
        };
        send.attribute
            .push(bb_ir::keys::dest_suffix_attribute(input, suffix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bb_runtime::envelope::SlotFill;

    #[test]
    fn portable_ids_are_stable_and_out_of_engine_range() {
        // FNV-1a("port") with the top bit set; a changed value breaks the
        // wire between versions.
        assert_eq!(portable_site_id("port"), 0x8c2c_db0d_a893_3fa6);
        assert_ne!(portable_site_id("port"), portable_site_id("reply"));
        assert!(portable_site_id("") & PORTABLE_BIT != 0);
    }

    fn send(inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: "Send".into(),
            domain: WIRE_DOMAIN.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into(), "v0".into()],
            ..Default::default()
        }
    }

    fn suffix_of(node: &NodeProto, input: &str) -> Option<Vec<u8>> {
        node.attribute
            .iter()
            .find(|a| a.name == format!("{DEST_SUFFIX_ATTR_PREFIX}{input}"))
            .map(|a| a.s.clone())
    }

    #[test]
    fn send_inputs_are_stamped_by_role() {
        let marker = local_only_suffix();
        let mut node = send(
            &["x", "trainer_peers", "#__trigger_deadline"],
            "port__send_sentinel_0",
        );
        stamp_send(&mut node, &marker);
        let portable = Address::empty()
            .site(NodeSiteId::from(portable_site_id("port")))
            .to_bytes();
        assert_eq!(suffix_of(&node, "x"), Some(portable));
        assert_eq!(suffix_of(&node, "trainer_peers"), Some(marker.clone()));
        assert_eq!(suffix_of(&node, "#__trigger_deadline"), Some(marker));
    }

    #[test]
    fn peers_inputs_and_upstream_stamps_are_left_alone() {
        let marker = local_only_suffix();
        let mut node = send(&["x", "peers"], "port__send_sentinel_3");
        node.attribute
            .push(bb_ir::keys::dest_suffix_attribute("x", vec![1, 2, 3]));
        stamp_send(&mut node, &marker);
        assert_eq!(node.attribute.len(), 1);
        assert_eq!(suffix_of(&node, "x"), Some(vec![1, 2, 3]));
    }

    #[test]
    fn a_send_without_a_sentinel_is_not_touched() {
        let mut node = send(&["x", "peers"], "port");
        stamp_send(&mut node, &local_only_suffix());
        assert!(node.attribute.is_empty());
    }

    #[test]
    fn inbound_rewrites_only_known_portable_ids() {
        let mut sites = Sites {
            inbound: HashMap::new(),
            local_only: local_only_suffix(),
        };
        sites
            .inbound
            .insert(portable_site_id("port"), NodeSiteId::from(7));
        let fill = |id: u64| SlotFill {
            dest_suffix: Address::empty().site(NodeSiteId::from(id)).to_bytes(),
            ..Default::default()
        };
        let mut env = WireEnvelope {
            fills: vec![
                fill(portable_site_id("port")),
                fill(3),
                fill(portable_site_id("other")),
            ],
            ..Default::default()
        };
        assert_eq!(sites.inbound(&mut env), Err(portable_site_id("other")));
        env.fills.pop();
        assert_eq!(sites.inbound(&mut env), Ok(()));
        assert_eq!(env.fills[0].dest_suffix, fill(7).dest_suffix);
        assert_eq!(env.fills[1].dest_suffix, fill(3).dest_suffix);
        assert_eq!(sites.receives("port"), Some(NodeSiteId::from(7)));
    }

    #[test]
    fn outbound_drops_local_only_fills() {
        let sites = Sites {
            inbound: HashMap::new(),
            local_only: local_only_suffix(),
        };
        let keep = SlotFill {
            dest_suffix: vec![1],
            ..Default::default()
        };
        let mut env = WireEnvelope {
            fills: vec![
                keep.clone(),
                SlotFill {
                    dest_suffix: local_only_suffix(),
                    trigger_only: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        sites.outbound(&mut env);
        assert_eq!(env.fills, vec![keep]);
    }
}
