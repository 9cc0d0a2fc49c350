//! A gossip average: N processes find each other through kad from one
//! bootstrap address, send their numbers to one another, and each prints
//! the average and the peers it heard from. They repeat for a few rounds,
//! each starting from the last round's average, so the numbers converge
//! and become equal.
//!
//! In separate terminals, the first one printing the address the others
//! join by:
//!
//! ```text
//! cargo run --example average -- --nodes 3 --value 1    # prints: bootstrap <address>
//! cargo run --example average -- --nodes 3 --value 2 --bootstrap <address>
//! cargo run --example average -- --nodes 3 --value 6 --bootstrap <address>
//! ```
//!
//! With no arguments it runs those three itself and checks that they agree.
//!
//! Each process runs one Module, `Gossip`, whose port `gossip` sends `x` to
//! `peers`; what arrives comes out as `heard`, with the peer that sent it.
//! The process installs both ends: the target that sends and the one that
//! receives (`bb_libp2p::ports` says which is which).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::error::Error;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use bb_libp2p::{ports, to_engine_peer, values, Address, Behaviour, Config, Event};
use bytesandbrains::proto::onnx::ModelProto;
use bytesandbrains::{Compiler, Graph, Module};
use libp2p::futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use tokio::time::Instant;

#[path = "common/metrics_endpoint.rs"]
mod metrics_endpoint;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// How long a process waits to find the others, and then for each round.
const PATIENCE: Duration = Duration::from_secs(30);

/// How long a process keeps serving after its last value was acknowledged:
/// its acknowledgement of a peer's last value may still be on its way, and a
/// connection closed under it fails that peer's send.
const LINGER: Duration = Duration::from_millis(500);

const USAGE: &str = "usage: average [--nodes N] [--value X] [--rounds R] [--bootstrap <address>] [--metrics <host:port>]
  with no arguments: runs three processes and checks that they agree";

/// Sends `x` to `peers` on port `gossip`; the receiver outputs it as `heard`.
struct Gossip;
impl Module for Gossip {
    fn name(&self) -> &str {
        "Gossip"
    }
    fn body(&self, g: &mut Graph) {
        let peers = g.input("peers");
        let x = g.input("x");
        g.net_out("gossip", peers, x);
        let received = g.lookup_output("gossip").expect("the port's receiving end");
        g.output("heard", received);
    }
}

/// The engine, kad to find peers, identify so kad learns where peers that
/// dialled in listen.
#[derive(NetworkBehaviour)]
struct Mesh {
    bb: Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
}

