//! What the outbound side reads of the rest of the behaviour, and the
//! questions it asks of it about a peer.

use libp2p::request_response;
use libp2p::PeerId;

use crate::address_book::PeerBook;
use crate::event::SendFailure;
use crate::health::Health;
use crate::redelivery::PeerState;
use crate::relayed::RelayedConnections;
use crate::stats::WireStats;
use crate::transfer::framing::Framing;

/// What the outbound side reads and uses of the rest of the behaviour.
pub(crate) struct Link<'a> {
    pub(crate) inner: &'a mut request_response::Behaviour<Framing>,
    pub(crate) health: &'a Health,
    pub(crate) peers: &'a PeerBook,
    pub(crate) relayed: &'a RelayedConnections,
    pub(crate) stats: &'a mut WireStats,
}

impl Link<'_> {
    /// Why an envelope to `peer` may not go at all now: the peer is denied,
    /// or it is not connected and its back-off has not passed (it is not
    /// dialled again before then).
    pub(super) fn refusal(&self, peer: &PeerId) -> Option<SendFailure> {
        if let Some(denial) = self.health.denial(peer) {
            return Some(SendFailure::Denied(denial));
        }
        if self.peers.is_connected(peer) {
            return None;
        }
        let retry_in = self.health.cooldown(peer)?;
        Some(SendFailure::Backoff { retry_in })
    }

    /// Whether envelopes to `peer` wait: it is connected but asked this
    /// Node to wait (it answered busy, or failed).
    pub(super) fn waits(&self, peer: &PeerId) -> bool {
        self.peers.is_connected(peer) && self.health.cooldown(peer).is_some()
    }

    /// Whether `peer` is connected, only through relays.
    pub(super) fn relayed_only(&self, peer: &PeerId) -> bool {
        let connections = self.peers.connections(peer);
        connections > 0 && self.relayed.count(peer) >= connections
    }

    /// How `peer` stands for envelopes parked after transport failures.
    pub(super) fn state(&self, peer: &PeerId) -> PeerState {
        if let Some(denial) = self.health.denial(peer) {
            PeerState::Denied(SendFailure::Denied(denial))
        } else if let Some(wait) = self.health.cooldown(peer) {
            PeerState::Waiting(wait)
        } else if self.peers.is_connected(peer) {
            PeerState::Open
        } else {
            PeerState::Closed
        }
    }
}
