//! The [`Behaviour`]: a bytesandbrains `Node` as a libp2p `NetworkBehaviour`.

use std::collections::{HashSet, VecDeque};
use std::error::Error;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::task::{Context, Poll};

use bb_runtime::engine::EngineStep;
use bb_runtime::envelope::WireEnvelope;
use bb_runtime::errors::restore::RestoreError;
use bb_runtime::node::Node;
use bb_runtime::snapshot::NodeSnapshot;
use futures::channel::{mpsc, oneshot};
use futures::executor::block_on;
use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::peer_store::memory_store;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{
    behaviour::ConnectionEstablished, CloseConnection, ConnectionClosed, ConnectionDenied,
    ConnectionId, FromSwarm, NetworkBehaviour, NewExternalAddrOfPeer, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use crate::ack;
use crate::address_book::{BookChanges, PeerBook};
use crate::codec::{Codec, Request, PROTOCOL_NAME};
use crate::compat;
use crate::engine::host::{send_job, Host, HostStats, Init, Job, Links};
use crate::engine::lane::lane;
use crate::engine::link::EngineLink;
use crate::engine::message::{FromEngine, HealthRecord, ToEngine};
use crate::engine::pool::Start;
use crate::engine::{EnginePool, NodeHandle};
use crate::error::{SnapshotFailed, StartError};
use crate::event::{Event, PeerDenied, RejectKind, Rejection, SendFailure};
use crate::health::{Health, Transition};
use crate::inbound::Inbound;
use crate::outbound::{Link, Outbound, Outcome};
use crate::peer::{peer_of_address, to_libp2p_peer};
use crate::stats::WireStats;
use crate::Config;

/// Steps the engine may hand the swarm before it waits for the swarm.
const STEP_LANE: usize = 1024;

/// Control messages to the engine thread before the swarm holds them.
const CONTROL_LANE: usize = 1024;

/// Handle calls waiting for the engine thread before callers wait.
const JOB_QUEUE: usize = 64;

/// Runs a bytesandbrains [`Node`] over libp2p, with the Node on an engine
/// thread of its own (or of an [`EnginePool`]).
///
/// Every envelope the engine yields (`EngineStep::SendEnvelope`) becomes a
/// request on [`PROTOCOL_NAME`] to the peer its `dest_peer_addresses`
/// names, dialling it if needed; every envelope a peer sends is pushed into
/// the Node's ingress as `IngressEvent::EnvelopeFrom`, attributed to the
/// connection's authenticated `PeerId`, and acknowledged. The behaviour
/// moves the engine's clock and bridges the engine's cross-Node data plane
/// (see [`crate::sites`]).
///
/// # Where the Node lives
///
/// The Node is `!Send`, and its graphs may compute for seconds. So it is
/// built by a closure on an engine thread and stays there; this behaviour
/// is `Send`, runs on the swarm's task (a `tokio::spawn`ed one is fine),
/// and never waits for the engine: ping, identify and other peers'
/// acknowledgements go on while a graph computes. Reach the Node from any
/// task or thread with [`Behaviour::handle`].
///
/// # Peers
///
/// Every peer the swarm can reach is resolvable by the engine's `wire.Send`:
/// a connected peer, and a peer whose address the swarm learned
/// (`FromSwarm::NewExternalAddrOfPeer`, which `identify` and
/// `Swarm::add_peer_address` raise). The engine's AddressBook then holds
/// `/p2p/<peer>` for it; the behaviour keeps the dialable addresses and
/// offers them when the swarm dials the peer. A peer with neither a
/// connection nor an address is released from the engine's book (only this
/// behaviour's reference; entries the engine's protocols hold stay). With a
/// `libp2p::peer_store` beside it, pass the store's events to
/// [`Behaviour::on_peer_store_event`] so that an address the store removes,
/// the engine forgets. (The store drops peers past its capacity without an
/// event; this behaviour keeps at most a thousand unconnected peers itself,
/// forgetting the one learned longest ago.)
///
/// The Node's PeerGovernor decides admission: a peer blocked with
/// `block_peer(..)`, or left off `set_allowlist(..)` (through
/// [`NodeHandle::with_node`]), gets no connection in either direction, its
/// open connections are closed ([`Event::ConnectionDenied`],
/// [`Event::PeerDisconnected`]) and its envelopes never reach the engine.
/// A peer that keeps failing (dial failures, timeouts, closed connections,
/// streams that break) is backed off: this behaviour does not dial it for
/// its envelopes until the back-off passes, and they fail at once with
/// [`SendFailure::Backoff`] meanwhile (dials the application or other
/// behaviours make are theirs); past the governor's threshold it reports
/// [`Event::PeerDown`], and [`Event::PeerUp`] when the peer acknowledges an
/// envelope again.
pub struct Behaviour {
    inner: request_response::Behaviour<Codec>,
    local_peer: Option<PeerId>,
    handle: NodeHandle,
    engine: EngineLink,
    outbound: Outbound,
    inbound: Inbound,
    health: Health,
    /// Peers made resolvable to the engine, with their dialable addresses.
    peers: PeerBook,
    /// Denied peers whose connections the swarm has been asked to close.
    disconnecting: HashSet<PeerId>,
    /// Events and requests for the swarm.
    pending: VecDeque<ToSwarm<Event, THandlerInEvent<Self>>>,
}

impl Behaviour {
    /// Builds the Node with `make_node` on an engine thread of its own, and
    /// returns the behaviour that carries its envelopes. The thread stops
    /// when the behaviour is dropped.
    ///
    /// `make_node` runs on that thread: it is where the `!Send` Node is
    /// created (`bytesandbrains::install` with the engine `PeerId` of the
    /// swarm's key, see [`to_engine_peer`](crate::to_engine_peer)), and,
    /// after a restart, restored ([`Behaviour::restore`]). Its error, or
    /// panic, comes back as [`StartError::Install`].
    ///
    /// The Node's bootstrap runs if it has not, the data-plane routing the
    /// engine leaves out is stamped (see [`crate::sites`]), the compiler's
    /// deadline gates are let pass under a real clock, and `/p2p/<local
    /// peer>` is added to the Node's local addresses. Nothing else needs
    /// calling: add the behaviour to a swarm and poll the swarm.
    pub fn new<F, E>(make_node: F, config: Config) -> Result<Self, StartError>
    where
        F: FnOnce() -> Result<Node, E> + Send + 'static,
        E: Into<Box<dyn Error + Send + Sync>>,
    {
        let pool = EnginePool::new(1).map_err(StartError::Thread)?;
        Self::with_pool(&pool, make_node, config)
    }

    /// [`Behaviour::new`] on a thread of `pool`, shared with other Nodes:
    /// a thousand Nodes in one process need a few threads, not a thousand.
    pub fn with_pool<F, E>(
        pool: &EnginePool,
        make_node: F,
        config: Config,
    ) -> Result<Self, StartError>
    where
        F: FnOnce() -> Result<Node, E> + Send + 'static,
        E: Into<Box<dyn Error + Send + Sync>>,
    {
        let (control, control_rx) = lane(CONTROL_LANE);
        let (steps_tx, steps) = lane(STEP_LANE);
        let (jobs, jobs_rx) = mpsc::channel(JOB_QUEUE);
        let stats = Arc::new(HostStats::default());
        let links = Links {
            control: control_rx,
            out: steps_tx,
            jobs: jobs_rx,
            stats: Arc::clone(&stats),
            emit_op_steps: config.op_steps(),
        };
        let (init_tx, init_rx) = oneshot::channel::<Result<Init, StartError>>();
        let start: Start = Box::new(move || {
            Box::pin(async move {
                let node = match catch_unwind(AssertUnwindSafe(make_node)) {
                    Ok(Ok(node)) => node,
                    Ok(Err(e)) => {
                        let _ = init_tx.send(Err(StartError::Install(e.into())));
                        return;
                    }
                    Err(panic) => {
                        let why = panic_message(&panic);
                        let _ = init_tx.send(Err(StartError::Install(why.into())));
                        return;
                    }
                };
                let (host, init) = Host::new(node, links);
                if init_tx.send(Ok(init)).is_ok() {
                    host.await;
                }
            })
        });
        pool.start(start).map_err(|_| StartError::EngineStopped)?;
        // Quick: the closure installs and the host reads a few fields.
        let init = block_on(init_rx).map_err(|_| StartError::EngineStopped)??;
        Ok(Self::wire_up(
            init,
            config,
            jobs,
            stats,
            EngineLink::new(control, steps),
        ))
    }

    fn wire_up(
        init: Init,
        config: Config,
        jobs: mpsc::Sender<Job>,
        stats: Arc<HostStats>,
        engine: EngineLink,
    ) -> Self {
        let max_ingress = config
            .max_ingress_envelopes()
            .unwrap_or_else(|| init.ingress.capacity());
        let max_envelope_bytes = config
            .max_envelope_bytes()
            .unwrap_or(init.caps.max_total_bytes);
        let inner = request_response::Behaviour::with_codec(
            // Its own read timeout comes first, so a trickled frame is
            // answered and reported before request-response drops the
            // stream at its timeout.
            Codec::new(init.caps, max_envelope_bytes)
                .with_read_timeout(config.request_timeout() * 3 / 4)
                .with_expired_refused(config.wire_deadlines()),
            [(PROTOCOL_NAME, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.request_timeout())
                .with_max_concurrent_streams(config.max_concurrent_streams()),
        );
        let handle = NodeHandle {
            jobs,
            ingress: init.ingress.clone(),
            peer: init.local_peer,
            stats,
        };
        Self {
            inner,
            local_peer: init.local_peer,
            handle,
            engine,
            outbound: Outbound::new(&config, max_envelope_bytes),
            inbound: Inbound::new(init.ingress, max_ingress, init.sites),
            health: Health::default(),
            peers: PeerBook::default(),
            disconnecting: HashSet::new(),
            pending: VecDeque::new(),
        }
    }

    /// A handle on the Node, for any task or thread: invoke Modules, deliver
    /// events, block peers, read state, take its `AppEvent`s as a stream.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Keeps the engine in step with a `libp2p::peer_store::MemoryStore`
    /// composed beside this behaviour: an added address makes the peer
    /// resolvable, a removed one is forgotten, and the peer is released
    /// from the engine's AddressBook once it has no address and no
    /// connection. Pass every event of the store here.
    pub fn on_peer_store_event(&mut self, event: &memory_store::Event) {
        match event {
            memory_store::Event::PeerAddressAdded {
                peer_id, address, ..
            } => self.learn(*peer_id, address),
            memory_store::Event::PeerAddressRemoved { peer_id, address } => {
                self.remove_address(peer_id, address);
            }
        }
    }

    /// Forgets one dialable address of `peer` (in either form, with or
    /// without `/p2p/<peer>`). Returns whether it was known.
    pub fn remove_address(&mut self, peer: &PeerId, address: &Multiaddr) -> bool {
        let mut changes = BookChanges::default();
        let known = self.peers.forget(&mut changes, *peer, address);
        self.tell_book(changes);
        known
    }

    /// Forgets every dialable address of `peer`; it stays resolvable while
    /// it is connected.
    pub fn remove_peer(&mut self, peer: &PeerId) {
        let mut changes = BookChanges::default();
        self.peers.forget_peer(&mut changes, *peer);
        self.tell_book(changes);
    }

    /// Whether this behaviour has made `peer` resolvable to the engine.
    pub fn is_known(&self, peer: &PeerId) -> bool {
        self.peers.is_known(peer)
    }

    /// How many peers this behaviour has made resolvable to the engine.
    pub fn known_peers(&self) -> usize {
        self.peers.len()
    }

    /// Envelopes and bytes sent to and received from other peers so far.
    pub fn wire_stats(&self) -> WireStats {
        *self.inbound.stats()
    }

    /// Hands the Node an envelope from `peer` that arrived by other means (a
    /// relay of the application's, a test), exactly as one read from the
    /// wire: the same policy, routing and ingress checks apply, and the
    /// refusal the peer would have been acknowledged with is returned.
    pub fn inject_envelope(
        &mut self,
        peer: PeerId,
        envelope: WireEnvelope,
    ) -> Result<(), Rejection> {
        self.accept(peer, envelope)
    }

    /// Restores `snapshot` (from [`Behaviour::snapshot`]) onto `node`,
    /// installed afresh from the same model and targets with the same
    /// identity. Call it inside the closure given to [`Behaviour::new`].
    ///
    /// bb-runtime 0.3.8's `Node::restore` strands the graphs it restores;
    /// the freshly installed graphs stand in for them (executions that were
    /// part-way through a graph are not carried over). `tests/restart.rs`
    /// notices when upstream fixes this.
    pub fn restore(node: &mut Node, snapshot: NodeSnapshot) -> Result<(), RestoreError> {
        compat::restore(node, snapshot)
    }

    /// Outbound envelopes sent and neither acknowledged nor failed yet; at
    /// most [`Config::with_max_envelopes_in_flight`].
    pub fn envelopes_in_flight(&self) -> usize {
        self.outbound.in_flight()
    }

    /// Outbound envelopes waiting to be sent (for room under the in-flight
    /// bound, or for a busy peer's back-off); at most
    /// [`Config::with_max_queued_envelopes`].
    pub fn envelopes_queued(&self) -> usize {
        self.outbound.queued()
    }

    /// Steps the engine thread has handed over that the swarm has not
    /// taken yet; at most a thousand and twenty-four wait on the lane, then
    /// the engine waits.
    pub fn engine_backlog(&self) -> usize {
        self.engine.backlog()
    }

    /// A snapshot of the Node to restore after a restart, with every
    /// envelope this behaviour has not seen acknowledged (in flight or
    /// queued) back in the engine's outbound queue: a behaviour built on the
    /// restored Node sends them again. One that had reached the peer is
    /// dropped there by the engine's inbound dedup window, so the peer's
    /// engine takes each envelope once.
    ///
    /// The envelopes are the ones unacknowledged when this is called; the
    /// returned future completes once the engine thread has taken the
    /// snapshot, and needs no polling of the swarm. The running Node is left
    /// as it was.
    pub fn snapshot(
        &self,
    ) -> impl Future<Output = Result<NodeSnapshot, SnapshotFailed>> + Send + 'static {
        let unacknowledged: Vec<WireEnvelope> = self.outbound.unacknowledged().cloned().collect();
        let jobs = self.handle.jobs.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            let job: Job = Box::new(move |host: &mut Host| {
                let _ = tx.send(host.snapshot(unacknowledged));
            });
            send_job(&jobs, job)
                .await
                .map_err(|_| SnapshotFailed::EngineStopped)?;
            rx.await
                .map_err(|_| SnapshotFailed::EngineStopped)?
                .map_err(SnapshotFailed::Engine)
        }
    }

    /// Routes one step of the engine.
    fn on_engine(&mut self, output: FromEngine) {
        match output {
            FromEngine::Send(envelope) => self.send(envelope),
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

    fn on_step(&mut self, step: EngineStep) {
        let event = match step {
            EngineStep::AppEvent {
                module_name,
                topic,
                value_bytes,
            } => Event::AppEvent {
                module_name,
                topic,
                value_bytes,
            },
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
            step => Event::Engine(step),
        };
        self.report(event);
    }

    fn send(&mut self, envelope: WireEnvelope) {
        let wire_req_id = envelope.correlation.as_ref().map_or(0, |c| c.wire_req_id);
        let Some(peer) = envelope
            .dest_peer_addresses
            .iter()
            .find_map(|a| peer_of_address(a))
        else {
            return self.fail(None, wire_req_id, SendFailure::NoDestination);
        };
        if Some(peer) == self.local_peer {
            // A class that sends to its other instances may include itself.
            return match self.accept(peer, envelope) {
                Ok(()) => self.on_outcome(Outcome::Acknowledged { peer, wire_req_id }),
                Err(rejection) => {
                    self.fail(Some(peer), wire_req_id, SendFailure::Rejected(rejection))
                }
            };
        }
        let mut link = Link {
            inner: &mut self.inner,
            health: &self.health,
            peers: &self.peers,
            stats: self.inbound.stats_mut(),
        };
        self.outbound.send(&mut link, peer, envelope);
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Acknowledged { peer, wire_req_id } => {
                let (recorded, transition) = self.health.answered(peer);
                if recorded {
                    self.engine
                        .tell(ToEngine::Health(peer, HealthRecord::Success));
                }
                self.report_transition(peer, transition);
                self.report(Event::EnvelopeAcknowledged {
                    peer,
                    wire_req_id: (wire_req_id != 0).then_some(wire_req_id),
                });
            }
            Outcome::Failed {
                peer,
                wire_req_id,
                reason,
            } => self.fail(peer, wire_req_id, reason),
            Outcome::Busy { peer, retry_in } => {
                self.health.busy(peer, retry_in);
                let wait_ns = u64::try_from(retry_in.as_nanos()).unwrap_or(u64::MAX);
                self.engine
                    .tell(ToEngine::Health(peer, HealthRecord::Advisory { wait_ns }));
                self.report(Event::BackoffAdvised {
                    peer,
                    retry_in,
                    cause: bb_runtime::framework::BackoffCause::QueueFull,
                });
            }
        }
    }

    fn fail(&mut self, peer: Option<PeerId>, wire_req_id: u64, reason: SendFailure) {
        // Envelopes in flight when their peer was denied fail as closed
        // connections or refused dials: they were denied, not unanswered.
        let reason = match peer
            .filter(|_| reason.is_unreachable())
            .and_then(|p| self.health.denial(&p))
        {
            Some(denial) => SendFailure::Denied(denial),
            None => reason,
        };
        tracing::debug!(?peer, wire_req_id, %reason, "envelope not delivered");
        if let Some(peer) = peer.filter(|_| reason.is_unreachable()) {
            let transition = self.health.failed(peer);
            self.engine
                .tell(ToEngine::Health(peer, HealthRecord::Failure));
            self.report_transition(peer, transition);
        }
        self.engine.tell(ToEngine::SendFailed {
            wire_req_id,
            peer,
            label: reason.label(),
            detail: reason.to_string(),
        });
        self.report(Event::SendFailed {
            peer,
            wire_req_id: (wire_req_id != 0).then_some(wire_req_id),
            reason,
        });
    }

    fn report(&mut self, event: Event) {
        self.pending.push_back(ToSwarm::GenerateEvent(event));
    }

    fn report_transition(&mut self, peer: PeerId, transition: Option<Transition>) {
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

    fn on_wire_event(&mut self, event: request_response::Event<Request, crate::codec::Ack>) {
        use request_response::{Event as Wire, Message};
        match event {
            Wire::Message {
                peer,
                connection_id,
                message:
                    Message::Request {
                        request, channel, ..
                    },
            } => {
                let verdict = match request {
                    Request::Envelope(envelope) => {
                        self.accept(peer, Arc::unwrap_or_clone(envelope))
                    }
                    Request::Invalid(rejection) => Err(rejection),
                };
                let answer = match verdict {
                    Ok(()) => ack::accepted(),
                    Err(rejection) => {
                        tracing::debug!(%peer, %rejection, "inbound envelope rejected");
                        let answer = ack::rejected(&rejection);
                        self.report(Event::InboundRejected {
                            peer,
                            connection_id: Some(connection_id),
                            rejection,
                        });
                        answer
                    }
                };
                // A closed channel means the stream already failed; the
                // inner behaviour reports that as an InboundFailure.
                let _ = self.inner.send_response(channel, answer);
            }
            Wire::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => self.outbound.on_response(request_id, &response),
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

    /// Hands a decoded envelope from `peer` to the engine.
    fn accept(&mut self, peer: PeerId, envelope: WireEnvelope) -> Result<(), Rejection> {
        let Some(advice) = self.inbound.accept(&self.health, peer, envelope)? else {
            return Ok(());
        };
        let transition = self.health.advised(peer, advice.retry_in);
        self.report_transition(peer, transition);
        self.report(Event::BackoffAdvised {
            peer,
            retry_in: advice.retry_in,
            cause: advice.cause,
        });
        Ok(())
    }

    fn tell_book(&mut self, changes: BookChanges) {
        for (peer, hold) in changes.0 {
            self.engine.tell(ToEngine::Book(peer, hold));
        }
    }

    /// Makes `peer` resolvable by the engine's `wire.Send` through a learned
    /// address.
    fn learn(&mut self, peer: PeerId, address: &Multiaddr) {
        if Some(peer) == self.local_peer {
            return;
        }
        let mut changes = BookChanges::default();
        let _ = self.peers.learn(&mut changes, peer, address);
        self.tell_book(changes);
    }

    fn on_connection_established(&mut self, established: &ConnectionEstablished) {
        let peer = established.peer_id;
        let dialed = established
            .endpoint
            .is_dialer()
            .then(|| established.endpoint.get_remote_address());
        let mut changes = BookChanges::default();
        let _ = self.peers.connected(&mut changes, peer, dialed);
        self.tell_book(changes);
        // Admitted, so no longer on its way out: a later denial closes it
        // again. (A connection is no answer: a peer that accepts and drops it
        // keeps its failure streak; only an acknowledgement clears that.)
        self.disconnecting.remove(&peer);
    }

    fn on_connection_closed(&mut self, closed: &ConnectionClosed) {
        let peer = closed.peer_id;
        let mut changes = BookChanges::default();
        self.peers
            .disconnected(&mut changes, peer, closed.remaining_established);
        self.tell_book(changes);
        if closed.remaining_established == 0 {
            self.disconnecting.remove(&peer);
        }
    }

    /// Refuses a connection with a denied peer.
    fn admit(
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
    fn enforce_policy(&mut self) {
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
            self.pending.push_back(ToSwarm::CloseConnection {
                peer_id: peer,
                connection: CloseConnection::All,
            });
            self.report(Event::PeerDisconnected { peer, reason });
        }
    }
}

/// What a panic said, if it said it in words.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the closure panicked".to_string())
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler =
        <request_response::Behaviour<Codec> as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(peer, connection_id, Endpoint::Listener)?;
        self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(peer) = maybe_peer {
            self.admit(peer, connection_id, Endpoint::Dialer)?;
        }
        let mut extra = self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )?;
        if let Some(peer) = maybe_peer {
            // The inner behaviour offers the addresses it cached from the
            // same `FromSwarm` events, with `/p2p/<peer>` appended: add only
            // ours that neither it nor the dial already has, in either form.
            let given: Vec<Multiaddr> = addresses.iter().chain(&extra).cloned().collect();
            extra.extend(self.peers.dial_addresses(&peer, &given));
        }
        Ok(extra)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // A dial by address alone learns the peer only here.
        self.admit(peer, connection_id, Endpoint::Dialer)?;
        self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match &event {
            FromSwarm::ConnectionEstablished(established) => {
                self.on_connection_established(established)
            }
            FromSwarm::ConnectionClosed(closed) => self.on_connection_closed(closed),
            // Addresses that arrive here are never raised again (they would
            // loop back to every behaviour).
            FromSwarm::NewExternalAddrOfPeer(NewExternalAddrOfPeer { peer_id, addr }) => {
                self.learn(*peer_id, addr)
            }
            _ => {}
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer, connection_id, event);
    }

    #[tracing::instrument(level = "trace", name = "bb_libp2p::poll", skip(self, cx))]
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        loop {
            // 1. What is ready for the swarm.
            if let Some(action) = self.pending.pop_front() {
                return Poll::Ready(action);
            }
            // 2. The wire: requests in, answers and failures of ours.
            match self.inner.poll(cx) {
                Poll::Ready(ToSwarm::GenerateEvent(event)) => {
                    self.on_wire_event(event);
                    continue;
                }
                Poll::Ready(action) => {
                    return Poll::Ready(action.map_out(|_| unreachable!("matched above")));
                }
                Poll::Pending => {}
            }
            // 3. Outbound timers and queue: outcomes of envelopes.
            let mut link = Link {
                inner: &mut self.inner,
                health: &self.health,
                peers: &self.peers,
                stats: self.inbound.stats_mut(),
            };
            if let Poll::Ready(outcome) = self.outbound.poll(cx, &mut link) {
                self.on_outcome(outcome);
                continue;
            }
            // 4. The engine thread: envelopes to send, events.
            if let Poll::Ready(output) = self.engine.poll(cx) {
                self.on_engine(output);
                continue;
            }
            return Poll::Pending;
        }
    }
}

/// The behaviour, and so any swarm holding it, can be spawned on any
/// executor; the handle can go to any task or thread.
const _: () = {
    const fn send<T: Send + 'static>() {}
    send::<Behaviour>();
    send::<NodeHandle>();
    send::<crate::AppEvents>();
};
