//! Two peers that know only a relay's address exchange values through it,
//! and move to a direct connection when `dcutr` can make one.
//!
//! Three roles, each its own process:
//!
//! ```text
//! cargo run --example relayed -- relay                  # prints: relay at <address>
//! cargo run --example relayed -- listen --relay <relay address>
//!                                                       # prints: reachable at <circuit address>
//! cargo run --example relayed -- dial <circuit address>
//! ```
//!
//! `listen` and `dial` listen on `/ip4/127.0.0.1/tcp/0` for the direct
//! connection; `--bind <multiaddr>` after their other arguments picks
//! another address (`/ip4/0.0.0.0/tcp/0` behind a NAT).
//!
//! The listener reserves a slot on the relay and prints its circuit
//! address, `<relay address>/p2p-circuit/p2p/<listener id>`. The dialer
//! dials that address, sends three strings through the circuit with the
//! `mesh` example's `Echo` Module and prints the replies. Then it sends a
//! value of 256 KiB, more than a relayed connection may carry
//! (`Config::with_max_relayed_envelope_bytes`, 64 KiB): it goes once a
//! direct connection exists (`dcutr` punches one where the NATs allow; on
//! one machine it usually can), or fails as `relayed_limit` after
//! `Config::with_direct_connection_wait` (5 s here). The dialer prints
//! which, and how long the direct connection took.
//!
//! With no arguments the example runs all three on loopback and exits 0
//! once the strings came back through the relay.

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use bb_libp2p::{values, Behaviour, Config, Event};
use libp2p::futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{dcutr, identify, noise, relay, tcp, yamux, Multiaddr, PeerId, Swarm};
use tokio::time::Instant;

#[path = "common/echo.rs"]
mod echo;
#[path = "common/metrics_endpoint.rs"]
mod metrics_endpoint;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const USAGE: &str = "usage: relayed
       relayed relay [--listen <multiaddr>]
       relayed listen --relay <relay multiaddr ending in /p2p/<id>> [--bind <multiaddr>]
       relayed dial <relay multiaddr>/p2p-circuit/p2p/<listener id> [--bind <multiaddr>]";

const MESSAGES: [&str; 3] = ["hello", "through", "the relay"];

/// The large value: more than a relayed connection carries.
const LARGE: usize = 256 * 1024;

/// How long a large value waits for a direct connection.
const DIRECT_WAIT: Duration = Duration::from_secs(5);

/// How long the dialer waits for everything.
const DIAL_TIMEOUT: Duration = Duration::from_secs(60);

const PROTOCOL_VERSION: &str = "/bb-libp2p-relayed/1";

/// A relay server: circuits for peers behind NAT, and identify, so that
/// its clients learn the addresses they are seen at.
#[derive(NetworkBehaviour)]
struct RelayServer {
    relay: relay::Behaviour,
    identify: identify::Behaviour,
}

/// A peer: the crate's behaviour with the relay client, dcutr and
/// identify.
#[derive(NetworkBehaviour)]
struct Peer {
    bb: Behaviour,
    relay_client: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
    identify: identify::Behaviour,
}