struct Options {
    nodes: usize,
    value: f32,
    rounds: u32,
    bootstrap: Option<Multiaddr>,
    metrics: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> ExitCode {
    metrics_endpoint::init_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.is_empty() {
        demo().await
    } else {
        match parse(&args) {
            Ok(options) => run(options).await,
            Err(e) => {
                eprintln!("{e}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        nodes: 3,
        value: 0.0,
        rounds: 3,
        bootstrap: None,
        metrics: None,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--nodes" => options.nodes = value.parse()?,
            "--value" => options.value = value.parse()?,
            "--rounds" => options.rounds = value.parse()?,
            "--bootstrap" => options.bootstrap = Some(value.parse()?),
            "--metrics" => options.metrics = Some(value.parse()?),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if options.nodes < 2 {
        return Err("--nodes must be at least 2".into());
    }
    Ok(options)
}

/// One process of the mesh.
async fn run(options: Options) -> Result<()> {
    // bytesandbrains' framework ops register themselves from static
    // initializers in `bb-ops`; a binary that names nothing of `bb-ops`
    // would have the linker drop them, and installing would fail with
    // unresolved ops. This call keeps them.
    bytesandbrains::ops::link_force();
    let model = Compiler::new().compile(Gossip.build()?)?;
    let gossip = ports::port(&model, "gossip")?;
    let config = metrics_endpoint::with_metrics(Config::default(), options.metrics).await?;
    let mut swarm = build_swarm(model, &[&gossip.sender, &gossip.receiver], config)?;
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    if let Some(address) = &options.bootstrap {
        let Some(Protocol::P2p(peer)) = address.iter().last() else {
            return Err("the bootstrap address must end in /p2p/<peer id>".into());
        };
        swarm
            .behaviour_mut()
            .kad
            .add_address(&peer, address.clone());
    }
    let me = *swarm.local_peer_id();
    let others = options.nodes - 1;

    // Find the others.
    let deadline = Instant::now() + PATIENCE;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut inbox = Inbox::default();
    while found(&mut swarm).len() < others {
        tokio::select! {
            event = swarm.select_next_some() => on_event(&mut swarm, event, me, &mut inbox)?,
            _ = tick.tick() => {
                if Instant::now() > deadline {
                    return Err(format!("found {} of {others} peers in {PATIENCE:?}", found(&mut swarm).len()).into());
                }
                // Ask again: peers that joined since may be known by now.
                let _ = swarm.behaviour_mut().kad.bootstrap();
            }
        }
    }
    let peers = found(&mut swarm);
    println!("found {} peers through kad", peers.len());

    let handle = swarm.behaviour().bb.handle();
    let mut value = options.value;
    for round in 1..=options.rounds {
        // With its round: a peer that finished this round early may
        // already have sent the next one. Once the numbers agree, every
        // process sends the same bytes, and each still arrives.
        let (sender, to, x) = (
            gossip.sender.clone(),
            values::peers(&peers),
            values::f32s(&[round as f32, value]),
        );
        handle
            .with_node(move |node| node.invoke(&sender, &[("peers", &to), ("x", &x)]))
            .await??;
        let deadline = Instant::now() + PATIENCE;
        while inbox.heard(round).len() < others {
            tokio::select! {
                event = swarm.select_next_some() => on_event(&mut swarm, event, me, &mut inbox)?,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(format!("round {round}: heard {} of {others} peers", inbox.heard(round).len()).into());
                }
            }
        }
        let heard = inbox.take(round);
        value = (value + heard.values().sum::<f32>()) / (heard.len() + 1) as f32;
        let from: Vec<String> = heard.keys().map(PeerId::to_string).collect();
        println!(
            "round {round}: average {value} (heard from {})",
            from.join(", ")
        );
    }

    // Exit once every value sent has its outcome, with the swarm still
    // running so the acknowledgements can arrive; then a moment more, so
    // that this process's own acknowledgements of the last values leave.
    let delivered = handle.delivered();
    tokio::pin!(delivered);
    loop {
        tokio::select! {
            event = swarm.select_next_some() => on_event(&mut swarm, event, me, &mut inbox)?,
            result = &mut delivered => { result?; break; }
        }
    }
    let linger = tokio::time::sleep(LINGER);
    tokio::pin!(linger);
    loop {
        tokio::select! {
            event = swarm.select_next_some() => on_event(&mut swarm, event, me, &mut inbox)?,
            _ = &mut linger => break,
        }
    }
    println!("final {value}");
    Ok(())
}

/// Numbers heard, by round and sender.
#[derive(Default)]
struct Inbox(BTreeMap<u32, BTreeMap<PeerId, f32>>);

impl Inbox {
    fn heard(&self, round: u32) -> BTreeSet<PeerId> {
        self.0
            .get(&round)
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default()
    }

    fn take(&mut self, round: u32) -> BTreeMap<PeerId, f32> {
        self.0.remove(&round).unwrap_or_default()
    }
}

fn on_event(
    swarm: &mut Swarm<Mesh>,
    event: SwarmEvent<MeshEvent>,
    me: PeerId,
    inbox: &mut Inbox,
) -> Result<()> {
    match event {
        SwarmEvent::NewListenAddr { address, .. } => {
            println!("bootstrap {}", address.with(Protocol::P2p(me)));
        }
        SwarmEvent::Behaviour(MeshEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) => {
            for address in info.listen_addrs {
                swarm.behaviour_mut().kad.add_address(&peer_id, address);
            }
        }
        SwarmEvent::Behaviour(MeshEvent::Bb(Event::AppEvent {
            sender: Some(sender),
            topic,
            value_bytes,
        })) if topic == "heard" => {
            let numbers = values::decode_f32s(&value_bytes)?;
            let [round, number] = numbers[..] else {
                return Err(format!("{sender} sent {} numbers, not 2", numbers.len()).into());
            };
            inbox
                .0
                .entry(round as u32)
                .or_default()
                .insert(sender, number);
        }
        SwarmEvent::Behaviour(MeshEvent::Bb(Event::SendFailed { peer, reason, .. })) => {
            return Err(format!("a value for {peer:?} was not delivered: {reason}").into());
        }
        _ => {}
    }
    Ok(())
}

/// The peers in kad's routing table.
fn found(swarm: &mut Swarm<Mesh>) -> Vec<PeerId> {
    let mut peers = Vec::new();
    for bucket in swarm.behaviour_mut().kad.kbuckets() {
        peers.extend(bucket.iter().map(|e| *e.node.key.preimage()));
    }
    peers
}

fn build_swarm(model: ModelProto, targets: &[&str], config: Config) -> Result<Swarm<Mesh>> {
    let key = Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let me = to_engine_peer(&peer);
    let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    // The Node is `!Send`: the behaviour builds it with this closure on its
    // engine thread, with the engine PeerId of the swarm's key.
    let bb = Behaviour::new(
        move || {
            let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
            bytesandbrains::install(
                me,
                vec![Address::empty().p2p(me)],
                model,
                &targets,
                bytesandbrains::Config::new(),
            )
        },
        config,
    )?;
    let mut kad = kad::Behaviour::new(peer, MemoryStore::new(peer));
    // On loopback nothing confirms an external address; answer queries anyway.
    kad.set_mode(Some(kad::Mode::Server));
    let identify =
        identify::Behaviour::new(identify::Config::new("/average/1".into(), key.public()));
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| Mesh { bb, kad, identify })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(10)))
        .build())
}

