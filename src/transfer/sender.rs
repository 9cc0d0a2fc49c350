//! The sending side of transfers: the `Start`, the window of chunks on the
//! wire, the waits while the receiver is busy, and the end.
//!
//! [`Sender`] owns that state; each transfer ends with an [`Ended`] from
//! [`Sender::poll`], which the outbound side reads as it reads an
//! envelope's acknowledgement or failure.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures_timer::Delay;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::PeerId;

use super::framing::{Chunk, ChunkBytes, Framing, Message};
use super::plan::{chunk_count, chunk_range, Bits, Plan};
use super::proto::{Reply, Start};
use super::{CHUNK_BYTES, WINDOW};
use crate::ack;
use crate::codec::Ack;
use crate::event::{RejectKind, Rejection, SendFailure};
use crate::progress::Progress;

/// The first wait after a receiver answers a `Start` busy; each further
/// busy answer doubles it, up to [`MAX_BUSY_WAIT`].
const FIRST_BUSY_WAIT: Duration = Duration::from_millis(100);
const MAX_BUSY_WAIT: Duration = Duration::from_secs(5);

/// Names a transfer among this sender's.
pub(crate) type TransferId = u64;

/// How a transfer ended.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) id: TransferId,
    /// The receiver's acknowledgement of the whole value, or why none came.
    /// (Whether chunk bytes left, which says whether it may have arrived,
    /// is the attempt's `Progress`.)
    pub(crate) result: Result<Ack, SendFailure>,
}

/// What a request of a transfer carried.
#[derive(Debug, Clone, Copy)]
enum Piece {
    Start,
    Chunk(usize),
}

struct Transfer {
    peer: PeerId,
    plan: Arc<Plan>,
    total: u64,
    /// Chunks the receiver said it holds.
    have: Bits,
    /// Chunks on the wire now.
    sending: Bits,
    /// Every chunk before this one is held or on the wire: where the next
    /// look for one to send starts.
    next: usize,
    in_flight: usize,
    progress: Progress,
    /// While the receiver is busy: when the `Start` goes again.
    wait_until: Option<Instant>,
    /// The last busy wait; the next is twice as long.
    last_wait: Option<Duration>,
    /// How long busy answers may go on before the transfer ends with one.
    busy_limit: Duration,
    busy_since: Option<Instant>,
}

impl Transfer {
    fn start(&self) -> Message {
        Message::Start(Start {
            digest: self.plan.digest.to_vec(),
            header: self.plan.header.clone(),
            fill_lengths: self.plan.fill_lengths.clone(),
            chunk_bytes: CHUNK_BYTES as u64,
        })
    }
}

/// Transfers this side is sending.
#[derive(Default)]
pub(crate) struct Sender {
    transfers: HashMap<TransferId, Transfer>,
    requests: HashMap<OutboundRequestId, (TransferId, Piece)>,
    next_id: TransferId,
    ended: VecDeque<Ended>,
    timer: Option<Delay>,
    /// Chunk bytes put on the wire.
    chunk_bytes: u64,
}

impl Sender {
    /// Starts sending to `peer` the transfer `plan` describes;
    /// its chunks' bytes are counted in `progress`. Busy answers are waited
    /// out for up to `busy_limit`.
    pub(crate) fn begin(
        &mut self,
        inner: &mut request_response::Behaviour<Framing>,
        peer: PeerId,
        plan: Arc<Plan>,
        progress: Progress,
        busy_limit: Duration,
    ) -> TransferId {
        let id = self.next_id;
        self.next_id += 1;
        let total = plan.total();
        let count = chunk_count(CHUNK_BYTES as u64, total);
        let transfer = Transfer {
            peer,
            plan,
            total,
            have: Bits::new(count),
            sending: Bits::new(count),
            next: 0,
            in_flight: 0,
            progress,
            wait_until: None,
            last_wait: None,
            busy_limit,
            busy_since: None,
        };
        let request = inner.send_request(&peer, transfer.start());
        self.requests.insert(request, (id, Piece::Start));
        self.transfers.insert(id, transfer);
        id
    }

    /// Chunk bytes put on the wire so far.
    pub(crate) fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    /// Transfers on the wire or waiting for a busy receiver.
    pub(crate) fn len(&self) -> usize {
        self.transfers.len()
    }

    /// The bytes of the payloads the transfers read from, each payload
    /// counted once however many transfers share it.
    pub(crate) fn payload_bytes(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        self.transfers
            .values()
            .flat_map(|t| t.plan.payloads.0.iter())
            .filter(|p| seen.insert(Arc::as_ptr(p)))
            .map(|p| p.len())
            .sum()
    }

    /// Drops transfer `id` without an outcome (its envelope ended otherwise,
    /// a deadline say); answers to its requests are ignored.
    pub(crate) fn abandon(&mut self, id: TransferId) {
        self.transfers.remove(&id);
        self.requests.retain(|_, (t, _)| *t != id);
    }

