//! Large values encoded once, in bulk, and held once however many peers
//! they go to.
//!
//! bb-runtime 0.3.8's `BytesValue(Vec<u8>)` has no `serde_bytes`: bincode 1
//! encodes it through serde one element at a time, as a `u64` length and
//! then each byte. The encoding is exactly the length's eight little-endian
//! bytes and the bytes themselves, so [`encode`] writes that with one copy,
//! and what reads it decodes it as before. It is the value type of byte
//! payloads and of `f32` vectors ([`values::f32s`](crate::values::f32s)).
//!
//! - Every `wire.Send` runs through [`encoding_in_bulk`]. Each value it
//!   ships is encoded once, here: a `BytesValue` in bulk, any other type
//!   with its own encoder (a Module's own types encode their `f32` vectors
//!   in bulk with [`values::bulk_f32s`](crate::values::bulk_f32s)). An
//!   encoding of 64 KiB or more is hashed once and kept aside (shared,
//!   [`Payload`]); the engine's Send gets a 16-byte mark in its place,
//!   which it copies into each destination's envelope instead of the value.
//!   The engine thread's host swaps the mark for the shared payload as it
//!   takes each envelope ([`take_shared`]): a value sent to ten peers is
//!   held once, not ten times. The engine would otherwise encode each
//!   value once per Send and copy the encoding into every envelope.
//! - The receive dedup gate hashes a `BytesValue`'s encoding without
//!   making it (see `dedup.rs`).
//! - [`values::bytes`](crate::values::bytes) and
//!   [`values::decode_bytes`](crate::values::decode_bytes) use the same
//!   layout.
//!
//! `tests/bulk.rs::upstream_bytes_values_still_encode_as_length_and_bytes`
//! fails once the engine's encoding of a `BytesValue` is something else,
//! and this must change with it.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

use bb_ir::proto::onnx::NodeProto;
use bb_runtime::atomic::DispatchResult;
use bb_runtime::bus::OpError;
use bb_runtime::engine::GraphSlot;
use bb_runtime::envelope::WireEnvelope;
use bb_runtime::runtime::RuntimeResourceRef;
use bb_runtime::slot_value::{SlotValue, SlotValueError};
use bb_runtime::syscall::values::{BytesValue, PeerIdVecValue};

use super::dispatch;
use super::sites::is_wire;
use super::unresolved::{peer_list, PEER_INPUTS};
use crate::transfer::plan::Payload;

/// What a mark starts with: eight bytes drawn at random once per process,
/// so that no value a peer sends (and a graph forwards) can pass for a
/// mark. The payload's number follows, eight bytes.
fn mark() -> [u8; 8] {
    static MARK: OnceLock<[u8; 8]> = OnceLock::new();
    *MARK.get_or_init(|| RandomState::new().hash_one("bb-bulk").to_le_bytes())
}

thread_local! {
    /// Payloads kept aside on this engine thread since its host last took
    /// the envelopes of a poll, by number.
    static SHARED: RefCell<(u64, HashMap<u64, Payload>)> = RefCell::new((0, HashMap::new()));
}

/// The payloads of `envelope`'s marked fills, fill by fill; each mark is
/// left as an empty payload. A mark whose payload is not kept (a poll's
/// envelopes taken by someone else) stays as it is.
pub(crate) fn take_shared(envelope: &mut WireEnvelope) -> Vec<Option<Payload>> {
    SHARED.with(|shared| {
        let (_, held) = &*shared.borrow();
        envelope
            .fills
            .iter_mut()
            .map(|fill| {
                let number = fill.payload.strip_prefix(&mark())?.try_into().ok()?;
                let payload = held.get(&u64::from_le_bytes(number))?.clone();
                fill.payload = Vec::new();
                Some(payload)
            })
            .collect()
    })
}

/// Copies `shared` payloads back into the fills [`take_shared`] emptied:
/// for an envelope small enough for one frame.
pub(crate) fn put_back(envelope: &mut WireEnvelope, shared: Vec<Option<Payload>>) {
    for (fill, payload) in envelope.fills.iter_mut().zip(shared) {
        if let Some(payload) = payload {
            fill.payload = payload.bytes.as_ref().clone();
        }
    }
}

/// Lets go of the payloads kept aside: the host took the envelopes of the
/// poll that made them.
pub(crate) fn release() {
    SHARED.with(|shared| shared.borrow_mut().1.clear());
}

/// Keeps `payload` aside; returns its mark.
fn keep(payload: Payload) -> Vec<u8> {
    SHARED.with(|shared| {
        let (next, held) = &mut *shared.borrow_mut();
        *next += 1;
        held.insert(*next, payload);
        [mark(), next.to_le_bytes()].concat()
    })
}

const WRAPPER: &str = "bulk";

/// Encodings smaller than this go in each envelope, as the engine puts
/// them: keeping them aside costs more than it saves.
const BULK_FROM: usize = 64 * 1024;

