//! Envelopes a link cut caught, held to be sent again once their peer is
//! reachable, within the delivery window ([`Config::with_delivery_window`]).
//!
//! An envelope that fails for a transport reason (its connection closed,
//! its stream broke, no acknowledgement came in time, the dial failed, or
//! its peer is cooling down after such failures) to a peer that was
//! connected within the window is parked here instead of failing. A parked
//! peer's envelopes go back to the queue once it is connected and not
//! cooling down; while it is not connected, one of them goes as a probe
//! when its back-off passes (sending it dials the peer), and the rest wait
//! for the connection. An envelope still parked when its window, counted
//! from when the engine handed it over, runs out fails as
//! [`SendFailure::WindowPassed`], as does one whose attempt fails that way
//! after its window (time queued counts).
//!
//! The receiver takes each envelope once: a second delivery of an envelope
//! whose acknowledgement was lost is dropped by its receive dedup gate
//! (same sender, engine request id and bytes; see `compat/dedup.rs`).
//!
//! [`Redelivery`] owns the parked envelopes and reports, from
//! [`Redelivery::poll`], the ones that may go and the ones whose window
//! passed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::task::Context;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures_timer::Delay;
use libp2p::PeerId;

use crate::event::SendFailure;
use crate::outbox::Outgoing;
use crate::Config;

/// Peers remembered as reached; past this the ones reached longest ago are
/// forgotten (the same bound as the behaviour's unconnected peers).
const MAX_REACHED_PEERS: usize = 1000;

/// An envelope waiting for its peer.
#[derive(Debug)]
struct Parked {
    outgoing: Outgoing,
    /// Why its last attempt failed.
    last: SendFailure,
}

/// What [`Redelivery::poll`] found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// Envelopes whose peer may be tried again: back to the queue.
    pub(crate) ready: Vec<Outgoing>,
    /// Envelopes whose window passed, with the failure to report.
    pub(crate) expired: Vec<(Outgoing, SendFailure)>,
}

/// How a peer stands, read from the rest of the behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerState {
    /// Connected, and not cooling down: every envelope may go.
    Open,
    /// Not connected, and not cooling down: one envelope may go, to dial.
    Closed,
    /// Cooling down for this long.
    Waiting(Duration),
    /// Denied by the Node: nothing may go, and nothing waits.
    Denied(SendFailure),
}

pub(crate) struct Redelivery {
    window: Duration,
    max_parked: usize,
    parked: HashMap<PeerId, VecDeque<Parked>>,
    len: usize,
    /// Peers connected now (`None`), or whose last connection closed within
    /// the window (when).
    reached: HashMap<PeerId, Option<Instant>>,
    /// Peers not connected whose probe is out (queued or on the wire).
    probing: HashSet<PeerId>,
    /// Something changed that may let envelopes go.
    changed: bool,
    /// Fires at the next back-off end or window end.
    timer: Option<Delay>,
}

