//! Federated training across processes: a coordinator and its clients train
//! a logistic-regression model with federated averaging, every value
//! travelling between the processes' engines over libp2p.
//!
//! ```text
//! cargo run --release --example federated -- --clients 4 --rounds 10
//! cargo run --release --example federated -- --transport quic
//! cargo run --release --example federated -- --kill-client-after-round 3
//! cargo run --release --example federated -- --model hashed --rounds 5
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
//! The model is logistic regression over 32 dense features (33
//! parameters), or with `--model hashed` over hashed feature crosses with
//! a weight per bucket (`hashed.rs`): 2^25 buckets by default, a parameter
//! vector of 128 MiB that goes to every client and back each round.
//!
//! The coordinator prints two lines per round: the clients' training loss
//! and the test loss and accuracy of the new global model; and what the
//! round put on the wire (the parameters' bytes, and the time until every
//! client had acknowledged them; the updates' bytes, and the time from
//! their first bytes to the last update taken). Then the envelope bytes of
//! the whole run, and last the final accuracy beside the same model
//! trained on all the shards in one process. It writes the curves to
//! `federated.svg`.
//!
//! Options: `--clients N` (4), `--rounds R` (10), `--cohort M` (clients
//! sampled per round; all), `--transport tcp|quic` (tcp), `--model
//! dense|hashed` (dense), `--buckets B` (hashed: 33554432), `--non-iid`
//! (shards skewed by label), `--samples S` (8000 training samples, and a
//! quarter as many held out), `--seed X`, `--round-deadline-ms T` (2000;
//! hashed: 120000),
//! `--kill-client-after-round K` (the coordinator kills its last client
//! after round K: later rounds go on with the others), `--plot PATH`,
//! `--metrics <host:port>` (Prometheus metrics at
//! `http://<host:port>/metrics`: the coordinator's on that port, client k's
//! on the port plus k; with port 0 each picks a free one, and every process
//! prints its address to stderr).

mod clients;
mod fed;
mod hashed;
mod messages;
#[path = "../common/metrics_endpoint.rs"]
mod metrics_endpoint;
mod ml;
mod ops;
mod options;
mod plot;
mod registry;
mod round;
#[path = "../common/rss.rs"]
mod rss;
mod wire;

use std::error::Error;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bb_libp2p::{Behaviour, Config, Event, Node, NodeHandle};
use bb_runtime::engine::EngineStep;
use clients::Clients;
use fed::Federation;
use indicatif::{ProgressBar, ProgressStyle};
use libp2p::futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use options::{parse_args, Mode, Options, Task, USAGE};
use plot::{plot, Point};
use round::{Missing, Round, RoundReport};
use wire::{RoundWire, WireMeter};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// How long the coordinator waits for every client to join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the coordinator waits for its clients to exit at the end.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the coordinator keeps serving after the last round before it
/// disconnects: its acknowledgement of the last updates may still be on its
/// way, and a client whose acknowledgement is cut off reports a failed send.
const LINGER: Duration = Duration::from_millis(200);

/// How often a round's loop looks at the wire counters at least.
const SAMPLE: Duration = Duration::from_millis(10);

/// Connections stay open between rounds: clients do not listen, so the
/// coordinator could not dial one back.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

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
    let federation = Arc::new(Federation::new(&coordinator, task.features));
    let make_node = federation.make_client(&key, shard);
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
            } if peer_id == coordinator => {
                // One write, so the clients' lines do not interleave.
                let line = format!("client {}: peak RSS {}\n", index + 1, rss::peak_rss());
                let _ = std::io::stderr().write_all(line.as_bytes());
                return Ok(());
            }
            SwarmEvent::OutgoingConnectionError { error, .. } if !connected => {
                return Err(
                    format!("client {}: could not dial {address}: {error}", index + 1).into(),
                );
            }
            SwarmEvent::Behaviour(Event::Engine(EngineStep::OpFailed { error, .. })) => {
                eprintln!("client {}: {}", index + 1, error.detail);
            }
            SwarmEvent::Behaviour(Event::Engine(
                step @ (EngineStep::WireReceiveFailed { .. } | EngineStep::WireDecodeFailed { .. }),
            )) => {
                eprintln!("client {}: a value was dropped: {step:?}", index + 1);
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

/// The coordinator: starts the clients, waits for them to join, runs the
/// rounds and reports.
async fn coordinate(options: Options) -> Result<()> {
    let (shards, test) = options.task.data();
    let key = Keypair::generate_ed25519();
    let me = key.public().to_peer_id();
    let features = options.task.features;
    let federation = Arc::new(Federation::new(&me, features));
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
    let mut global = vec![0f32; features.params()];
    let mut curve = Vec::new();
    for number in 1..=options.rounds {
        let (report, wire) =
            run_round(&mut swarm, &node, &federation, number, &options, cohort).await?;
        if let Some(params) = &report.params {
            global.clone_from(params);
        }
        let (test_loss, accuracy) = features.evaluate(&global, &test);
        print_round(
            &report,
            &wire,
            options.rounds,
            &clients,
            test_loss,
            accuracy,
        );
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

    let centralized_params = features.centralized(&shards, options.rounds as usize);
    let (_, centralized) = features.evaluate(&centralized_params, &test);
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
        .map_or(features.evaluate(&global, &test).1, |p| p.accuracy);
    println!("coordinator: peak RSS {}", rss::peak_rss());
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
) -> Result<(RoundReport, RoundWire)> {
    let bar = ProgressBar::new(cohort as u64).with_style(
        ProgressStyle::with_template("round {prefix} [{bar:24}] {pos}/{len} updates ({elapsed})")
            .expect("a valid template"),
    );
    bar.set_prefix(format!("{number}/{}", options.rounds));
    bar.enable_steady_tick(Duration::from_millis(100));
    let mut meter = WireMeter::start(swarm.behaviour().wire_stats());
    let mut round = Round::start(node, federation, number, cohort, options.round_deadline).await?;
    let report = loop {
        if let Some(report) = round.step(node, federation, Instant::now()).await? {
            break report;
        }
        // Woken at least every SAMPLE, to see when updates start to arrive.
        let wake = round.wake_at().min(Instant::now() + SAMPLE);
        if let Ok(SwarmEvent::Behaviour(event)) = tokio::time::timeout_at(
            tokio::time::Instant::from_std(wake),
            swarm.select_next_some(),
        )
        .await
        {
            meter.on_event(&event, Instant::now());
            round.on_event(&event);
        }
        meter.sample(swarm.behaviour().wire_stats(), Instant::now());
        if let Some(cohort) = round.cohort() {
            bar.set_length(cohort.len() as u64);
        }
        bar.set_position(round.updates() as u64);
    };
    bar.finish_and_clear();
    let wire = meter.finish(swarm.behaviour().wire_stats(), &report.cohort);
    Ok((report, wire))
}

fn print_round(
    report: &RoundReport,
    wire: &RoundWire,
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
    println!("round {:>2}/{rounds}: wire: {wire}", report.number);
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
