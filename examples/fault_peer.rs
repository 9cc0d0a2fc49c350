//! One side of a fault-injection run: a receiver or a sender of distinct
//! values through a one-hop `Ping` Module, each its own OS process, so that
//! links can be cut, slowed and lossy between them and a process can be
//! killed or restarted. `tests/faults/netns.sh` runs the two in separate
//! network namespaces and checks what they report.
//!
//! ```text
//! fault_peer receive --listen /ip4/10.77.0.2/tcp/4001 [--transport tcp|quic]
//! fault_peer send --dial <receiver's /p2p address> --count 500 --rate 50/s
//!     [--transport tcp|quic] [--snapshot-to FILE] [--restore-from FILE]
//!     [--stop-after SECS] [--size BYTES] [--request-timeout SECS]
//!     [--drain-timeout SECS] [--max-in-flight N] [--wire-deadlines]
//!     [--delivery-window SECS] [--restore-graphs]
//! ```
//!
//! Both roles take `--metrics <host:port>` to serve Prometheus metrics at
//! `http://<host:port>/metrics` while they run.
//!
//! `receive` prints its full `/p2p` multiaddr first, then a JSON line each
//! second and a last one (`"final":true`) on SIGTERM or SIGINT (or when its
//! stdin closes, with `--until-stdin-closes`): the distinct values its engine
//! output, the values it output again (`duplicates`, which the transport and
//! the receive dedup gate should make impossible), the envelopes that reached it
//! on the wire, and its RSS.
//!
//! `send` sends values `0..count` (each its sequence number, padded to
//! `--size`) at the given rate and accounts for every envelope: acknowledged,
//! failed with an `Event::SendFailed` (by reason label), or still in flight
//! or queued at exit; `lost` is what is none of these and must be 0. It
//! prints a JSON progress line each second and a summary last. It exits once
//! every envelope has an outcome, or `--drain-timeout` after its last value
//! (default 30 s), or on SIGTERM, SIGINT or `--stop-after`. Stopped that way
//! with `--snapshot-to FILE`, it writes `Behaviour::snapshot()` (which puts
//! every unacknowledged envelope back in the engine's outbound queue) with
//! its ed25519 key and next sequence number to FILE; `--restore-from FILE`
//! starts a sender with that identity, restores the Node and sends the
//! carried envelopes and the rest of `0..count` (see `send` for the graphs
//! the restore leaves out, and `--restore-graphs`).
//!
//! Wire deadlines are off unless `--wire-deadlines` is given: every engine
//! Send carries a 100 ms per-hop budget, which a delayed or lossy link
//! exceeds; the request timeout (default 5 s) bounds each envelope instead.
//! `--max-in-flight` sets `Config::with_max_envelopes_in_flight` (256 by
//! default). Both roles log every failed or refused envelope and every
//! closed connection to stderr.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::error::Error;
use std::fmt::Write as _;
use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bb_libp2p::{
    to_engine_peer, values, Address, Behaviour, Config, EngineStep, Event, Node, NodeHandle,
    NodeSnapshot, WireEnvelope,
};

#[path = "common/metrics_endpoint.rs"]
mod metrics_endpoint;
use bytesandbrains::proto::onnx::ModelProto;
use bytesandbrains::{Compiler, Graph, Module};
use futures::channel::oneshot;
use libp2p::futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, Swarm};
use prost::Message as _;
use tokio::time::{interval, sleep, MissedTickBehavior};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// What the closure that builds a Node on its engine thread returns.
type NodeResult = std::result::Result<Node, Box<dyn Error + Send + Sync>>;

/// How long the sender tries to reach the receiver before it gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection outlives the pauses of a cut link: only the request
/// timeout and the transports' own keep-alives end it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a stopping sender keeps polling before it snapshots, so that
/// the last value it handed the Node has become an envelope and the swarm
/// has taken it from the engine thread: the snapshot carries the envelopes
/// the behaviour holds and those still in the engine's queue.
const QUIESCE: Duration = Duration::from_millis(50);

