//! The Node's side of the thread boundary: a task on an engine thread that
//! owns the `!Send` Node, moves its clock, and trades envelopes and events
//! with the swarm's task over two bounded lanes.
//!
//! Its loop, each time it is woken:
//! 1. apply what the swarm's side sent (peer changes, health, failures);
//! 2. run the handles' jobs on the Node;
//! 3. hand the steps it holds to the swarm (or the application's event
//!    stream); while they have no room, stop here: the Node is not polled
//!    and its own bounded outbound queue takes the backpressure;
//! 4. run engine cycles, a bounded number before it yields to the other
//!    Nodes on the thread.
//!
//! The host stops, and drops the Node, when the swarm's side is dropped.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bb_runtime::engine::EngineStep;
use bb_runtime::envelope::{EnvelopeCaps, WireEnvelope};
use bb_runtime::ids::PeerId as EnginePeerId;
use bb_runtime::ingress::{IngressEvent, IngressQueueRef};
use bb_runtime::node::Node;
use bb_runtime::snapshot::NodeSnapshot;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use libp2p::PeerId;
use prost::Message;

use super::carried::Carried;
use super::delivery::Delivery;
use super::lane::{Closed, LaneRx, LaneTx};
use super::message::{FromEngine, HealthRecord, Policy, ToEngine};
use crate::address_book::EngineBook;
use crate::admission;
use crate::clock::Clock;
use crate::compat::{
    self, backoff_rx, bulk, contexts::Pruner, deadline_gates, dedup, senders, sites::Sites,
    unresolved, wire_requests,
};
use crate::error::SnapshotFailed;
use crate::event::AppEvent;
use crate::metrics::Metrics;
use crate::peer::{p2p_address, to_libp2p_peer};
use crate::transfer::plan::Plan;

/// Engine cycles one wake-up runs before it yields to the other Nodes on
/// the thread (and schedules itself again).
const CYCLES_PER_WAKE: usize = 32;

/// Jobs one wake-up runs before it polls the Node.
const JOBS_PER_WAKE: usize = 64;

/// Work a handle runs on the host, on the engine thread.
pub(crate) type Job = Box<dyn FnOnce(&mut Host) + Send>;

/// What the swarm's side needs from the Node, read once on the engine
/// thread when the host starts.
pub(crate) struct Init {
    pub(crate) local_peer: Option<PeerId>,
    pub(crate) sites: Sites,
    pub(crate) ingress: IngressQueueRef,
    pub(crate) caps: EnvelopeCaps,
    /// `NodeConfig::ingress_byte_budget`.
    pub(crate) ingress_byte_budget: usize,
}

/// Counters read from other threads.
#[derive(Debug, Default)]
pub(crate) struct HostStats {
    /// Times the host task was polled.
    pub(crate) wakeups: AtomicU64,
    /// The engine's ingress byte budget in use, as the swarm's side needs
    /// it to answer busy before the engine would drop a value.
    pub(crate) ingress_bytes: IngressBytes,
    /// Envelopes handed to the swarm and their outcomes.
    pub(crate) delivery: Delivery,
}

/// The bytes of values the engine holds against its ingress byte budget
/// (`NodeConfig::ingress_byte_budget`), and of those pushed but not yet
/// taken.
///
/// The engine charges each fill's payload against the budget when it
/// takes the envelope from its ingress, and drops the value
/// (`WireReceiveFailed { BudgetExceeded }`) when it does not fit: after the
/// transport acknowledged it. So the swarm's side counts what it pushes,
/// the host publishes what the engine holds after each cycle, and an
/// envelope that would not fit is answered busy instead.
#[derive(Debug, Default)]
pub(crate) struct IngressBytes {
    /// Payload bytes the swarm's side pushed, ever.
    pushed: AtomicUsize,
    /// Of those, the bytes the engine has taken in (or refused).
    taken: AtomicUsize,
    /// The engine's `ingress_bytes_in_flight` after its last cycle.
    held: AtomicUsize,
    /// Envelopes the swarm's side pushed, ever.
    envelopes_pushed: AtomicU64,
    /// Of those, the envelopes the engine has taken in.
    envelopes_taken: AtomicU64,
}

