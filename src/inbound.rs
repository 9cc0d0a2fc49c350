//! Inbound envelopes: checked on the swarm's task and pushed straight into
//! the Node's ingress queue, which is thread-safe and wakes the engine
//! thread. The acknowledgement is decided here, without a round trip to the
//! engine thread, and still means what it always meant: the engine's
//! ingress took the envelope.

use std::sync::Arc;
use std::time::Duration;

use bb_runtime::envelope::WireEnvelope;
use bb_runtime::framework::{backoff_notice_type_hash, BackoffCause, BackoffNoticePayload};
use bb_runtime::ingress::{IngressEvent, IngressQueueRef};
use libp2p::PeerId;
use prost::Message;

use crate::compat::sites::Sites;
use crate::engine::host::HostStats;
use crate::event::{RejectKind, Rejection};
use crate::health::Health;
use crate::ingress_share::IngressShare;
use crate::metrics::{IngressProbe, Metrics};
use crate::peer::{p2p_address, peer_of_address, to_engine_peer};
use crate::stats::WireStats;

/// The engine took an envelope that asks this Node to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Advice {
    pub(crate) retry_in: Duration,
    pub(crate) cause: BackoffCause,
}

pub(crate) struct Inbound {
    ingress: IngressQueueRef,
    /// Events the ingress may hold before "busy".
    max_ingress: usize,
    sites: Sites,
    stats: WireStats,
    /// The engine's ingress byte budget, and what of it is in use.
    byte_budget: usize,
    host: Arc<HostStats>,
    metrics: Option<Metrics>,
    /// Each peer's envelopes in the ingress, against its fair share.
    share: IngressShare,
    /// What the metrics read of the ingress when scraped, for as long as
    /// this side lives.
    _probe: Arc<IngressProbe>,
}

impl Inbound {
    pub(crate) fn new(
        ingress: IngressQueueRef,
        max_ingress: usize,
        sites: Sites,
        byte_budget: usize,
        host: Arc<HostStats>,
        metrics: Option<Metrics>,
    ) -> Self {
        let probe = Arc::new(IngressProbe::new(ingress.clone(), Arc::clone(&host)));
        if let Some(metrics) = &metrics {
            metrics.watch_ingress(&probe);
        }
        Self {
            _probe: probe,
            ingress,
            max_ingress,
            sites,
            stats: WireStats::default(),
            byte_budget,
            host,
            metrics,
            share: IngressShare::default(),
        }
    }

    pub(crate) fn stats(&self) -> &WireStats {
        &self.stats
    }

    pub(crate) fn stats_mut(&mut self) -> &mut WireStats {
        &mut self.stats
    }

    /// Hands a decoded envelope from `peer` to the engine, or says why not.
    pub(crate) fn accept(
        &mut self,
        health: &Health,
        peer: PeerId,
        envelope: WireEnvelope,
    ) -> Result<Option<Advice>, Rejection> {
        let size = envelope.encoded_len();
        let wire_req_id = envelope.correlation.as_ref().map(|c| c.wire_req_id);
        let span = tracing::debug_span!("inbound_envelope", %peer, wire_req_id, size);
        let _entered = span.enter();
        self.stats.envelopes_received += 1;
        self.stats.bytes_received += size as u64;
        if let Some(metrics) = &self.metrics {
            metrics.received(size);
        }
        let verdict = self.take(health, peer, envelope);
        match &verdict {
            Ok(_) => tracing::debug!("taken"),
            Err(rejection) => tracing::debug!(%rejection, "refused"),
        }
        verdict
    }

