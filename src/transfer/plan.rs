//! What a transfer is made of: the header, the payloads laid end to end,
//! and the digest of both.
//!
//! The digest is BLAKE3 over the header followed by the BLAKE3 digest of
//! each payload, in fill order: a payload sent to many peers is hashed once
//! (see `compat/bulk.rs`), and the receiver hashes each as it arrives.

use std::ops::Range;
use std::sync::Arc;

use bb_runtime::envelope::WireEnvelope;
use prost::Message;

use super::framing::Payloads;

/// A BLAKE3 digest.
pub(crate) type Digest = [u8; 32];

/// One fill's payload, shared by every envelope that carries it, with its
/// digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Payload {
    pub(crate) bytes: Arc<Vec<u8>>,
    pub(crate) digest: Digest,
}

impl Payload {
    /// `bytes`, hashed.
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        let digest = *blake3::hash(&bytes).as_bytes();
        Self {
            bytes: Arc::new(bytes),
            digest,
        }
    }
}

/// How an envelope crosses as a transfer, worked out once on the engine
/// thread (hashing a large value is work for it, not for the swarm's task).
/// It holds the payloads; the envelope it was made from is left with its
/// payloads empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) digest: Digest,
    /// The encoded envelope with every payload empty.
    pub(crate) header: Vec<u8>,
    /// Each fill's payload length.
    pub(crate) fill_lengths: Vec<u64>,
    /// Each fill's payload.
    pub(crate) payloads: Payloads,
}

impl Plan {
    /// The plan of `envelope`, whose payloads move into it (no copy);
    /// `shared` gives the payload of fills whose envelope payload was left
    /// empty for one shared among envelopes.
    pub(crate) fn of(envelope: &mut WireEnvelope, mut shared: Vec<Option<Payload>>) -> Self {
        shared.resize(envelope.fills.len(), None);
        let payloads: Vec<Payload> = envelope
            .fills
            .iter_mut()
            .zip(shared)
            .map(|(fill, shared)| {
                let own = std::mem::take(&mut fill.payload);
                shared.unwrap_or_else(|| Payload::new(own))
            })
            .collect();
        let header = envelope.encode_to_vec();
        let digest = digest(&header, payloads.iter().map(|p| &p.digest));
        Self {
            digest,
            header,
            fill_lengths: payloads.iter().map(|p| p.bytes.len() as u64).collect(),
            payloads: Payloads(Arc::new(payloads.into_iter().map(|p| p.bytes).collect())),
        }
    }

    /// The payloads' bytes together.
    pub(crate) fn total(&self) -> u64 {
        self.fill_lengths.iter().sum()
    }

    /// About the envelope's encoded size: the header and the payloads.
    pub(crate) fn size(&self) -> usize {
        self.header.len() + self.total() as usize
    }

    /// The whole envelope, its payloads copied back into `hollow` (the
    /// envelope this plan was made from): for a snapshot, or a delivery to
    /// this Node itself.
    pub(crate) fn rehydrate(&self, hollow: &WireEnvelope) -> WireEnvelope {
        let mut envelope = hollow.clone();
        for (fill, payload) in envelope.fills.iter_mut().zip(self.payloads.0.iter()) {
            fill.payload = payload.as_ref().clone();
        }
        envelope
    }
}

/// A transfer's digest: of its header, then of each payload's digest.
pub(crate) fn digest<'a>(header: &[u8], payloads: impl IntoIterator<Item = &'a Digest>) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(header);
    for payload in payloads {
        hasher.update(payload);
    }
    *hasher.finalize().as_bytes()
}

/// Chunk `index` of a transfer of `total` bytes: where it starts and ends.
pub(crate) fn chunk_range(index: usize, chunk: u64, total: u64) -> Range<u64> {
    let start = index as u64 * chunk;
    start..(start + chunk).min(total)
}

/// How many chunks `total` bytes take.
pub(crate) fn chunk_count(chunk: u64, total: u64) -> usize {
    total.div_ceil(chunk.max(1)) as usize
}