enum Mode {
    Demo,
    Relay(Multiaddr),
    Listen(Multiaddr, Multiaddr),
    Dial(Multiaddr, Multiaddr),
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Mode> {
    let address = |value: Option<String>, what: &str| -> Result<Multiaddr> {
        let value = value.ok_or(format!("{what} needs an address"))?;
        Ok(value.parse().map_err(|e| format!("{value}: {e}"))?)
    };
    let mode = match args.next().as_deref() {
        None => Mode::Demo,
        Some("relay") => match args.next().as_deref() {
            None => Mode::Relay("/ip4/127.0.0.1/tcp/0".parse()?),
            Some("--listen") => Mode::Relay(address(args.next(), "--listen")?),
            Some(other) => return Err(format!("unexpected argument {other:?}").into()),
        },
        Some("listen") => match args.next().as_deref() {
            Some("--relay") => Mode::Listen(address(args.next(), "--relay")?, loopback()),
            _ => return Err("listen needs --relay <address>".into()),
        },
        Some("dial") => Mode::Dial(address(args.next(), "dial")?, loopback()),
        Some(other) => return Err(format!("unexpected argument {other:?}").into()),
    };
    let mode = match (mode, args.next().as_deref()) {
        (mode, None) => return Ok(mode),
        (Mode::Listen(relay, _), Some("--bind")) => {
            Mode::Listen(relay, address(args.next(), "--bind")?)
        }
        (Mode::Dial(to, _), Some("--bind")) => Mode::Dial(to, address(args.next(), "--bind")?),
        (_, Some(extra)) => return Err(format!("unexpected argument {extra:?}").into()),
    };
    match args.next() {
        Some(extra) => Err(format!("unexpected argument {extra:?}").into()),
        None => Ok(mode),
    }
}

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr")
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
        Mode::Demo => demo().await,
        Mode::Relay(address) => serve_relay(address).await,
        Mode::Listen(relay, bind) => listen(relay, bind).await,
        Mode::Dial(address, bind) => dial(address, bind, "").await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves circuits until killed.
async fn serve_relay(address: Multiaddr) -> Result<()> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| RelayServer {
            relay: relay::Behaviour::new(key.public().to_peer_id(), relay::Config::default()),
            identify: identify::Behaviour::new(identify::Config::new(
                PROTOCOL_VERSION.into(),
                key.public(),
            )),
        })?
        .build();
    swarm.listen_on(address)?;
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                // A relay serves circuits once it has an external address;
                // on loopback, its listening address is that.
                swarm.add_external_address(address.clone());
                let address = address
                    .with_p2p(*swarm.local_peer_id())
                    .expect("no /p2p yet");
                println!("relay at {address}");
            }
            SwarmEvent::Behaviour(RelayServerEvent::Relay(event)) => {
                println!("{event:?}");
            }
            _ => {}
        }
    }
}

/// Reserves a slot on the relay, prints the circuit address, and echoes
/// what arrives until killed.
async fn listen(relay: Multiaddr, bind: Multiaddr) -> Result<()> {
    let (model, req) = echo::compile()?;
    let mut swarm = build_peer(model, &req.receiver)?;
    swarm.listen_on(bind)?;
    swarm.listen_on(relay.clone().with(Protocol::P2pCircuit))?;
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. }
                if address.iter().any(|p| p == Protocol::P2pCircuit) =>
            {
                let address = address
                    .with_p2p(*swarm.local_peer_id())
                    .expect("no /p2p yet");
                println!("reachable at {address}");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let how = if endpoint.is_relayed() {
                    "relayed"
                } else {
                    "direct"
                };
                println!("{how} connection with {peer_id}");
            }
            SwarmEvent::Behaviour(PeerEvent::Bb(Event::AppEvent {
                topic, value_bytes, ..
            })) if topic == "seen" => {
                let bytes = values::decode_bytes(&value_bytes)?;
                match bytes.len() {
                    n if n <= 64 => println!("received {:?}", String::from_utf8_lossy(&bytes)),
                    n => println!("received {n} bytes"),
                }
            }
            SwarmEvent::Behaviour(PeerEvent::Bb(Event::SendFailed { reason, .. })) => {
                println!("reply not delivered: {reason}");
            }
            _ => {}
        }
    }
}

/// Sends the strings through the circuit, then the large value; prints
/// what happened. `prefix` starts every line.
async fn dial(address: Multiaddr, bind: Multiaddr, prefix: &str) -> Result<()> {
    let Some(Protocol::P2p(listener)) = address.iter().last() else {
        return Err(format!("{address} does not end in /p2p/<peer id>").into());
    };
    let (model, req) = echo::compile()?;
    let sender = req.sender.clone();
    let mut swarm = build_peer(model, &sender)?;
    swarm.listen_on(bind)?;
    let node = swarm.behaviour().bb.handle();
    let deadline = Instant::now() + DIAL_TIMEOUT;
    let started = Instant::now();
    swarm.dial(address.clone())?;
    // When a direct connection to the listener appeared.
    let mut direct_after = None;
    let send = |x: Vec<u8>| {
        let (sender, peers) = (sender.clone(), values::peers(&[listener]));
        node.with_node(move |node| {
            node.invoke(&sender, &[("peers", &peers), ("x", &x)])
                .map(drop)
                .map_err(|e| format!("invoke: {e:?}"))
        })
    };
    for message in MESSAGES {
        send(values::bytes(message.as_bytes())).await??;
        let reply = next_reply(&mut swarm, listener, deadline, &mut direct_after, started).await?;
        let reply = reply.map_err(|reason| format!("{message:?}: {reason}"))?;
        println!("{prefix}reply {:?}", String::from_utf8_lossy(&reply));
    }
    let relayed = direct_after.is_none();
    println!(
        "{prefix}all {} replies arrived ({})",
        MESSAGES.len(),
        if relayed {
            "through the relay"
        } else {
            "direct"
        }
    );
    send(values::bytes(&vec![7; LARGE])).await??;
    match next_reply(&mut swarm, listener, deadline, &mut direct_after, started).await? {
        Ok(reply) => println!("{prefix}{} bytes came back", reply.len()),
        Err(reason) => println!("{prefix}the {LARGE}-byte value: {reason}"),
    }
    match direct_after {
        Some(after) => println!("{prefix}dcutr: direct connection after {after:?}"),
        None => println!("{prefix}dcutr: no direct connection; everything went through the relay"),
    }
    Ok(())
}

