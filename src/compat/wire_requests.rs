//! The lifetime of the engine's wire requests, handed to the transport.
//!
//! bb-runtime 0.3.8 registers every `wire.Send` in its request tracker with
//! a 100 ms time to live, and reports `EngineStep::WireTimeout` when it
//! passes, whatever happened to the envelope: an acknowledged one-way send
//! (nothing ever answers it) surfaces as a timeout 100 ms later, and a slow
//! link or a queue turns a delivered envelope into one. The request is
//! settled only by a correlated response envelope or by
//! `IngressEvent::SendFailed`.
//!
//! This transport reports every envelope it is handed: acknowledged, or
//! failed with `SendFailed`. So a request that no op waits on is the
//! transport's to end: when it is handed over, its time to live is pushed
//! out of reach, and when it is acknowledged it is settled (and its round
//! trip feeds the engine's RTT estimate, as a response would). A request an
//! op is parked on keeps the engine's own time to live: the op waits for a
//! response, not for the acknowledgement.
//!
//! `tests/wire_requests.rs::upstream_still_gives_one_way_sends_a_short_ttl`
//! fails when upstream changes how it registers sends.

use std::num::NonZeroU64;

use bb_runtime::engine::Engine;

/// A time to live no link reaches; the transport ends the request first.
const HANDED_OVER_TTL_NS: NonZeroU64 = match NonZeroU64::new(u64::MAX / 4) {
    Some(ttl) => ttl,
    None => unreachable!(),
};

/// The envelope of `wire_req_id` goes to the transport: unless an op waits
/// for its response, its outcome will come from there.
pub(crate) fn hand_over(engine: &mut Engine, wire_req_id: u64) {
    let tracker = &mut engine.framework.request_tracker;
    let Some(entry) = tracker.peek(wire_req_id).copied() else {
        return;
    };
    if entry.parked_op.is_some() {
        return;
    }
    tracker.register_in_flight(
        wire_req_id,
        entry.started_at_ns,
        entry.target_site,
        entry.chain,
        HANDED_OVER_TTL_NS,
        None,
    );
}

/// The peer's engine took the envelope of `wire_req_id`: a request no op
/// waits on is done.
pub(crate) fn settle(engine: &mut Engine, wire_req_id: u64) {
    let now_ns = engine.framework.scheduler.now_ns();
    let tracker = &mut engine.framework.request_tracker;
    if tracker
        .peek(wire_req_id)
        .is_none_or(|entry| entry.parked_op.is_some())
    {
        return;
    }
    if let Some(sample) = tracker.observe_response(wire_req_id, now_ns) {
        engine.framework.rtt_tracker.observe_round_trip(
            sample.target_site,
            sample.chain,
            sample.elapsed_ns,
            now_ns,
        );
    }
}
