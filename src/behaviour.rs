//! The [`Behaviour`]: a bytesandbrains `Node` as a libp2p `NetworkBehaviour`.
//!
//! This file holds the struct, its public API and the `NetworkBehaviour`
//! impl; `routing.rs` routes steps, answers and outcomes, and
//! `connections.rs` admits and tracks peers.

mod connections;
mod routing;

use std::collections::{HashMap, HashSet, VecDeque};
use std::error::Error;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use bb_runtime::envelope::WireEnvelope;
use bb_runtime::errors::restore::RestoreError;
use bb_runtime::node::Node;
use bb_runtime::snapshot::NodeSnapshot;
use futures::channel::oneshot;
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::peer_store::memory_store;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{
    behaviour::{DialFailure, ListenFailure},
    ConnectionDenied, ConnectionId, DialError, FromSwarm, NetworkBehaviour, NewExternalAddrOfPeer,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use crate::address_book::{BookChanges, PeerBook};
use crate::codec::{Codec, PROTOCOL_NAME};
use crate::compat;
use crate::engine::host::Sizes;
use crate::engine::host::{send_job, Host, Job};
use crate::engine::link::EngineLink;
use crate::engine::start::{self, Started};
use crate::engine::{EnginePool, NodeHandle};
use crate::error::{SnapshotFailed, StartError};
use crate::event::{Event, Rejection};
use crate::health::Health;
use crate::inbound::Inbound;
use crate::metrics::GaugeShare;
use crate::outbound::{Link, Outbound};
use crate::relayed::RelayedConnections;
use crate::stats::WireStats;
use crate::transfer::framing::Framing;
use crate::transfer::receiver::Receiver;
use crate::transfer::{CHUNK_BYTES, TRANSFER_ABOVE, TRANSFER_PROTOCOL};
use crate::Config;

/// Request-response's own timeout on an exchange: only a backstop, since
/// the codec fails a stalled frame and the outbound watchdog a request
/// whose bytes stopped moving, each after the request timeout.
const EXCHANGE_CEILING: std::time::Duration = std::time::Duration::from_secs(3600);

/// The largest frame read or sent when none is configured: bytesandbrains'
/// own envelope cap, what a peer of 0.2.0 reads.
const DEFAULT_FRAME_BYTES: usize = 16 << 20;

/// The largest chunk read: four times this version's, room for a later
/// one's.
const MAX_CHUNK_BYTES: usize = 4 * CHUNK_BYTES;

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
/// its envelopes until the back-off passes; meanwhile they wait for it when
/// it was connected within the delivery window
/// ([`Config::with_delivery_window`]) and fail at once with
/// [`SendFailure::Backoff`](crate::SendFailure::Backoff) otherwise (dials
/// the application or other behaviours make are theirs); past the governor's threshold it reports
/// [`Event::PeerDown`], and [`Event::PeerUp`] when the peer acknowledges an
/// envelope again.
pub struct Behaviour {
    inner: request_response::Behaviour<Framing>,
    /// Values arriving in chunks.
    receiver: Receiver,
    local_peer: Option<PeerId>,
    handle: NodeHandle,
    engine: EngineLink,
    outbound: Outbound,
    inbound: Inbound,
    health: Health,
    /// Peers made resolvable to the engine, with their dialable addresses.
    peers: PeerBook,
    /// Which connections go through a relay.
    relayed: RelayedConnections,
    /// Denied peers whose connections the swarm has been asked to close.
    disconnecting: HashSet<PeerId>,
    /// Connections handed to the inner behaviour and not yet reported
    /// established: one another behaviour then refuses never exists.
    establishing: HashMap<ConnectionId, (PeerId, ConnectedPoint)>,
    /// Events and requests for the swarm.
    pending: VecDeque<ToSwarm<Event, THandlerInEvent<Self>>>,
    /// This behaviour's part of the metrics' gauges, when it records any.
    gauges: Option<GaugeShare>,
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
        let sizes = Sizes {
            max_payload: config.max_payload_bytes(),
            transfer_above: Self::frame_cap(&config).min(TRANSFER_ABOVE),
        };
        let started = start::start(
            pool,
            make_node,
            config.op_steps(),
            config.metrics().cloned(),
            sizes,
        )?;
        Ok(Self::wire_up(started, config))
    }

    fn wire_up(started: Started, config: Config) -> Self {
        let Started {
            init,
            jobs,
            stats,
            link: engine,
        } = started;
        let max_ingress = config
            .max_ingress_envelopes()
            .unwrap_or_else(|| init.ingress.capacity());
        let max_envelope_bytes = Self::frame_cap(&config);
        // A fill larger than the engine's ingress byte budget can never be
        // taken: the codec refuses it before reading its body.
        let mut caps = init.caps;
        caps.max_per_fill_bytes = caps.max_per_fill_bytes.min(init.ingress_byte_budget);
        let inner = request_response::Behaviour::with_codec(
            // The request timeout bounds a stall, not a whole exchange (see
            // progress.rs). The reading side's is shorter, so a stalled
            // frame is answered and reported while the sender still
            // listens; request-response's own timeout only backs both up.
            Framing::new(
                Codec::new(caps, max_envelope_bytes)
                    .with_read_timeout(config.request_timeout() * 3 / 4)
                    .with_write_timeout(config.request_timeout())
                    .with_expired_refused(config.wire_deadlines()),
                MAX_CHUNK_BYTES,
            ),
            // The new protocol first: the old one only for peers that lack it.
            [
                (TRANSFER_PROTOCOL, ProtocolSupport::Full),
                (PROTOCOL_NAME, ProtocolSupport::Full),
            ],
            request_response::Config::default()
                .with_request_timeout(config.request_timeout().max(EXCHANGE_CEILING))
                .with_max_concurrent_streams(config.max_concurrent_streams()),
        );
        let handle = NodeHandle {
            jobs,
            ingress: init.ingress.clone(),
            peer: init.local_peer,
            stats: Arc::clone(&stats),
        };
        let receiver = Receiver::new(
            config.transfer_budget(),
            config.max_payload_bytes(),
            MAX_CHUNK_BYTES,
            caps,
            config.delivery_window().max(config.request_timeout()),
        );
        Self {
            inner,
            receiver,
            local_peer: init.local_peer,
            handle,
            engine,
            outbound: Outbound::new(&config, max_envelope_bytes),
            inbound: Inbound::new(
                init.ingress,
                max_ingress,
                init.sites,
                init.ingress_byte_budget,
                stats,
                config.metrics().cloned(),
            ),
            gauges: config.metrics().cloned().map(GaugeShare::new),
            health: Health::default(),
            peers: PeerBook::default(),
            relayed: RelayedConnections::default(),
            disconnecting: HashSet::new(),
            establishing: HashMap::new(),
            pending: VecDeque::new(),
        }
    }

    /// The outbound side, and what it reads and uses of the rest.
    fn outbound_and_link(&mut self) -> (&mut Outbound, Link<'_>) {
        let link = Link {
            inner: &mut self.inner,
            health: &self.health,
            peers: &self.peers,
            relayed: &self.relayed,
            stats: self.inbound.stats_mut(),
        };
        (&mut self.outbound, link)
    }

    /// The largest frame `config` reads and sends.
    fn frame_cap(config: &Config) -> usize {
        config.max_envelope_bytes().unwrap_or(DEFAULT_FRAME_BYTES)
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
    /// it is connected. Envelopes to it are no longer sent again after a
    /// transport failure ([`Config::with_delivery_window`]).
    pub fn remove_peer(&mut self, peer: &PeerId) {
        let mut changes = BookChanges::default();
        self.peers.forget_peer(&mut changes, *peer);
        self.tell_book(changes);
        self.outbound.forget(peer);
    }

    /// Whether this behaviour has made `peer` resolvable to the engine.
    pub fn is_known(&self, peer: &PeerId) -> bool {
        self.peers.is_known(peer)
    }

    /// How many peers this behaviour has made resolvable to the engine.
    pub fn known_peers(&self) -> usize {
        self.peers.len()
    }

    /// The peers the engine can resolve now through this behaviour: those
    /// connected, or with an address learned from the swarm (kad, identify,
    /// the peer store, `Swarm::add_peer_address`), in no particular order.
    /// Build a Module's `peers` input from them with
    /// [`values::peers`](crate::values::peers).
    ///
    /// The engine's own protocols (its registry) may make more peers
    /// resolvable; a send to a peer in neither set is still tried: the
    /// behaviour dials it by `PeerId`, and it fails as
    /// [`SendFailure::Unresolved`](crate::SendFailure::Unresolved) when no
    /// behaviour of the swarm knows an address for it.
    pub fn resolvable_peers(&self) -> Vec<PeerId> {
        self.peers.resolvable().collect()
    }

    /// How many peers this behaviour keeps failure state (back-off, failure
    /// streak) for: at most a thousand; past that the ones recorded longest
    /// ago are forgotten, and a peer the behaviour forgets (no connection,
    /// no address) takes its state with it, in the engine's tables too.
    pub fn peers_with_failure_state(&self) -> usize {
        self.health.tracked()
    }

    /// Envelopes and bytes sent to and received from other peers so far.
    pub fn wire_stats(&self) -> WireStats {
        WireStats {
            chunk_bytes_sent: self.outbound.chunk_bytes_sent(),
            chunk_bytes_received: self.receiver.chunk_bytes(),
            ..*self.inbound.stats()
        }
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

    /// Answers a request of either protocol from `peer` that arrived by
    /// other means (a fuzzer, a transport of the application's), exactly
    /// as one read from the wire: an envelope goes through
    /// [`Behaviour::inject_envelope`]'s checks, a transfer's `Start` or
    /// chunk through the receiving side of [`crate::transfer`], and a
    /// refusal is reported as [`Event::InboundRejected`] too.
    pub fn inject_request(
        &mut self,
        peer: PeerId,
        request: crate::transfer::Message,
    ) -> crate::transfer::Answer {
        self.serve(peer, None, request)
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

    /// Outbound envelopes waiting to be sent: for room under the in-flight
    /// bound or for a busy peer's back-off (at most
    /// [`Config::with_max_queued_envelopes`], plus the envelopes a busy peer
    /// refused, which wait here for their retry: those came off the wire, so
    /// in flight and queued together stay within both bounds), for a cut
    /// link to come back ([`Config::with_delivery_window`]), or for a direct
    /// connection ([`Config::with_direct_connection_wait`]); each of the last
    /// two at most [`Config::with_max_queued_envelopes`] more.
    pub fn envelopes_queued(&self) -> usize {
        self.outbound.queued()
    }

    /// Values arriving in chunks ([`crate::transfer`]), and the bytes they
    /// hold: at most [`Config::with_transfer_budget`].
    pub fn transfers_receiving(&self) -> (usize, usize) {
        (self.receiver.len(), self.receiver.held())
    }

    /// Envelopes crossing in chunks to peers now, and the bytes of the
    /// payloads they read from: a value sent to many peers is held once, so
    /// ten transfers of one 8 MiB value hold 8 MiB.
    pub fn transfers_sending(&self) -> (usize, usize) {
        self.outbound.transfers_sending()
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
    /// dropped there by its receive dedup gate (same sender, engine request
    /// id and bytes), so the peer's engine takes each envelope once.
    ///
    /// The envelopes are the ones unacknowledged when this is called; the
    /// returned future completes once the engine thread has taken the
    /// snapshot, and needs no polling of the swarm. The running Node is left
    /// as it was. When the envelopes do not all fit the engine's outbound
    /// queue it fails with [`SnapshotFailed::TooManyUnacknowledged`]
    /// rather than carry fewer.
    pub fn snapshot(
        &self,
    ) -> impl Future<Output = Result<NodeSnapshot, SnapshotFailed>> + Send + 'static {
        // Those the swarm has not taken from the engine yet count too.
        let mut unacknowledged: Vec<WireEnvelope> = self.outbound.unacknowledged().collect();
        unacknowledged.extend(self.engine.waiting_envelopes());
        let jobs = self.handle.jobs.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            let job: Job = Box::new(move |host: &mut Host| {
                let _ = tx.send(host.snapshot(unacknowledged));
            });
            send_job(&jobs, job)
                .await
                .map_err(|_| SnapshotFailed::EngineStopped)?;
            rx.await.map_err(|_| SnapshotFailed::EngineStopped)?
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler =
        <request_response::Behaviour<Framing> as NetworkBehaviour>::ConnectionHandler;
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
        let handler = self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )?;
        let endpoint = ConnectedPoint::Listener {
            local_addr: local_addr.clone(),
            send_back_addr: remote_addr.clone(),
        };
        self.establishing.insert(connection_id, (peer, endpoint));
        Ok(handler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(peer) = maybe_peer {
            // Whatever the last dial found no longer holds, even if this
            // one is refused.
            self.peers.dialling(&peer);
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
        let handler = self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )?;
        let endpoint = ConnectedPoint::Dialer {
            address: addr.clone(),
            role_override,
            port_use,
        };
        self.establishing.insert(connection_id, (peer, endpoint));
        Ok(handler)
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
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer),
                error: DialError::NoAddresses,
                connection_id,
            }) => {
                // Before the inner behaviour fails the peer's requests.
                self.peers.found_no_address(*peer);
                self.inner.on_swarm_event(event);
                return self.on_connection_refused(*connection_id);
            }
            FromSwarm::DialFailure(DialFailure {
                peer_id,
                connection_id,
                ..
            }) => {
                // A dial refused before this behaviour saw it start (by
                // another behaviour) failed for another reason than
                // addresses.
                if let Some(peer) = peer_id {
                    self.peers.dialling(peer);
                }
                self.inner.on_swarm_event(event);
                return self.on_connection_refused(*connection_id);
            }
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.inner.on_swarm_event(event);
                return self.on_connection_refused(*connection_id);
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
            let (outbound, mut link) = self.outbound_and_link();
            if let Poll::Ready(outcome) = outbound.poll(cx, &mut link) {
                self.on_outcome(outcome);
                continue;
            }
            // 3b. Values arriving in chunks whose sender went quiet.
            if let Poll::Ready((peer, rejection)) = self.receiver.poll_stalled(cx) {
                self.report(Event::InboundRejected {
                    peer,
                    connection_id: None,
                    rejection,
                });
                continue;
            }
            // 4. The engine thread: envelopes to send, events; none while
            // the outbound side is full (an ending envelope wakes this
            // task, and the engine holds its envelopes meanwhile).
            if self.outbound.has_room() {
                if let Poll::Ready(output) = self.engine.poll(cx) {
                    self.on_engine(output);
                    continue;
                }
            }
            // 5. Nothing more for now: what is held, for the gauges.
            self.report_levels();
            return Poll::Pending;
        }
    }
}

impl Drop for Behaviour {
    fn drop(&mut self) {
        // Nothing will end any more: wake whoever waits for outcomes.
        self.handle.stats.delivery.close();
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
