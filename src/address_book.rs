//! Keeps the engine's AddressBook in step with the peers the swarm knows.
//!
//! libp2p holds the dialable multiaddrs (`/ip4/../tcp/..`, `/memory/..`); the
//! engine's `Address` can say only `/p2p/<peer>`. So for every peer the swarm
//! can reach (it is connected, or an address for it was learned through
//! `FromSwarm::NewExternalAddrOfPeer`, an outbound connection or the peer
//! store) the engine's book gets a `/p2p/<peer>` entry on which this side holds
//! exactly one reference, and this side keeps the dialable addresses to hand
//! to the swarm when it dials the peer. When the peer has neither a
//! connection nor an address left, the reference is dropped: an entry the
//! engine's own protocols also hold stays, with their counts untouched.
//!
//! Addresses stay through failed dials (a restarting peer comes back where it
//! was; the behaviour's back-off spaces the attempts out); they go when the
//! peer store or the application forgets them, or when more than
//! [`MAX_UNCONNECTED_PEERS`] unconnected peers are known and this one was
//! learned longest ago.

use std::collections::{HashMap, HashSet};

use bb_runtime::framework::{AddressBook, AddressBookError};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::peer::{p2p_address, to_engine_peer};

/// Dialable addresses kept per peer; the oldest goes first when a new one
/// arrives (the peer store's default record capacity).
pub(crate) const MAX_ADDRESSES_PER_PEER: usize = 8;

/// Unconnected peers kept for their addresses; past this, the one learned
/// longest ago is forgotten (the peer store's default capacity).
pub(crate) const MAX_UNCONNECTED_PEERS: usize = 1000;

/// Where [`PeerBook`] takes and releases its engine references: the engine's
/// own `AddressBook` on the engine thread, or [`BookChanges`] on the swarm's
/// task, which carries them there.
pub(crate) trait EngineBook {
    /// Takes one reference on `/p2p/<peer>`.
    fn hold(&mut self, peer: PeerId) -> Result<(), AddressBookError>;
    /// Releases the reference taken by [`EngineBook::hold`].
    fn release(&mut self, peer: PeerId);
}

impl EngineBook for AddressBook {
    fn hold(&mut self, peer: PeerId) -> Result<(), AddressBookError> {
        // `add_peer` counts one more reference on an entry the engine
        // already has, so releasing it later leaves the engine's own.
        self.add_peer(to_engine_peer(&peer), vec![p2p_address(&peer)])
    }

    fn release(&mut self, peer: PeerId) {
        // The engine may have dropped the entry itself; nothing to do.
        let _ = self.drop_peer(to_engine_peer(&peer));
    }
}

/// The references taken (`true`) and released (`false`) on the swarm's
/// side, in order, for the engine thread to apply to its `AddressBook`.
#[derive(Default)]
pub(crate) struct BookChanges(pub(crate) Vec<(PeerId, bool)>);

impl EngineBook for BookChanges {
    fn hold(&mut self, peer: PeerId) -> Result<(), AddressBookError> {
        self.0.push((peer, true));
        Ok(())
    }

    fn release(&mut self, peer: PeerId) {
        self.0.push((peer, false));
    }
}

/// The peers the swarm can reach, and the engine references held for them.
#[derive(Default)]
pub(crate) struct PeerBook {
    peers: HashMap<PeerId, Known>,
    /// Orders `Known::learned`.
    clock: u64,
    /// Peers whose last dial found no address anywhere in the swarm.
    unlocated: HashSet<PeerId>,
}

#[derive(Default)]
struct Known {
    /// Dialable addresses, normalised (no trailing `/p2p/<peer>`), oldest
    /// first.
    addresses: Vec<Multiaddr>,
    /// Established connections.
    connections: usize,
    /// Whether this side holds an engine reference (the engine's book may
    /// have been full).
    held: bool,
    /// When an address was last learned.
    learned: u64,
}

impl Known {
    fn is_empty(&self) -> bool {
        self.connections == 0 && self.addresses.is_empty()
    }
}

