//! The receiving side of transfers: the values arriving in chunks, within
//! a budget, checked against their digest before they reach the engine.
//!
//! [`Receiver`] owns that state and reports each request's outcome as a
//! value: a [`Reply`] to send, a complete envelope for the engine, or a
//! [`Rejection`].

use std::collections::HashMap;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bb_runtime::envelope::{EnvelopeCaps, EnvelopeCodec, WireEnvelope};
use futures::FutureExt;
use futures_timer::Delay;
use libp2p::PeerId;

use super::plan::{chunk_count, chunk_range, digest, segments, Bits, Digest};
use super::proto::{Reply, Start};
use crate::codec::decode_rejection;
use crate::event::{RejectKind, Rejection};

/// Smallest chunk size a `Start` may declare: smaller would let a sender
/// make the receiver keep a bit per few bytes.
const MIN_CHUNK_BYTES: u64 = 16 * 1024;

/// Transfers one receiver holds at once, whatever their sizes: each costs
/// its header and bookkeeping besides its bytes.
const MAX_TRANSFERS: usize = 64;

/// What came of a chunk, or of a `Start`.
#[derive(Debug)]
pub(crate) enum Received {
    /// More are due; the answer says which the receiver holds.
    Partial(Reply),
    /// The value is whole and matches its digest; it waits here, holding
    /// its `payload` bytes, until [`Receiver::take_whole`] hands it over
    /// (the engine may be too busy to take it yet).
    Whole { payload: usize },
}

/// One value arriving.
struct Incoming {
    /// The envelope with its payloads empty.
    header: WireEnvelope,
    /// Each fill's payload, allocated at its declared length (zeroed pages
    /// the allocator maps lazily) and written chunk by chunk.
    payloads: Vec<Vec<u8>>,
    total: u64,
    chunk: u64,
    have: Bits,
    /// The header as it came, for the digest.
    header_bytes: Vec<u8>,
    /// Each payload's digest over the chunks before `hashed`, in order.
    hashers: Vec<blake3::Hasher>,
    hashed: usize,
    /// Every chunk came and the digest matched: the value waits for the
    /// engine to take it.
    whole: bool,
    last: Instant,
}

impl Incoming {
    /// Where it stands, for an answer.
    fn progress(&self) -> Received {
        if self.whole {
            Received::Whole {
                payload: self.total as usize,
            }
        } else {
            Received::Partial(self.reply())
        }
    }

    fn reply(&self) -> Reply {
        Reply {
            have: self.have.as_bytes().to_vec(),
            ack: None,
        }
    }

    fn lengths(&self) -> impl Iterator<Item = u64> + '_ {
        self.payloads.iter().map(|p| p.len() as u64)
    }

    /// Feeds the chunks now contiguous with what was hashed.
    fn hash_forward(&mut self) {
        while self.hashed < self.have.len() && self.have.get(self.hashed) {
            let range = chunk_range(self.hashed, self.chunk, self.total);
            let pieces: Vec<_> = segments(self.lengths(), range).collect();
            for (fill, range) in pieces {
                self.hashers[fill].update(&self.payloads[fill][range]);
            }
            self.hashed += 1;
        }
    }
}

/// The values arriving in chunks from every peer.
pub(crate) struct Receiver {
    transfers: HashMap<(PeerId, Digest), Incoming>,
    /// Bytes the transfers held may grow to, together.
    budget: usize,
    held: usize,
    max_value: usize,
    max_chunk: usize,
    caps: EnvelopeCaps,
    /// A transfer with no chunk for this long is dropped.
    idle_limit: Duration,
    timer: Option<Delay>,
    /// Bytes of chunks taken, again ones included.
    chunk_bytes: u64,
}

impl Receiver {
    pub(crate) fn new(
        budget: usize,
        max_value: usize,
        max_chunk: usize,
        caps: EnvelopeCaps,
        idle_limit: Duration,
    ) -> Self {
        Self {
            transfers: HashMap::new(),
            budget,
            held: 0,
            max_value,
            max_chunk,
            caps,
            idle_limit,
            timer: None,
            chunk_bytes: 0,
        }
    }

