//! The common values a Module takes and gives, in the engine's encoding.
//!
//! `Node::invoke` takes each input as bytes, and [`Event::AppEvent`](crate::Event::AppEvent)
//! gives each output as bytes, in the engine's wire encoding: bincode 1 of
//! the engine's value carriers. A value that passes through a graph
//! untouched comes out as the bytes that went in.
//!
//! ```
//! use bb_libp2p::values;
//! use libp2p::PeerId;
//!
//! let peers = values::peers(&[PeerId::random(), PeerId::random()]);
//! let x = values::f32s(&[0.5, 1.5]);
//! // node.invoke(&ports.sender, &[("peers", &peers), ("x", &x)])
//! assert_eq!(values::decode_f32s(&x).unwrap(), vec![0.5, 1.5]);
//! assert_eq!(values::decode_peers(&peers).unwrap().len(), 2);
//! ```

use std::fmt;

use bb_runtime::syscall::values::{BytesValue, PeerIdVecValue};
use libp2p::PeerId;

use crate::peer::{to_engine_peer, to_libp2p_peer};

/// Bytes as a value (`BytesValue`).
pub fn bytes(payload: &[u8]) -> Vec<u8> {
    // bincode's layout, written in one copy (see `compat/bulk.rs`).
    crate::compat::bulk::encode(payload)
}

/// `f32`s as a value: their little-endian bytes as a `BytesValue`, the
/// layout [`decode_f32s`] reads back.
pub fn f32s(values: &[f32]) -> Vec<u8> {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    bytes(&raw)
}

/// A peer list as a value (`PeerIdVecValue`): what `g.net_out(port, peers,
/// value)` reads its destinations from.
pub fn peers(peers: &[PeerId]) -> Vec<u8> {
    let peers = peers.iter().map(to_engine_peer).collect();
    bincode::serialize(&PeerIdVecValue(peers)).expect("a peer list always encodes")
}

/// The bytes of a value made with [`bytes`].
pub fn decode_bytes(value: &[u8]) -> Result<Vec<u8>, ValueError> {
    if let Some(bytes) = crate::compat::bulk::decode(value) {
        return Ok(bytes.to_vec());
    }
    bincode::deserialize::<BytesValue>(value)
        .map(|b| b.0)
        .map_err(|e| ValueError::new("bytes", e.to_string()))
}

/// The `f32`s of a value made with [`f32s`].
pub fn decode_f32s(value: &[u8]) -> Result<Vec<f32>, ValueError> {
    let raw = decode_bytes(value).map_err(|e| ValueError::new("f32s", e.detail))?;
    if raw.len() % 4 != 0 {
        return Err(ValueError::new(
            "f32s",
            format!("{} bytes is not a whole number of f32s", raw.len()),
        ));
    }
    Ok(raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Serializes a `Vec<f32>` field of a Module's own value type in bulk:
/// `#[serde(with = "bb_libp2p::values::bulk_f32s")]`.
///
/// Without it, bincode 1 encodes and decodes a `Vec<f32>` one element at a
/// time, which dominates the engine's work on a model-sized vector. With it,
/// the field is the vector's little-endian bytes as one byte string (in
/// bincode: a `u64` byte length, then the bytes), written and read in bulk.
/// Both ends must use it: the layout differs from a plain `Vec<f32>`'s.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Update {
///     round: u64,
///     #[serde(with = "bb_libp2p::values::bulk_f32s")]
///     params: Vec<f32>,
/// }
///
/// let update = Update { round: 3, params: vec![0.5, -2.0] };
/// let bytes = bincode::serialize(&update).unwrap();
/// assert_eq!(bytes.len(), 8 + 8 + 8);
/// assert_eq!(bincode::deserialize::<Update>(&bytes).unwrap(), update);
/// ```
pub mod bulk_f32s {
    use std::fmt;

    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    /// Writes `values` as one byte string of their little-endian bytes.
    pub fn serialize<S: Serializer>(values: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
        let mut raw = vec![0u8; values.len() * 4];
        for (bytes, value) in raw.chunks_exact_mut(4).zip(values) {
            bytes.copy_from_slice(&value.to_le_bytes());
        }
        serializer.serialize_bytes(&raw)
    }

    /// Reads what [`serialize`] wrote. A byte string whose length is not a
    /// multiple of four is an error.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f32>, D::Error> {
        deserializer.deserialize_bytes(F32s)
    }

    struct F32s;

    impl<'de> Visitor<'de> for F32s {
        type Value = Vec<f32>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the little-endian bytes of f32s")
        }

        fn visit_bytes<E: Error>(self, raw: &[u8]) -> Result<Vec<f32>, E> {
            if raw.len() % 4 != 0 {
                return Err(E::invalid_length(raw.len(), &self));
            }
            let mut values = vec![0f32; raw.len() / 4];
            for (value, bytes) in values.iter_mut().zip(raw.chunks_exact(4)) {
                *value = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
            Ok(values)
        }

        // Formats without byte strings give the bytes as a sequence.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f32>, A::Error> {
            let mut raw = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(byte) = seq.next_element::<u8>()? {
                raw.push(byte);
            }
            self.visit_bytes(&raw)
        }
    }
}

