//! Each peer's share of the engine's ingress.
//!
//! The ingress is one bounded queue for every peer. Filled by whoever sends
//! fastest, it would answer everyone else busy: one peer flooding would
//! slow every honest one. So a peer may hold at most an equal share of the
//! ingress among the peers holding envelopes in it now, counting one more
//! for a peer yet to come: alone, a peer gets half of it; beside ten others,
//! a twelfth. Past its share a peer is answered busy, and only that peer
//! waits. The engine takes its whole ingress on each cycle, so a share is
//! back as soon as the engine has run.

use std::collections::{HashMap, VecDeque};

use libp2p::PeerId;

/// No peer's share is smaller than this many envelopes (or the whole
/// ingress, if smaller), so a crowd of peers does not starve each other.
const MIN_SHARE: usize = 8;

/// Envelopes each peer has in the engine's ingress.
#[derive(Debug, Default)]
pub(crate) struct IngressShare {
    /// Per peer, envelopes pushed and not yet taken.
    held: HashMap<PeerId, usize>,
    /// Every envelope pushed and not yet known to be taken, by push number,
    /// oldest first.
    order: VecDeque<(u64, PeerId)>,
    /// The push number of the next envelope.
    next: u64,
}

impl IngressShare {
    /// Whether `peer` may push one more envelope into an ingress of
    /// `capacity`, now that the engine has taken every envelope numbered
    /// below `taken`.
    pub(crate) fn admits(&mut self, peer: &PeerId, capacity: usize, taken: u64) -> bool {
        self.settle(taken);
        let holders = self.held.len() + usize::from(!self.held.contains_key(peer)) + 1;
        let share = (capacity / holders).max(MIN_SHARE.min(capacity));
        self.held.get(peer).copied().unwrap_or(0) < share
    }

    /// `peer` pushed an envelope.
    pub(crate) fn pushed(&mut self, peer: PeerId) {
        *self.held.entry(peer).or_default() += 1;
        self.order.push_back((self.next, peer));
        self.next += 1;
    }

    /// Envelopes `peer` has in the ingress, as last settled.
    pub(crate) fn held_by(&self, peer: &PeerId) -> usize {
        self.held.get(peer).copied().unwrap_or(0)
    }

    /// Forgets the envelopes the engine has taken.
    fn settle(&mut self, taken: u64) {
        while let Some(&(number, peer)) = self.order.front() {
            if number >= taken {
                break;
            }
            self.order.pop_front();
            if let Some(n) = self.held.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    self.held.remove(&peer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_peer_gets_half_and_newcomers_find_room() {
        let mut share = IngressShare::default();
        let (flooder, honest) = (PeerId::random(), PeerId::random());
        let mut pushed = 0;
        while share.admits(&flooder, 64, 0) {
            share.pushed(flooder);
            pushed += 1;
        }
        assert_eq!(pushed, 32);
        // Another peer still has room, and the flooder none.
        assert!(share.admits(&honest, 64, 0));
        share.pushed(honest);
        assert!(!share.admits(&flooder, 64, 0));
        assert_eq!(share.held_by(&honest), 1);
    }

    #[test]
    fn taken_envelopes_give_the_share_back() {
        let mut share = IngressShare::default();
        let peer = PeerId::random();
        for _ in 0..32 {
            assert!(share.admits(&peer, 64, 0));
            share.pushed(peer);
        }
        assert!(!share.admits(&peer, 64, 0));
        // The engine took the first 20.
        assert!(share.admits(&peer, 64, 20));
        assert_eq!(share.held_by(&peer), 12);
        // And then all of them: nothing is tracked any more.
        assert!(share.admits(&peer, 64, 32));
        assert!(share.held.is_empty() && share.order.is_empty());
    }

    #[test]
    fn many_peers_keep_a_minimum_share() {
        let mut share = IngressShare::default();
        let peers: Vec<PeerId> = (0..100).map(|_| PeerId::random()).collect();
        for peer in &peers {
            share.pushed(*peer);
        }
        // 4096 / 102 is 40; a tiny ingress still gives the minimum.
        assert!(share.admits(&peers[0], 4096, 0));
        assert!(share.admits(&peers[0], 16, 0));
        for _ in 0..7 {
            share.pushed(peers[0]);
        }
        assert!(!share.admits(&peers[0], 16, 0));
    }
}