impl PeerBook {
    /// A connection to `peer` was established. `dialed` is the address when
    /// this side dialled it (a listener's view of the remote address is an
    /// ephemeral port, not worth redialling).
    pub(crate) fn connected(
        &mut self,
        book: &mut impl EngineBook,
        peer: PeerId,
        dialed: Option<&Multiaddr>,
    ) -> Result<(), AddressBookError> {
        self.unlocated.remove(&peer);
        let known = self.peers.entry(peer).or_default();
        known.connections += 1;
        if let Some(address) = dialed.and_then(|a| normalise(&peer, a)) {
            remember(known, address);
        }
        self.hold(book, peer)
    }

    /// A connection to `peer` closed; `remaining` are still established.
    pub(crate) fn disconnected(
        &mut self,
        book: &mut impl EngineBook,
        peer: PeerId,
        remaining: usize,
    ) {
        if let Some(known) = self.peers.get_mut(&peer) {
            known.connections = remaining;
        }
        self.release_if_unreachable(book, peer);
    }

    /// Learns a dialable address of `peer`. `Ok(false)` when it was known
    /// already or names another peer.
    pub(crate) fn learn(
        &mut self,
        book: &mut impl EngineBook,
        peer: PeerId,
        address: &Multiaddr,
    ) -> Result<bool, AddressBookError> {
        let Some(address) = normalise(&peer, address) else {
            return Ok(false);
        };
        // An address now known: the peer is no longer unlocated.
        self.unlocated.remove(&peer);
        if self
            .peers
            .get(&peer)
            .is_some_and(|k| k.addresses.contains(&address))
        {
            return Ok(false);
        }
        if !self.peers.contains_key(&peer) {
            self.make_room(book);
        }
        self.clock += 1;
        let known = self.peers.entry(peer).or_default();
        known.learned = self.clock;
        remember(known, address);
        self.hold(book, peer).map(|()| true)
    }

    /// Forgets one address of `peer`; `true` when it was known.
    pub(crate) fn forget(
        &mut self,
        book: &mut impl EngineBook,
        peer: PeerId,
        address: &Multiaddr,
    ) -> bool {
        let Some(address) = normalise(&peer, address) else {
            return false;
        };
        let Some(known) = self.peers.get_mut(&peer) else {
            return false;
        };
        let before = known.addresses.len();
        known.addresses.retain(|a| *a != address);
        let forgotten = known.addresses.len() != before;
        self.release_if_unreachable(book, peer);
        forgotten
    }

    /// Forgets every address of `peer`. Its entry goes once it has no
    /// connection either.
    pub(crate) fn forget_peer(&mut self, book: &mut impl EngineBook, peer: PeerId) {
        if let Some(known) = self.peers.get_mut(&peer) {
            known.addresses.clear();
        }
        self.release_if_unreachable(book, peer);
    }

    /// The known addresses of `peer` the swarm does not already have in
    /// `already`, in either form (`X` or `X/p2p/<peer>`): the swarm only
    /// removes exact duplicates, so handing it both forms dials `X` twice.
    pub(crate) fn dial_addresses(&self, peer: &PeerId, already: &[Multiaddr]) -> Vec<Multiaddr> {
        let Some(known) = self.peers.get(peer) else {
            return Vec::new();
        };
        known
            .addresses
            .iter()
            .filter(|a| {
                !already
                    .iter()
                    .any(|b| normalise(peer, b).as_ref() == Some(*a))
            })
            .cloned()
            .collect()
    }

    /// The swarm starts dialling `peer`: whatever the last dial found no
    /// longer holds.
    pub(crate) fn dialling(&mut self, peer: &PeerId) {
        self.unlocated.remove(peer);
    }

    /// The swarm dialled `peer` and no behaviour knew an address for it.
    pub(crate) fn found_no_address(&mut self, peer: PeerId) {
        if self.unlocated.len() >= MAX_UNCONNECTED_PEERS {
            // Marks only rename failures; dropping them all is safe.
            self.unlocated.clear();
        }
        self.unlocated.insert(peer);
    }

