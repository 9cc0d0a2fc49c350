//! Federated training across processes: a coordinator and its clients train
//! a logistic-regression model with federated averaging, every value
//! travelling between the processes' engines over libp2p.
//!
//! ```text
//! cargo run --release --example federated -- --clients 4 --rounds 10
//! cargo run --release --example federated -- --transport quic
//! cargo run --release --example federated -- --kill-client-after-round 3
//! ```
//!
//! The coordinator listens on loopback (TCP with noise and yamux, or QUIC)
//! and starts each client as a copy of this program, giving it only the
//! coordinator's address. A client dials it and joins through the engine's
//! discovery protocol: its bootstrap announces it to the coordinator's
//! `GlobalRegistryServer`. Once the registry holds every client, each
//! round samples a cohort from the registry, sends it the global
//! parameters, and aggregates the updates that come back before the
//! round's deadline with the engine's `FedAvg`, weighted by sample count
//! (see `fed.rs`). Each client trains on its own shard of a seeded
//! synthetic task (see `ml.rs`); the data never leaves it.
//!
//! The coordinator prints a line per round (clients' training loss, test
//! loss and accuracy of the new global model), the envelope bytes on the
//! wire, and last the final accuracy beside the same model trained on all
//! the shards in one process. It writes the curves to `federated.svg`.
//!
//! Options: `--clients N` (4), `--rounds R` (10), `--cohort M` (clients
//! sampled per round; all), `--transport tcp|quic` (tcp), `--non-iid`
//! (shards skewed by label), `--samples S` (8000 training samples, and a
//! quarter as many held out), `--seed X`, `--round-deadline-ms T` (2000),
//! `--kill-client-after-round K` (the coordinator kills its last client
//! after round K: later rounds go on with the others), `--plot PATH`,
//! `--metrics <host:port>` (Prometheus metrics at
//! `http://<host:port>/metrics`: the coordinator's on that port, client k's
//! on the port plus k; with port 0 each picks a free one, and every process
//! prints its address to stderr).

mod fed;
#[path = "../common/metrics_endpoint.rs"]
mod metrics_endpoint;
mod ml;
mod registry;
mod round;

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bb_libp2p::{Behaviour, Config, Event, Node, NodeHandle};
use bb_runtime::engine::EngineStep;
use fed::Federation;
use indicatif::{ProgressBar, ProgressStyle};
use libp2p::futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use ml::Dataset;
use round::{Missing, Round, RoundReport};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// How long the coordinator waits for every client to join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the coordinator waits for its clients to exit at the end.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the coordinator keeps serving after the last round before it
/// disconnects: its acknowledgement of the last updates may still be on its
/// way, and a client whose acknowledgement is cut off reports a failed send.
const LINGER: Duration = Duration::from_millis(200);

/// Connections stay open between rounds: clients do not listen, so the
/// coordinator could not dial one back.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

const USAGE: &str =
    "usage: federated [--clients N] [--rounds R] [--cohort M] [--transport tcp|quic]
                 [--non-iid] [--samples S] [--seed X] [--round-deadline-ms T]
                 [--kill-client-after-round K] [--plot PATH] [--metrics <host:port>]";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Quic,
}

impl Transport {
    fn listen_address(self) -> Multiaddr {
        match self {
            Transport::Tcp => "/ip4/127.0.0.1/tcp/0",
            Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
        }
        .parse()
        .expect("a valid multiaddr")
    }
}

/// The learning task, which the coordinator and every client derive alike
/// from the same options.
#[derive(Clone)]
struct Task {
    clients: usize,
    samples: usize,
    seed: u64,
    non_iid: bool,
}

impl Task {
    /// The clients' shards and the held-out test split.
    fn data(&self) -> (Vec<Dataset>, Dataset) {
        let (train, test) = ml::synthetic_task(self.seed, self.samples, self.samples / 4);
        (
            ml::shards(&train, self.clients, self.non_iid, self.seed),
            test,
        )
    }

    /// The options that reproduce it in a client process.
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--clients".into(),
            self.clients.to_string(),
            "--samples".into(),
            self.samples.to_string(),
            "--seed".into(),
            self.seed.to_string(),
        ];
        if self.non_iid {
            args.push("--non-iid".into());
        }
        args
    }
}

