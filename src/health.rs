//! Admission and peer health on the swarm's side of the thread boundary.
//!
//! Connections are admitted or refused synchronously, and an envelope is
//! dialled for or held back at once, so the swarm's side keeps what those
//! decisions read: the governor's lists as the Node last reported them, and
//! its own back-off table and governor, fed with every transport outcome
//! (the same records go to the engine's tables; see `admission.rs`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bb_runtime::framework::{BackoffTable, PeerGovernor};
use libp2p::PeerId;

use crate::admission;
use crate::engine::message::Policy;
use crate::event::Denial;
use crate::peer::to_engine_peer;

/// A peer's health changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Its failure streak reached the governor's threshold.
    Down { consecutive_failures: u32 },
    /// It answered after being down.
    Up,
}

/// Peers with failure state kept; past this the ones recorded longest ago
/// are forgotten, a quarter at a time (the same as the behaviour's bound on
/// unconnected peers, so a remote peer cannot grow either without bound).
pub(crate) const MAX_TRACKED_PEERS: usize = 1000;

pub(crate) struct Health {
    origin: Instant,
    policy: Policy,
    backoff: BackoffTable,
    governor: PeerGovernor,
    /// Peers reported down and not up since.
    down: HashSet<PeerId>,
    /// Peers with a record in the tables, and when each was last recorded
    /// (a counter), to forget the stalest first.
    tracked: HashMap<PeerId, u64>,
    records: u64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            policy: Policy::default(),
            backoff: BackoffTable::new(),
            governor: PeerGovernor::new(),
            down: HashSet::new(),
            tracked: HashMap::new(),
            records: 0,
        }
    }
}

impl Health {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes the Node's lists. `true` when they changed.
    pub(crate) fn set_policy(&mut self, policy: Policy) -> bool {
        let changed = policy != self.policy;
        self.policy = policy;
        changed
    }

    /// Why `peer` is denied, if it is.
    pub(crate) fn denial(&self, peer: &PeerId) -> Option<Denial> {
        self.policy.denial(peer)
    }

    /// How long until `peer` may be tried again; `None` when it may be now.
    pub(crate) fn cooldown(&self, peer: &PeerId) -> Option<Duration> {
        let now_ns = self.now_ns();
        let state = self.backoff.state(to_engine_peer(peer))?;
        (now_ns < state.next_retry_ns).then(|| Duration::from_nanos(state.next_retry_ns - now_ns))
    }

    /// An attempt to reach `peer` failed. Attempts that fail while it is
    /// cooling down count once (see `admission::failure`).
    pub(crate) fn failed(&mut self, peer: PeerId) -> Option<Transition> {
        self.track(peer);
        let now_ns = self.now_ns();
        if !admission::failure(&mut self.backoff, &mut self.governor, &peer, now_ns) {
            return None;
        }
        self.went_down(peer)
    }

    /// `peer` acknowledged an envelope. `true` first when this changed the
    /// peer's record (it had failures or a wait), so the engine's copy needs
    /// the news; the common case changes nothing.
    pub(crate) fn answered(&mut self, peer: PeerId) -> (bool, Option<Transition>) {
        // Every peer with a record is tracked: the common case is a lookup.
        if !self.tracked.contains_key(&peer) {
            return (false, None);
        }
        let engine_peer = to_engine_peer(&peer);
        let recorded = self.backoff.state(engine_peer).is_some()
            || self
                .governor
                .peer_health(engine_peer)
                .is_some_and(|h| h.consecutive_failures > 0);
        if recorded {
            let now_ns = self.now_ns();
            admission::success(&mut self.backoff, &mut self.governor, &peer, now_ns);
        }
        (recorded, self.down.remove(&peer).then_some(Transition::Up))
    }

    /// `peer` asked for a wait: it answered busy.
    pub(crate) fn busy(&mut self, peer: PeerId, wait: Duration) {
        self.track(peer);
        let now_ns = self.now_ns();
        admission::advisory(&mut self.backoff, &peer, now_ns, nanos(wait));
    }

    /// `peer` sent a `BackoffNotice`: a wait, and a failure in its streak,
    /// as the engine records it.
    pub(crate) fn advised(&mut self, peer: PeerId, wait: Duration) -> Option<Transition> {
        self.track(peer);
        let now_ns = self.now_ns();
        admission::advisory(&mut self.backoff, &peer, now_ns, nanos(wait));
        let engine_peer = to_engine_peer(&peer);
        let transition = self.governor.record_failure(engine_peer, now_ns);
        (transition == bb_runtime::framework::LifecycleTransition::WentDown)
            .then(|| self.went_down(peer))
            .flatten()
    }

    /// How many peers have failure state.
    pub(crate) fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// Drops the records of `peers` (the behaviour forgot them).
    pub(crate) fn forget(&mut self, peers: &[PeerId]) {
        let peers: Vec<PeerId> = peers
            .iter()
            .filter(|p| self.tracked.remove(p).is_some())
            .copied()
            .collect();
        if peers.is_empty() {
            return;
        }
        for peer in &peers {
            self.down.remove(peer);
        }
        admission::forget(&mut self.backoff, &mut self.governor, &peers);
    }

    /// Past [`MAX_TRACKED_PEERS`], the peers recorded longest ago, a quarter
    /// of the bound at a time, to forget here and in the engine's tables.
    pub(crate) fn overflow(&mut self) -> Vec<PeerId> {
        if self.tracked.len() <= MAX_TRACKED_PEERS {
            return Vec::new();
        }
        let mut by_age: Vec<(u64, PeerId)> = self.tracked.iter().map(|(p, n)| (*n, *p)).collect();
        by_age.sort_unstable();
        let stale: Vec<PeerId> = by_age
            .into_iter()
            .take(self.tracked.len() - MAX_TRACKED_PEERS * 3 / 4)
            .map(|(_, p)| p)
            .collect();
        self.forget(&stale);
        stale
    }

    fn track(&mut self, peer: PeerId) {
        self.records += 1;
        self.tracked.insert(peer, self.records);
    }

    fn went_down(&mut self, peer: PeerId) -> Option<Transition> {
        if !self.down.insert(peer) {
            return None;
        }
        let consecutive_failures = self
            .governor
            .peer_health(to_engine_peer(&peer))
            .map_or(0, |h| h.consecutive_failures);
        Some(Transition::Down {
            consecutive_failures,
        })
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