/// The parts of `range` (in the payloads laid end to end) that lie in
/// each payload: `(fill index, range within that payload)`.
pub(crate) fn segments(
    lengths: impl IntoIterator<Item = u64>,
    range: Range<u64>,
) -> impl Iterator<Item = (usize, Range<usize>)> {
    let mut start_of_fill = 0u64;
    lengths
        .into_iter()
        .enumerate()
        .filter_map(move |(index, len)| {
            let fill = start_of_fill..start_of_fill + len;
            start_of_fill += len;
            let from = range.start.max(fill.start);
            let to = range.end.min(fill.end);
            (from < to).then(|| {
                (
                    index,
                    (from - fill.start) as usize..(to - fill.start) as usize,
                )
            })
        })
}

/// A set of chunk indices, one bit each, lowest bit first: the `have` of a
/// transfer's answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Bits {
    bytes: Vec<u8>,
    len: usize,
}

impl Bits {
    /// `len` bits, none set.
    pub(crate) fn new(len: usize) -> Self {
        Self {
            bytes: vec![0; len.div_ceil(8)],
            len,
        }
    }

    /// The bits of `bytes`, `len` of them; bits past `len` are ignored.
    pub(crate) fn from_bytes(bytes: &[u8], len: usize) -> Self {
        let mut bits = Self::new(len);
        let n = bits.bytes.len().min(bytes.len());
        bits.bytes[..n].copy_from_slice(&bytes[..n]);
        if len % 8 != 0 {
            if let Some(last) = bits.bytes.last_mut() {
                *last &= (1u8 << (len % 8)) - 1;
            }
        }
        bits
    }

    pub(crate) fn get(&self, index: usize) -> bool {
        index < self.len && self.bytes[index / 8] & (1 << (index % 8)) != 0
    }

    pub(crate) fn set(&mut self, index: usize) {
        if index < self.len {
            self.bytes[index / 8] |= 1 << (index % 8);
        }
    }

    pub(crate) fn clear(&mut self, index: usize) {
        if index < self.len {
            self.bytes[index / 8] &= !(1 << (index % 8));
        }
    }

    /// Sets every bit `other` has set.
    pub(crate) fn union(&mut self, other: &Bits) {
        for (mine, theirs) in self.bytes.iter_mut().zip(&other.bytes) {
            *mine |= theirs;
        }
    }

    /// How many are set.
    pub(crate) fn count(&self) -> usize {
        self.bytes.iter().map(|b| b.count_ones() as usize).sum()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bb_runtime::envelope::SlotFill;

    #[test]
    fn segments_split_a_range_over_payloads() {
        let got: Vec<_> = segments([3, 0, 5, 2], 2..9).collect();
        assert_eq!(got, vec![(0, 2..3), (2, 0..5), (3, 0..1)]);
        assert_eq!(segments([4], 4..4).count(), 0);
    }

    #[test]
    fn bits_round_trip_and_mask_the_tail() {
        let mut bits = Bits::new(10);
        bits.set(0);
        bits.set(9);
        bits.set(10);
        assert_eq!(bits.count(), 2);
        let back = Bits::from_bytes(&[0xff, 0xff, 0xff], 10);
        assert_eq!(back.count(), 10);
        assert!(back.get(9) && !back.get(10));
    }

    #[test]
    fn a_plan_takes_the_payloads_and_hashes_the_header_then_each_payload() {
        let mut envelope = WireEnvelope {
            fills: vec![
                SlotFill {
                    payload: vec![1, 2, 3],
                    ..Default::default()
                },
                SlotFill {
                    payload: vec![4],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let before = envelope.clone();
        let shared = Payload::new(vec![4]);
        let mut own = envelope.clone();
        own.fills[1].payload.clear();
        let plan = Plan::of(&mut own, vec![None, Some(shared.clone())]);
        let mut hollow = before.clone();
        hollow.fills.iter_mut().for_each(|f| f.payload.clear());
        assert_eq!(own, hollow);
        assert_eq!(plan.fill_lengths, vec![3, 1]);
        assert_eq!(plan.header, hollow.encode_to_vec());
        assert_eq!(plan.rehydrate(&own), before);
        let mut hasher = blake3::Hasher::new();
        hasher.update(&plan.header);
        hasher.update(blake3::hash(&[1, 2, 3]).as_bytes());
        hasher.update(&shared.digest);
        assert_eq!(plan.digest, *hasher.finalize().as_bytes());
        // The same, with every payload in the envelope.
        assert_eq!(Plan::of(&mut envelope, Vec::new()), plan);
    }
}
