//! Outbound envelopes: the in-flight table with its bounds, the queue of
//! envelopes waiting for room or for a busy peer, the retries after a busy
//! answer, and deadlines on the wire.
//!
//! [`Outbound`] owns that state and reports each envelope's end as an
//! [`Outcome`] from [`Outbound::poll`]; the behaviour turns outcomes into
//! events and health records.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bb_runtime::envelope::WireEnvelope;
use futures::FutureExt;
use futures_timer::Delay;
use libp2p::request_response::{OutboundFailure, OutboundRequestId};
use libp2p::PeerId;
use prost::Message as _;

mod link;

pub(crate) use link::Link;

use crate::ack;
use crate::codec::{Ack, Request};
use crate::event::{RejectKind, Rejection, SendFailure};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Outgoing};
use crate::progress::{self, Progress};
use crate::redelivery::Redelivery;
use crate::relayed::DirectWait;
use crate::transfer::framing::{lacks_transfers, Message};
use crate::transfer::plan::Plan;
use crate::transfer::proto::Reply;
use crate::transfer::sender::{Ended, Sender, TransferId};
use crate::Config;

/// How often an envelope a peer refuses as busy is sent again before it
/// fails, the waits doubling from [`BUSY_WAIT`].
const MAX_BUSY_ANSWERS: u32 = 5;

/// The first wait after a peer answers busy: 10, 20, 40, 80, 160 ms, in all
/// about the time a full engine ingress takes to drain.
const BUSY_WAIT: Duration = Duration::from_millis(10);

/// How long past the request timeout an envelope may stay in flight with
/// no word from the inner behaviour before the watchdog ends it.
const WATCHDOG_GRACE: Duration = Duration::from_secs(2);

/// How an envelope's journey ended, or paused.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The peer's engine took it.
    Acknowledged {
        peer: PeerId,
        wire_req_id: Option<u64>,
    },
    /// It will not be delivered.
    Failed {
        peer: Option<PeerId>,
        wire_req_id: Option<u64>,
        reason: SendFailure,
    },
    /// The peer answered busy: the envelope waits `retry_in` and goes again.
    Busy { peer: PeerId, retry_in: Duration },
    /// An attempt failed for a transport reason; the envelope waits for
    /// its peer to be reachable again (see `redelivery.rs`).
    Parked { peer: PeerId, reason: SendFailure },
    /// Envelopes that waited went on the wire: the inner behaviour has
    /// requests to hand on (it does not wake the task for them itself).
    Released,
}

/// One attempt of an envelope on the wire: a request, or a transfer of
/// many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Attempt {
    Request(OutboundRequestId),
    Transfer(TransferId),
}

pub(crate) struct Outbound {
    /// Envelopes awaiting their acknowledgement, kept for a retry when the
    /// peer is busy and for a snapshot.
    in_flight: HashMap<Attempt, Outgoing>,
    /// Envelopes crossing in chunks.
    transfers: Sender,
    max_in_flight: usize,
    /// Envelopes in flight per peer, and the bound on them: half the
    /// connection's stream limit, leaving the other half for the peer's
    /// envelopes to this Node (request-response refuses streams past it).
    per_peer: HashMap<PeerId, usize>,
    max_per_peer: usize,
    max_envelope_bytes: usize,
    max_value_bytes: usize,
    /// How long a transfer waits out a busy receiver.
    busy_limit: Duration,
    /// Envelopes waiting for room or for a busy peer.
    outbox: Outbox,
    /// Envelopes waiting for a cut link to come back.
    redelivery: Redelivery,
    /// Envelopes too large for a relay, waiting for a direct connection.
    direct_wait: DirectWait,
    max_queued: usize,
    /// The outbox may hold envelopes that can go now.
    outbox_changed: bool,
    /// Fires when the earliest busy peer's wait ends.
    outbox_timer: Option<Delay>,
    /// In-flight requests whose envelope's budget ends before the request
    /// timeout: when, which, the budget.
    deadlines: BinaryHeap<Reverse<(Instant, Attempt, Duration)>>,
    deadline_timer: Option<Delay>,
    /// Budgets shorter than this bound the wire; zero when wire deadlines
    /// are off.
    deadline_bound: Duration,
    /// Whether the budget counts at all ([`Config::with_wire_deadlines`]).
    wire_deadlines: bool,
    /// Every request ends with an answer or a failure from request-response
    /// within its timeout; one that does not (composed behaviours can
    /// strand it, libp2p/rust-libp2p#4870) is ended by this watchdog, so no
    /// envelope stays without an outcome.
    watchdog: Option<Delay>,
    request_timeout: Duration,
    outcomes: VecDeque<Outcome>,
    metrics: Option<Metrics>,
}

