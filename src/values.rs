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
    fn a_value_of_another_kind_is_an_error() {
        assert_eq!(decode_f32s(&bytes(b"abc")).unwrap_err().expected, "f32s");
        assert_eq!(decode_bytes(&[1, 2]).unwrap_err().expected, "bytes");
        assert!(decode_peers(&bytes(b"not peers at all")).is_err());
    }
}
