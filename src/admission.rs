//! Peer health records in a `BackoffTable` and `PeerGovernor`.
//!
//! The engine's governor health is fed by nothing in bb-runtime 0.3.8 but
//! `BackoffNotice` envelopes, and the engine never emits the
//! `PeerDown`/`PeerUp` steps it declares. So the transport records its own
//! outcomes: in its own tables on the swarm's side, which decide dials and
//! report [`crate::Event::PeerDown`] (see `health.rs`), and the same records
//! in the engine's, which its send gates (`BackoffGateTx`,
//! `PeerHealthGateTx`) read.

use bb_runtime::engine::Engine;
use bb_runtime::framework::{BackoffTable, LifecycleTransition, PeerGovernor};
use libp2p::PeerId;

use crate::peer::to_engine_peer;

/// Records a failed attempt to reach `peer`. `true` when the failure streak
/// just crossed the governor's threshold.
///
/// Attempts that fail while the peer is already cooling down (several sends
/// queued behind one dial) count once, so the back-off doubles per attempt
/// rather than per envelope.
pub(crate) fn failure(
    backoff: &mut BackoffTable,
    governor: &mut PeerGovernor,
    peer: &PeerId,
    now_ns: u64,
) -> bool {
    let peer = to_engine_peer(peer);
    if !backoff.should_retry(peer, now_ns) {
        return false;
    }
    backoff.record_failure(peer, now_ns);
    governor.record_failure(peer, now_ns) == LifecycleTransition::WentDown
}

/// Records that `peer` acknowledged an envelope. `true` when it had been
/// down.
///
/// A back-off whose wait is still running stays: it may be the peer's own
/// request to slow down (a `BackoffNotice`), which an overloaded peer still
/// acknowledging envelopes must not cancel.
pub(crate) fn success(
    backoff: &mut BackoffTable,
    governor: &mut PeerGovernor,
    peer: &PeerId,
    now_ns: u64,
) -> bool {
    let peer = to_engine_peer(peer);
    if backoff
        .state(peer)
        .is_some_and(|s| now_ns >= s.next_retry_ns)
    {
        backoff.record_success(peer);
    }
    let failing = governor
        .peer_health(peer)
        .is_some_and(|h| h.consecutive_failures > 0);
    // The common case writes nothing per envelope.
    failing && governor.record_success(peer, now_ns) == LifecycleTransition::CameUp
}

/// Records that `peer` asked for a wait of `wait_ns` (it answered busy, or
/// sent a `BackoffNotice`, which also counts as a failure there).
pub(crate) fn advisory(backoff: &mut BackoffTable, peer: &PeerId, now_ns: u64, wait_ns: u64) {
    backoff.record_remote_advisory(to_engine_peer(peer), now_ns, wait_ns);
}

/// [`failure`] in the engine's own tables, at the engine's time.
pub(crate) fn record_failure(engine: &mut Engine, peer: &PeerId) {
    let now_ns = engine.framework.scheduler.now_ns();
    let state = &mut engine.framework.peer_state;
    failure(&mut state.backoff, &mut state.governor, peer, now_ns);
}

/// [`success`] in the engine's own tables, at the engine's time.
pub(crate) fn record_success(engine: &mut Engine, peer: &PeerId) {
    let now_ns = engine.framework.scheduler.now_ns();
    let state = &mut engine.framework.peer_state;
    success(&mut state.backoff, &mut state.governor, peer, now_ns);
}

/// [`advisory`] in the engine's own tables, at the engine's time.
pub(crate) fn record_advisory(engine: &mut Engine, peer: &PeerId, wait_ns: u64) {
    let now_ns = engine.framework.scheduler.now_ns();
    advisory(
        &mut engine.framework.peer_state.backoff,
        peer,
        now_ns,
        wait_ns,
    );
}

/// Drops every record of `peers` from both tables, keeping the governor's
/// block and allow lists and its threshold. (The governor has no removal of
/// its own: it is rebuilt without them.)
pub(crate) fn forget(backoff: &mut BackoffTable, governor: &mut PeerGovernor, peers: &[PeerId]) {
    let gone: std::collections::HashSet<_> = peers.iter().map(to_engine_peer).collect();
    for peer in &gone {
        backoff.record_success(*peer);
    }
    let mut kept = PeerGovernor::new().with_failure_threshold(governor.failure_threshold());
    for peer in governor.blocklist() {
        kept.block(*peer);
    }
    kept.set_allowlist(governor.allowlist().cloned());
    for (peer, health) in governor.iter_health().filter(|(p, _)| !gone.contains(p)) {
        kept.restore_health(peer, health);
    }
    *governor = kept;
}

/// [`forget`] in the engine's own tables.
pub(crate) fn forget_in_engine(engine: &mut Engine, peers: &[PeerId]) {
    let state = &mut engine.framework.peer_state;
    forget(&mut state.backoff, &mut state.governor, peers);
}
