//! Modules the tests run, and helpers to install them on Nodes with real
//! libp2p identities.
#![allow(dead_code)]

use bb_ir::proto::onnx::{NodeProto, StringStringEntryProto};
use bytesandbrains::atomic::DispatchResult;
use bytesandbrains::bus::OpError;
use bytesandbrains::proto::onnx::ModelProto;
use bytesandbrains::runtime::RuntimeResourceRef;
use bytesandbrains::slot_value::SlotValue;
use bytesandbrains::syscall::values::PeerIdVecValue;
use bytesandbrains::{Compiler, Graph, Module, Node, Output};
use libp2p::identity::Keypair;

// Each test binary uses its own subset of these.
#[allow(unused_imports)]
pub use super::registry::{install, merge};

/// A sends `x` to `peers`; the receiver outputs it as `y`.
pub struct Ping;
impl Module for Ping {
    fn name(&self) -> &str {
        "Ping"
    }
    fn body(&self, g: &mut Graph) {
        let peers = g.input("peers");
        let x = g.input("x");
        g.net_out("port", peers, x);
        let received = g.lookup_output("port").expect("port");
        g.output("y", received);
    }
}

/// An unrelated single-partition Module, installed beside the others.
pub struct Other;
impl Module for Other {
    fn name(&self) -> &str {
        "Other"
    }
    fn body(&self, g: &mut Graph) {
        let a = g.input("a");
        let b = bytesandbrains::pass_through(g, a);
        g.output("o", b);
    }
}

/// Replies to whoever sent the envelope being processed: the inbound
/// envelope's sender as a one-peer list, so `wire.Send` can address it.
fn sender_as_peers(
    _node: &NodeProto,
    _inputs: &[(&str, &dyn SlotValue)],
    ctx: &mut RuntimeResourceRef<'_>,
) -> Result<DispatchResult, OpError> {
    let peer = ctx.current.inbound.src_peer.ok_or_else(|| OpError {
        detail: "SenderAsPeers outside an inbound delivery".into(),
        ..Default::default()
    })?;
    Ok(DispatchResult::Immediate(vec![(
        "peers".to_string(),
        Box::new(PeerIdVecValue(vec![peer])) as Box<dyn SlotValue>,
    )]))
}

const TEST_DOMAIN: &str = "ai.bytesandbrains.bb_libp2p_test";

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_test",
    op_type: "SenderAsPeers",
    invoke: sender_as_peers,
}

/// A sends `x` to `peers` as `req`; the receiver sends it back to A as
/// `reply`; A outputs the reply as `y`.
pub struct RoundTrip;
impl Module for RoundTrip {
    fn name(&self) -> &str {
        "RoundTrip"
    }
    fn body(&self, g: &mut Graph) {
        let peers = g.input("peers");
        let x = g.input("x");
        g.net_out("req", peers, x);
        let req = g.lookup_output("req").expect("req");
        g.push_node(NodeProto {
            op_type: "SenderAsPeers".into(),
            domain: TEST_DOMAIN.into(),
            // Reading `req` homes the op on the receiver and fires it on arrival.
            input: vec![req.name.clone()],
            // Named `dest` so wire.Send does not ship it as a fill.
            output: vec!["dest".into()],
            metadata_props: vec![StringStringEntryProto {
                key: bb_ir::peer_class::PEER_CLASS_KEY.into(),
                value: bb_ir::peer_class::SELF_CLASS.into(),
            }],
            ..Default::default()
        });
        g.declare_value_info("dest", &bb_ir::types::TYPE_PEER_ID_VEC);
        let dest = Output::new("dest".into(), &bb_ir::types::TYPE_PEER_ID_VEC);
        g.net_out("reply", dest, req);
        let reply = g.lookup_output("reply").expect("reply");
        g.output("y", reply);
    }
}

/// Compiles `module`; returns the model and its target names in order.
pub fn compile(module: impl Module) -> (ModelProto, Vec<String>) {
    bytesandbrains::ops::link_force();
    let model = Compiler::new()
        .compile(module.build().expect("module builds"))
        .expect("module compiles");
    let targets = model.functions.iter().map(|f| f.name.clone()).collect();
    (model, targets)
}

/// A behaviour whose Node, built on its engine thread, runs `targets` of
/// `model` with the identity of `key`.
pub fn bb_behaviour(
    key: &Keypair,
    model: &ModelProto,
    targets: &[&str],
    config: bb_libp2p::Config,
) -> bb_libp2p::Behaviour {
    let (key, model) = (key.clone(), model.clone());
    let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    bb_libp2p::Behaviour::new(
        move || {
            let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
            Ok::<_, std::convert::Infallible>(install(&key, &model, &targets))
        },
        config,
    )
    .expect("the Node starts")
}

/// A memory-transport swarm whose behaviour runs `targets` of `model` on a
/// Node with a fresh identity.
pub fn bb_swarm(model: &ModelProto, targets: &[&str]) -> libp2p::Swarm<bb_libp2p::Behaviour> {
    bb_swarm_with(model, targets, bb_libp2p::Config::default())
}