impl Outbound {
    pub(crate) fn new(config: &Config, max_envelope_bytes: usize) -> Self {
        Self {
            in_flight: HashMap::new(),
            transfers: Sender::default(),
            max_value_bytes: config.max_payload_bytes(),
            busy_limit: config.delivery_window().max(config.request_timeout()),
            max_in_flight: config.max_envelopes_in_flight(),
            per_peer: HashMap::new(),
            max_per_peer: (config.max_concurrent_streams() / 2).max(1),
            max_envelope_bytes,
            outbox: Outbox::default(),
            redelivery: Redelivery::new(config),
            direct_wait: DirectWait::new(config),
            max_queued: config.max_queued_envelopes(),
            outbox_changed: false,
            outbox_timer: None,
            deadlines: BinaryHeap::new(),
            deadline_timer: None,
            deadline_bound: if config.wire_deadlines() {
                config.request_timeout()
            } else {
                Duration::ZERO
            },
            wire_deadlines: config.wire_deadlines(),
            watchdog: None,
            request_timeout: config.request_timeout(),
            outcomes: VecDeque::new(),
            metrics: config.metrics().cloned(),
        }
    }

    /// Envelopes on the wire.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Envelopes crossing in chunks, and the bytes of the payloads they
    /// read from.
    pub(crate) fn transfers_sending(&self) -> (usize, usize) {
        (self.transfers.len(), self.transfers.payload_bytes())
    }

    /// Chunk bytes put on the wire so far.
    pub(crate) fn chunk_bytes_sent(&self) -> u64 {
        self.transfers.chunk_bytes()
    }

    /// Envelopes waiting to go: for room, for a busy peer, or for a cut
    /// link to come back.
    pub(crate) fn queued(&self) -> usize {
        self.outbox.len() + self.redelivery.len() + self.direct_wait.len()
    }

