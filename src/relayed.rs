//! Large envelopes and relayed connections.
//!
//! A relay (libp2p's circuit relay v2) limits each circuit: by default
//! 128 KiB in both directions together and two minutes, after which it
//! closes the circuit mid-stream. So an envelope larger than
//! [`Config::with_max_relayed_envelope_bytes`] does not go to a peer whose
//! only connections are relayed: it waits here for a direct connection
//! (one `dcutr` punches, or one either side dials), for at most
//! [`Config::with_direct_connection_wait`], then fails as
//! [`SendFailure::RelayedLimit`]. Smaller envelopes use the circuit.
//!
//! When a peer has a direct connection too, its relayed ones are closed,
//! so that request-response (which spreads requests over every connection
//! to a peer) sends nothing more through the relay; envelopes on the wire
//! there go again over the direct one (`redelivery.rs`).
//!
//! [`RelayedConnections`] knows which connections are relayed;
//! [`DirectWait`] owns the waiting envelopes and reports, from
//! [`DirectWait::poll`], those that may go and those that waited too long.

use std::collections::{HashMap, HashSet, VecDeque};
use std::task::Context;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures_timer::Delay;
use libp2p::swarm::ConnectionId;
use libp2p::PeerId;

use crate::event::SendFailure;
use crate::outbox::Outgoing;
use crate::Config;

/// The relayed connections established, per peer.
#[derive(Default)]
pub(crate) struct RelayedConnections(HashMap<PeerId, HashSet<ConnectionId>>);

impl RelayedConnections {
    /// A relayed connection with `peer` was established.
    pub(crate) fn established(&mut self, peer: PeerId, connection: ConnectionId) {
        self.0.entry(peer).or_default().insert(connection);
    }

    /// A connection with `peer` closed (relayed or not).
    pub(crate) fn closed(&mut self, peer: PeerId, connection: ConnectionId) {
        if let Some(connections) = self.0.get_mut(&peer) {
            connections.remove(&connection);
            if connections.is_empty() {
                self.0.remove(&peer);
            }
        }
    }

    /// The relayed connections with `peer`.
    pub(crate) fn of(&self, peer: &PeerId) -> impl Iterator<Item = ConnectionId> + '_ {
        self.0.get(peer).into_iter().flatten().copied()
    }

    /// How many of the connections with `peer` are relayed.
    pub(crate) fn count(&self, peer: &PeerId) -> usize {
        self.0.get(peer).map_or(0, HashSet::len)
    }
}

pub(crate) struct DirectWait {
    max_relayed_bytes: usize,
    wait: Duration,
    max_waiting: usize,
    /// Envelopes waiting, with when they stop waiting, oldest first.
    waiting: VecDeque<(Outgoing, Instant)>,
    /// Peers that gained a direct connection since the last poll.
    direct: HashSet<PeerId>,
    timer: Option<Delay>,
}

/// What [`DirectWait::poll`] found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// Envelopes whose peer has a direct connection now.
    pub(crate) ready: Vec<Outgoing>,
    /// Envelopes that waited their time, with the failure to report.
    pub(crate) expired: Vec<(Outgoing, SendFailure)>,
}

impl DirectWait {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            max_relayed_bytes: config.max_relayed_envelope_bytes(),
            wait: config.direct_connection_wait(),
            max_waiting: config.max_queued_envelopes(),
            waiting: VecDeque::new(),
            direct: HashSet::new(),
            timer: None,
        }
    }

    /// Whether an envelope of `size` bytes may not cross a relayed
    /// connection.
    pub(crate) fn too_large(&self, size: usize) -> bool {
        size > self.max_relayed_bytes
    }

    /// Envelopes waiting.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Every waiting envelope.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Outgoing> {
        self.waiting.iter().map(|(o, _)| o)
    }

    /// `peer` has a direct connection now.
    pub(crate) fn direct(&mut self, peer: PeerId) {
        if self.waiting.iter().any(|(o, _)| o.peer == peer) {
            self.direct.insert(peer);
        }
    }

    /// Holds `outgoing` until its peer has a direct connection (`None`);
    /// hands it back with its failure when no more may wait.
    pub(crate) fn hold(&mut self, outgoing: Outgoing) -> Option<(Outgoing, SendFailure)> {
        if self.waiting.len() >= self.max_waiting || self.wait.is_zero() {
            let failure = self.failure(&outgoing);
            return Some((outgoing, failure));
        }
        tracing::debug!(parent: &outgoing.span, "waiting for a direct connection");
        self.waiting
            .push_back((outgoing, Instant::now() + self.wait));
        // The timer is armed for the earliest end, which this is not.
        None
    }

    /// Hands back the envelopes whose peer has a direct connection and
    /// those that waited their time; arms the timer for the next end.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Found {
        let mut found = Found::default();
        if self.waiting.is_empty() {
            self.timer = None;
            return found;
        }
        if let Some(timer) = self.timer.as_mut() {
            if timer.poll_unpin(cx).is_ready() {
                self.timer = None;
            }
        }
        if !self.direct.is_empty() {
            let direct = std::mem::take(&mut self.direct);
            let (ready, waiting) = std::mem::take(&mut self.waiting)
                .into_iter()
                .partition(|(o, _)| direct.contains(&o.peer));
            self.waiting = waiting;
            found.ready = ready.into_iter().map(|(o, _)| o).collect::<Vec<_>>();
        }
        let now = Instant::now();
        while self.waiting.front().is_some_and(|(_, until)| *until <= now) {
            let (outgoing, _) = self.waiting.pop_front().expect("looked at");
            let failure = self.failure(&outgoing);
            found.expired.push((outgoing, failure));
        }
        if self.timer.is_none() {
            if let Some((_, until)) = self.waiting.front() {
                let mut timer = Delay::new(until.saturating_duration_since(now));
                let _ = timer.poll_unpin(cx);
                self.timer = Some(timer);
            }
        }
        found
    }

    fn failure(&self, outgoing: &Outgoing) -> SendFailure {
        SendFailure::RelayedLimit {
            size: outgoing.size(),
            limit: self.max_relayed_bytes,
            waited: self.wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::task::noop_waker_ref;

    use super::*;

    fn poll(w: &mut DirectWait) -> Found {
        w.poll(&mut Context::from_waker(noop_waker_ref()))
    }

    fn out(peer: PeerId, id: u64) -> Outgoing {
        Outgoing::new(peer, Some(id), Arc::default(), tracing::Span::none())
    }

    #[test]
    fn a_direct_connection_releases_its_peers_envelopes_only() {
        let mut w = DirectWait::new(&Config::default());
        let (p, q) = (PeerId::random(), PeerId::random());
        assert!(w.hold(out(p, 1)).is_none());
        assert!(w.hold(out(q, 2)).is_none());
        assert!(poll(&mut w).ready.is_empty());
        w.direct(p);
        let found = poll(&mut w);
        assert_eq!(
            found
                .ready
                .iter()
                .map(|o| o.wire_req_id)
                .collect::<Vec<_>>(),
            [Some(1)]
        );
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn waiting_too_long_fails_with_the_relayed_limit() {
        let mut w = DirectWait::new(
            &Config::default().with_direct_connection_wait(Duration::from_millis(10)),
        );
        assert!(w.hold(out(PeerId::random(), 1)).is_none());
        std::thread::sleep(Duration::from_millis(20));
        let found = poll(&mut w);
        let [(_, failure)] = &found.expired[..] else {
            panic!("{found:?}");
        };
        assert_eq!(failure.label(), "relayed_limit");
        assert!(!failure.may_have_been_delivered());
        assert_eq!(w.len(), 0);
    }
}