/// Starts a file written by `--snapshot-to`.
const SAVED_MAGIC: &[u8; 8] = b"bbfault1";

const USAGE: &str =
    "usage: fault_peer receive --listen <multiaddr> [--transport tcp|quic] [--until-stdin-closes]
       fault_peer send --dial <multiaddr/p2p/<peer>> --count N --rate R[/s] [--transport tcp|quic]
                       [--snapshot-to FILE] [--restore-from FILE] [--stop-after SECS] [--size BYTES]
                       [--request-timeout SECS] [--drain-timeout SECS] [--max-in-flight N]
                       [--wire-deadlines]
                       [--restore-graphs]
       either role: [--metrics <host:port>]";

/// The sender sends `x` to `peers`; the receiver outputs it as `y`.
struct Ping;
impl Module for Ping {
    fn name(&self) -> &str {
        "Ping"
    }
    fn body(&self, g: &mut Graph) {
        let peers = g.input("peers");
        let x = g.input("x");
        g.net_out("port", peers, x);
        let received = g.lookup_output("port").expect("port");
        g.output("y", received);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Quic,
}

impl Transport {
    fn parse(name: &str) -> Result<Self> {
        match name {
            "tcp" => Ok(Transport::Tcp),
            "quic" => Ok(Transport::Quic),
            _ => Err(format!("--transport takes tcp or quic, not {name:?}").into()),
        }
    }

    fn of(address: &Multiaddr) -> Result<Self> {
        for protocol in address.iter() {
            match protocol {
                Protocol::Tcp(_) => return Ok(Transport::Tcp),
                Protocol::QuicV1 => return Ok(Transport::Quic),
                _ => {}
            }
        }
        Err(format!("{address} is neither TCP nor QUIC").into())
    }

    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }
}

struct Common {
    transport: Option<Transport>,
    request_timeout: Duration,
    wire_deadlines: bool,
    max_in_flight: Option<usize>,
    /// `Config::with_delivery_window`, when not the default.
    delivery_window: Option<Duration>,
    /// Serves Prometheus metrics here.
    metrics: Option<SocketAddr>,
}

impl Common {
    /// The behaviour's configuration; with `--metrics`, its metrics are
    /// served from now on (the address goes to stderr).
    async fn config(&self) -> Result<Config> {
        let mut config = Config::default()
            .with_request_timeout(self.request_timeout)
            .with_wire_deadlines(self.wire_deadlines);
        if let Some(envelopes) = self.max_in_flight {
            config = config.with_max_envelopes_in_flight(envelopes);
        }
        if let Some(window) = self.delivery_window {
            config = config.with_delivery_window(window);
        }
        Ok(metrics_endpoint::with_metrics(config, self.metrics).await?)
    }

    /// The transport `address` uses, which `--transport` must agree with.
    fn transport_of(&self, address: &Multiaddr) -> Result<Transport> {
        let transport = Transport::of(address)?;
        match self.transport {
            Some(t) if t != transport => Err(format!(
                "--transport {} but {address} is {}",
                t.name(),
                transport.name()
            )
            .into()),
            _ => Ok(transport),
        }
    }
}

struct ReceiveArgs {
    listen: Multiaddr,
    until_stdin_closes: bool,
}

struct SendArgs {
    dial: Multiaddr,
    count: u64,
    rate: f64,
    size: usize,
    snapshot_to: Option<PathBuf>,
    restore_from: Option<PathBuf>,
    stop_after: Option<Duration>,
    drain_timeout: Duration,
    restore_graphs: bool,
}