    /// Every envelope not acknowledged yet, on the wire or waiting, whole
    /// (a transfer's payloads copied back in).
    pub(crate) fn unacknowledged(&self) -> impl Iterator<Item = WireEnvelope> + '_ {
        self.in_flight
            .values()
            .chain(self.outbox.iter())
            .chain(self.redelivery.iter())
            .chain(self.direct_wait.iter())
            .map(Outgoing::whole)
    }

    /// A connection with `peer` was established or closed; `connected`
    /// says whether any is left.
    pub(crate) fn reached(&mut self, peer: PeerId, connected: bool) {
        self.redelivery.reached(peer, connected);
    }

    /// The application forgot `peer`: envelopes to it are no longer sent
    /// again after a transport failure.
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.redelivery.forget(peer);
    }

    /// The Node's admission lists changed: envelopes waiting for a peer are
    /// looked at again (a denied peer's end at once).
    pub(crate) fn policy_changed(&mut self) {
        self.redelivery.recheck();
    }

    /// A direct (not relayed) connection with `peer` was established.
    pub(crate) fn direct(&mut self, peer: PeerId) {
        self.direct_wait.direct(peer);
    }

    /// Sends `envelope` to `peer` now, or queues it.
    /// An envelope with a `plan` crosses as a transfer. One an earlier
    /// process may have `delivered` (a snapshot carried it) ends as
    /// unconfirmed rather than "not sent" if it fails.
    pub(crate) fn send(
        &mut self,
        link: &mut Link<'_>,
        peer: PeerId,
        envelope: WireEnvelope,
        plan: Option<Plan>,
        delivered: bool,
    ) {
        let wire_req_id = envelope.correlation.as_ref().map(|c| c.wire_req_id);
        let size = plan
            .as_ref()
            .map_or_else(|| envelope.encoded_len(), Plan::size);
        let value = plan.as_ref().map_or(0, |p| p.total() as usize);
        let over = match &plan {
            None => (size > self.max_envelope_bytes).then_some(self.max_envelope_bytes),
            Some(_) => (value > self.max_value_bytes).then_some(self.max_value_bytes),
        };
        if let Some(cap) = over {
            return self.outcomes.push_back(Outcome::Failed {
                peer: Some(peer),
                wire_req_id,
                reason: SendFailure::Oversize {
                    size: if plan.is_some() { value } else { size },
                    cap,
                },
            });
        }
        let span = tracing::debug_span!("envelope", %peer, wire_req_id, size);
        let mut outgoing = Outgoing::new(peer, wire_req_id, Arc::new(envelope), span);
        outgoing.plan = plan.map(Arc::new);
        outgoing.maybe_delivered = delivered;
        if let Some(refusal) = link.refusal(&peer) {
            return self.end(outgoing, refusal);
        }
        if self.in_flight.len() < self.max_in_flight
            && self.peer_room(&peer) > 0
            && !link.waits(&peer)
        {
            self.transmit(link, outgoing);
        } else {
            self.queue(outgoing, false);
        }
    }

    /// The peer answered the request.
    pub(crate) fn on_response(&mut self, request_id: OutboundRequestId, answer: &Ack) {
        let Some(outgoing) = self.settle(&Attempt::Request(request_id)) else {
            return;
        };
        self.answered(outgoing, answer);
    }

    /// The peer answered a request of a transfer.
    pub(crate) fn on_reply(
        &mut self,
        link: &mut Link<'_>,
        request_id: OutboundRequestId,
        reply: Reply,
    ) {
        self.transfers.on_reply(link.inner, request_id, reply);
    }

    /// A transfer ended: as an envelope's request does.
    fn transfer_ended(&mut self, ended: Ended) {
        let Some(outgoing) = self.settle(&Attempt::Transfer(ended.id)) else {
            return;
        };
        match ended.result {
            Ok(ack) => self.answered(outgoing, &ack),
            Err(reason) => {
                tracing::debug!(parent: &outgoing.span, %reason, "transfer failed");
                self.end(outgoing, reason);
            }
        }
    }

    /// The peer's verdict on `outgoing`.
    fn answered(&mut self, outgoing: Outgoing, answer: &Ack) {
        let (peer, wire_req_id) = (outgoing.peer, outgoing.wire_req_id);
        match ack::verdict(answer) {
            Ok(()) => {
                self.redelivery.ended(&peer);
                let latency = outgoing.since.elapsed();
                tracing::debug!(parent: &outgoing.span, ?latency, "acknowledged");
                if let Some(metrics) = &self.metrics {
                    metrics.acknowledged(latency);
                }
                self.outcomes
                    .push_back(Outcome::Acknowledged { peer, wire_req_id })
            }
            Err(
                reason @ SendFailure::Rejected(Rejection {
                    kind: RejectKind::Busy,
                    ..
                }),
            ) => self.retry_when_not_busy(outgoing, reason),
            Err(reason) => {
                tracing::debug!(parent: &outgoing.span, %reason, "refused");
                self.fail(&outgoing, reason)
            }
        }
    }

    /// The request failed without an answer.
    pub(crate) fn on_failure(&mut self, request_id: OutboundRequestId, error: OutboundFailure) {
        let reason = match error {
            OutboundFailure::DialFailure => SendFailure::DialFailure,
            OutboundFailure::Timeout => SendFailure::Timeout,
            // The codec's stall rule, or no acknowledgement in time.
            OutboundFailure::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                SendFailure::Timeout
            }
            OutboundFailure::ConnectionClosed => SendFailure::ConnectionClosed,
            OutboundFailure::UnsupportedProtocols => SendFailure::UnsupportedProtocol,
            // A transfer's request on a stream the peer took as the old
            // protocol.
            OutboundFailure::Io(e) if lacks_transfers(&e) => SendFailure::UnsupportedProtocol,
            OutboundFailure::Io(e) => SendFailure::Io(e.to_string()),
        };
        if self.transfers.on_failure(request_id, reason.clone()) {
            return;
        }
        let Some(outgoing) = self.settle(&Attempt::Request(request_id)) else {
            return;
        };
        tracing::debug!(parent: &outgoing.span, %reason, "failed");
        self.end(outgoing, reason);
    }

    /// An attempt of `outgoing` failed with `reason`: it waits for its
    /// peer when the failure was the link's and its window allows, and
    /// fails otherwise.
    fn end(&mut self, outgoing: Outgoing, reason: SendFailure) {
        let peer = outgoing.peer;
        match self.redelivery.park(outgoing, reason.clone()) {
            None => self.outcomes.push_back(Outcome::Parked { peer, reason }),
            Some((outgoing, reason)) => self.fail(&outgoing, reason),
        }
    }

    /// The next outcome; otherwise fails expired envelopes and sends what
    /// may go now. `Pending` when nothing happened (timers registered).
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, link: &mut Link<'_>) -> Poll<Outcome> {
        if let Some(outcome) = self.outcomes.pop_front() {
            return Poll::Ready(outcome);
        }
        while let Poll::Ready(ended) = self.transfers.poll(cx, link.inner) {
            self.transfer_ended(ended);
        }
        if let Some(outcome) = self.outcomes.pop_front() {
            return Poll::Ready(outcome);
        }
        self.expire_deadlines(cx);
        self.watch(cx);
        self.redeliver(cx, &*link);
        self.await_direct(cx);
        let released = self.release(cx, link);
        match self.outcomes.pop_front() {
            Some(outcome) => Poll::Ready(outcome),
            None if released => Poll::Ready(Outcome::Released),
            None => Poll::Pending,
        }
    }

    /// `outgoing` will not be delivered. One an earlier attempt may have
    /// delivered says so, whatever its last attempt met.
    fn fail(&mut self, outgoing: &Outgoing, reason: SendFailure) {
        self.redelivery.ended(&outgoing.peer);
        let reason = if outgoing.maybe_delivered && !reason.may_have_been_delivered() {
            SendFailure::Unconfirmed {
                last: Box::new(reason),
            }
        } else {
            reason
        };
        self.outcomes.push_back(Outcome::Failed {
            peer: Some(outgoing.peer),
            wire_req_id: outgoing.wire_req_id,
            reason,
        });
    }

    /// Queues again the parked envelopes whose peer is reachable; fails
    /// those whose window passed.
    fn redeliver(&mut self, cx: &mut Context<'_>, link: &Link<'_>) {
        let found = self.redelivery.poll(cx, |peer| link.state(peer));
        for (outgoing, reason) in found.expired {
            tracing::debug!(parent: &outgoing.span, %reason, "not delivered");
            self.fail(&outgoing, reason);
        }
        // In reverse, as each goes in front: they keep their order.
        for outgoing in found.ready.into_iter().rev() {
            self.queue(outgoing, true);
        }
    }

    /// Queues again the envelopes whose peer now has a direct connection;
    /// fails those that waited too long for one.
    fn await_direct(&mut self, cx: &mut Context<'_>) {
        let found = self.direct_wait.poll(cx);
        for (outgoing, reason) in found.expired {
            tracing::debug!(parent: &outgoing.span, %reason, "no direct connection");
            self.fail(&outgoing, reason);
        }
        for outgoing in found.ready.into_iter().rev() {
            self.queue(outgoing, true);
        }
    }

    /// How many more envelopes `peer` may have in flight.
    fn peer_room(&self, peer: &PeerId) -> usize {
        let used = self.per_peer.get(peer).copied().unwrap_or(0);
        self.max_per_peer.saturating_sub(used)
    }

    /// Takes an attempt out of the in-flight table.
    fn settle(&mut self, attempt: &Attempt) -> Option<Outgoing> {
        let outgoing = self.in_flight.remove(attempt)?;
        if let Attempt::Transfer(id) = attempt {
            // Ended by a deadline or the watchdog: its chunks' answers no
            // longer count.
            self.transfers.abandon(*id);
        }
        if let Some(n) = self.per_peer.get_mut(&outgoing.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&outgoing.peer);
            }
        }
        self.outbox_changed = true;
        Some(outgoing)
    }

    /// Whether this side may take another envelope. What it holds, in
    /// flight and queued, is bounded by both bounds together (an in-flight
    /// slot a waiting peer cannot use holds an envelope in the queue
    /// instead); once that is reached the behaviour takes no more envelopes
    /// from the engine until an envelope ends, and the engine holds them.
    pub(crate) fn has_room(&self) -> bool {
        self.in_flight.len() + self.outbox.len() < self.max_in_flight + self.max_queued
    }

    /// Queues `outgoing`. A retry goes first: it was on the wire a moment
    /// ago, so what this side holds does not grow.
    fn queue(&mut self, outgoing: Outgoing, retry: bool) {
        if retry {
            self.outbox.push_retry(outgoing);
        } else {
            self.outbox.push(outgoing);
        }
        self.outbox_changed = true;
    }

    /// Puts an envelope on the wire, charging the time it waited here
    /// against its deadline.
    fn transmit(&mut self, link: &mut Link<'_>, mut outgoing: Outgoing) {
        // Its peer was denied, or failed, while it waited in the queue.
        if let Some(refusal) = link.refusal(&outgoing.peer) {
            return self.end(outgoing, refusal);
        }
        // Too large for the relay its peer is reached through.
        if link.relayed_only(&outgoing.peer) && self.direct_wait.too_large(outgoing.size()) {
            if let Some((outgoing, reason)) = self.direct_wait.hold(outgoing) {
                self.fail(&outgoing, reason);
            }
            return;
        }
        let fail = |reason| Outcome::Failed {
            peer: Some(outgoing.peer),
            wire_req_id: outgoing.wire_req_id,
            reason,
        };
        let waited = outgoing.since.elapsed().as_nanos() as u64;
        let remaining = outgoing.envelope.remaining_deadline_ns;
        // A transfer's header went with its plan: its budget stands as the
        // engine set it (and a copy of a large envelope is no option).
        if self.wire_deadlines && remaining > 0 && waited > 0 && outgoing.plan.is_none() {
            if waited >= remaining {
                let budget = Duration::from_nanos(remaining);
                return self
                    .outcomes
                    .push_back(fail(SendFailure::DeadlineExceeded { budget }));
            }
            // The request of an earlier attempt is done with it: no copy.
            Arc::make_mut(&mut outgoing.envelope).remaining_deadline_ns -= waited;
        }
        let envelope = &outgoing.envelope;
        outgoing.since = Instant::now();
        let (peer, size) = (outgoing.peer, outgoing.size());
        tracing::debug!(parent: &outgoing.span, attempt = outgoing.busy_answers + 1, "sending");
        link.stats.envelopes_sent += 1;
        link.stats.bytes_sent += size as u64;
        if let Some(metrics) = &self.metrics {
            metrics.sent(size, outgoing.busy_answers > 0 || outgoing.resends > 0);
        }
        let budget = Duration::from_nanos(envelope.remaining_deadline_ns);
        outgoing.progress = Progress::new();
        let attempt = match &outgoing.plan {
            Some(plan) => Attempt::Transfer(self.transfers.begin(
                link.inner,
                peer,
                Arc::clone(plan),
                outgoing.progress.clone(),
                self.busy_limit,
            )),
            None => {
                let request = Request::Sending(Arc::clone(envelope), outgoing.progress.clone());
                Attempt::Request(link.inner.send_request(&peer, Message::Wire(request)))
            }
        };
        *self.per_peer.entry(peer).or_default() += 1;
        self.in_flight.insert(attempt, outgoing);
        // The envelope's own budget bounds how long it may take on the wire.
        if !budget.is_zero() && budget < self.deadline_bound {
            let at = Instant::now() + budget;
            if self
                .deadlines
                .peek()
                .is_none_or(|Reverse((first, ..))| at < *first)
            {
                self.deadline_timer = None;
            }
            self.deadlines.push(Reverse((at, attempt, budget)));
        }
    }

    /// Ends requests whose bytes have not moved for longer than the request
    /// timeout with no word from the inner behaviour (one routed to a
    /// connection that never existed never starts), as timeouts; arms the
    /// next look while any are in flight.
    fn watch(&mut self, cx: &mut Context<'_>) {
        let limit = self.request_timeout + WATCHDOG_GRACE;
        if let Some(timer) = self.watchdog.as_mut() {
            if timer.poll_unpin(cx).is_pending() {
                return;
            }
            self.watchdog = None;
            let period = self.request_timeout;
            let stranded: Vec<Attempt> = self
                .in_flight
                .iter()
                .filter(|(_, o)| {
                    o.progress.idle()
                        > limit + progress::drain_allowance(o.progress.bytes(), period)
                })
                .map(|(id, _)| *id)
                .collect();
            for request_id in stranded {
                if let Some(outgoing) = self.settle(&request_id) {
                    tracing::warn!(peer = %outgoing.peer, "request stranded past its timeout; ended");
                    self.end(outgoing, SendFailure::Timeout);
                }
            }
        }
        if !self.in_flight.is_empty() {
            let mut timer = Delay::new(limit / 2);
            let _ = timer.poll_unpin(cx);
            self.watchdog = Some(timer);
        }
    }

    /// Fails in-flight envelopes whose deadline budget has run out; their
    /// late acknowledgements are ignored.
    fn expire_deadlines(&mut self, cx: &mut Context<'_>) {
        loop {
            if let Some(timer) = self.deadline_timer.as_mut() {
                if timer.poll_unpin(cx).is_pending() {
                    return;
                }
                self.deadline_timer = None;
            }
            let now = Instant::now();
            while let Some(Reverse((at, request_id, budget))) = self.deadlines.peek().copied() {
                if at > now {
                    break;
                }
                self.deadlines.pop();
                if let Some(outgoing) = self.settle(&request_id) {
                    self.outcomes.push_back(Outcome::Failed {
                        peer: Some(outgoing.peer),
                        wire_req_id: outgoing.wire_req_id,
                        reason: SendFailure::DeadlineExceeded { budget },
                    });
                }
            }
            let Some(Reverse((at, ..))) = self.deadlines.peek() else {
                return;
            };
            self.deadline_timer = Some(Delay::new(at.saturating_duration_since(now)));
        }
    }

    /// Sends what waited and may go now; arms the timer for the earliest
    /// busy peer's wait. `true` when any went.
    fn release(&mut self, cx: &mut Context<'_>, link: &mut Link<'_>) -> bool {
        if let Some(timer) = self.outbox_timer.as_mut() {
            if timer.poll_unpin(cx).is_ready() {
                self.outbox_timer = None;
                self.outbox_changed = true;
            }
        }
        if !std::mem::take(&mut self.outbox_changed) {
            return false;
        }
        if self.outbox.is_empty() {
            self.outbox_timer = None;
            return false;
        }
        let mut sent = false;
        let mut waits: HashMap<PeerId, bool> = HashMap::new();
        // An envelope can fail as it goes (its deadline passed while it
        // waited), leaving room for the next: go on until none moves.
        loop {
            let room = self.max_in_flight.saturating_sub(self.in_flight.len());
            let mut taking: HashMap<PeerId, usize> = HashMap::new();
            let (per_peer, cap) = (&self.per_peer, self.max_per_peer);
            let ready = self.outbox.take_ready(room, |p| {
                let waiting = *waits.entry(*p).or_insert_with(|| link.waits(p));
                let n = taking
                    .entry(*p)
                    .or_insert_with(|| per_peer.get(p).copied().unwrap_or(0));
                if waiting || *n >= cap {
                    return false;
                }
                *n += 1;
                true
            });
            if ready.is_empty() {
                break;
            }
            for outgoing in ready {
                self.transmit(link, outgoing);
                sent = true;
            }
        }
        let next = self
            .outbox
            .peers()
            .filter_map(|p| link.health.cooldown(p))
            .min();
        self.outbox_timer = next.map(|wait| {
            let mut timer = Delay::new(wait.max(Duration::from_millis(1)));
            // Register the waker now; the timer cannot be ready yet.
            let _ = timer.poll_unpin(cx);
            timer
        });
        sent
    }

    /// The peer refused `outgoing` because its engine's ingress was full:
    /// wait, then send it again, a few times before giving up.
    fn retry_when_not_busy(&mut self, mut outgoing: Outgoing, reason: SendFailure) {
        if outgoing.busy_answers >= MAX_BUSY_ANSWERS {
            return self.fail(&outgoing, reason);
        }
        outgoing.busy_answers += 1;
        let retry_in = BUSY_WAIT * 2u32.pow(outgoing.busy_answers - 1);
        let peer = outgoing.peer;
        tracing::debug!(parent: &outgoing.span, ?retry_in, "peer busy; holding its envelopes");
        if let Some(metrics) = &self.metrics {
            metrics.busy_answer();
        }
        self.queue(outgoing, true);
        self.outcomes.push_back(Outcome::Busy { peer, retry_in });
    }
}