/// Runs three processes of this example with the numbers 1, 2 and 6, and
/// checks that each ends with their average, 3.
async fn demo() -> Result<()> {
    let exe = std::env::current_exe()?;
    let start = |value: &str, bootstrap: Option<&str>| {
        let mut command = Command::new(&exe);
        command.args(["--nodes", "3", "--value", value]);
        if let Some(address) = bootstrap {
            command.args(["--bootstrap", address]);
        }
        command.stdout(Stdio::piped()).spawn()
    };
    let mut first = start("1", None)?;
    let mut lines = BufReader::new(first.stdout.take().ok_or("no stdout")?).lines();
    let bootstrap = loop {
        let line = lines.next().ok_or("the first process exited")??;
        println!("[1] {line}");
        if let Some(address) = line.strip_prefix("bootstrap ") {
            break address.to_string();
        }
    };
    let mut children = vec![("1", first, lines)];
    for value in ["2", "6"] {
        let mut child = start(value, Some(&bootstrap))?;
        let lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        children.push((value, child, lines));
    }
    let mut finals = HashMap::new();
    let readers: Vec<_> = children
        .into_iter()
        .map(|(value, mut child, lines)| {
            std::thread::spawn(move || {
                let mut last = None;
                for line in lines.map_while(std::result::Result::ok) {
                    println!("[{value}] {line}");
                    if let Some(number) = line.strip_prefix("final ") {
                        last = number.parse::<f32>().ok();
                    }
                }
                (
                    value,
                    child.wait().map(|s| s.success()).unwrap_or(false),
                    last,
                )
            })
        })
        .collect();
    for reader in readers {
        let (value, ok, last) = reader.join().map_err(|_| "a reader panicked")?;
        if !ok {
            return Err(format!("process {value} failed").into());
        }
        finals.insert(
            value,
            last.ok_or(format!("process {value} printed no final"))?,
        );
    }
    if finals.values().any(|v| (v - 3.0).abs() > 1e-6) {
        return Err(format!("the processes disagree: {finals:?}").into());
    }
    println!("all three agree: 3");
    Ok(())
}