impl Redelivery {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            window: config.delivery_window(),
            max_parked: config.max_queued_envelopes(),
            parked: HashMap::new(),
            len: 0,
            reached: HashMap::new(),
            probing: HashSet::new(),
            changed: false,
            timer: None,
        }
    }

    /// Envelopes parked.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every parked envelope.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Outgoing> {
        self.parked.values().flatten().map(|p| &p.outgoing)
    }

    /// A connection with `peer` was established or closed; `connected` says
    /// whether any is left. A connected peer counts as reachable, and one
    /// whose last connection closed for the window from then.
    pub(crate) fn reached(&mut self, peer: PeerId, connected: bool) {
        if self.window.is_zero() {
            return;
        }
        if self.reached.len() >= MAX_REACHED_PEERS && !self.reached.contains_key(&peer) {
            let window = self.window;
            self.reached
                .retain(|_, left| left.is_none_or(|at| at.elapsed() < window));
            if self.reached.len() >= MAX_REACHED_PEERS {
                // The one that left longest ago (a connected one last).
                if let Some(oldest) = self
                    .reached
                    .iter()
                    .min_by_key(|(_, left)| left.map_or((1, None), |at| (0, Some(at))))
                    .map(|(p, _)| *p)
                {
                    self.reached.remove(&oldest);
                }
            }
        }
        self.reached.insert(peer, (!connected).then(Instant::now));
        if connected {
            self.probing.remove(&peer);
            self.changed |= self.parked.contains_key(&peer);
        }
    }

    /// `peer` no longer counts as reached: its parked envelopes end, and
    /// the others fail on their next transport failure.
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.reached.remove(peer);
        self.changed |= self.parked.contains_key(peer);
    }

    /// An envelope to `peer` ended (acknowledged or failed for good): if it
    /// was the peer's probe, another may go.
    pub(crate) fn ended(&mut self, peer: &PeerId) {
        // Called for every acknowledgement: most of the time nothing probes.
        if !self.probing.is_empty() && self.probing.remove(peer) {
            self.changed |= self.parked.contains_key(peer);
        }
    }

    /// Something that decides whether a peer's envelopes may go changed (a
    /// denial, say): look at the parked ones again.
    pub(crate) fn recheck(&mut self) {
        self.changed |= !self.parked.is_empty();
    }

    /// Parks `outgoing`, whose attempt failed with `reason`, when it may
    /// wait for its peer (`None`); otherwise hands it back with the failure
    /// to report.
    pub(crate) fn park(
        &mut self,
        mut outgoing: Outgoing,
        reason: SendFailure,
    ) -> Option<(Outgoing, SendFailure)> {
        let peer = outgoing.peer;
        self.probing.remove(&peer);
        let reached = self
            .reached
            .get(&peer)
            .is_some_and(|left| left.is_none_or(|at| at.elapsed() < self.window));
        let in_window = outgoing.born.elapsed() < self.window;
        if !is_transport(&reason) || !reached || !in_window || self.len >= self.max_parked {
            // A link failure to a reachable peer after the window (queueing
            // may have used it up before a first attempt failed) says so.
            let reason = if is_transport(&reason) && reached && !in_window {
                self.window_passed(&outgoing, reason)
            } else {
                reason
            };
            return Some((outgoing, reason));
        }
        outgoing.maybe_delivered |= reached_peer(&outgoing, &reason);
        outgoing.resends += 1;
        tracing::debug!(parent: &outgoing.span, %reason, "parked until the peer is reachable");
        self.parked.entry(peer).or_default().push_back(Parked {
            outgoing,
            last: reason,
        });
        self.len += 1;
        self.changed = true;
        None
    }

    /// Hands back the envelopes that may go now and those whose window
    /// passed; arms the timer for the next moment that can change either.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        mut state: impl FnMut(&PeerId) -> PeerState,
    ) -> Found {
        let mut found = Found::default();
        if let Some(timer) = self.timer.as_mut() {
            if timer.poll_unpin(cx).is_ready() {
                self.timer = None;
                self.changed = true;
            }
        }
        if !std::mem::take(&mut self.changed) || self.parked.is_empty() {
            return found;
        }
        let mut next: Option<Duration> = None;
        let mut earliest = |wait: Duration| next = Some(next.map_or(wait, |n| n.min(wait)));
        let peers: Vec<PeerId> = self.parked.keys().copied().collect();
        for peer in peers {
            let Some(mut queue) = self.parked.remove(&peer) else {
                continue;
            };
            // Whose window passed (parked order is not hand-over order).
            let (passed, waiting): (VecDeque<Parked>, VecDeque<Parked>) = queue
                .into_iter()
                .partition(|p| p.outgoing.born.elapsed() >= self.window);
            queue = waiting;
            for Parked { outgoing, last } in passed {
                let failure = self.window_passed(&outgoing, last);
                found.expired.push((outgoing, failure));
            }
            // The application forgot the peer: its envelopes end with why
            // their last attempt failed.
            if !self.reached.contains_key(&peer) {
                found
                    .expired
                    .extend(queue.drain(..).map(|p| (p.outgoing, p.last)));
            }
            match state(&peer) {
                PeerState::Open => found.ready.extend(queue.drain(..).map(|p| p.outgoing)),
                PeerState::Closed if !self.probing.contains(&peer) => {
                    if let Some(probe) = queue.pop_front() {
                        self.probing.insert(peer);
                        found.ready.push(probe.outgoing);
                    }
                }
                PeerState::Closed => {}
                PeerState::Waiting(wait) => earliest(wait),
                // One that may have arrived says so, rather than "not sent".
                PeerState::Denied(reason) => found.expired.extend(queue.drain(..).map(|p| {
                    let failure = if p.outgoing.maybe_delivered {
                        p.last
                    } else {
                        reason.clone()
                    };
                    (p.outgoing, failure)
                })),
            }
            if let Some(oldest) = queue.iter().map(|p| p.outgoing.born).min() {
                earliest(self.window.saturating_sub(oldest.elapsed()));
                self.parked.insert(peer, queue);
            }
        }
        self.len = self.parked.values().map(VecDeque::len).sum();
        self.timer = next.map(|wait| {
            let mut timer = Delay::new(wait.max(Duration::from_millis(1)));
            // Register the waker now; the timer cannot be ready yet.
            let _ = timer.poll_unpin(cx);
            timer
        });
        found
    }

    fn window_passed(&self, outgoing: &Outgoing, last: SendFailure) -> SendFailure {
        SendFailure::WindowPassed {
            window: self.window,
            maybe_delivered: outgoing.maybe_delivered || reached_peer(outgoing, &last),
            last: Box::new(last),
        }
    }
}