impl IngressBytes {
    /// Bytes the engine will hold once it takes what waits in its ingress.
    pub(crate) fn committed(&self) -> usize {
        let waiting = self
            .pushed
            .load(Ordering::Acquire)
            .saturating_sub(self.taken.load(Ordering::Acquire));
        self.held.load(Ordering::Acquire).saturating_add(waiting)
    }

    /// An envelope of `bytes` payload bytes was pushed.
    pub(crate) fn pushed(&self, bytes: usize) {
        self.pushed.fetch_add(bytes, Ordering::AcqRel);
        self.envelopes_pushed.fetch_add(1, Ordering::AcqRel);
    }

    /// How many envelopes the swarm's side pushed.
    pub(crate) fn envelopes_pushed(&self) -> u64 {
        self.envelopes_pushed.load(Ordering::Acquire)
    }

    /// How many of the envelopes pushed so far the engine has taken: those
    /// numbered below it (counting from 0) are out of its ingress.
    pub(crate) fn envelopes_taken(&self) -> u64 {
        self.envelopes_taken.load(Ordering::Acquire)
    }
}

/// The ends of the lanes and channels a host is built with.
pub(crate) struct Links {
    pub(crate) control: LaneRx<ToEngine>,
    pub(crate) out: LaneTx<FromEngine>,
    pub(crate) jobs: mpsc::Receiver<Job>,
    pub(crate) stats: Arc<HostStats>,
    pub(crate) emit_op_steps: bool,
    /// Where the time of each engine poll is recorded, if anywhere.
    pub(crate) metrics: Option<Metrics>,
    pub(crate) sizes: Sizes,
}

/// The sizes the engine thread works to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// The largest payload an envelope carries (the largest value and its
    /// wrapping): the engine's caps fit it.
    pub(crate) max_payload: usize,
    /// Envelopes encoded larger than this cross as transfers: their digest
    /// is computed here, off the swarm's task.
    pub(crate) transfer_above: usize,
}

/// A Node and its clock, on an engine thread.
pub(crate) struct Host {
    node: Node,
    /// The keys the Node's receive dedup gate took, for its snapshots.
    taken: dedup::Taken,
    /// The envelopes a restore's snapshot carried, still to hand over.
    carried: Carried,
    clock: Clock,
    pruner: Pruner,
    sites: Sites,
    links: Links,
    /// Where `AppEvent`s go instead of the swarm, once the application
    /// asked for a stream.
    app_events: Option<mpsc::Sender<AppEvent>>,
    /// Steps for the swarm that found no room yet: at most one engine
    /// cycle's worth, since the Node is not polled while any wait.
    pending: VecDeque<FromEngine>,
    /// Events the engine must not miss that found its ingress full; at most
    /// one per envelope failure.
    backlog: VecDeque<IngressEvent>,
    /// What the swarm sent, drained in one lock.
    received: VecDeque<ToEngine>,
    /// The governor's lists last reported to the swarm.
    policy_seen: (HashSet<EnginePeerId>, Option<HashSet<EnginePeerId>>),
    clock_dirty: bool,
}

