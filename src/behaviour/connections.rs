//! Connections and peers: admission, the peers the engine can resolve, and
//! closing the connections of peers the Node now denies.

use libp2p::core::Endpoint;
use libp2p::swarm::{
    behaviour::ConnectionEstablished, CloseConnection, ConnectionClosed, ConnectionDenied,
    ConnectionId, FromSwarm, NetworkBehaviour, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use super::Behaviour;
use crate::address_book::BookChanges;
use crate::engine::message::ToEngine;
use crate::event::{Event, PeerDenied};

impl Behaviour {
    /// Carries the book's changes to the engine. A peer released (no
    /// connection, no address left) takes its failure state with it: it
    /// cannot be dialled for the Node's envelopes any more.
    pub(super) fn tell_book(&mut self, changes: BookChanges) {
        let mut released = Vec::new();
        for (peer, hold) in changes.0 {
            self.engine.tell(ToEngine::Book(peer, hold));
            if !hold {
                released.push(peer);
            }
        }
        if !released.is_empty() {
            self.health.forget(&released);
            self.engine.tell(ToEngine::ForgetHealth(released));
        }
    }

    /// Keeps the peers with failure state within their bound, here and in
    /// the engine's tables.
    pub(super) fn bound_health(&mut self) {
        let stale = self.health.overflow();
        if !stale.is_empty() {
            self.engine.tell(ToEngine::ForgetHealth(stale));
        }
    }

    /// Makes `peer` resolvable by the engine's `wire.Send` through a learned
    /// address.
    pub(super) fn learn(&mut self, peer: PeerId, address: &Multiaddr) {
        if Some(peer) == self.local_peer {
            return;
        }
        let mut changes = BookChanges::default();
        let _ = self.peers.learn(&mut changes, peer, address);
        self.tell_book(changes);
    }

    pub(super) fn on_connection_established(&mut self, established: &ConnectionEstablished) {
        self.establishing.remove(&established.connection_id);
        let peer = established.peer_id;
        let dialed = established
            .endpoint
            .is_dialer()
            .then(|| established.endpoint.get_remote_address());
        let mut changes = BookChanges::default();
        let _ = self.peers.connected(&mut changes, peer, dialed);
        self.tell_book(changes);
        self.outbound.reached(peer, true);
        if established.endpoint.is_relayed() {
            self.relayed.established(peer, established.connection_id);
            // A direct connection is there already: this one carries nothing.
            if self.peers.connections(&peer) > self.relayed.count(&peer) {
                tracing::debug!(%peer, "relayed connection beside a direct one; closing it");
                self.pending.push_back(ToSwarm::CloseConnection {
                    peer_id: peer,
                    connection: CloseConnection::One(established.connection_id),
                });
            }
        } else {
            // Direct now: nothing more goes through a relay (see relayed.rs).
            for connection in self.relayed.of(&peer) {
                tracing::debug!(%peer, ?connection, "direct connection; closing the relayed one");
                self.pending.push_back(ToSwarm::CloseConnection {
                    peer_id: peer,
                    connection: CloseConnection::One(connection),
                });
            }
            self.outbound.direct(peer);
        }
        // Admitted, so no longer on its way out: a later denial closes it
        // again. (A connection is no answer: a peer that accepts and drops it
        // keeps its failure streak; only an acknowledgement clears that.)
        self.disconnecting.remove(&peer);
    }

    /// Another behaviour refused a connection after the inner behaviour had
    /// taken it (libp2p/rust-libp2p#4870: `connection_limits` declared
    /// after this behaviour does). Request-response would route requests to
    /// that connection for ever, with no event; it is told the connection
    /// closed, so its requests fail and go again over a real one.
    pub(super) fn on_connection_refused(&mut self, connection_id: ConnectionId) {
        let Some((peer_id, endpoint)) = self.establishing.remove(&connection_id) else {
            return;
        };
        tracing::debug!(%peer_id, ?connection_id, "another behaviour refused a connection");
        let remaining_established = self.peers.connections(&peer_id);
        self.inner
            .on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                endpoint: &endpoint,
                cause: None,
                remaining_established,
            }));
    }

    pub(super) fn on_connection_closed(&mut self, closed: &ConnectionClosed) {
        let peer = closed.peer_id;
        let mut changes = BookChanges::default();
        self.peers
            .disconnected(&mut changes, peer, closed.remaining_established);
        self.tell_book(changes);
        self.outbound
            .reached(peer, closed.remaining_established > 0);
        self.relayed.closed(peer, closed.connection_id);
        if closed.remaining_established == 0 {
            self.disconnecting.remove(&peer);
        }
    }

    /// Refuses a connection with a denied peer.
    pub(super) fn admit(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        endpoint: Endpoint,
    ) -> Result<(), ConnectionDenied> {
        let Some(reason) = self.health.denial(&peer) else {
            return Ok(());
        };
        tracing::debug!(%peer, %reason, ?endpoint, "connection denied");
        self.report(Event::ConnectionDenied {
            peer,
            connection_id,
            endpoint,
            reason,
        });
        Err(ConnectionDenied::new(PeerDenied { peer, reason }))
    }

    /// Closes the connections of connected peers the Node now denies.
    pub(super) fn enforce_policy(&mut self) {
        self.outbound.policy_changed();
        let health = &self.health;
        // A peer unblocked and blocked again while its old connection closes
        // must be closed again.
        self.disconnecting.retain(|p| health.denial(p).is_some());
        let denied: Vec<_> = self
            .peers
            .connected_peers()
            .filter(|p| !self.disconnecting.contains(p))
            .filter_map(|p| health.denial(&p).map(|d| (p, d)))
            .collect();
        for (peer, reason) in denied {
            tracing::debug!(%peer, %reason, "closing a denied peer's connections");
            self.disconnecting.insert(peer);
            self.receiver.forget(&peer);
            self.pending.push_back(ToSwarm::CloseConnection {
                peer_id: peer,
                connection: CloseConnection::All,
            });
            self.report(Event::PeerDisconnected { peer, reason });
        }
    }
}