    /// Bytes the transfers under way hold.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Bytes of chunks taken so far, again ones included.
    pub(crate) fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    /// Transfers under way.
    pub(crate) fn len(&self) -> usize {
        self.transfers.len()
    }

    /// Opens the transfer `start` names, or says how far it got.
    pub(crate) fn start(&mut self, peer: PeerId, start: Start) -> Result<Received, Rejection> {
        let digest = digest_of(&start.digest)?;
        if let Some(incoming) = self.transfers.get_mut(&(peer, digest)) {
            incoming.last = Instant::now();
            return Ok(incoming.progress());
        }
        let total = start
            .fill_lengths
            .iter()
            .try_fold(0u64, |sum, len| sum.checked_add(*len))
            .unwrap_or(u64::MAX);
        if total == 0 {
            return Err(Rejection::new(
                RejectKind::Malformed,
                "a transfer carries at least one byte".to_string(),
            ));
        }
        if total > self.max_value as u64 {
            return Err(Rejection::new(
                RejectKind::Oversize,
                format!(
                    "transfer claims {total} bytes, at most {} are taken",
                    self.max_value
                ),
            ));
        }
        let chunk = start.chunk_bytes;
        if !(MIN_CHUNK_BYTES..=self.max_chunk as u64).contains(&chunk) {
            return Err(Rejection::new(
                RejectKind::ChunkRange,
                format!(
                    "chunk size {chunk} is outside {MIN_CHUNK_BYTES}..={}",
                    self.max_chunk
                ),
            ));
        }
        let header =
            EnvelopeCodec::decode_capped(&start.header, &self.caps).map_err(decode_rejection)?;
        if header.fills.len() != start.fill_lengths.len()
            || header.fills.iter().any(|f| !f.payload.is_empty())
        {
            return Err(Rejection::new(
                RejectKind::Malformed,
                format!(
                    "header has {} fills with payloads empty or not; {} lengths given",
                    header.fills.len(),
                    start.fill_lengths.len()
                ),
            ));
        }
        let size = total as usize;
        if self.transfers.len() >= MAX_TRANSFERS || self.held.saturating_add(size) > self.budget {
            return Err(Rejection::new(
                RejectKind::Busy,
                format!(
                    "transfers hold {} of their {} bytes in {} values; {size} more do not fit",
                    self.held,
                    self.budget,
                    self.transfers.len()
                ),
            ));
        }
        let count = chunk_count(chunk, total);
        let incoming = Incoming {
            header,
            payloads: start
                .fill_lengths
                .iter()
                .map(|len| vec![0u8; *len as usize])
                .collect(),
            total,
            chunk,
            have: Bits::new(count),
            hashers: vec![blake3::Hasher::new(); start.fill_lengths.len()],
            header_bytes: start.header,
            hashed: 0,
            whole: false,
            last: Instant::now(),
        };
        let reply = incoming.reply();
        self.held += size;
        self.transfers.insert((peer, digest), incoming);
        Ok(Received::Partial(reply))
    }

    /// Takes one chunk of `peer`'s transfer `digest`.
    pub(crate) fn chunk(
        &mut self,
        peer: PeerId,
        digest: &[u8],
        offset: u64,
        bytes: &[u8],
    ) -> Result<Received, Rejection> {
        let digest = digest_of(digest)?;
        let key = (peer, digest);
        let Some(incoming) = self.transfers.get_mut(&key) else {
            return Err(Rejection::new(
                RejectKind::UnknownTransfer,
                format!("no transfer {} from {peer}", short(&digest)),
            ));
        };
        let index = offset / incoming.chunk;
        let expected = (index < incoming.have.len() as u64)
            .then(|| chunk_range(index as usize, incoming.chunk, incoming.total));
        let Some(range) =
            expected.filter(|r| r.start == offset && r.end - r.start == bytes.len() as u64)
        else {
            return Err(Rejection::new(
                RejectKind::ChunkRange,
                format!(
                    "{} bytes at {offset}: chunks of this transfer are {} bytes at multiples of it, within {}",
                    bytes.len(),
                    incoming.chunk,
                    incoming.total
                ),
            ));
        };
        incoming.last = Instant::now();
        self.chunk_bytes += bytes.len() as u64;
        let index = index as usize;
        if !incoming.have.get(index) {
            let mut at = 0;
            let pieces: Vec<_> = segments(incoming.lengths(), range).collect();
            for (fill, range) in pieces {
                let len = range.len();
                incoming.payloads[fill][range].copy_from_slice(&bytes[at..at + len]);
                at += len;
            }
            incoming.have.set(index);
            incoming.hash_forward();
        }
        if incoming.hashed < incoming.have.len() {
            return Ok(Received::Partial(incoming.reply()));
        }
        if !incoming.whole {
            self.verify(key)?;
        }
        Ok(Received::Whole {
            payload: self.transfers[&key].total as usize,
        })
    }

