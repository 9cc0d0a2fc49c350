//! How the behaviour routes what happens: the engine's steps, the wire's
//! requests and answers, and each envelope's outcome, into sends, health
//! records, messages to the engine thread and events.

use std::sync::Arc;

use bb_runtime::engine::EngineStep;
use bb_runtime::envelope::WireEnvelope;
use libp2p::request_response;
use libp2p::swarm::{ConnectionId, ToSwarm};
use libp2p::PeerId;

use super::Behaviour;
use crate::ack;
use crate::codec::Request;
use crate::engine::message::{FromEngine, HealthRecord, ToEngine};
use crate::event::{Event, RejectKind, Rejection, SendFailure};
use crate::health::Transition;
use crate::metrics::{GaugeShare, Levels};
use crate::outbound::Outcome;
use crate::peer::{peer_of_address, to_libp2p_peer};
use crate::transfer::framing::{Answer, Chunk, ChunkBytes, Message};
use crate::transfer::plan::Plan;
use crate::transfer::proto::Reply;
use crate::transfer::receiver::Received;

impl Behaviour {
    /// Routes one step of the engine.
    pub(super) fn on_engine(&mut self, output: FromEngine) {
        match output {
            FromEngine::Send(envelope, plan, carried) => self.send(envelope, plan, carried),
            FromEngine::App(app) => self.report(Event::AppEvent {
                sender: app.sender,
                topic: app.topic,
                value_bytes: app.value_bytes,
            }),
            FromEngine::Step(step) => self.on_step(step),
            FromEngine::Policy(policy) => {
                if self.health.set_policy(policy) {
                    self.enforce_policy();
                }
            }
            FromEngine::BootstrapFailed(error) => self.report(Event::BootstrapFailed(error)),
            FromEngine::BookRefused(peer) => self.peers.refused(&peer),
        }
    }

    pub(super) fn on_step(&mut self, step: EngineStep) {
        let event = match step {
            EngineStep::OutboundDropped { count } => Event::OutboundDropped { count },
            // Declared by the engine 0.3.8 but never emitted; reported the
            // same way as the transitions this behaviour sees itself.
            EngineStep::PeerDown { peer } => match to_libp2p_peer(&peer) {
                Ok(peer) => Event::PeerDown {
                    peer,
                    consecutive_failures: 0,
                },
                Err(_) => Event::Engine(EngineStep::PeerDown { peer }),
            },
            EngineStep::PeerUp { peer } => match to_libp2p_peer(&peer) {
                Ok(peer) => Event::PeerUp { peer },
                Err(_) => Event::Engine(EngineStep::PeerUp { peer }),
            },
            // The engine sent nothing to a peer it could not resolve (its
            // AddressBook was full): no envelope, so no request to end.
            EngineStep::PeerResolveFailed {
                peer: Some(engine_peer),
                op_ref,
                exec_id,
            } => match to_libp2p_peer(&engine_peer) {
                Ok(peer) => Event::SendFailed {
                    peer: Some(peer),
                    wire_req_id: None,
                    reason: SendFailure::Unresolved,
                },
                Err(_) => Event::Engine(EngineStep::PeerResolveFailed {
                    peer: Some(engine_peer),
                    op_ref,
                    exec_id,
                }),
            },
            step => Event::Engine(step),
        };
        self.report(event);
    }

    /// Sends `envelope` (a transfer, with a `plan`); `carried` says a
    /// snapshot carried it, so an earlier process may have delivered it.
    pub(super) fn send(&mut self, envelope: WireEnvelope, plan: Option<Plan>, carried: bool) {
        let wire_req_id = envelope.correlation.as_ref().map(|c| c.wire_req_id);
        let Some(peer) = envelope
            .dest_peer_addresses
            .iter()
            .find_map(|a| peer_of_address(a))
        else {
            return self.fail(None, wire_req_id, SendFailure::NoDestination);
        };
        if Some(peer) == self.local_peer {
            // A class that sends to its other instances may include itself.
            let envelope = match &plan {
                Some(plan) => plan.rehydrate(&envelope),
                None => envelope,
            };
            return match self.accept(peer, envelope) {
                Ok(()) => self.on_outcome(Outcome::Acknowledged { peer, wire_req_id }),
                Err(rejection) => {
                    self.fail(Some(peer), wire_req_id, SendFailure::Rejected(rejection))
                }
            };
        }
        let (outbound, mut link) = self.outbound_and_link();
        outbound.send(&mut link, peer, envelope, plan, carried);
    }