    /// Whether the last dial of `peer` found no address for it.
    pub(crate) fn is_unlocated(&self, peer: &PeerId) -> bool {
        self.unlocated.contains(peer)
    }

    /// Peers this side made resolvable in the engine's AddressBook.
    pub(crate) fn resolvable(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.iter().filter(|(_, k)| k.held).map(|(p, _)| *p)
    }

    /// Whether this side holds an engine reference for `peer`.
    pub(crate) fn is_known(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|k| k.held)
    }

    /// Whether `peer` has an established connection.
    pub(crate) fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|k| k.connections > 0)
    }

    /// Peers with an established connection.
    pub(crate) fn connected_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers
            .iter()
            .filter(|(_, k)| k.connections > 0)
            .map(|(p, _)| *p)
    }

    /// Established connections with `peer`.
    pub(crate) fn connections(&self, peer: &PeerId) -> usize {
        self.peers.get(peer).map_or(0, |k| k.connections)
    }

    /// Peers this side holds an engine reference for.
    pub(crate) fn len(&self) -> usize {
        self.resolvable().count()
    }

    /// The engine refused the reference taken for `peer`: none is held.
    /// The next connection or address of the peer tries again.
    pub(crate) fn refused(&mut self, peer: &PeerId) {
        if let Some(known) = self.peers.get_mut(peer) {
            known.held = false;
        }
    }

    /// Takes the engine reference for `peer` (tracked already) if not held.
    fn hold(&mut self, book: &mut impl EngineBook, peer: PeerId) -> Result<(), AddressBookError> {
        let known = self.peers.get_mut(&peer).expect("tracked before holding");
        if !known.held {
            book.hold(peer)?;
            known.held = true;
        }
        Ok(())
    }

    /// Forgets the unconnected peer learned longest ago when there are too
    /// many.
    fn make_room(&mut self, book: &mut impl EngineBook) {
        let unconnected = self.peers.values().filter(|k| k.connections == 0);
        if unconnected.count() < MAX_UNCONNECTED_PEERS {
            return;
        }
        let oldest = self
            .peers
            .iter()
            .filter(|(_, k)| k.connections == 0)
            .min_by_key(|(_, k)| k.learned)
            .map(|(p, _)| *p);
        if let Some(peer) = oldest {
            self.forget_peer(book, peer);
        }
    }

    fn release_if_unreachable(&mut self, book: &mut impl EngineBook, peer: PeerId) {
        if !self.peers.get(&peer).is_some_and(Known::is_empty) {
            return;
        }
        if self.peers.remove(&peer).is_some_and(|k| k.held) {
            book.release(peer);
        }
    }
}

fn remember(known: &mut Known, address: Multiaddr) {
    if known.addresses.contains(&address) {
        return;
    }
    if known.addresses.len() == MAX_ADDRESSES_PER_PEER {
        known.addresses.remove(0);
    }
    known.addresses.push(address);
}