    /// The receiver answered one of this side's requests. `false` when the
    /// request was not a transfer's.
    pub(crate) fn on_reply(
        &mut self,
        inner: &mut request_response::Behaviour<Framing>,
        request: OutboundRequestId,
        reply: Reply,
    ) -> bool {
        let Some((id, piece)) = self.requests.remove(&request) else {
            return false;
        };
        let Some(transfer) = self.transfers.get_mut(&id) else {
            return true;
        };
        // An answer is progress, even one that says "wait".
        transfer.progress.moved(0);
        if let Piece::Chunk(index) = piece {
            transfer.in_flight -= 1;
            transfer.sending.clear(index);
        }
        match reply.ack {
            // Busy at a `Start`, or at the chunk that completed the value
            // (the receiver keeps it whole): wait, and ask again.
            Some(ack) if is_busy(&ack) => {
                let since = *transfer.busy_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= transfer.busy_limit {
                    self.end(id, Ok(ack));
                    return true;
                }
                let wait = transfer
                    .last_wait
                    .map_or(FIRST_BUSY_WAIT, |w| (w * 2).min(MAX_BUSY_WAIT));
                transfer.last_wait = Some(wait);
                transfer.wait_until = Some(Instant::now() + wait);
                self.timer = None;
            }
            Some(ack) => self.end(id, Ok(ack)),
            None => {
                transfer.busy_since = None;
                transfer.last_wait = None;
                let have = Bits::from_bytes(&reply.have, transfer.have.len());
                transfer.have.union(&have);
                self.fill(inner, id);
            }
        }
        true
    }

    /// A request failed without an answer. `false` when it was not a
    /// transfer's.
    pub(crate) fn on_failure(&mut self, request: OutboundRequestId, reason: SendFailure) -> bool {
        let Some((id, _)) = self.requests.remove(&request) else {
            return false;
        };
        self.end(id, Err(reason));
        true
    }

    /// The next transfer that ended; sends the `Start`s whose busy wait
    /// passed.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        inner: &mut request_response::Behaviour<Framing>,
    ) -> Poll<Ended> {
        if let Some(ended) = self.ended.pop_front() {
            return Poll::Ready(ended);
        }
        if let Some(timer) = self.timer.as_mut() {
            if timer.poll_unpin(cx).is_pending() {
                return Poll::Pending;
            }
            self.timer = None;
        }
        let now = Instant::now();
        let due: Vec<TransferId> = self
            .transfers
            .iter()
            .filter(|(_, t)| t.wait_until.is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let transfer = self.transfers.get_mut(&id).expect("listed above");
            transfer.wait_until = None;
            transfer.progress.moved(0);
            let request = inner.send_request(&transfer.peer, transfer.start());
            self.requests.insert(request, (id, Piece::Start));
        }
        if let Some(at) = self.transfers.values().filter_map(|t| t.wait_until).min() {
            let mut timer = Delay::new(at.saturating_duration_since(now));
            let _ = timer.poll_unpin(cx);
            self.timer = Some(timer);
        }
        match self.ended.pop_front() {
            Some(ended) => Poll::Ready(ended),
            None => Poll::Pending,
        }
    }

    /// Puts chunks the receiver lacks on the wire, up to the window.
    fn fill(&mut self, inner: &mut request_response::Behaviour<Framing>, id: TransferId) {
        let transfer = self.transfers.get_mut(&id).expect("filled while held");
        let count = transfer.have.len();
        let mut index = transfer.next;
        while transfer.in_flight < WINDOW && index < count {
            if !transfer.have.get(index) && !transfer.sending.get(index) {
                let range = chunk_range(index, CHUNK_BYTES as u64, transfer.total);
                let chunk = Chunk {
                    digest: transfer.plan.digest.to_vec(),
                    offset: range.start,
                    bytes: ChunkBytes::Sending {
                        payloads: transfer.plan.payloads.clone(),
                        len: range.end - range.start,
                        progress: transfer.progress.clone(),
                    },
                };
                let request = inner.send_request(&transfer.peer, Message::Chunk(chunk));
                self.requests.insert(request, (id, Piece::Chunk(index)));
                transfer.sending.set(index);
                transfer.in_flight += 1;
                self.chunk_bytes += range.end - range.start;
            }
            index += 1;
        }
        transfer.next = index;
        // Every chunk held and no verdict: ask again (the verdict's answer
        // was lost with its stream).
        if transfer.in_flight == 0 && transfer.have.count() == count {
            let request = inner.send_request(&transfer.peer, transfer.start());
            self.requests.insert(request, (id, Piece::Start));
        }
    }

    fn end(&mut self, id: TransferId, result: Result<Ack, SendFailure>) {
        if self.transfers.remove(&id).is_some() {
            self.requests.retain(|_, (t, _)| *t != id);
            self.ended.push_back(Ended { id, result });
        }
    }
}

fn is_busy(ack: &Ack) -> bool {
    matches!(
        ack::verdict(ack),
        Err(SendFailure::Rejected(Rejection {
            kind: RejectKind::Busy,
            ..
        }))
    )
}