    pub(super) fn on_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Acknowledged { peer, wire_req_id } => {
                let (recorded, transition) = self.health.answered(peer);
                if recorded {
                    self.engine
                        .tell(ToEngine::Health(peer, HealthRecord::Success));
                }
                self.report_transition(peer, transition);
                if let Some(wire_req_id) = wire_req_id {
                    self.engine.tell(ToEngine::Acknowledged { wire_req_id });
                }
                self.handle.stats.delivery.ended();
                self.report(Event::EnvelopeAcknowledged { peer, wire_req_id });
            }
            Outcome::Failed {
                peer,
                wire_req_id,
                reason,
            } => self.fail(peer, wire_req_id, reason),
            Outcome::Busy { peer, retry_in } => {
                self.health.busy(peer, retry_in);
                self.bound_health();
                let wait_ns = u64::try_from(retry_in.as_nanos()).unwrap_or(u64::MAX);
                self.engine
                    .tell(ToEngine::Health(peer, HealthRecord::Advisory { wait_ns }));
                self.report(Event::BackoffAdvised {
                    peer,
                    retry_in,
                    cause: bb_runtime::framework::BackoffCause::QueueFull,
                });
            }
            Outcome::Parked { peer, reason } => {
                tracing::debug!(%peer, %reason, "envelope waits for its peer");
                self.record_failure(peer, &reason);
            }
            Outcome::Released => {}
        }
    }

    pub(super) fn fail(
        &mut self,
        peer: Option<PeerId>,
        wire_req_id: Option<u64>,
        reason: SendFailure,
    ) {
        // A dial that found no address anywhere says more than that it failed.
        let reason = match (reason, peer) {
            (SendFailure::DialFailure, Some(p)) if self.peers.is_unlocated(&p) => {
                SendFailure::Unresolved
            }
            (reason, _) => reason,
        };
        tracing::debug!(?peer, ?wire_req_id, %reason, "envelope not delivered");
        if let Some(peer) = peer {
            self.record_failure(peer, &reason);
        }
        // An envelope without a request has nothing for the engine to end.
        if let Some(wire_req_id) = wire_req_id {
            self.engine.tell(ToEngine::SendFailed {
                wire_req_id,
                peer,
                label: reason.label(),
                detail: reason.to_string(),
            });
        }
        self.handle.stats.delivery.ended();
        self.report(Event::SendFailed {
            peer,
            wire_req_id,
            reason,
        });
    }

    /// Counts a failure that says `peer` could not be reached towards its
    /// back-off and failure streak.
    fn record_failure(&mut self, peer: PeerId, reason: &SendFailure) {
        // A peer this Node denied did not fail; its closed connections are
        // this Node's doing.
        if !reason.is_unreachable() || self.health.denial(&peer).is_some() {
            return;
        }
        let transition = self.health.failed(peer);
        self.engine
            .tell(ToEngine::Health(peer, HealthRecord::Failure));
        self.report_transition(peer, transition);
        self.bound_health();
    }

    pub(super) fn report(&mut self, event: Event) {
        if let Some(metrics) = self.gauges.as_ref().map(GaugeShare::metrics) {
            match &event {
                Event::SendFailed { reason, .. } => metrics.send_failed(reason.label()),
                Event::InboundRejected { rejection, .. } => {
                    metrics.rejected(rejection.kind.label())
                }
                _ => {}
            }
        }
        self.pending.push_back(ToSwarm::GenerateEvent(event));
    }

    /// Moves the metrics' gauges to what this behaviour holds now.
    /// (The engine's ingress levels are read when the metrics are scraped:
    /// the engine thread drains the ingress without waking this side.)
    pub(super) fn report_levels(&mut self) {
        let Some(gauges) = &mut self.gauges else {
            return;
        };
        gauges.report(Levels {
            in_flight: self.outbound.in_flight(),
            queued: self.outbound.queued(),
        });
    }

    pub(super) fn report_transition(&mut self, peer: PeerId, transition: Option<Transition>) {
        match transition {
            Some(Transition::Down {
                consecutive_failures,
            }) => {
                tracing::debug!(%peer, consecutive_failures, "peer down");
                self.report(Event::PeerDown {
                    peer,
                    consecutive_failures,
                });
            }
            Some(Transition::Up) => {
                tracing::debug!(%peer, "peer up");
                self.report(Event::PeerUp { peer });
            }
            None => {}
        }
    }

    pub(super) fn on_wire_event(&mut self, event: request_response::Event<Message, Answer>) {
        use request_response::{Event as Wire, Message as Exchange};
        match event {
            Wire::Message {
                peer,
                connection_id,
                message:
                    Exchange::Request {
                        request, channel, ..
                    },
            } => {
                let answer = self.serve(peer, Some(connection_id), request);
                // A closed channel means the stream already failed; the
                // inner behaviour reports that as an InboundFailure.
                let _ = self.inner.send_response(channel, answer);
            }
            Wire::Message {
                message:
                    Exchange::Response {
                        request_id,
                        response,
                    },
                ..
            } => match response {
                Answer::Ack(ack) => self.outbound.on_response(request_id, &ack),
                Answer::Reply(reply) => {
                    let (outbound, mut link) = self.outbound_and_link();
                    outbound.on_reply(&mut link, request_id, reply)
                }
            },
            Wire::OutboundFailure {
                request_id, error, ..
            } => self.outbound.on_failure(request_id, error),
            Wire::InboundFailure {
                peer,
                connection_id,
                error,
                ..
            } => {
                let kind = match error {
                    request_response::InboundFailure::Timeout => RejectKind::Timeout,
                    _ => RejectKind::Stream,
                };
                self.report(Event::InboundRejected {
                    peer,
                    connection_id: Some(connection_id),
                    rejection: Rejection::new(kind, error.to_string()),
                });
            }
            Wire::ResponseSent { .. } => {}
        }
    }

    /// Answers one request from `peer`, reporting a refusal.
    pub(super) fn serve(
        &mut self,
        peer: PeerId,
        connection_id: Option<ConnectionId>,
        request: Message,
    ) -> Answer {
        let (answer, rejection) = self.answer(peer, request);
        if let Some(rejection) = rejection {
            tracing::debug!(%peer, %rejection, "inbound request rejected");
            self.report(Event::InboundRejected {
                peer,
                connection_id,
                rejection,
            });
        }
        answer
    }

    /// The answer to one request from `peer`, and the refusal it carries.
    fn answer(&mut self, peer: PeerId, request: Message) -> (Answer, Option<Rejection>) {
        let refused = |rejection: Rejection, transfer: bool| {
            let ack = ack::rejected(&rejection);
            let answer = if transfer {
                Answer::Reply(Reply {
                    have: Vec::new(),
                    ack: Some(ack),
                })
            } else {
                Answer::Ack(ack)
            };
            (answer, Some(rejection))
        };
        match request {
            // The codec reads only `Envelope`s; `Sending` is what this side
            // writes.
            Message::Wire(Request::Envelope(envelope) | Request::Sending(envelope, _)) => {
                match self.accept(peer, Arc::unwrap_or_clone(envelope)) {
                    Ok(()) => (Answer::Ack(ack::accepted()), None),
                    Err(rejection) => refused(rejection, false),
                }
            }
            Message::Wire(Request::Invalid(rejection)) => refused(rejection, false),
            Message::Refused(rejection) => refused(rejection, true),
            Message::Start(start) => {
                if let Some(denial) = self.health.denial(&peer) {
                    let why = format!("peer {peer} denied: {denial}");
                    return refused(Rejection::new(RejectKind::Denied, why), true);
                }
                let digest = start.digest.clone();
                let received = self.receiver.start(peer, start);
                match received.and_then(|r| self.deliver_whole(peer, &digest, r)) {
                    Ok(answer) => (answer, None),
                    Err(rejection) => refused(rejection, true),
                }
            }
            Message::Chunk(Chunk {
                digest,
                offset,
                bytes,
            }) => {
                let ChunkBytes::Received(bytes) = bytes else {
                    let why = "a chunk to send arrived as a request".to_string();
                    return refused(Rejection::new(RejectKind::Malformed, why), true);
                };
                let received = self.receiver.chunk(peer, &digest, offset, &bytes);
                drop(bytes);
                match received.and_then(|r| self.deliver_whole(peer, &digest, r)) {
                    Ok(answer) => (answer, None),
                    Err(rejection) => refused(rejection, true),
                }
            }
        }
    }

    /// The answer to a transfer's request: how far it got, or, once its
    /// value is whole, the engine's verdict on it. While the engine is too
    /// busy the value stays whole here and the answer is busy: the sender
    /// asks again with a `Start`, and sends no chunk again.
    fn deliver_whole(
        &mut self,
        peer: PeerId,
        digest: &[u8],
        received: Received,
    ) -> Result<Answer, Rejection> {
        let payload = match received {
            Received::Partial(reply) => return Ok(Answer::Reply(reply)),
            Received::Whole { payload } => payload,
        };
        if let Some(busy) = self.inbound.busy_for(&peer, payload) {
            return Err(busy);
        }
        let envelope = self.receiver.take_whole(peer, digest).ok_or_else(|| {
            Rejection::new(
                RejectKind::UnknownTransfer,
                "the whole value is no longer held".to_string(),
            )
        })?;
        self.accept(peer, envelope)?;
        Ok(Answer::Reply(Reply {
            have: Vec::new(),
            ack: Some(ack::accepted()),
        }))
    }

    /// Hands a decoded envelope from `peer` to the engine.
    pub(super) fn accept(&mut self, peer: PeerId, envelope: WireEnvelope) -> Result<(), Rejection> {
        let Some(advice) = self.inbound.accept(&self.health, peer, envelope)? else {
            return Ok(());
        };
        let transition = self.health.advised(peer, advice.retry_in);
        self.bound_health();
        self.report_transition(peer, transition);
        self.report(Event::BackoffAdvised {
            peer,
            retry_in: advice.retry_in,
            cause: advice.cause,
        });
        Ok(())
    }
}