/// [`bb_swarm`] with `config`.
pub fn bb_swarm_with(
    model: &ModelProto,
    targets: &[&str],
    config: bb_libp2p::Config,
) -> libp2p::Swarm<bb_libp2p::Behaviour> {
    let key = Keypair::generate_ed25519();
    let behaviour = bb_behaviour(&key, model, targets, config);
    super::memory_swarm(key, behaviour)
}

/// Invokes a sending `target` (Ping's or RoundTrip's first) on `node`:
/// `payload` goes to `dest`. Returns the encoded value the receiver sees.
pub fn invoke_send(node: &mut Node, target: &str, dest: libp2p::PeerId, payload: &[u8]) -> Vec<u8> {
    let peers = peers_value(&[dest]);
    let x = bytes_value(payload);
    node.invoke(target, &[("peers", &peers), ("x", &x)])
        .expect("invoke");
    x
}

/// [`invoke_send`] on the Node behind `handle`, from the calling thread.
pub fn send_value(
    handle: &bb_libp2p::NodeHandle,
    target: &str,
    dest: libp2p::PeerId,
    payload: &[u8],
) -> Vec<u8> {
    let (target, payload) = (target.to_string(), payload.to_vec());
    handle
        .with_node_blocking(move |node| invoke_send(node, &target, dest, &payload))
        .expect("the Node runs")
}

/// The wire encoding of a bytes value, as `invoke` takes it and `AppEvent`
/// returns it.
pub fn bytes_value(bytes: &[u8]) -> Vec<u8> {
    bb_libp2p::values::bytes(bytes)
}

/// The wire encoding of a peer list.
pub fn peers_value(peers: &[libp2p::PeerId]) -> Vec<u8> {
    bb_libp2p::values::peers(peers)
}

/// Invokes a sending `target` once per payload on the Node behind
/// `handle`, all in one call on its engine thread; returns the encoded
/// values the receiver sees, in order.
pub fn send_values(
    handle: &bb_libp2p::NodeHandle,
    target: &str,
    dest: libp2p::PeerId,
    payloads: Vec<Vec<u8>>,
) -> Vec<Vec<u8>> {
    let target = target.to_string();
    handle
        .with_node_blocking(move |node| {
            payloads
                .iter()
                .map(|p| invoke_send(node, &target, dest, p))
                .collect()
        })
        .expect("the Node runs")
}

/// `n` distinct little-endian `u32` payloads, 0 to n - 1.
pub fn numbered(n: u32) -> Vec<Vec<u8>> {
    (0..n).map(|i| i.to_le_bytes().to_vec()).collect()
}

/// The envelope a bare Node running `target` sends to `to` for `payload`,
/// as it crosses the wire: the data fill addressed to the port, no local
/// fills.
pub fn wire_envelope(
    model: &ModelProto,
    target: &str,
    to: libp2p::PeerId,
    payload: &[u8],
) -> bb_libp2p::WireEnvelope {
    let mut envelope = sent_envelope(model, target, to, payload);
    envelope.fills.truncate(1);
    envelope.fills[0].dest_suffix = bb_libp2p::Address::empty()
        .site(bb_runtime::ids::NodeSiteId::from(
            bb_libp2p::sites::portable_site_id("port"),
        ))
        .to_bytes();
    envelope
}

/// The envelope a bare Node running `target` sends to `to` for `payload`.
pub fn sent_envelope(
    model: &ModelProto,
    target: &str,
    to: libp2p::PeerId,
    payload: &[u8],
) -> bb_libp2p::WireEnvelope {
    let mut sender = install(&Keypair::generate_ed25519(), model, &[target]);
    sender
        .add_peer(
            bb_libp2p::to_engine_peer(&to),
            vec![bb_libp2p::p2p_address(&to)],
        )
        .unwrap();
    invoke_send(&mut sender, target, to, payload);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..4 {
        if let std::task::Poll::Ready(steps) = sender.poll(&mut cx) {
            for step in steps {
                if let bb_libp2p::EngineStep::SendEnvelope(envelope) = step {
                    return envelope;
                }
            }
        }
    }
    panic!("the Send made no envelope")
}

/// The envelope a bare Node running `target` sends to `to` for `payload`,
/// addressed as this crate's bridge addresses it to `receiver`, a bare
/// Node: the data fill to the receiver's own Recv site, no local fills.
pub fn bare_envelope(
    model: &ModelProto,
    target: &str,
    receiver: &mut Node,
    to: libp2p::PeerId,
    payload: &[u8],
) -> bb_libp2p::WireEnvelope {
    let mut envelope = sent_envelope(model, target, to, payload);
    let engine = receiver.engine_install_handle();
    let names: Vec<String> = engine.graphs_named().map(|(n, _)| n.to_string()).collect();
    let mut site = None;
    for name in &names {
        let graph = engine.graph_mut(name).unwrap();
        if !graph.is_entry_point {
            continue;
        }
        if let Some(recv) = graph.function.node.iter().find(|n| n.op_type == "Recv") {
            site = graph.site_names.get(&recv.output[0]).copied();
        }
    }
    let site = site.expect("the receiver's Recv");
    envelope.fills.truncate(1);
    envelope.fills[0].dest_suffix = bb_libp2p::Address::empty().site(site).to_bytes();
    envelope
}