impl Host {
    /// Prepares `node` for libp2p: the local `/p2p` address, the data-plane
    /// bridge, the deadline gates, and its bootstrap.
    pub(crate) fn new(node: Node, links: Links) -> (Self, Init) {
        let mut node = super::caps::raise(node, links.sizes.max_payload);
        let mut pending = VecDeque::new();
        let local_peer = match to_libp2p_peer(&node.peer_id()) {
            Ok(peer) => {
                if let Err(e) = node.add_local_address(p2p_address(&peer)) {
                    tracing::warn!(%peer, "could not add the local /p2p address: {e:?}");
                }
                Some(peer)
            }
            Err(e) => {
                tracing::warn!("the Node's PeerId is not the swarm's: {e}");
                None
            }
        };
        let mut sites = Sites::new();
        let engine = node.engine_install_handle();
        let names: Vec<String> = engine.graphs_named().map(|(n, _)| n.to_string()).collect();
        for name in names {
            if let Some(graph) = engine.graph_mut(&name) {
                sites.bridge(&name, graph);
                deadline_gates::disarm_deadline_gates(graph);
                senders::stamp_outputs(graph);
                unresolved::resolve_sends(graph);
                bulk::encode_sends(graph);
                dedup::key_on_envelopes(graph);
                backoff_rx::pass_acknowledged(graph);
            }
        }
        let clock = Clock::new(node.engine_install_handle());
        let init = Init {
            local_peer,
            sites: sites.clone(),
            ingress: node.ingress_handle(),
            caps: node.config().envelope_caps,
            ingress_byte_budget: node.config().ingress_byte_budget,
        };
        senders::Notes::clear();
        let mut taken = dedup::Taken::of(&mut node);
        let bootstrap = taken.during(|| node.run_bootstrap(&[]));
        let mut host = Self {
            node,
            taken,
            carried: Carried::restored(),
            clock,
            pruner: Pruner::default(),
            sites,
            links,
            app_events: None,
            pending: VecDeque::new(),
            backlog: VecDeque::new(),
            received: VecDeque::new(),
            policy_seen: (HashSet::new(), None),
            clock_dirty: true,
        };
        host.check_policy();
        match bootstrap {
            Ok(steps) => host.on_steps(steps),
            Err(error) => pending.push_back(FromEngine::BootstrapFailed(error)),
        }
        host.pending.extend(pending);
        (host, init)
    }

    /// Runs `f` on the Node, its clock moved to now, then reports a changed
    /// block or allow list to the swarm. A panic in `f` comes back as `Err`, for the caller to
    /// resume.
    pub(crate) fn with_node<R>(
        &mut self,
        f: impl FnOnce(&mut Node) -> R,
    ) -> std::thread::Result<R> {
        // What `f` reads of the engine's time is now.
        self.clock.advance(self.node.engine_install_handle());
        let result = catch_unwind(AssertUnwindSafe(|| f(&mut self.node)));
        self.clock_dirty = true;
        self.check_policy();
        result
    }

    /// Sends `AppEvent`s to `sink` from now on instead of the swarm.
    pub(crate) fn divert_app_events(&mut self, sink: mpsc::Sender<AppEvent>) {
        self.app_events = Some(sink);
    }

    /// A snapshot with `unacknowledged` back in the engine's outbound
    /// queue, so a Node restored from it sends them again. The running
    /// Node's queue is left as it was.
    pub(crate) fn snapshot(
        &mut self,
        unacknowledged: Vec<WireEnvelope>,
    ) -> Result<NodeSnapshot, SnapshotFailed> {
        // The engine refuses to snapshot with events still on its bus
        // (`BusNotDrained`).
        self.run_until_idle();
        // The engine's queue drops its oldest past its cap, without a word
        // to the snapshot: refuse rather than carry fewer than were held.
        // Envelopes the engine handed over that still wait here for the
        // swarm are unacknowledged too.
        let waiting: Vec<WireEnvelope> = self
            .pending
            .iter()
            .filter_map(|m| match m {
                FromEngine::Send(envelope, None, _) => Some(envelope.clone()),
                FromEngine::Send(hollow, Some(plan), _) => Some(plan.rehydrate(hollow)),
                _ => None,
            })
            .collect();
        let unacknowledged: Vec<WireEnvelope> = unacknowledged.into_iter().chain(waiting).collect();
        let cap = self.node.config().max_outbound_queue;
        let queue = &mut self.node.engine_install_handle().framework.outbound_queue;
        let held = queue.len() + unacknowledged.len();
        if let Some(cap) = cap.filter(|cap| held > *cap) {
            return Err(SnapshotFailed::TooManyUnacknowledged { held, cap });
        }
        let before = queue.drain_all();
        let carried = Carried::digests(&unacknowledged);
        for envelope in before.iter().cloned().chain(unacknowledged) {
            queue.push(envelope);
        }
        let snapshot = self.node.snapshot().map(|mut snapshot| {
            self.taken.save(&mut snapshot);
            Carried::save(carried, &mut snapshot);
            snapshot
        });
        let snapshot = snapshot.map_err(SnapshotFailed::Engine);
        let queue = &mut self.node.engine_install_handle().framework.outbound_queue;
        queue.drain_all();
        for envelope in before {
            queue.push(envelope);
        }
        snapshot
    }