/// The encoding of a `BytesValue` holding `bytes`.
pub(crate) fn encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + bytes.len());
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The bytes of a `BytesValue`'s encoding, if `encoded` is one.
pub(crate) fn decode(encoded: &[u8]) -> Option<&[u8]> {
    let (len, bytes) = encoded.split_first_chunk::<8>()?;
    (u64::from_le_bytes(*len) == bytes.len() as u64).then_some(bytes)
}

/// Routes every `wire.Send` of `graph` through [`encoding_in_bulk`].
pub(crate) fn encode_sends(graph: &mut GraphSlot) {
    dispatch::wrap_where(graph, WRAPPER, encoding_in_bulk, |node| {
        is_wire(node, "Send")
    });
}

/// The mark of a value kept aside, standing in for it.
struct Encoded {
    bytes: Vec<u8>,
    type_hash: u64,
}

impl SlotValue for Encoded {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any_boxed(self: Box<Self>) -> Box<dyn Any + Send + Sync> {
        self
    }

    fn clone_boxed(&self) -> Box<dyn SlotValue> {
        Box::new(Self {
            bytes: self.bytes.clone(),
            type_hash: self.type_hash,
        })
    }

    fn to_wire_bytes(&self) -> Result<Vec<u8>, SlotValueError> {
        Ok(self.bytes.clone())
    }

    fn type_hash(&self) -> u64 {
        self.type_hash
    }
}

/// Whether `wire.Send` input `index`, `name`, holding `value`, is left as
/// it is: an input that addresses the envelopes (the names the engine's
/// Send skips, and peer lists: typed, or as bytes in the second place,
/// where the engine looks for them), or a byte value too small to keep
/// aside.
fn left_alone(index: usize, name: &str, value: &dyn SlotValue) -> bool {
    let addresses = name.ends_with("_suffix") || name == "req_id" || PEER_INPUTS.contains(&name);
    let any = value.as_any();
    let small = any
        .downcast_ref::<BytesValue>()
        .is_some_and(|bytes| bytes.0.len() < BULK_FROM);
    addresses || small || any.is::<PeerIdVecValue>() || (index == 1 && peer_list(value).is_some())
}

/// `value` encoded, and kept aside behind a mark if large. `None` if it
/// does not encode: the engine's Send then reports that itself.
fn encoded(value: &dyn SlotValue) -> Option<Encoded> {
    let bytes = match value.as_any().downcast_ref::<BytesValue>() {
        Some(bytes) => encode(&bytes.0),
        None => value.to_wire_bytes().ok()?,
    };
    let bytes = match bytes.len() >= BULK_FROM {
        true => keep(Payload::new(bytes)),
        false => bytes,
    };
    Some(Encoded {
        bytes,
        type_hash: value.type_hash(),
    })
}

/// Runs `wire.Send` with each value it ships encoded once ([`encoded`]):
/// the large ones kept aside, a mark in their place.
fn encoding_in_bulk(
    node: &NodeProto,
    inputs: &[(&str, &dyn SlotValue)],
    ctx: &mut RuntimeResourceRef<'_>,
) -> Result<DispatchResult, OpError> {
    let send = dispatch::original(WRAPPER, node)?;
    // Sends of small byte values (most of them): no allocation.
    let alone = |index, (name, value): &(&str, &dyn SlotValue)| left_alone(index, name, *value);
    if inputs
        .iter()
        .enumerate()
        .all(|(index, input)| alone(index, input))
    {
        return send(node, inputs, ctx);
    }
    let encoded: Vec<Option<Encoded>> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| match alone(index, input) {
            true => None,
            false => encoded(input.1),
        })
        .collect();
    let inputs: Vec<(&str, &dyn SlotValue)> = inputs
        .iter()
        .zip(&encoded)
        .map(|((name, value), encoded)| match encoded {
            Some(encoded) => (*name, encoded as &dyn SlotValue),
            None => (*name, *value),
        })
        .collect();
    send(node, &inputs, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bulk_layout_is_bincodes() {
        for len in [0, 1, 7, 70_000] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let engine = bincode::serialize(&BytesValue(bytes.clone())).unwrap();
            assert_eq!(encode(&bytes), engine);
            assert_eq!(decode(&engine), Some(bytes.as_slice()));
        }
        assert_eq!(decode(&[1, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode(&[1, 0]), None);
    }

    #[test]
    fn what_addresses_an_envelope_is_left_alone() {
        let peers: Vec<_> = (0..2000)
            .map(|_| crate::peer::to_engine_peer(&libp2p::PeerId::random()))
            .collect();
        let typed = PeerIdVecValue(peers);
        let as_bytes = BytesValue(bincode::serialize(&typed).unwrap());
        assert!(as_bytes.0.len() >= BULK_FROM);
        let large = BytesValue(vec![7; BULK_FROM]);
        // Peer lists, typed anywhere or as bytes where the engine looks.
        assert!(left_alone(2, "to", &typed));
        assert!(left_alone(1, "to", &as_bytes));
        assert!(left_alone(0, "peers", &large));
        assert!(left_alone(0, "x_suffix", &large));
        // Values.
        assert!(!left_alone(0, "x", &large));
        assert!(!left_alone(1, "x", &large));
        assert!(left_alone(0, "x", &BytesValue(vec![7; BULK_FROM - 1])));
    }
}