enum Role {
    Receive(ReceiveArgs),
    Send(SendArgs),
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(Role, Common)> {
    let role = args.next().ok_or("missing role")?;
    let mut common = Common {
        transport: None,
        request_timeout: Duration::from_secs(5),
        wire_deadlines: false,
        max_in_flight: None,
        delivery_window: None,
        metrics: None,
    };
    let (mut listen, mut dial, mut count, mut rate) = (None, None, None, None);
    let (mut until_stdin_closes, mut restore_graphs) = (false, false);
    let mut size = 8;
    let (mut snapshot_to, mut restore_from, mut stop_after) = (None, None, None);
    let mut drain_timeout = Duration::from_secs(30);
    while let Some(flag) = args.next() {
        if flag == "--wire-deadlines" {
            common.wire_deadlines = true;
            continue;
        }
        if flag == "--until-stdin-closes" {
            until_stdin_closes = true;
            continue;
        }
        if flag == "--restore-graphs" {
            restore_graphs = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--transport" => common.transport = Some(Transport::parse(&value)?),
            "--metrics" => common.metrics = Some(value.parse()?),
            "--listen" => listen = Some(value.parse::<Multiaddr>()?),
            "--dial" => dial = Some(value.parse::<Multiaddr>()?),
            "--count" => count = Some(value.parse::<u64>()?),
            "--rate" => rate = Some(value.trim_end_matches("/s").parse::<f64>()?),
            "--size" => size = value.parse::<usize>()?.max(8),
            "--snapshot-to" => snapshot_to = Some(PathBuf::from(value)),
            "--restore-from" => restore_from = Some(PathBuf::from(value)),
            "--stop-after" => stop_after = Some(seconds(&value)?),
            "--request-timeout" => common.request_timeout = seconds(&value)?,
            "--max-in-flight" => common.max_in_flight = Some(value.parse()?),
            "--delivery-window" => common.delivery_window = Some(seconds(&value)?),
            "--drain-timeout" => drain_timeout = seconds(&value)?,
            _ => return Err(format!("unexpected argument {flag:?}").into()),
        }
    }
    let role = match role.as_str() {
        "receive" => Role::Receive(ReceiveArgs {
            listen: listen.ok_or("receive needs --listen")?,
            until_stdin_closes,
        }),
        "send" => {
            let rate = rate.ok_or("send needs --rate")?;
            if !rate.is_finite() || rate <= 0.0 {
                return Err("--rate must be positive".into());
            }
            Role::Send(SendArgs {
                dial: dial.ok_or("send needs --dial")?,
                count: count.ok_or("send needs --count")?,
                rate,
                size,
                snapshot_to,
                restore_from,
                stop_after,
                drain_timeout,
                restore_graphs,
            })
        }
        _ => return Err(format!("unknown role {role:?}").into()),
    };
    Ok((role, common))
}

fn seconds(value: &str) -> Result<Duration> {
    Ok(Duration::from_secs_f64(
        value.trim_end_matches('s').parse::<f64>()?,
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let (role, common) = match parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Installed before anything else, so that no signal takes its default
    // action (an exit without a summary).
    let stop = match stop_signal() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("error: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    metrics_endpoint::init_logging();
    let result = match role {
        Role::Receive(args) => receive(args, common, stop).await,
        Role::Send(args) => send(args, common, stop).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C elsewhere than Unix).
/// The handlers are installed when this is called, not when the future is
/// first polled.
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Outputs each value it receives and counts what it sees.
async fn receive(args: ReceiveArgs, common: Common, stop: impl Future<Output = ()>) -> Result<()> {
    common.transport_of(&args.listen)?;
    let (model, targets) = compile()?;
    let key = Keypair::generate_ed25519();
    let behaviour = Behaviour::new(
        install(&key, model, targets[1].clone()),
        common.config().await?,
    )?;
    let mut swarm = build_swarm(key, behaviour)?;
    let node = swarm.behaviour().handle();
    swarm.listen_on(args.listen.clone())?;

    let stdin_closed = stdin_closes(args.until_stdin_closes);
    tokio::pin!(stop);
    tokio::pin!(stdin_closed);

    let mut counts = Received::new();
    let mut printed_address = false;
    let mut report = interval(Duration::from_secs(1));
    report.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } if !printed_address => {
                    let address = address
                        .with_p2p(*swarm.local_peer_id())
                        .map_err(|a| format!("{a} already names a peer"))?;
                    println!("{address}");
                    printed_address = true;
                }
                SwarmEvent::ConnectionEstablished { .. } => counts.connections += 1,
                SwarmEvent::ConnectionClosed { cause, .. } => {
                    eprintln!("connection closed: {cause:?}");
                }
                SwarmEvent::Behaviour(Event::AppEvent { topic, value_bytes, .. })
                    if topic == "y" =>
                {
                    let fresh = counts.seen.insert(sequence(&value_bytes)?);
                    counts.duplicates += u64::from(!fresh);
                }
                SwarmEvent::Behaviour(Event::InboundRejected { rejection, .. }) => {
                    counts.rejected += 1;
                    eprintln!("inbound envelope refused: {rejection}");
                }
                _ => {}
            },
            _ = report.tick() => {
                let slots = engine_slots(&node).await?;
                println!("{}", counts.line(&swarm, slots, false));
            }
            _ = &mut stop => break,
            _ = &mut stdin_closed => break,
        }
    }
    let slots = engine_slots(&node).await?;
    println!("{}", counts.line(&swarm, slots, true));
    Ok(())
}

/// Resolves once stdin closes if `watch`; never otherwise.
fn stdin_closes(watch: bool) -> impl Future<Output = ()> {
    let (closed, on_close) = oneshot::channel::<()>();
    if watch {
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            drop(closed);
        });
    }
    async move {
        match watch {
            true => drop(on_close.await),
            false => std::future::pending().await,
        }
    }
}