    fn take(
        &mut self,
        health: &Health,
        peer: PeerId,
        mut envelope: WireEnvelope,
    ) -> Result<Option<Advice>, Rejection> {
        // A request already on its way when the peer was denied (its
        // connection is closing) must not reach the engine either.
        if let Some(denial) = health.denial(&peer) {
            return Err(Rejection::new(
                RejectKind::Denied,
                format!("peer {peer} denied: {denial}"),
            ));
        }
        let advice = backoff_notice(&envelope).map(|notice| Advice {
            retry_in: Duration::from_nanos(notice.min_backoff_ns),
            cause: notice.cause(),
        });
        self.sites.inbound(&mut envelope).map_err(no_receiver)?;
        // What the envelope claims of its sender is not evidence: the engine
        // files claimed addresses under the sender in its AddressBook, so a
        // claimed `/p2p/<other>` would route replies to another peer. Only
        // the connection's identity stands.
        envelope.src_peer_bytes = peer.to_bytes();
        envelope
            .src_peer_addresses
            .retain(|a| peer_of_address(a) == Some(peer));
        // The engine would take the envelope and then drop its values past
        // its byte budget; refuse it here instead, so an acknowledgement
        // keeps its meaning.
        let payload: usize = envelope.fills.iter().map(|f| f.payload.len()).sum();
        if payload > self.byte_budget {
            return Err(Rejection::new(
                RejectKind::CapsExceeded,
                format!(
                    "{payload} payload bytes exceed the receiver's ingress byte budget of {}",
                    self.byte_budget
                ),
            ));
        }
        if let Some(busy) = self.busy_for(&peer, payload) {
            return Err(busy);
        }
        let event = IngressEvent::EnvelopeFrom {
            src_peer: to_engine_peer(&peer),
            envelope,
            // The engine's Address can express only `/p2p/<peer>` of the
            // connection's remote address.
            src_observed_address: Some(p2p_address(&peer)),
        };
        self.ingress.push(event).map_err(|_| self.busy())?;
        self.host.ingress_bytes.pushed(payload);
        self.share.pushed(peer);
        Ok(advice)
    }

    /// Why an envelope from `peer` with `payload` bytes would be answered
    /// busy now, if it would: the engine's ingress bytes or events are
    /// full, or the peer holds its share of them. Only the engine thread
    /// changes these meanwhile, and only to make room.
    pub(crate) fn busy_for(&mut self, peer: &PeerId, payload: usize) -> Option<Rejection> {
        let committed = self.host.ingress_bytes.committed();
        if committed.saturating_add(payload) > self.byte_budget {
            return Some(Rejection::new(
                RejectKind::Busy,
                format!(
                    "engine holds {committed} of its {} ingress bytes; {payload} more do not fit",
                    self.byte_budget
                ),
            ));
        }
        if self.ingress.len() >= self.max_ingress {
            return Some(self.busy());
        }
        // Envelopes not in the ingress any more were taken, even if the
        // engine's cycle has not said so yet (it says so once it is over).
        let pushed = self.host.ingress_bytes.envelopes_pushed();
        let taken = pushed
            .saturating_sub(self.ingress.len() as u64)
            .max(self.host.ingress_bytes.envelopes_taken());
        if !self.share.admits(peer, self.max_ingress, taken) {
            return Some(Rejection::new(
                RejectKind::Busy,
                format!(
                    "peer holds {} envelopes of the engine ingress's {}, its share among the peers sending now",
                    self.share.held_by(peer),
                    self.max_ingress
                ),
            ));
        }
        None
    }

    fn busy(&self) -> Rejection {
        Rejection::new(
            RejectKind::Busy,
            format!(
                "engine ingress full ({} of {} events)",
                self.ingress.len(),
                self.max_ingress.min(self.ingress.capacity())
            ),
        )
    }
}

/// The engine's `BackoffNotice`, if `envelope` is one (the engine routes it by
/// the type hash of its only fill).
fn backoff_notice(envelope: &WireEnvelope) -> Option<BackoffNoticePayload> {
    let fill = envelope.fills.first()?;
    if fill.type_hash != backoff_notice_type_hash() {
        return None;
    }
    BackoffNoticePayload::decode(&fill.payload)
}

/// The refusal of a fill for a port this Node receives nothing on.
fn no_receiver(site: u64) -> Rejection {
    Rejection::new(
        RejectKind::NoReceiver,
        format!("no graph on this Node receives portable site {site:#x}"),
    )
}
