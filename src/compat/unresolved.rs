//! Sends to peers the engine's AddressBook does not hold.
//!
//! bb-runtime 0.3.8's `wire.Send` looks each destination up in the Node's
//! AddressBook and, for a peer without an entry, sends nothing and reports
//! `EngineStep::PeerResolveFailed`: the value is gone, and no `SendFailed`
//! says so. The book holds only the peers this behaviour has told it of,
//! but the swarm may still reach others: kad, mDNS, identify or the
//! application can supply addresses when libp2p dials by `PeerId`.
//!
//! So every `wire.Send` runs through [`resolving_peers`]: a destination
//! without an entry gets a bare `/p2p/<peer>` entry for the length of the
//! call, which is all an envelope needs to name its peer, and loses it again
//! afterwards (the book does not grow). The behaviour then dials the peer by
//! its id. When no behaviour of the swarm knows an address either, the
//! envelope fails as [`SendFailure::Unresolved`](crate::SendFailure::Unresolved).
//!
//! `tests/unresolved.rs::upstream_send_still_skips_unknown_peers` fails once
//! the engine sends to such peers itself, so this can go.

use std::borrow::Cow;

use bb_ir::proto::onnx::NodeProto;
use bb_runtime::atomic::DispatchResult;
use bb_runtime::bus::OpError;
use bb_runtime::engine::GraphSlot;
use bb_runtime::framework::Address;
use bb_runtime::ids::PeerId as EnginePeerId;
use bb_runtime::runtime::RuntimeResourceRef;
use bb_runtime::slot_value::SlotValue;
use bb_runtime::syscall::values::{BytesValue, PeerIdVecValue};

use super::dispatch;
use super::sites::is_wire;

const WRAPPER: &str = "unresolved";
/// The input names `wire.Send` reads its destinations from first.
pub(super) const PEER_INPUTS: [&str; 5] = ["dest", "dest_peer", "peer", "peers", "peer_id"];

/// Routes every `wire.Send` of `graph` through [`resolving_peers`].
pub(crate) fn resolve_sends(graph: &mut GraphSlot) {
    dispatch::wrap_where(graph, WRAPPER, resolving_peers, |node| {
        is_wire(node, "Send")
    });
}

/// Runs `wire.Send` with a `/p2p/<peer>` AddressBook entry for each of its
/// destinations that had none, and removes those entries afterwards.
fn resolving_peers(
    node: &NodeProto,
    inputs: &[(&str, &dyn SlotValue)],
    ctx: &mut RuntimeResourceRef<'_>,
) -> Result<DispatchResult, OpError> {
    let send = dispatch::original(WRAPPER, node)?;
    let book = &mut *ctx.peers.addresses;
    let mut lent = Vec::new();
    for &peer in destinations(inputs).iter() {
        let known = book.lookup(peer).is_some_and(|a| !a.is_empty());
        // A full book refuses the entry; the engine then reports the peer
        // unresolved, and the behaviour turns that into a `SendFailed`.
        if !known
            && book
                .add_peer(peer, vec![Address::empty().p2p(peer)])
                .is_ok()
        {
            lent.push(peer);
        }
    }
    let result = send(node, inputs, ctx);
    for peer in lent {
        let _ = ctx.peers.addresses.drop_peer(peer);
    }
    result
}

/// The destinations `wire.Send` will read from `inputs`: the first input
/// with a peer name holding a peer list, else the second input (where
/// `g.net_out` puts the list). Borrowed unless they come encoded.
fn destinations<'a>(inputs: &[(&str, &'a dyn SlotValue)]) -> Cow<'a, [EnginePeerId]> {
    inputs
        .iter()
        .filter(|(name, _)| PEER_INPUTS.contains(name))
        .find_map(|(_, value)| peer_list(*value))
        .or_else(|| inputs.get(1).and_then(|(_, value)| peer_list(*value)))
        .unwrap_or_default()
}

/// The peers `value` holds, if `wire.Send` reads it as a peer list: a
/// `PeerIdVecValue`, or one encoded in a `BytesValue` (as an `invoke`
/// input arrives). Borrowed unless encoded.
pub(super) fn peer_list(value: &dyn SlotValue) -> Option<Cow<'_, [EnginePeerId]>> {
    let any = value.as_any();
    if let Some(peers) = any.downcast_ref::<PeerIdVecValue>() {
        return Some(Cow::Borrowed(&peers.0));
    }
    let bytes = any.downcast_ref::<BytesValue>()?;
    bincode::deserialize::<PeerIdVecValue>(&bytes.0)
        .ok()
        .map(|p| Cow::Owned(p.0))
}