/// The peers of a value made with [`peers`].
pub fn decode_peers(value: &[u8]) -> Result<Vec<PeerId>, ValueError> {
    let list = bincode::deserialize::<PeerIdVecValue>(value)
        .map_err(|e| ValueError::new("peers", e.to_string()))?;
    list.0
        .iter()
        .map(|p| to_libp2p_peer(p).map_err(|e| ValueError::new("peers", e.to_string())))
        .collect()
}

/// A value is not of the kind it was decoded as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    /// The kind expected: `bytes`, `f32s` or `peers`.
    pub expected: &'static str,
    /// What went wrong.
    pub detail: String,
}

impl ValueError {
    fn new(expected: &'static str, detail: String) -> Self {
        Self { expected, detail }
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a {} value: {}", self.expected, self.detail)
    }
}

impl std::error::Error for ValueError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_to_what_was_encoded() {
        assert_eq!(decode_bytes(&bytes(b"abc")).unwrap(), b"abc");
        assert_eq!(decode_bytes(&bytes(b"")).unwrap(), b"");
        let floats = [0.0, -1.25, f32::MAX, 3.5e-9];
        assert_eq!(decode_f32s(&f32s(&floats)).unwrap(), floats);
        let list = [PeerId::random(), PeerId::random()];
        assert_eq!(decode_peers(&peers(&list)).unwrap(), list);
    }

    #[test]
    fn bulk_f32s_are_their_little_endian_bytes() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Holder(#[serde(with = "super::bulk_f32s")] Vec<f32>);
        let floats = vec![0.0, -1.25, f32::MAX, 3.5e-9, f32::MIN_POSITIVE / 2.0];
        let encoded = bincode::serialize(&Holder(floats.clone())).unwrap();
        // The same bytes as `f32s`: a byte length, then the bytes.
        assert_eq!(encoded, f32s(&floats));
        assert_eq!(bincode::deserialize::<Holder>(&encoded).unwrap().0, floats);
        let ragged = bytes(&[1, 2, 3, 4, 5]);
        let error = bincode::deserialize::<Holder>(&ragged).unwrap_err();
        assert!(error.to_string().contains("invalid length 5"), "{error}");
    }

    #[test]
    fn a_value_of_another_kind_is_an_error() {
        assert_eq!(decode_f32s(&bytes(b"abc")).unwrap_err().expected, "f32s");
        assert_eq!(decode_bytes(&[1, 2]).unwrap_err().expected, "bytes");
        assert!(decode_peers(&bytes(b"not peers at all")).is_err());
    }
}
