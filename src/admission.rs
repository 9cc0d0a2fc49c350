//! Peer admission and health: the engine's `PeerGovernor` and `BackoffTable`
//! applied at libp2p's connection level.
//!
//! The governor's blocklist and allowlist are enforced by the engine only
//! inside its graphs (gates beside `wire.Recv` and `wire.Send`); here they
//! also decide which connections the swarm keeps. Its health record is fed by
//! nothing in the engine 0.3.8 but `BackoffNotice` envelopes, and the engine
//! never emits the `PeerDown`/`PeerUp` steps it declares; so the transport
//! records its own outcomes in both tables, which is what the engine's gates
//! (`BackoffGateTx`, `PeerHealthGateTx`) read.

use std::time::Duration;

use bb_runtime::engine::Engine;
use bb_runtime::framework::{BlockReason, Decision, LifecycleTransition};
use libp2p::PeerId;

use crate::event::Denial;
use crate::peer::to_engine_peer;

/// Why the governor denies `peer`, if it does.
pub(crate) fn denial(engine: &Engine, peer: &PeerId) -> Option<Denial> {
    // `check_inbound` consults the lists only; `check_outbound` would add
    // the back-off, which is not a reason to refuse a connection.
    match engine
        .framework
        .peer_state
        .governor
        .check_inbound(to_engine_peer(peer))
    {
        Decision::Allow => None,
        Decision::Deny(BlockReason::NotAllowlisted) => Some(Denial::NotAllowlisted),
        Decision::Deny(_) => Some(Denial::Blocked),
    }
}

/// How long until `peer` may be tried again after failures; `None` when it
/// may be now.
pub(crate) fn cooldown(engine: &Engine, peer: &PeerId) -> Option<Duration> {
    let now_ns = engine.framework.scheduler.now_ns();
    let backoff = &engine.framework.peer_state.backoff;
    let state = backoff.state(to_engine_peer(peer))?;
    (now_ns < state.next_retry_ns).then(|| Duration::from_nanos(state.next_retry_ns - now_ns))
}

/// Records a failed attempt to reach `peer`. `true` when the failure streak
/// just crossed the governor's threshold.
///
/// Attempts that fail while the peer is already cooling down (several sends
/// queued behind one dial) count once, so the back-off doubles per attempt
/// rather than per envelope.
pub(crate) fn record_failure(engine: &mut Engine, peer: &PeerId) -> bool {
    let now_ns = engine.framework.scheduler.now_ns();
    let peer = to_engine_peer(peer);
    let state = &mut engine.framework.peer_state;
    if !state.backoff.should_retry(peer, now_ns) {
        return false;
    }
    state.backoff.record_failure(peer, now_ns);
    state.governor.record_failure(peer, now_ns) == LifecycleTransition::WentDown
}

/// Records that `peer` acknowledged an envelope. `true` when it had been
/// down.
///
/// A back-off whose wait is still running stays: it may be the peer's own
/// request to slow down (a `BackoffNotice`), which an overloaded peer still
/// acknowledging envelopes must not cancel.
pub(crate) fn record_success(engine: &mut Engine, peer: &PeerId) -> bool {
    let now_ns = engine.framework.scheduler.now_ns();
    let peer = to_engine_peer(peer);
    let state = &mut engine.framework.peer_state;
    if state
        .backoff
        .state(peer)
        .is_some_and(|s| now_ns >= s.next_retry_ns)
    {
        state.backoff.record_success(peer);
    }
    let failing = state
        .governor
        .peer_health(peer)
        .is_some_and(|h| h.consecutive_failures > 0);
    // The common case writes nothing per envelope.
    failing && state.governor.record_success(peer, now_ns) == LifecycleTransition::CameUp
}