/// What a receiver has seen.
struct Received {
    started: Instant,
    /// Distinct values its engine output.
    seen: HashSet<u64>,
    /// Values its engine output again.
    duplicates: u64,
    rejected: u64,
    connections: u64,
}

impl Received {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            seen: HashSet::new(),
            duplicates: 0,
            rejected: 0,
            connections: 0,
        }
    }

    /// A JSON line; `last` marks the final one.
    fn line(&self, swarm: &Swarm<Behaviour>, engine_slots: usize, last: bool) -> String {
        format!(
            "{{\"role\":\"receive\",\"final\":{last},\"t_ms\":{},\"received\":{},\
             \"duplicates\":{},\"wire_received\":{},\"rejected\":{},\
             \"connections\":{},\"max_seq\":{},\"engine_slots\":{engine_slots},\"rss_kib\":{}}}",
            self.started.elapsed().as_millis(),
            self.seen.len(),
            self.duplicates,
            swarm.behaviour().wire_stats().envelopes_received,
            self.rejected,
            self.connections,
            self.seen.iter().max().map_or(-1, |&s| s as i64),
            rss_kib(),
        )
    }
}

/// The entries of the engine's slot table that hold a value, read on its
/// thread.
async fn engine_slots(node: &NodeHandle) -> Result<usize> {
    Ok(node
        .with_node(|node| node.engine_stats().slot_table_occupied)
        .await?)
}

/// The sequence number a value carries in its first eight bytes.
fn sequence(value_bytes: &[u8]) -> Result<u64> {
    let bytes = values::decode_bytes(value_bytes)?;
    let head: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("a value shorter than its sequence number")?;
    Ok(u64::from_le_bytes(head))
}