/// `address` without a trailing `/p2p/<peer>`; `None` when it ends in
/// another peer's id.
pub(crate) fn normalise(peer: &PeerId, address: &Multiaddr) -> Option<Multiaddr> {
    let mut address = address.clone();
    match address.iter().last() {
        Some(Protocol::P2p(id)) if id == *peer => {
            address.pop();
            Some(address)
        }
        Some(Protocol::P2p(_)) => None,
        _ => Some(address),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn both_forms_of_an_address_are_one_address() {
        let (p, mut book, mut peers) = (peer(), AddressBook::new(), PeerBook::default());
        let bare = addr("/memory/7");
        let with_id = bare.clone().with_p2p(p).unwrap();
        assert!(peers.learn(&mut book, p, &with_id).unwrap());
        assert!(!peers.learn(&mut book, p, &bare).unwrap());
        assert_eq!(peers.dial_addresses(&p, &[]), vec![bare.clone()]);
        // The swarm already has one form: nothing more to add.
        assert!(peers.dial_addresses(&p, &[with_id]).is_empty());
        assert!(peers.dial_addresses(&p, &[bare]).is_empty());
    }

    #[test]
    fn an_address_of_another_peer_is_not_learned() {
        let (p, q, mut book, mut peers) = (peer(), peer(), AddressBook::new(), PeerBook::default());
        let foreign = addr("/memory/7").with_p2p(q).unwrap();
        assert!(!peers.learn(&mut book, p, &foreign).unwrap());
        assert!(!peers.is_known(&p));
        assert!(book.lookup(to_engine_peer(&p)).is_none());
    }

    #[test]
    fn release_leaves_the_engines_own_references() {
        let (p, mut book, mut peers) = (peer(), AddressBook::new(), PeerBook::default());
        let engine_peer = to_engine_peer(&p);
        book.add_peer(engine_peer, vec![p2p_address(&p)]).unwrap();
        peers.connected(&mut book, p, None).unwrap();
        assert_eq!(book.ref_count(engine_peer), 2);
        peers.disconnected(&mut book, p, 0);
        assert_eq!(book.ref_count(engine_peer), 1);
        assert!(!peers.is_known(&p));
    }

    #[test]
    fn a_peer_stays_while_it_has_a_connection_or_an_address() {
        let (p, mut book, mut peers) = (peer(), AddressBook::new(), PeerBook::default());
        let engine_peer = to_engine_peer(&p);
        let a = addr("/memory/1");
        peers.connected(&mut book, p, Some(&a)).unwrap();
        peers.connected(&mut book, p, None).unwrap();
        assert_eq!(
            book.ref_count(engine_peer),
            1,
            "one reference however many sources"
        );
        peers.disconnected(&mut book, p, 1);
        peers.disconnected(&mut book, p, 0);
        assert_eq!(
            book.ref_count(engine_peer),
            1,
            "the dialled address keeps it"
        );
        assert!(peers.forget(&mut book, p, &a));
        assert_eq!(book.ref_count(engine_peer), 0);
        assert!(book.lookup(engine_peer).is_none());
    }

    #[test]
    fn addresses_per_peer_are_bounded_oldest_first() {
        let (p, mut book, mut peers) = (peer(), AddressBook::new(), PeerBook::default());
        for i in 0..MAX_ADDRESSES_PER_PEER + 2 {
            peers
                .learn(&mut book, p, &addr(&format!("/memory/{i}")))
                .unwrap();
        }
        let kept = peers.dial_addresses(&p, &[]);
        assert_eq!(kept.len(), MAX_ADDRESSES_PER_PEER);
        assert_eq!(kept[0], addr("/memory/2"));
    }

    #[test]
    fn a_full_engine_book_refuses_new_peers_without_tracking_them() {
        let (p, q, mut book, mut peers) = (peer(), peer(), AddressBook::new(), PeerBook::default());
        book.set_cap(1);
        peers.connected(&mut book, p, None).unwrap();
        assert!(matches!(
            peers.connected(&mut book, q, None),
            Err(AddressBookError::Full { cap: 1 })
        ));
        assert!(!peers.is_known(&q));
        // Its connection still counts (policy closes connections by it), and
        // releasing it drops nothing it does not hold.
        assert!(peers.is_connected(&q));
        peers.disconnected(&mut book, q, 0);
        assert_eq!(book.ref_count(to_engine_peer(&p)), 1);
    }

    #[test]
    fn unconnected_peers_are_bounded_oldest_first() {
        let (mut book, mut peers) = (AddressBook::new(), PeerBook::default());
        let connected = peer();
        peers.connected(&mut book, connected, None).unwrap();
        let first = peer();
        peers.learn(&mut book, first, &addr("/memory/1")).unwrap();
        for i in 0..MAX_UNCONNECTED_PEERS {
            peers
                .learn(&mut book, peer(), &addr(&format!("/memory/{}", i + 2)))
                .unwrap();
        }
        assert!(!peers.is_known(&first), "the oldest went");
        assert!(book.lookup(to_engine_peer(&first)).is_none());
        assert!(peers.is_known(&connected), "connected peers stay");
        assert_eq!(peers.len(), MAX_UNCONNECTED_PEERS + 1);
    }
}