    /// Runs engine cycles, as a wake-up would, until its ingress and its
    /// bus are empty (a bounded number).
    pub(crate) fn run_until_idle(&mut self) {
        let waker = std::task::Waker::noop();
        for _ in 0..CYCLES_PER_WAKE {
            let bus = self.node.engine_install_handle().bus.len();
            if bus == 0 && self.node.ingress_handle().is_empty() {
                break;
            }
            senders::Notes::clear();
            let node = &mut self.node;
            let polled = self
                .taken
                .during(|| node.poll(&mut Context::from_waker(waker)));
            if let Poll::Ready(steps) = polled {
                self.clock_dirty = true;
                self.on_steps(steps);
            }
        }
    }

    /// Envelopes handed over so far, once the work already given to the
    /// engine has run.
    pub(crate) fn handed_after_idle(&mut self) -> u64 {
        self.run_until_idle();
        self.links.stats.delivery.handed()
    }

    /// Reports the governor's lists to the swarm when they changed.
    fn check_policy(&mut self) {
        let governor = &self
            .node
            .engine_install_handle()
            .framework
            .peer_state
            .governor;
        let lists = (governor.blocklist(), governor.allowlist());
        if lists == (&self.policy_seen.0, self.policy_seen.1.as_ref()) {
            // Most jobs invoke a Module and leave the lists as they were.
            return;
        }
        self.policy_seen = (lists.0.clone(), lists.1.cloned());
        let policy = Policy::of(governor);
        self.pending.push_back(FromEngine::Policy(policy));
    }

    /// Handles the steps of one engine poll, then forgets the senders noted
    /// during it.
    fn on_steps(&mut self, steps: Vec<EngineStep>) {
        for step in steps {
            self.on_step(step);
        }
        senders::Notes::clear();
        bulk::release();
    }

    fn on_step(&mut self, step: EngineStep) {
        match step {
            EngineStep::AppEvent {
                module_name,
                topic,
                value_bytes,
            } => {
                // A graph output has no module name; an `IngressEvent::AppEvent`
                // the engine echoes has one, and no note.
                let sender = module_name
                    .is_empty()
                    .then(|| senders::Notes::sender_of(&topic))
                    .flatten();
                self.pending.push_back(FromEngine::App(AppEvent {
                    sender,
                    topic,
                    value_bytes,
                }));
            }
            EngineStep::SendEnvelope(mut envelope) => {
                let carried = self.carried.was_carried(&envelope);
                self.sites.outbound(&mut envelope);
                if let Some(c) = envelope.correlation.as_ref() {
                    let engine = self.node.engine_install_handle();
                    wire_requests::hand_over(engine, c.wire_req_id);
                    self.clock.track_wire_request(engine, c.wire_req_id);
                }
                self.links.stats.delivery.handed_over();
                let shared = bulk::take_shared(&mut envelope);
                let kept: usize = shared.iter().flatten().map(|p| p.bytes.len()).sum();
                let plan = if envelope.encoded_len() + kept > self.links.sizes.transfer_above {
                    Some(Plan::of(&mut envelope, shared))
                } else {
                    bulk::put_back(&mut envelope, shared);
                    None
                };
                self.pending
                    .push_back(FromEngine::Send(envelope, plan, carried));
            }
            EngineStep::OpCompleted { .. } | EngineStep::AsyncSuspended { .. }
                if !self.links.emit_op_steps => {}
            step => self.pending.push_back(FromEngine::Step(step)),
        }
    }

