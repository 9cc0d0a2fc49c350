//! Conversions between libp2p's and the engine's peer identities.
//!
//! Both are multihashes with the same byte form, so libp2p -> engine is
//! infallible. The engine's `PeerId` is wider (any multihash up to 64 bytes,
//! e.g. `PeerId::from(u64)` in upstream examples), so engine -> libp2p can
//! fail: libp2p accepts only sha2-256 and short identity multihashes.

use std::fmt;

use bb_runtime::framework::Address;
use bb_runtime::ids::PeerId as EnginePeerId;
use libp2p::PeerId;

/// The engine's `PeerId` for a libp2p `PeerId`.
pub fn to_engine_peer(peer: &PeerId) -> EnginePeerId {
    // A libp2p PeerId is a multihash of at most 64 digest bytes (sha2-256
    // or an identity hash of at most 42 bytes), which the engine's
    // `Multihash<64>` always holds.
    EnginePeerId::from_bytes(&peer.to_bytes()).expect("a libp2p PeerId is a valid engine PeerId")
}

/// The libp2p `PeerId` for an engine `PeerId`, if libp2p can represent it.
pub fn to_libp2p_peer(peer: &EnginePeerId) -> Result<PeerId, PeerIdConversionError> {
    PeerId::from_bytes(&peer.to_bytes()).map_err(|_| PeerIdConversionError {
        code: peer.code(),
        digest_len: peer.digest().len(),
    })
}

/// The engine `Address` `/p2p/<peer>`: how the engine's AddressBook names a
/// peer that libp2p knows how to reach.
pub fn p2p_address(peer: &PeerId) -> Address {
    Address::empty().p2p(to_engine_peer(peer))
}

/// The libp2p peer an engine address names, if it names one libp2p can use.
pub(crate) fn peer_of_address(bytes: &[u8]) -> Option<PeerId> {
    let addr = Address::from_bytes(bytes).ok()?;
    to_libp2p_peer(&addr.peer_id()?).ok()
}

/// An engine `PeerId` that is not a valid libp2p `PeerId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdConversionError {
    /// The multihash code of the engine `PeerId`.
    pub code: u64,
    /// The length of its digest in bytes.
    pub digest_len: usize,
}

impl fmt::Display for PeerIdConversionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "engine PeerId (multihash code {:#x}, {} digest bytes) is not a libp2p PeerId: \
             libp2p accepts sha2-256 or identity of at most 42 bytes",
            self.code, self.digest_len
        )
    }
}

impl std::error::Error for PeerIdConversionError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libp2p_peer_round_trips_through_the_engine() {
        let peer = PeerId::random();
        let engine = to_engine_peer(&peer);
        assert_eq!(engine.to_bytes(), peer.to_bytes());
        assert_eq!(to_libp2p_peer(&engine), Ok(peer));
    }

    #[test]
    fn p2p_address_bytes_are_a_libp2p_multiaddr() {
        let peer = PeerId::random();
        let bytes = p2p_address(&peer).to_bytes();
        let multiaddr = libp2p::Multiaddr::try_from(bytes.clone()).unwrap();
        assert_eq!(
            multiaddr,
            libp2p::Multiaddr::empty().with_p2p(peer).unwrap()
        );
        assert_eq!(peer_of_address(&bytes), Some(peer));
    }

    #[test]
    fn an_unrepresentable_engine_peer_is_an_error() {
        // sha2-512: a valid multihash, but not a libp2p PeerId.
        let bytes: Vec<u8> = [0x13, 64].into_iter().chain([7u8; 64]).collect();
        let wide = EnginePeerId::from_bytes(&bytes).unwrap();
        let err = to_libp2p_peer(&wide).unwrap_err();
        assert_eq!(
            err,
            PeerIdConversionError {
                code: 0x13,
                digest_len: 64
            }
        );
    }
}