/// What a sender knows about the envelopes it is responsible for.
#[derive(Default)]
struct Tally {
    /// Values handed to the Node in this process.
    invoked: u64,
    /// Envelopes a restored snapshot carried.
    restored: u64,
    acknowledged: u64,
    failed: BTreeMap<&'static str, u64>,
    /// Outcomes so far by correlation id (`wire_req_id`), to catch an
    /// envelope with a second one (about 16 bytes and the map's overhead
    /// per envelope: the RSS figures include them).
    outcomes: HashMap<u64, u64>,
    /// Envelopes the restored snapshot carried, by correlation id. A Node
    /// mints each id once, but a restored one mints its ids afresh, so an
    /// id may also be on up to this many carried envelopes.
    carried: HashMap<u64, u64>,
    /// Outcomes past one per envelope with their correlation id.
    second_outcomes: u64,
    /// Outcomes of envelopes whose correlation id an earlier envelope
    /// already had: the id no longer tells them apart.
    reused_wire_req_ids: u64,
    /// Outcomes of envelopes without a correlation id, which the two
    /// counts above cannot cover.
    outcomes_without_id: u64,
    invoke_errors: u64,
    /// Engine steps other than the ones the behaviour turns into its own
    /// events, by kind (an `OpFailed` here is a value that never left).
    engine_steps: BTreeMap<String, u64>,
}

impl Tally {
    fn sent(&self) -> u64 {
        self.invoked + self.restored
    }

    fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Counts the envelopes a restored snapshot carries.
    fn carry(&mut self, snapshot: &NodeSnapshot) {
        let envelopes = &snapshot.transient.framework.pending_outbound;
        self.restored = envelopes.len() as u64;
        for entry in envelopes {
            let id = WireEnvelope::decode(entry.envelope_bytes.as_slice())
                .ok()
                .and_then(|envelope| envelope.correlation)
                .map(|c| c.wire_req_id);
            if let Some(id) = id {
                *self.carried.entry(id).or_default() += 1;
            }
        }
    }

    fn settle(&mut self, wire_req_id: Option<u64>, outcome: &str) {
        let Some(id) = wire_req_id else {
            self.outcomes_without_id += 1;
            return;
        };
        let outcomes = self.outcomes.entry(id).or_default();
        *outcomes += 1;
        if *outcomes > 1 {
            self.reused_wire_req_ids += 1;
        }
        // One envelope minted here, and those carried with the same id.
        let envelopes = 1 + self.carried.get(&id).copied().unwrap_or(0);
        if *outcomes > envelopes {
            self.second_outcomes += 1;
            eprintln!("envelope {id:#x}: {outcome} after an earlier outcome");
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::EnvelopeAcknowledged { wire_req_id, .. } => {
                self.acknowledged += 1;
                self.settle(wire_req_id, "acknowledged");
            }
            Event::SendFailed {
                wire_req_id,
                reason,
                ..
            } => {
                *self.failed.entry(reason.label()).or_default() += 1;
                match wire_req_id {
                    Some(id) => eprintln!("envelope {id:#x} failed: {reason}"),
                    None => eprintln!("envelope failed: {reason}"),
                }
                self.settle(wire_req_id, reason.label());
            }
            Event::Engine(step) => {
                *self.engine_steps.entry(step_kind(&step)).or_default() += 1;
                if let EngineStep::OpFailed { error, .. } = &step {
                    eprintln!("op failed: {}", error.detail);
                }
            }
            Event::OutboundDropped { count } => {
                *self
                    .engine_steps
                    .entry("OutboundDropped".into())
                    .or_default() += count as u64;
            }
            _ => {}
        }
    }
}

/// An engine step's variant name.
fn step_kind(step: &EngineStep) -> String {
    let debug = format!("{step:?}");
    debug
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Why a sender stopped.
#[derive(Clone, Copy)]
enum Ending {
    Done,
    Signal,
    StopAfter,
    DrainTimeout,
}

impl Ending {
    fn label(self) -> &'static str {
        match self {
            Ending::Done => "done",
            Ending::Signal => "signal",
            Ending::StopAfter => "stop_after",
            Ending::DrainTimeout => "drain_timeout",
        }
    }
}