    /// Applies what the swarm's side sent. `Err` once that side is gone.
    fn take_control(&mut self, cx: &mut Context<'_>) -> Result<(), Closed> {
        while let Poll::Ready(result) = self.links.control.poll_drain(cx, &mut self.received) {
            result?;
            self.clock.advance(self.node.engine_install_handle());
            while let Some(message) = self.received.pop_front() {
                self.apply(message);
            }
        }
        Ok(())
    }

    fn apply(&mut self, message: ToEngine) {
        let engine = self.node.engine_install_handle();
        match message {
            ToEngine::Book(peer, hold) => {
                let book = &mut engine.framework.address_book;
                if !hold {
                    book.release(peer);
                } else if let Err(e) = book.hold(peer) {
                    tracing::warn!(%peer, "engine AddressBook refused the peer: {e}");
                    self.pending.push_back(FromEngine::BookRefused(peer));
                }
            }
            ToEngine::Health(peer, HealthRecord::Failure) => {
                admission::record_failure(engine, &peer);
            }
            ToEngine::Health(peer, HealthRecord::Success) => {
                admission::record_success(engine, &peer);
            }
            ToEngine::Health(peer, HealthRecord::Advisory { wait_ns }) => {
                admission::record_advisory(engine, &peer, wait_ns);
            }
            ToEngine::ForgetHealth(peers) => admission::forget_in_engine(engine, &peers),
            ToEngine::Acknowledged { wire_req_id } => {
                wire_requests::settle(engine, wire_req_id);
            }
            ToEngine::SendFailed {
                wire_req_id,
                peer,
                label,
                detail,
            } => {
                if let Some(event) = compat::fail_parked_op(&mut self.node, wire_req_id, &detail) {
                    self.tell_engine(event);
                }
                self.tell_engine(IngressEvent::SendFailed {
                    wire_req_id,
                    peer: peer.map(|p| p.to_bytes()).unwrap_or_default(),
                    reason: label,
                });
            }
        }
    }

    /// Pushes an event the engine must not miss, keeping order behind any
    /// that are still waiting for room.
    fn tell_engine(&mut self, event: IngressEvent) {
        self.clock_dirty = true;
        if self.backlog.is_empty() {
            if let Err(event) = self.node.ingress_handle().push(event) {
                self.backlog.push_back(event);
            }
        } else {
            self.backlog.push_back(event);
        }
    }

    fn flush_backlog(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        let ingress = self.node.ingress_handle();
        while let Some(event) = self.backlog.pop_front() {
            if let Err(event) = ingress.push(event) {
                self.backlog.push_front(event);
                break;
            }
        }
    }

    /// Runs the handles' jobs waiting now. Before each, what the swarm sent
    /// is applied, so a job sent after a change on the swarm's side (a peer
    /// connected, an address added) sees it.
    fn run_jobs(&mut self, cx: &mut Context<'_>) -> Result<(), Closed> {
        for _ in 0..JOBS_PER_WAKE {
            match self.links.jobs.poll_next_unpin(cx) {
                Poll::Ready(Some(job)) => {
                    self.take_control(cx)?;
                    job(self);
                }
                Poll::Ready(None) | Poll::Pending => return Ok(()),
            }
        }
        // More wait: come back after the Node has had its turn.
        cx.waker().wake_by_ref();
        Ok(())
    }

