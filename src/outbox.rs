//! Envelopes waiting to go out: for room under the in-flight bound, or for
//! a peer's back-off (it said it is busy) to pass.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bb_runtime::envelope::WireEnvelope;
use libp2p::PeerId;
use prost::Message;

use crate::progress::Progress;
use crate::transfer::plan::Plan;

/// An envelope on its way out.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) peer: PeerId,
    /// The engine's id for the envelope's request, when it has one (the
    /// first id the engine mints is 0).
    pub(crate) wire_req_id: Option<u64>,
    /// Shared with the request while it is on the wire, so that a retry
    /// or a snapshot needs no copy kept beside it.
    pub(crate) envelope: Arc<WireEnvelope>,
    /// Times the peer answered "busy" to it.
    pub(crate) busy_answers: u32,
    /// When it started waiting here, to charge the wait against its
    /// `remaining_deadline_ns`; once sent, when it went on the wire.
    pub(crate) since: Instant,
    /// The envelope's span (peer, engine request id, size): what is logged
    /// of it is logged inside.
    pub(crate) span: tracing::Span,
    /// When the engine handed it over: its delivery window counts from here.
    pub(crate) born: Instant,
    /// Times it was parked to go again after a transport failure.
    pub(crate) resends: u32,
    /// Whether an earlier attempt may have reached the peer.
    pub(crate) maybe_delivered: bool,
    /// How far the current attempt's bytes have got.
    pub(crate) progress: Progress,
    /// How it crosses in chunks, when it is too large for one frame.
    pub(crate) plan: Option<Arc<Plan>>,
}

impl Outgoing {
    pub(crate) fn new(
        peer: PeerId,
        wire_req_id: Option<u64>,
        envelope: Arc<WireEnvelope>,
        span: tracing::Span,
    ) -> Self {
        let now = Instant::now();
        Self {
            peer,
            wire_req_id,
            envelope,
            busy_answers: 0,
            since: now,
            span,
            born: now,
            resends: 0,
            maybe_delivered: false,
            progress: Progress::new(),
            plan: None,
        }
    }

    /// About its encoded size (a transfer's: its header and payloads).
    pub(crate) fn size(&self) -> usize {
        match &self.plan {
            Some(plan) => plan.size(),
            None => self.envelope.encoded_len(),
        }
    }

    /// The whole envelope: a transfer's payloads copied back in.
    pub(crate) fn whole(&self) -> WireEnvelope {
        match &self.plan {
            Some(plan) => plan.rehydrate(&self.envelope),
            None => self.envelope.as_ref().clone(),
        }
    }
}

/// A first-in, first-out queue of [`Outgoing`] envelopes; its owner bounds
/// it.
#[derive(Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Outgoing>,
}

impl Outbox {
    /// Queues `outgoing` last.
    pub(crate) fn push(&mut self, outgoing: Outgoing) {
        self.queue.push_back(outgoing);
    }

    /// Queues a retry ahead of the others: it keeps its place in its peer's
    /// order.
    pub(crate) fn push_retry(&mut self, outgoing: Outgoing) {
        self.queue.push_front(outgoing);
    }

    /// Removes, in order, up to `room` envelopes whose peer `may_send`,
    /// skipping the others; a peer that may not send keeps all its
    /// envelopes, so each peer's order holds.
    pub(crate) fn take_ready(
        &mut self,
        room: usize,
        mut may_send: impl FnMut(&PeerId) -> bool,
    ) -> Vec<Outgoing> {
        let mut ready = Vec::new();
        if room == 0 {
            return ready;
        }
        // Peers passed over: a set, since a queue may hold envelopes for a
        // thousand peers.
        let mut held = HashSet::new();
        let mut kept = VecDeque::new();
        while let Some(outgoing) = self.queue.pop_front() {
            if !held.contains(&outgoing.peer) && may_send(&outgoing.peer) {
                ready.push(outgoing);
                if ready.len() == room {
                    break;
                }
            } else {
                held.insert(outgoing.peer);
                kept.push_back(outgoing);
            }
        }
        // What was passed over goes back in front of what was not looked at
        // (nothing moves when nothing was passed over).
        while let Some(outgoing) = kept.pop_back() {
            self.queue.push_front(outgoing);
        }
        ready
    }

    /// The peers with envelopes waiting.
    pub(crate) fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.queue.iter().map(|o| &o.peer)
    }

    /// The waiting envelopes, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Outgoing> {
        self.queue.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(peer: PeerId, id: u64) -> Outgoing {
        Outgoing::new(peer, Some(id), Arc::default(), tracing::Span::none())
    }

    fn ids(v: &[Outgoing]) -> Vec<u64> {
        v.iter().map(|o| o.wire_req_id.unwrap()).collect()
    }

    #[test]
    fn first_in_first_out_and_retries_first() {
        let p = PeerId::random();
        let mut outbox = Outbox::default();
        outbox.push(out(p, 2));
        outbox.push(out(p, 3));
        outbox.push_retry(out(p, 1));
        assert_eq!(outbox.len(), 3);
        assert_eq!(ids(&outbox.take_ready(9, |_| true)), [1, 2, 3]);
    }

    #[test]
    fn a_waiting_peer_keeps_its_order_and_others_pass() {
        let (p, q) = (PeerId::random(), PeerId::random());
        let mut outbox = Outbox::default();
        for (peer, id) in [(p, 1), (q, 2), (p, 3), (q, 4)] {
            outbox.push(out(peer, id));
        }
        assert_eq!(ids(&outbox.take_ready(9, |peer| *peer == q)), [2, 4]);
        // Room for one: the first of p's, never its second before it.
        assert_eq!(ids(&outbox.take_ready(1, |_| true)), [1]);
        assert_eq!(ids(&outbox.take_ready(9, |_| true)), [3]);
        assert!(outbox.is_empty());
    }
}
