//! Every place this crate works around a bytesandbrains 0.3.8 limitation.
//!
//! Each item says which upstream behaviour it covers and names the canary
//! test that fails once upstream changes, so the workaround can go.
//!
//! | workaround | covers | canary |
//! |---|---|---|
//! | [`sites`] | `wire.Send` leaves a data-plane fill's destination empty | `tests/data_plane.rs` |
//! | [`deadline_gates`] | `DeadlineCheck` reads a relative budget as an absolute time | `tests/clock.rs::upstream_deadline_gates_still_read_budgets_as_absolute` |
//! | [`contexts`] | `inbound_contexts` grows by one entry per value, for ever | `tests/overload.rs::a_receivers_engine_state_stays_bounded` |
//! | [`restore`] | `Node::restore` strands the graphs it restores | `tests/restart.rs::upstream_restore_still_strands_new_work` |
//! | [`wire_requests`] | a one-way send's request times out 100 ms after it left, acknowledged or not | `tests/wire_requests.rs::upstream_still_gives_one_way_sends_a_short_ttl` |
//! | [`fail_parked_op`] | `SendFailed` drops a request without failing the op parked on it | none: no 0.3.8 op parks on a wire request |
//! | [`senders`] | an `AppEvent` does not say who sent the value | `tests/senders.rs::upstream_app_events_still_carry_no_sender` |
//! | [`unresolved`] | `wire.Send` drops a value for a peer its AddressBook lacks | `tests/unresolved.rs::upstream_send_still_skips_unknown_peers` |
//! | [`dedup`] | the receive dedup gate drops a value equal to any taken recently, from anyone; its window is not in the snapshot | `tests/equal_values.rs::upstream_dedup_still_keys_on_the_payload` |
//! | [`backoff_rx`] | the receive back-off gate drops an acknowledged value from a peer cooling down | `tests/cooldown.rs::upstream_backoff_gate_still_drops_inbound_values` |
//! | [`bulk`] | `BytesValue` is encoded byte by byte (no `serde_bytes`) | `tests/bulk.rs::upstream_bytes_values_still_encode_as_length_and_bytes` |
//!
//! [`senders`], [`unresolved`], [`dedup`], [`backoff_rx`] and [`bulk`] replace
//! framework ops' dispatch entries through [`dispatch`].

/// The domain of the engine's wire ops (`Send`, `Recv`).
pub(crate) const WIRE_DOMAIN: &str = "ai.bytesandbrains.wire";
/// The domain of the engine's framework syscalls (gates, checks).
pub(crate) const SYSCALL_DOMAIN: &str = "ai.bytesandbrains.syscall";

pub(crate) mod backoff_rx;
pub(crate) mod bulk;
pub(crate) mod contexts;
pub(crate) mod deadline_gates;
pub(crate) mod dedup;
pub(crate) mod dispatch;
pub(crate) mod senders;
pub mod sites;
pub(crate) mod unresolved;
pub(crate) mod wire_requests;

use bb_runtime::errors::restore::RestoreError;
use bb_runtime::ingress::IngressEvent;
use bb_runtime::node::Node;
use bb_runtime::snapshot::NodeSnapshot;

/// Restores `snapshot` onto `node`, installed afresh from the same model
/// and targets with the same identity.
///
/// bb-runtime 0.3.8's `Node::restore` reinstalls each of the snapshot's
/// graphs numbered after the ones already installed, so their ops dispatch
/// to no graph and every later `invoke` does nothing, without an error. The
/// freshly installed graphs stand in for the snapshot's instead (executions
/// that were part-way through a graph are not carried over).
/// The keys of the envelopes the Node's receive dedup gate took come back
/// too (see `dedup.rs`), so a restarted receiver does not take them again.
pub(crate) fn restore(node: &mut Node, mut snapshot: NodeSnapshot) -> Result<(), RestoreError> {
    snapshot.graphs.clear();
    let taken = dedup::Taken::take_from(&mut snapshot);
    crate::engine::carried::Carried::take_from(&mut snapshot);
    node.restore(snapshot)?;
    taken.put_back(node);
    Ok(())
}

/// The event that fails the op parked on `wire_req_id`, if one is.
///
/// The engine 0.3.8 takes `SendFailed` by dropping the request from its
/// in-flight table, and so never fails an op parked on it (it would only
/// have on the request's expiry). Push this first.
pub(crate) fn fail_parked_op(node: &mut Node, wire_req_id: u64, why: &str) -> Option<IngressEvent> {
    let cmd_id = node
        .engine_install_handle()
        .framework
        .request_tracker
        .peek(wire_req_id)?
        .parked_op?;
    Some(IngressEvent::CompletionFailed {
        cmd_id,
        detail: format!("send failed: {why}"),
    })
}