/// Sends values at a steady rate and accounts for every envelope.
async fn send(args: SendArgs, common: Common, stop: impl Future<Output = ()>) -> Result<()> {
    let transport = common.transport_of(&args.dial)?;
    let Some(Protocol::P2p(receiver)) = args.dial.iter().last() else {
        return Err(format!("{} does not end in /p2p/<peer id>", args.dial).into());
    };
    let (model, targets) = compile()?;
    let sender = targets[0].clone();
    let mut tally = Tally::default();
    let (key, first_seq, snapshot) = match &args.restore_from {
        Some(path) => {
            let saved = Saved::read(path)?;
            tally.carry(&saved.snapshot);
            (saved.key, saved.next_seq, Some(saved.snapshot))
        }
        None => (Keypair::generate_ed25519(), 0, None),
    };
    let make_node = install(&key, model, sender.clone());
    let restore_graphs = args.restore_graphs;
    // The Node is built, and restored, on its engine thread.
    let behaviour = Behaviour::new(
        move || -> NodeResult {
            let mut node = make_node()?;
            if let Some(snapshot) = snapshot {
                // `Behaviour::restore` works around bb-runtime 0.3.8's
                // `Node::restore`, which strands the graphs it restores;
                // `--restore-graphs` uses the engine's own, to see that.
                if restore_graphs {
                    node.restore(snapshot)
                } else {
                    Behaviour::restore(&mut node, snapshot)
                }
                .map_err(|e| format!("restore: {e:?}"))?;
            }
            Ok(node)
        },
        common.config().await?,
    )?;
    let mut swarm = build_swarm(key.clone(), behaviour)?;
    let node = swarm.behaviour().handle();
    let pending_async_baseline = node.with_node(|node| node.pending_async_count()).await?;
    let receiver_address: Multiaddr = args
        .dial
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    // Makes the receiver resolvable by the engine's wire.Send, and dialable
    // by the behaviour for the envelopes a snapshot carried.
    swarm.add_peer_address(receiver, receiver_address);

    let started = Instant::now();
    let rss_kib_start = rss_kib();
    let peers = values::peers(&[receiver]);
    let mut next_seq = first_seq;
    let mut connected_once = false;
    let mut connected = false;
    let mut last_value_at: Option<Instant> = None;
    let mut send_tick = interval(Duration::from_secs_f64(1.0 / args.rate));
    send_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut report = interval(Duration::from_secs(1));
    report.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut check = interval(Duration::from_millis(50));
    let mut next_dial = Instant::now();
    tokio::pin!(stop);

    let stopped = loop {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == receiver => {
                    connected_once = true;
                    connected = true;
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. }
                    if peer_id == receiver =>
                {
                    eprintln!("connection closed: {cause:?}");
                    connected = num_established > 0;
                }
                SwarmEvent::OutgoingConnectionError { error, .. } if !connected_once => {
                    eprintln!("dial: {error}");
                }
                SwarmEvent::Behaviour(event) => tally.on_event(event),
                _ => {}
            },
            _ = send_tick.tick(), if connected_once && next_seq < args.count => {
                let x = values::bytes(&value(next_seq, args.size));
                let (sender, peers) = (sender.clone(), peers.clone());
                let invoked = node
                    .with_node(move |node| {
                        node.invoke(&sender, &[("peers", &peers), ("x", &x)])
                            .map(drop)
                            .map_err(|e| format!("{e:?}"))
                    })
                    .await?;
                match invoked {
                    Ok(()) => tally.invoked += 1,
                    Err(e) => {
                        tally.invoke_errors += 1;
                        eprintln!("invoke {next_seq}: {e:?}");
                    }
                }
                next_seq += 1;
                last_value_at = Some(Instant::now());
            }
            _ = report.tick() => {
                let slots = engine_slots(&node).await?;
                let b = swarm.behaviour();
                println!(
                    "{{\"role\":\"send\",\"final\":false,\"t_ms\":{},\"sent\":{},\
                     \"acknowledged\":{},\"failed_with_event\":{},\"in_flight\":{},\
                     \"queued\":{},\"connected\":{connected},\"engine_slots\":{},\
                     \"rss_kib\":{}}}",
                    started.elapsed().as_millis(),
                    tally.sent(),
                    tally.acknowledged,
                    tally.failed_total(),
                    b.envelopes_in_flight(),
                    b.envelopes_queued(),
                    slots,
                    rss_kib(),
                );
            }
            _ = check.tick() => {
                if !connected_once {
                    if started.elapsed() > CONNECT_TIMEOUT {
                        return Err(format!("could not reach {} in {CONNECT_TIMEOUT:?}", args.dial).into());
                    }
                    if Instant::now() >= next_dial {
                        if let Err(e) = swarm.dial(args.dial.clone()) {
                            eprintln!("dial: {e}");
                        }
                        next_dial = Instant::now() + Duration::from_secs(1);
                    }
                }
                if args.stop_after.is_some_and(|d| started.elapsed() >= d) {
                    break Ending::StopAfter;
                }
                let b = swarm.behaviour();
                let open = b.envelopes_in_flight() + b.envelopes_queued();
                let outcomes = tally.acknowledged + tally.failed_total();
                if next_seq >= args.count && connected_once {
                    if open == 0 && outcomes >= tally.sent() {
                        break Ending::Done;
                    }
                    if last_value_at.unwrap_or(started).elapsed() >= args.drain_timeout {
                        break Ending::DrainTimeout;
                    }
                }
            }
            _ = &mut stop => break Ending::Signal,
        }
    };

    let mut carried = None;
    if let (Some(path), Ending::Signal | Ending::StopAfter) = (&args.snapshot_to, stopped) {
        let quiesce = sleep(QUIESCE);
        tokio::pin!(quiesce);
        loop {
            tokio::select! {
                event = swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(event) = event {
                        tally.on_event(event);
                    }
                }
                _ = &mut quiesce => break,
            }
        }
        // Carries the envelopes unacknowledged now; the swarm is not
        // polled again, so the counts below are the snapshot's.
        let snapshot = swarm
            .behaviour()
            .snapshot()
            .await
            .map_err(|e| format!("snapshot: {e}"))?;
        carried = Some(snapshot.transient.framework.pending_outbound.len());
        Saved {
            key: key.clone(),
            next_seq,
            snapshot,
        }
        .write(path)?;
    }

    let pending_async_end = node.with_node(|node| node.pending_async_count()).await?;
    let b = swarm.behaviour();
    let (in_flight, queued) = (b.envelopes_in_flight(), b.envelopes_queued());
    let open = (in_flight + queued) as i64;
    let lost = tally.sent() as i64 - tally.acknowledged as i64 - tally.failed_total() as i64 - open;
    let mut by_label = String::new();
    for (i, (label, n)) in tally.failed.iter().enumerate() {
        let _ = write!(by_label, "{}\"{label}\":{n}", if i > 0 { "," } else { "" });
    }
    let mut steps = String::new();
    for (i, (kind, n)) in tally.engine_steps.iter().enumerate() {
        let _ = write!(steps, "{}\"{kind}\":{n}", if i > 0 { "," } else { "" });
    }
    println!(
        "{{\"role\":\"send\",\"final\":true,\"transport\":\"{}\",\"stopped\":\"{}\",\
         \"elapsed_ms\":{},\"sent\":{},\"invoked\":{},\"restored\":{},\"acknowledged\":{},\
         \"failed_with_event\":{},\"failed_by_label\":{{{by_label}}},\"in_flight_at_exit\":{in_flight},\
         \"queued_at_exit\":{queued},\"carried_in_snapshot\":{},\"lost\":{lost},\
         \"second_outcomes\":{},\"reused_wire_req_ids\":{},\"outcomes_without_id\":{},\
         \"invoke_errors\":{},\"engine_steps\":{{{steps}}},\
         \"pending_async_baseline\":{pending_async_baseline},\"pending_async_end\":{pending_async_end},\
         \"next_seq\":{next_seq},\"wire_sent\":{},\"rss_kib_start\":{rss_kib_start},\
         \"rss_kib_end\":{}}}",
        transport.name(),
        stopped.label(),
        started.elapsed().as_millis(),
        tally.sent(),
        tally.invoked,
        tally.restored,
        tally.acknowledged,
        tally.failed_total(),
        carried.map_or(-1, |c| c as i64),
        tally.second_outcomes,
        tally.reused_wire_req_ids,
        tally.outcomes_without_id,
        tally.invoke_errors,
        b.wire_stats().envelopes_sent,
        rss_kib(),
    );
    Ok(())
}

