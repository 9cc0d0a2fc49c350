//! What crosses between the swarm's task and the engine thread.

use std::collections::HashSet;

use bb_runtime::engine::EngineStep;
use bb_runtime::envelope::WireEnvelope;
use bb_runtime::errors::BootstrapError;
use bb_runtime::framework::PeerGovernor;
use libp2p::PeerId;

use crate::event::{AppEvent, Denial};
use crate::peer::to_libp2p_peer;
use crate::transfer::plan::Plan;

/// From the swarm's side to the Node. Each is at most one per envelope
/// outcome or per peer change, and the swarm takes no new envelopes from
/// the engine while any wait for room (see `Behaviour`), so what waits is
/// bounded by the envelopes in flight and queued.
#[derive(Debug)]
pub(crate) enum ToEngine {
    /// Make `/p2p/<peer>` resolvable (`true`) or release it (`false`).
    Book(PeerId, bool),
    /// The transport's outcome with a peer, mirrored into the engine's
    /// back-off table and governor, which its own send gates read.
    Health(PeerId, HealthRecord),
    /// The peer's engine took the envelope of request `wire_req_id`.
    Acknowledged { wire_req_id: u64 },
    /// The swarm's side forgot these peers' failure state: forget it in the
    /// engine's tables too.
    ForgetHealth(Vec<PeerId>),
    /// An envelope the engine sent will not be delivered.
    SendFailed {
        wire_req_id: u64,
        peer: Option<PeerId>,
        label: &'static str,
        detail: String,
    },
}

/// One transport outcome with a peer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HealthRecord {
    Failure,
    Success,
    /// The peer asked for a wait (it answered busy).
    Advisory {
        wait_ns: u64,
    },
}

/// From the Node to the swarm's side.
#[derive(Debug)]
pub(crate) enum FromEngine {
    /// An envelope to put on the wire, its data-plane fills already
    /// rewritten for the receiver, with its transfer plan when it is too
    /// large for one frame, and whether a snapshot carried it (an earlier
    /// process may have delivered it).
    Send(WireEnvelope, Option<Plan>, bool),
    /// A value the Node published, with its sender.
    App(AppEvent),
    /// Any other step, reported as an event.
    Step(EngineStep),
    /// The governor's lists changed.
    Policy(Policy),
    /// The Node's bootstrap failed.
    BootstrapFailed(BootstrapError),
    /// The engine's AddressBook refused to make the peer resolvable (it
    /// was full): the swarm's side holds no reference for it.
    BookRefused(PeerId),
}

/// The governor's blocklist and allowlist, as libp2p peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Policy {
    blocked: HashSet<PeerId>,
    allowed: Option<HashSet<PeerId>>,
}

impl Policy {
    /// The lists `governor` holds now. Engine ids libp2p cannot express
    /// name no libp2p peer, so they are left out.
    pub(crate) fn of(governor: &PeerGovernor) -> Self {
        let convert = |set: &HashSet<bb_runtime::ids::PeerId>| {
            set.iter()
                .filter_map(|p| to_libp2p_peer(p).ok())
                .collect::<HashSet<_>>()
        };
        Self {
            blocked: convert(governor.blocklist()),
            allowed: governor.allowlist().map(convert),
        }
    }

    /// Why `peer` is denied, if it is.
    pub(crate) fn denial(&self, peer: &PeerId) -> Option<Denial> {
        if self.blocked.contains(peer) {
            return Some(Denial::Blocked);
        }
        match &self.allowed {
            Some(allowed) if !allowed.contains(peer) => Some(Denial::NotAllowlisted),
            _ => None,
        }
    }
}