    /// Checks a value whose chunks have all come against its digest: it
    /// stays, whole, or is dropped as an integrity failure.
    fn verify(&mut self, key: (PeerId, Digest)) -> Result<(), Rejection> {
        let incoming = self.transfers.get_mut(&key).expect("verified while held");
        let payloads: Vec<Digest> = incoming
            .hashers
            .iter()
            .map(|h| *h.finalize().as_bytes())
            .collect();
        let got = digest(&incoming.header_bytes, &payloads);
        if got == key.1 {
            incoming.whole = true;
            return Ok(());
        }
        let total = incoming.total;
        self.transfers.remove(&key);
        self.held -= total as usize;
        Err(Rejection::new(
            RejectKind::Integrity,
            format!(
                "the value's {total} bytes hash to {}, its transfer declared {}",
                short(&got),
                short(&key.1)
            ),
        ))
    }

    /// The envelope of `peer`'s whole transfer `digest`, for the engine;
    /// the transfer ends.
    pub(crate) fn take_whole(&mut self, peer: PeerId, digest: &[u8]) -> Option<WireEnvelope> {
        let key = (peer, digest_of(digest).ok()?);
        if !self.transfers.get(&key)?.whole {
            return None;
        }
        let incoming = self.transfers.remove(&key)?;
        self.held -= incoming.total as usize;
        let mut envelope = incoming.header;
        for (fill, payload) in envelope.fills.iter_mut().zip(incoming.payloads) {
            fill.payload = payload;
        }
        Some(envelope)
    }

    /// Drops `peer`'s transfers (it was denied).
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        let held = &mut self.held;
        self.transfers.retain(|(p, _), incoming| {
            let keep = p != peer;
            if !keep {
                *held -= incoming.total as usize;
            }
            keep
        });
    }

    /// The next transfer dropped because no chunk came for the idle limit,
    /// with why; arms a timer for the next look while any are held.
    pub(crate) fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<(PeerId, Rejection)> {
        if let Some(timer) = self.timer.as_mut() {
            if timer.poll_unpin(cx).is_pending() {
                return Poll::Pending;
            }
            self.timer = None;
        }
        let limit = self.idle_limit;
        let stalled = self
            .transfers
            .iter()
            .find(|(_, t)| t.last.elapsed() >= limit)
            .map(|(key, _)| *key);
        if let Some(key) = stalled {
            let incoming = self.transfers.remove(&key).expect("found above");
            self.held -= incoming.total as usize;
            let got = incoming.have.count();
            return Poll::Ready((
                key.0,
                Rejection::new(
                    RejectKind::Timeout,
                    format!(
                        "transfer {} stalled: no chunk for {limit:?}, {got} of {} chunks had come; dropped",
                        short(&key.1),
                        incoming.have.len()
                    ),
                ),
            ));
        }
        if let Some(next) = self.transfers.values().map(|t| t.last + limit).min() {
            let mut timer = Delay::new(next.saturating_duration_since(Instant::now()));
            let _ = timer.poll_unpin(cx);
            self.timer = Some(timer);
        }
        Poll::Pending
    }
}

fn digest_of(bytes: &[u8]) -> Result<Digest, Rejection> {
    bytes.try_into().map_err(|_| {
        Rejection::new(
            RejectKind::Malformed,
            format!("a transfer digest is 32 bytes, not {}", bytes.len()),
        )
    })
}

/// The first bytes of a digest, in hex, for messages.
fn short(digest: &Digest) -> String {
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}