/// Value `seq`: its sequence number, padded with zeros to `size` bytes, so
/// that the receiver can tell each apart and count duplicates.
fn value(seq: u64, size: usize) -> Vec<u8> {
    let mut bytes = seq.to_le_bytes().to_vec();
    bytes.resize(size.max(8), 0);
    bytes
}

/// What a stopped sender needs to go on: its identity (the snapshot's Node
/// is installed for it), where its sequence stopped, and the Node.
struct Saved {
    key: Keypair,
    next_seq: u64,
    snapshot: NodeSnapshot,
}

impl Saved {
    /// Layout: magic, next sequence number (u64 LE), key length (u32 LE),
    /// the key's protobuf encoding, then `NodeSnapshot::encode` (bincode).
    fn write(&self, path: &PathBuf) -> Result<()> {
        let key = self.key.to_protobuf_encoding()?;
        let mut bytes = SAVED_MAGIC.to_vec();
        bytes.extend_from_slice(&self.next_seq.to_le_bytes());
        bytes.extend_from_slice(&u32::try_from(key.len())?.to_le_bytes());
        bytes.extend_from_slice(&key);
        bytes.extend_from_slice(&self.snapshot.encode());
        // Written whole, then renamed: a reader never sees half a file.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, bytes)?;
        std::fs::rename(partial, path)?;
        Ok(())
    }