struct Options {
    task: Task,
    rounds: u64,
    cohort: Option<u32>,
    transport: Transport,
    round_deadline: Duration,
    kill_after: Option<u64>,
    plot: PathBuf,
    metrics: Option<SocketAddr>,
}

enum Mode {
    Coordinator(Options),
    /// A client process: the coordinator's address, the client's index and
    /// where it serves its metrics.
    Client(Task, Multiaddr, usize, Option<SocketAddr>),
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Mode> {
    let mut task = Task {
        clients: 4,
        samples: 8000,
        seed: 7,
        non_iid: false,
    };
    let mut options = Options {
        task: task.clone(),
        rounds: 10,
        cohort: None,
        transport: Transport::Tcp,
        round_deadline: Duration::from_millis(2000),
        kill_after: None,
        plot: "federated.svg".into(),
        metrics: None,
    };
    let mut client = false;
    let mut coordinator = None;
    let mut index = None;
    fn value<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse().map_err(|e| format!("{flag} {v}: {e}").into())
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--clients" => task.clients = value(&arg, args.next())?,
            "--samples" => task.samples = value(&arg, args.next())?,
            "--seed" => task.seed = value(&arg, args.next())?,
            "--non-iid" => task.non_iid = true,
            "--rounds" => options.rounds = value(&arg, args.next())?,
            "--cohort" => options.cohort = Some(value(&arg, args.next())?),
            "--transport" => {
                options.transport = match args.next().as_deref() {
                    Some("tcp") => Transport::Tcp,
                    Some("quic") => Transport::Quic,
                    _ => return Err("--transport takes tcp or quic".into()),
                }
            }
            "--round-deadline-ms" => {
                options.round_deadline = Duration::from_millis(value(&arg, args.next())?)
            }
            "--kill-client-after-round" => options.kill_after = Some(value(&arg, args.next())?),
            "--plot" => options.plot = value(&arg, args.next())?,
            "--metrics" => options.metrics = Some(value(&arg, args.next())?),
            // Hidden: how the coordinator starts its clients.
            "client" => client = true,
            "--coordinator" => coordinator = Some(value::<Multiaddr>(&arg, args.next())?),
            "--index" => index = Some(value::<usize>(&arg, args.next())?),
            _ => return Err(format!("unexpected argument {arg:?}").into()),
        }
    }
    if task.clients == 0 || task.samples < 4 * task.clients {
        return Err("needs at least one client and four samples per client".into());
    }
    options.task = task.clone();
    match (client, coordinator, index) {
        (true, Some(address), Some(index)) if index < task.clients => {
            Ok(Mode::Client(task, address, index, options.metrics))
        }
        (false, None, None) => Ok(Mode::Coordinator(options)),
        _ => Err("a client takes client --coordinator <address> --index <i>".into()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mode = match parse_args(std::env::args().skip(1)) {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    metrics_endpoint::init_logging();
    let result = match mode {
        Mode::Coordinator(options) => coordinate(options).await,
        Mode::Client(task, address, index, metrics) => client(task, address, index, metrics).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A swarm on TCP and QUIC whose behaviour runs the Node `make_node` builds
/// on an engine thread; with `metrics`, its metrics are served there.
async fn build_swarm<F>(
    key: Keypair,
    make_node: F,
    metrics: Option<SocketAddr>,
) -> Result<Swarm<Behaviour>>
where
    F: FnOnce() -> std::result::Result<Node, std::convert::Infallible> + Send + 'static,
{
    let config = metrics_endpoint::with_metrics(Config::default(), metrics).await?;
    let behaviour = Behaviour::new(make_node, config)?;
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

/// A client: joins the coordinator at `address`, then trains whenever it
/// is sampled, until the coordinator disconnects.
async fn client(
    task: Task,
    address: Multiaddr,
    index: usize,
    metrics: Option<SocketAddr>,
) -> Result<()> {
    let Some(Protocol::P2p(coordinator)) = address.iter().last() else {
        return Err(format!("{address} does not end in /p2p/<peer id>").into());
    };
    let key = Keypair::generate_ed25519();
    // The coordinator reads this line to tell its clients apart.
    println!("peer {}", key.public().to_peer_id());
    std::io::stdout().flush()?;
    let (mut shards, _) = task.data();
    let shard = shards.swap_remove(index);
    let make_node = Arc::new(Federation::new(&coordinator)).make_client(&key, shard);
    let mut swarm = build_swarm(key, make_node, metrics).await?;
    // The bootstrap's Announce waits for this connection: the `/p2p`
    // suffix tells the swarm which peer the dial is for.
    swarm.dial(address.clone())?;
    let mut connected = false;
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == coordinator => {
                connected = true;
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } if peer_id == coordinator => return Ok(()),
            SwarmEvent::OutgoingConnectionError { error, .. } if !connected => {
                return Err(
                    format!("client {}: could not dial {address}: {error}", index + 1).into(),
                );
            }
            SwarmEvent::Behaviour(Event::Engine(EngineStep::OpFailed { error, .. })) => {
                eprintln!("client {}: {}", index + 1, error.detail);
            }
            SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                eprintln!(
                    "client {}: an envelope was not delivered: {reason}",
                    index + 1
                );
            }
            _ => {}
        }
    }
}

/// The client processes, killed if still running when dropped.
struct Clients {
    children: Vec<Child>,
    /// Their PeerIds, in start order.
    peers: Vec<PeerId>,
}

impl Clients {
    /// Starts `task.clients` copies of this program as clients of the
    /// coordinator at `address`; returns once each has said who it is.
    /// With `metrics`, client k serves its metrics on the port after it
    /// plus k (or a free one, for port 0).
    fn spawn(task: &Task, address: &Multiaddr, metrics: Option<SocketAddr>) -> Result<Self> {
        let mut clients = Self {
            children: Vec::new(),
            peers: Vec::new(),
        };
        for index in 0..task.clients {
            let mut command = Command::new(std::env::current_exe()?);
            command
                .args(["client", "--coordinator", &address.to_string()])
                .args(["--index", &index.to_string()])
                .args(task.args());
            if let Some(mut at) = metrics {
                if at.port() != 0 {
                    at.set_port(at.port() + 1 + index as u16);
                }
                command.args(["--metrics", &at.to_string()]);
            }
            let child = command.stdout(Stdio::piped()).spawn()?;
            clients.children.push(child);
        }
        for (index, child) in clients.children.iter_mut().enumerate() {
            let mut line = String::new();
            let stdout = child.stdout.take().expect("stdout is piped");
            BufReader::new(stdout).read_line(&mut line)?;
            let peer = line
                .trim_end()
                .strip_prefix("peer ")
                .ok_or_else(|| format!("client {} printed {line:?}", index + 1))?;
            clients.peers.push(peer.parse()?);
        }
        Ok(clients)
    }

    /// `client k`, numbered from 1 in start order.
    fn name(&self, peer: &PeerId) -> String {
        match self.peers.iter().position(|p| p == peer) {
            Some(i) => format!("client {}", i + 1),
            None => format!("unknown peer {peer}"),
        }
    }

    /// Kills the last client; returns its name.
    fn kill_last(&mut self) -> Result<String> {
        let child = self.children.last_mut().ok_or("no client")?;
        child.kill()?;
        child.wait()?;
        Ok(format!("client {}", self.children.len()))
    }

    /// Waits for every client to exit, at most until `timeout` has passed;
    /// the ones still running are killed when `self` is dropped.
    fn wait(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for child in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// One round's figures, for the curve.
struct Point {
    round: u64,
    train_loss: Option<f32>,
    test_loss: f32,
    accuracy: f32,
}

/// The coordinator: starts the clients, waits for them to join, runs the
/// rounds and reports.
async fn coordinate(options: Options) -> Result<()> {
    let (shards, test) = options.task.data();
    let key = Keypair::generate_ed25519();
    let me = key.public().to_peer_id();
    let federation = Arc::new(Federation::new(&me));
    let mut swarm = build_swarm(
        key.clone(),
        federation.make_coordinator(&key),
        options.metrics,
    )
    .await?;
    let node = swarm.behaviour().handle();
    swarm.listen_on(options.transport.listen_address())?;
    let address = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address.with_p2p(me).expect("no /p2p yet");
        }
    };
    println!("coordinator listening on {address}");

    let mut clients = Clients::spawn(&options.task, &address, options.metrics)?;
    join(&mut swarm, &node, &clients).await?;

    let cohort = options.cohort.unwrap_or(options.task.clients as u32);
    let mut global = vec![0f32; ml::PARAMS];
    let mut curve = Vec::new();
    for number in 1..=options.rounds {
        let report = run_round(&mut swarm, &node, &federation, number, &options, cohort).await?;
        if let Some(params) = &report.params {
            global.clone_from(params);
        }
        let (test_loss, accuracy) = ml::evaluate(&global, &test);
        print_round(&report, options.rounds, &clients, test_loss, accuracy);
        curve.push(Point {
            round: number,
            train_loss: report.train_loss(),
            test_loss,
            accuracy,
        });
        if options.kill_after == Some(number) {
            let name = clients.kill_last()?;
            println!("killed {name} after round {number}");
        }
    }

    let linger = tokio::time::Instant::now() + LINGER;
    while tokio::time::timeout_at(linger, swarm.select_next_some())
        .await
        .is_ok()
    {}
    let stats = swarm.behaviour().wire_stats();
    let peers: Vec<PeerId> = swarm.connected_peers().copied().collect();
    for peer in peers {
        let _ = swarm.disconnect_peer_id(peer);
    }
    let _ = tokio::time::timeout(EXIT_TIMEOUT, async {
        while swarm.network_info().num_peers() > 0 {
            swarm.select_next_some().await;
        }
    })
    .await;
    drop(swarm);
    clients.wait(EXIT_TIMEOUT);

    let (_, centralized) = ml::evaluate(&ml::centralized(&shards, options.rounds as usize), &test);
    plot(&options.plot, &curve, centralized)?;
    println!(
        "on the wire, at the coordinator (all traffic passes through it): {} envelopes \
         sent ({} bytes), {} received ({} bytes); envelope bytes, without framing, \
         acknowledgements or transport overhead",
        stats.envelopes_sent, stats.bytes_sent, stats.envelopes_received, stats.bytes_received
    );
    println!("loss and accuracy curves: {}", options.plot.display());
    let final_accuracy = curve
        .last()
        .map_or(ml::evaluate(&global, &test).1, |p| p.accuracy);
    println!("final accuracy: {final_accuracy:.4}");
    println!("centralized accuracy: {centralized:.4}");
    Ok(())
}

/// Waits until the coordinator's registry holds every client; `node` is
/// the coordinator's Node.
async fn join(swarm: &mut Swarm<Behaviour>, node: &NodeHandle, clients: &Clients) -> Result<()> {
    let started = Instant::now();
    let bar = ProgressBar::new(clients.peers.len() as u64).with_style(
        ProgressStyle::with_template("joining [{bar:24}] {pos}/{len} clients in the registry")
            .expect("a valid template"),
    );
    let expected = &clients.peers;
    loop {
        let view = node.with_node(registry::registry_view).await?;
        let joined = expected.iter().filter(|p| view.contains(p)).count();
        bar.set_position(joined as u64);
        if joined == expected.len() {
            break;
        }
        let deadline = tokio::time::Instant::from_std(started + JOIN_TIMEOUT);
        if tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .is_err()
        {
            bar.abandon();
            return Err(format!(
                "only {joined} of {} clients joined in {JOIN_TIMEOUT:?}",
                expected.len()
            )
            .into());
        }
    }
    bar.finish_and_clear();
    println!(
        "{} clients joined through the registry in {} ms",
        expected.len(),
        started.elapsed().as_millis()
    );
    Ok(())
}

/// Runs one round on the coordinator's swarm and its Node (`node`), with a
/// progress bar of the updates it took.
async fn run_round(
    swarm: &mut Swarm<Behaviour>,
    node: &NodeHandle,
    federation: &Federation,
    number: u64,
    options: &Options,
    cohort: u32,
) -> Result<RoundReport> {
    let bar = ProgressBar::new(cohort as u64).with_style(
        ProgressStyle::with_template("round {prefix} [{bar:24}] {pos}/{len} updates ({elapsed})")
            .expect("a valid template"),
    );
    bar.set_prefix(format!("{number}/{}", options.rounds));
    bar.enable_steady_tick(Duration::from_millis(100));
    let mut round = Round::start(node, federation, number, cohort, options.round_deadline).await?;
    let report = loop {
        if let Some(report) = round.step(node, federation, Instant::now()).await? {
            break report;
        }
        let wake = tokio::time::Instant::from_std(round.wake_at());
        if let Ok(SwarmEvent::Behaviour(event)) =
            tokio::time::timeout_at(wake, swarm.select_next_some()).await
        {
            round.on_event(&event);
        }
        if let Some(cohort) = round.cohort() {
            bar.set_length(cohort.len() as u64);
        }
        bar.set_position(round.updates() as u64);
    };
    bar.finish_and_clear();
    Ok(report)
}

fn print_round(
    report: &RoundReport,
    rounds: u64,
    clients: &Clients,
    test_loss: f32,
    accuracy: f32,
) {
    let train_loss = report
        .train_loss()
        .map_or("-".to_string(), |l| format!("{l:.4}"));
    let samples: u64 = report.updates.values().map(|u| u.num_samples).sum();
    println!(
        "round {:>2}/{rounds}: {}/{} updates ({samples} samples, {} ms), train loss {train_loss}, \
         test loss {test_loss:.4}, test accuracy {accuracy:.4}",
        report.number,
        report.updates.len(),
        report.cohort.len(),
        report.duration.as_millis(),
    );
    for (peer, why) in &report.missing {
        let why = match why {
            Missing::Unreachable(reason) => format!("unreachable ({reason})"),
            Missing::Silent(None) => "no update before the deadline".to_string(),
            Missing::Silent(Some(failure)) => {
                format!("no update before the deadline (sending it the parameters: {failure})")
            }
        };
        println!(
            "round {:>2}/{rounds}: {}: {why}",
            report.number,
            clients.name(peer)
        );
    }
    if report.params.is_none() {
        println!(
            "round {:>2}/{rounds}: no update; the global model is unchanged",
            report.number
        );
    }
    for line in report.late.iter().chain(&report.errors) {
        eprintln!("round {:>2}/{rounds}: {line}", report.number);
    }
}

/// Writes the loss and accuracy curves to `path` (SVG).
fn plot(path: &Path, curve: &[Point], centralized: f32) -> Result<()> {
    use plotters::prelude::*;

    let root = SVGBackend::new(path, (800, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(300);
    let rounds = curve.last().map_or(1, |p| p.round).max(1);
    let max_loss = curve
        .iter()
        .flat_map(|p| [p.test_loss, p.train_loss.unwrap_or(0.0)])
        .fold(0.0f32, f32::max)
        .max(0.1)
        * 1.1;

    let mut loss = ChartBuilder::on(&top)
        .caption("federated averaging: loss", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(1u64..rounds, 0f32..max_loss)?;
    loss.configure_mesh()
        .x_desc("round")
        .y_desc("log loss")
        .draw()?;
    loss.draw_series(LineSeries::new(
        curve.iter().map(|p| (p.round, p.test_loss)),
        &BLUE,
    ))?
    .label("test loss")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    loss.draw_series(LineSeries::new(
        curve.iter().filter_map(|p| Some((p.round, p.train_loss?))),
        &RED,
    ))?
    .label("clients' training loss at the start of the round")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    loss.configure_series_labels().border_style(BLACK).draw()?;

    let low = curve
        .iter()
        .map(|p| p.accuracy)
        .fold(centralized, f32::min)
        .min(0.9)
        - 0.05;
    let mut accuracy = ChartBuilder::on(&bottom)
        .caption("test accuracy", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(1u64..rounds, low.max(0.0)..1f32)?;
    accuracy
        .configure_mesh()
        .x_desc("round")
        .y_desc("accuracy")
        .draw()?;
    accuracy
        .draw_series(LineSeries::new(
            curve.iter().map(|p| (p.round, p.accuracy)),
            &BLUE,
        ))?
        .label("federated")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    accuracy
        .draw_series(LineSeries::new(
            [(1, centralized), (rounds, centralized)],
            &BLACK,
        ))?
        .label("centralized, after all rounds")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    accuracy
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