    /// Hands the held steps on. `Ready(Ok)` when none are left, `Pending`
    /// while they wait for room (the host is woken when there is).
    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        loop {
            let Some(first) = self.pending.front() else {
                return Poll::Ready(Ok(()));
            };
            let to_app = matches!(first, FromEngine::App(_));
            let diverting = self.app_events.is_some();
            match self.app_events.as_mut().filter(|_| to_app) {
                Some(sink) => match sink.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let Some(FromEngine::App(event)) = self.pending.pop_front() else {
                            unreachable!("matched above");
                        };
                        let _ = sink.start_send(event);
                    }
                    // The stream was dropped: back to the swarm.
                    Poll::Ready(Err(_)) => self.app_events = None,
                    Poll::Pending => return Poll::Pending,
                },
                None if diverting => {
                    // One at a time, so an AppEvent behind it keeps its order.
                    let step = self.pending.pop_front().expect("front exists");
                    if let Err(full) = self.links.out.try_push(step) {
                        self.pending.push_front(full.0);
                        if self.links.out.is_closed() {
                            return Poll::Ready(Err(Closed));
                        }
                        if self.links.out.poll_room(cx).is_pending() {
                            return Poll::Pending;
                        }
                    }
                }
                None => {
                    self.links.out.push_from(&mut self.pending)?;
                    if !self.pending.is_empty() && self.links.out.poll_room(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// Runs one engine cycle. `Ready` when it did work (or a timer came
    /// due), `Pending` when the engine is idle and its wake-ups (ingress
    /// waker, clock timer) are registered.
    fn cycle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Consume a due timer; the cycle below acts on it.
        let _ = self.clock.poll_due(cx);
        self.clock.advance(self.node.engine_install_handle());
        let bytes = &self.links.stats.ingress_bytes;
        // Everything pushed by now is drained by this cycle.
        let pushed = bytes.pushed.load(Ordering::Acquire);
        let envelopes = bytes.envelopes_pushed.load(Ordering::Acquire);
        senders::Notes::clear();
        let started = self.links.metrics.as_ref().map(|_| Instant::now());
        let node = &mut self.node;
        let polled = self.taken.during(|| node.poll(cx));
        if let (Some(metrics), Some(started)) = (&self.links.metrics, started) {
            metrics.engine_polled(started.elapsed());
        }
        let held = self.node.engine_install_handle().ingress_bytes_in_flight();
        bytes.held.store(held, Ordering::Release);
        bytes.taken.store(pushed, Ordering::Release);
        // An engine with its bootstrap pending puts envelopes back in its
        // ingress: what is still there was not taken.
        let waiting = self.node.ingress_handle().len() as u64;
        bytes
            .envelopes_taken
            .store(envelopes.saturating_sub(waiting), Ordering::Release);

        if let Poll::Ready(steps) = polled {
            self.clock_dirty = true;
            self.pruner.maybe_prune(self.node.engine_install_handle());
            self.on_steps(steps);
            return Poll::Ready(());
        }
        if self.clock_dirty {
            self.clock_dirty = false;
            self.clock.rearm(self.node.engine_install_handle());
        }
        // A timer armed at least a millisecond ahead is ready only once that
        // time has passed, so this runs at most once more per wake.
        self.clock.poll_due(cx)
    }
}

impl Future for Host {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.links.stats.wakeups.fetch_add(1, Ordering::Relaxed);
        for _ in 0..CYCLES_PER_WAKE {
            if this.take_control(cx).is_err() || this.run_jobs(cx).is_err() {
                // The behaviour was dropped: stop, and drop the Node.
                return Poll::Ready(());
            }
            match this.flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(Closed)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
            this.flush_backlog();
            if this.cycle(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // A busy engine: let the thread's other Nodes run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Sends `job` to the host behind `jobs`.
pub(crate) async fn send_job(jobs: &mpsc::Sender<Job>, job: Job) -> Result<(), Closed> {
    jobs.clone().send(job).await.map_err(|_| Closed)
}