/// Whether the attempt that failed with `reason` may have reached the
/// peer's engine: the failure says it may, and some of its bytes left.
fn reached_peer(outgoing: &Outgoing, reason: &SendFailure) -> bool {
    reason.may_have_been_delivered() && outgoing.progress.bytes() > 0
}

/// Whether `reason` is the link's doing, so that the envelope may go again
/// once the link is back: a dial failure, a closed connection, a broken
/// stream, no acknowledgement in time, or the back-off those left.
fn is_transport(reason: &SendFailure) -> bool {
    matches!(
        reason,
        SendFailure::DialFailure
            | SendFailure::Timeout
            | SendFailure::ConnectionClosed
            | SendFailure::Io(_)
            | SendFailure::Backoff { .. }
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::task::noop_waker_ref;

    use super::*;

    fn redelivery(window: Duration) -> Redelivery {
        Redelivery::new(&Config::default().with_delivery_window(window))
    }

    fn out(peer: PeerId, id: u64) -> Outgoing {
        Outgoing::new(peer, Some(id), Arc::default(), tracing::Span::none())
    }

    /// An envelope some of whose bytes left before its attempt failed.
    fn sent(peer: PeerId, id: u64) -> Outgoing {
        let outgoing = out(peer, id);
        outgoing.progress.moved(10);
        outgoing
    }

    fn poll(r: &mut Redelivery, state: PeerState) -> Found {
        r.poll(&mut Context::from_waker(noop_waker_ref()), |_| {
            state.clone()
        })
    }

    #[test]
    fn only_a_peer_reached_within_the_window_waits() {
        let mut r = redelivery(Duration::from_secs(60));
        let (known, stranger) = (PeerId::random(), PeerId::random());
        r.reached(known, true);
        assert!(r
            .park(out(known, 1), SendFailure::ConnectionClosed)
            .is_none());
        let (_, reason) = r.park(out(stranger, 2), SendFailure::DialFailure).unwrap();
        assert_eq!(reason, SendFailure::DialFailure);
        // A refusal is the peer's answer, not the link's.
        let refused = SendFailure::UnsupportedProtocol;
        assert!(r.park(out(known, 3), refused).is_some());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_closed_peer_gets_one_probe_and_an_open_one_everything() {
        let mut r = redelivery(Duration::from_secs(60));
        let peer = PeerId::random();
        r.reached(peer, true);
        for id in 1..=3 {
            assert!(r
                .park(out(peer, id), SendFailure::ConnectionClosed)
                .is_none());
        }
        assert_eq!(
            poll(&mut r, PeerState::Waiting(Duration::from_secs(1)))
                .ready
                .len(),
            0
        );
        r.changed = true;
        let probe = poll(&mut r, PeerState::Closed).ready;
        assert_eq!(
            probe.iter().map(|o| o.wire_req_id).collect::<Vec<_>>(),
            [Some(1)]
        );
        r.changed = true;
        assert!(
            poll(&mut r, PeerState::Closed).ready.is_empty(),
            "one probe at a time"
        );
        r.reached(peer, true);
        let rest = poll(&mut r, PeerState::Open).ready;
        assert_eq!(
            rest.iter().map(|o| o.wire_req_id).collect::<Vec<_>>(),
            [Some(2), Some(3)]
        );
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn past_the_window_it_fails_saying_so() {
        let mut r = redelivery(Duration::from_millis(20));
        let peer = PeerId::random();
        r.reached(peer, true);
        assert!(r
            .park(sent(peer, 1), SendFailure::ConnectionClosed)
            .is_none());
        // One whose attempt sent nothing: it cannot have arrived.
        assert!(r
            .park(out(peer, 2), SendFailure::ConnectionClosed)
            .is_none());
        std::thread::sleep(Duration::from_millis(30));
        r.changed = true;
        let mut found = poll(&mut r, PeerState::Waiting(Duration::from_secs(5)));
        found.expired.sort_by_key(|(o, _)| o.wire_req_id);
        let [_, (_, unsent)] = &found.expired[..] else {
            panic!("expected two expiries, got {found:?}");
        };
        assert!(!unsent.may_have_been_delivered(), "{unsent}");
        found.expired.truncate(1);
        let [(outgoing, failure)] = &found.expired[..] else {
            panic!("expected one expiry, got {found:?}");
        };
        assert_eq!(outgoing.wire_req_id, Some(1));
        assert_eq!(failure.label(), "window_passed");
        assert!(failure.may_have_been_delivered());
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_connected_peer_is_reachable_however_long_ago_it_connected() {
        let mut r = redelivery(Duration::from_millis(20));
        let peer = PeerId::random();
        r.reached(peer, true);
        std::thread::sleep(Duration::from_millis(30));
        // Still connected (a QUIC peer that stopped answering, say).
        assert!(r.park(out(peer, 1), SendFailure::Timeout).is_none());
        r.reached(peer, false);
        std::thread::sleep(Duration::from_millis(30));
        // Its last connection closed longer than the window ago.
        assert!(r.park(out(peer, 2), SendFailure::DialFailure).is_some());
    }

    #[test]
    fn a_first_failure_after_the_window_says_the_window_passed() {
        let mut r = redelivery(Duration::from_millis(20));
        let peer = PeerId::random();
        r.reached(peer, true);
        // Queued past its window before its one attempt failed.
        let outgoing = sent(peer, 1);
        std::thread::sleep(Duration::from_millis(30));
        let (_, reason) = r.park(outgoing, SendFailure::Timeout).unwrap();
        assert_eq!(reason.label(), "window_passed", "{reason}");
        assert!(reason.may_have_been_delivered());
    }

    #[test]
    fn a_zero_window_parks_nothing() {
        let mut r = redelivery(Duration::ZERO);
        let peer = PeerId::random();
        r.reached(peer, true);
        assert!(r
            .park(out(peer, 1), SendFailure::ConnectionClosed)
            .is_some());
    }

    #[test]
    fn parking_is_bounded() {
        let mut r = Redelivery::new(
            &Config::default()
                .with_delivery_window(Duration::from_secs(60))
                .with_max_queued_envelopes(2),
        );
        let peer = PeerId::random();
        r.reached(peer, true);
        assert!(r
            .park(out(peer, 1), SendFailure::ConnectionClosed)
            .is_none());
        assert!(r
            .park(out(peer, 2), SendFailure::ConnectionClosed)
            .is_none());
        let (_, reason) = r.park(out(peer, 3), SendFailure::ConnectionClosed).unwrap();
        assert_eq!(reason, SendFailure::ConnectionClosed);
    }
}