    fn read(path: &PathBuf) -> Result<Self> {
        let bytes = std::fs::read(path)?;
        let rest = bytes
            .strip_prefix(SAVED_MAGIC)
            .ok_or_else(|| format!("{} is not a saved sender", path.display()))?;
        let (seq, rest) = rest.split_at_checked(8).ok_or("truncated")?;
        let (len, rest) = rest.split_at_checked(4).ok_or("truncated")?;
        let len = u32::from_le_bytes(len.try_into()?) as usize;
        let (key, snapshot) = rest.split_at_checked(len).ok_or("truncated")?;
        Ok(Self {
            key: Keypair::from_protobuf_encoding(key)?,
            next_seq: u64::from_le_bytes(seq.try_into()?),
            snapshot: NodeSnapshot::decode(snapshot)?,
        })
    }
}

/// This process's resident set size in KiB (`VmRSS`), 0 where unknown.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Compiles [`Ping`]; returns the model and its target names, the sender's
/// first. Each process compiles it to get the same target names.
fn compile() -> Result<(ModelProto, Vec<String>)> {
    bytesandbrains::ops::link_force();
    let model = Compiler::new().compile(Ping.build().map_err(|e| format!("{e:?}"))?)?;
    let targets = model.functions.iter().map(|f| f.name.clone()).collect();
    Ok((model, targets))
}

/// The closure that builds the Node on its engine thread: `target` of
/// `model` installed with the engine PeerId of `key`.
fn install(
    key: &Keypair,
    model: ModelProto,
    target: String,
) -> impl FnOnce() -> NodeResult + Send + 'static {
    let me = to_engine_peer(&key.public().to_peer_id());
    move || {
        Ok(bytesandbrains::install(
            me,
            vec![Address::empty().p2p(me)],
            model,
            &[&target],
            bytesandbrains::Config::new(),
        )?)
    }
}

fn build_swarm(key: Keypair, behaviour: Behaviour) -> Result<Swarm<Behaviour>> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_behaviour(|_| behaviour)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build())
}