/// Waits for the next reply (`Ok`) or send failure (`Err`), noting when a
/// direct connection to `listener` appears.
async fn next_reply(
    swarm: &mut Swarm<Peer>,
    listener: PeerId,
    deadline: Instant,
    direct_after: &mut Option<Duration>,
    started: Instant,
) -> Result<std::result::Result<Vec<u8>, String>> {
    loop {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| format!("no reply within {DIAL_TIMEOUT:?}"))?;
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } if peer_id == listener && !endpoint.is_relayed() => {
                direct_after.get_or_insert(started.elapsed());
            }
            SwarmEvent::Behaviour(PeerEvent::Bb(Event::AppEvent {
                topic, value_bytes, ..
            })) if topic == "y" => return Ok(Ok(values::decode_bytes(&value_bytes)?)),
            SwarmEvent::Behaviour(PeerEvent::Bb(Event::SendFailed { reason, .. })) => {
                return Ok(Err(reason.to_string()))
            }
            _ => {}
        }
    }
}

/// Runs a relay and a listener as child processes and dials the listener
/// through the relay.
async fn demo() -> Result<()> {
    let mut relay = Process::spawn(&["relay"])?;
    let relay_address = relay.line_after("relay at ")?;
    println!("[relay] relay at {relay_address}");
    let mut listener = Process::spawn(&["listen", "--relay", &relay_address])?;
    let circuit = listener.line_after("reachable at ")?;
    println!("[listener] reachable at {circuit}");
    let forward = listener.forward("[listener] ");
    let result = dial(circuit.parse()?, loopback(), "[dialer] ").await;
    drop(listener);
    drop(relay);
    let _ = forward.join();
    result
}

/// A child process of this example, killed when dropped.
struct Process {
    child: Child,
    stdout: Option<BufReader<std::process::ChildStdout>>,
}

impl Process {
    fn spawn(args: &[&str]) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Self { child, stdout })
    }

    /// Reads lines until one starts with `prefix`; returns the rest of it.
    fn line_after(&mut self, prefix: &str) -> Result<String> {
        let stdout = self.stdout.as_mut().expect("stdout is piped");
        let mut line = String::new();
        loop {
            line.clear();
            if stdout.read_line(&mut line)? == 0 {
                return Err(format!("the child exited before printing {prefix:?}").into());
            }
            if let Some(rest) = line.trim_end().strip_prefix(prefix) {
                return Ok(rest.to_string());
            }
        }
    }

    /// Prints the child's further lines with `prefix`, on a thread.
    fn forward(&mut self, prefix: &'static str) -> std::thread::JoinHandle<()> {
        let stdout = self.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(std::io::Result::ok) {
                println!("{prefix}{line}");
            }
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A peer with a fresh identity on TCP and the relay client, running
/// `target` of `model`.
fn build_peer(model: bytesandbrains::proto::onnx::ModelProto, target: &str) -> Result<Swarm<Peer>> {
    let key = Keypair::generate_ed25519();
    let config = Config::default().with_direct_connection_wait(DIRECT_WAIT);
    let bb = echo::behaviour(&key, model, target, config)?;
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key, relay_client| Peer {
            bb,
            relay_client,
            dcutr: dcutr::Behaviour::new(key.public().to_peer_id()),
            identify: identify::Behaviour::new(identify::Config::new(
                PROTOCOL_VERSION.into(),
                key.public(),
            )),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build())
}
