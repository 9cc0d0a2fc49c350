//! Two processes exchange values over libp2p: one listens, the other dials
//! its address, sends strings and prints the replies that come back.
//!
//! Both run the same `Echo` Module. The dialer installs its sending half: it
//! sends `x` to the listener, which outputs what it received as `seen` and
//! sends it back; the reply comes out of the dialer's graph as `y`.
//!
//! With no arguments the example runs both sides: it starts a copy of itself
//! in `listen` mode, dials the address the copy prints, forwards the copy's
//! output prefixed with `[listener]`, and exits 0 once both are done:
//!
//! ```text
//! cargo run --example mesh                       # TCP (noise, yamux)
//! cargo run --example mesh -- --transport quic   # QUIC
//! ```
//!
//! Or in two terminals, dialling the address the first one prints:
//!
//! ```text
//! cargo run --example mesh -- listen [--transport quic]
//! cargo run --example mesh -- dial /ip4/127.0.0.1/tcp/<port>/p2p/<peer id>
//! ```
//!
//! The listener prints `listening on <address>` first, then each value it
//! receives, and exits when the dialer disconnects. `dial` takes its
//! transport from the address; it exits 0 once every reply has arrived and
//! the connection has closed, or 1 with the reason if a send fails or that
//! takes more than 30 s.

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::time::Duration;

use bb_libp2p::{values, Behaviour, Config, EngineStep, Event};
use bytesandbrains::proto::onnx::ModelProto;
use libp2p::futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, Swarm};
use tokio::time::Instant;

#[path = "common/echo.rs"]
mod echo;
#[path = "common/metrics_endpoint.rs"]
mod metrics_endpoint;

use echo::{compile, text};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// What the dialer sends; every dialer sends the same texts.
const MESSAGES: [&str; 3] = ["hello", "from the dialer", "over libp2p"];

/// How long the dialer waits for the connection, the replies and the close.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the demo waits for the listener to exit after the dialer is done.
const LISTENER_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The dialer's connection closes after this long without an open stream.
/// libp2p keeps a connection open while any stream is, so closing on idle
/// lets the dialer finish acknowledging the last reply, which a disconnect
/// as soon as that reply arrives could cut off.
const DIALER_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

const LISTENER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
enum Transport {
    Tcp,
    Quic,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }

    fn listen_address(self) -> Multiaddr {
        match self {
            Transport::Tcp => "/ip4/127.0.0.1/tcp/0",
            Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
        }
        .parse()
        .expect("a valid multiaddr")
    }
}

enum Mode {
    Demo(Transport),
    Listen(Listen),
    Dial(Multiaddr),
}

/// How `mesh listen` runs.
struct Listen {
    transport: Transport,
    /// Serves Prometheus metrics here.
    metrics: Option<SocketAddr>,
    /// Exits once the first dialer has left, instead of at Ctrl-C.
    once: bool,
}

const USAGE: &str = "usage: mesh [--transport tcp|quic]
       mesh listen [--transport tcp|quic] [--metrics <host:port>] [--once]
       mesh dial <multiaddr ending in /p2p/<peer id>>";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Mode> {
    let mut listen = false;
    let mut dial = None;
    let mut transport = None;
    let (mut metrics, mut once) = (None, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "listen" if !listen && dial.is_none() => listen = true,
            "--metrics" if listen && metrics.is_none() => {
                let address = args.next().ok_or("--metrics needs <host:port>")?;
                metrics = Some(address.parse().map_err(|e| format!("{address}: {e}"))?);
            }
            "--once" if listen => once = true,
            "dial" if !listen && dial.is_none() => {
                let address = args.next().ok_or("dial needs an address")?;
                dial = Some(
                    address
                        .parse::<Multiaddr>()
                        .map_err(|e| format!("{address}: {e}"))?,
                );
            }
            "--transport" if transport.is_none() => {
                transport = Some(match args.next().as_deref() {
                    Some("tcp") => Transport::Tcp,
                    Some("quic") => Transport::Quic,
                    _ => return Err("--transport takes tcp or quic".into()),
                });
            }
            _ => return Err(format!("unexpected argument {arg:?}").into()),
        }
    }
    match (listen, dial, transport) {
        (true, _, transport) => Ok(Mode::Listen(Listen {
            transport: transport.unwrap_or(Transport::Tcp),
            metrics,
            once,
        })),
        (false, Some(_), Some(_)) => {
            Err("dial takes its transport from the address, not --transport".into())
        }
        (false, Some(address), None) => Ok(Mode::Dial(address)),
        (false, None, transport) => Ok(Mode::Demo(transport.unwrap_or(Transport::Tcp))),
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
        Mode::Demo(transport) => demo(transport).await,
        Mode::Listen(options) => listen(options).await,
        Mode::Dial(address) => dial(address, "").await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves dialers, echoing what each sends, until Ctrl-C (or, with
/// `--once`, until the first dialer has left).
async fn listen(options: Listen) -> Result<()> {
    let (model, req) = compile()?;
    // Stdout's first line is the listening address; the metrics' goes to
    // stderr.
    let config = metrics_endpoint::with_metrics(Config::default(), options.metrics).await?;
    // The listener receives on `req` (and sends the reply).
    let mut swarm = build_swarm(model, &req.receiver, LISTENER_IDLE_TIMEOUT, config)?;
    swarm.listen_on(options.transport.listen_address())?;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let event = tokio::select! {
            event = swarm.select_next_some() => event,
            _ = &mut interrupted => {
                println!("interrupted");
                return Ok(());
            }
        };
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let address = address
                    .with_p2p(*swarm.local_peer_id())
                    .expect("no /p2p yet");
                println!("listening on {address}");
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                println!("connection from {peer_id}");
            }
            SwarmEvent::Behaviour(Event::AppEvent {
                topic, value_bytes, ..
            }) if topic == "seen" => println!("received {:?}", text(&value_bytes)?),
            SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { peer, .. }) => {
                println!("reply acknowledged by {peer}");
            }
            SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                eprintln!("reply not delivered: {reason}");
            }
            SwarmEvent::Behaviour(Event::InboundRejected { rejection, .. }) => {
                eprintln!("inbound envelope refused: {rejection}");
            }
            SwarmEvent::Behaviour(Event::Engine(EngineStep::OpFailed { error, .. })) => {
                eprintln!("op failed: {}", error.detail);
            }
            SwarmEvent::ConnectionClosed {
                num_established: 0, ..
            } => {
                println!("dialer disconnected");
                if options.once {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
}

/// Sends each of [`MESSAGES`] to the listener at `address` and waits for it
/// to come back. `prefix` starts every line it prints.
async fn dial(address: Multiaddr, prefix: &str) -> Result<()> {
    let Some(Protocol::P2p(listener)) = address.iter().last() else {
        return Err(format!("{address} does not end in /p2p/<peer id>").into());
    };
    let (model, req) = compile()?;
    // The dialer sends on `req` (and receives the reply).
    let sender = req.sender;
    let mut swarm = build_swarm(model, &sender, DIALER_IDLE_TIMEOUT, Config::default())?;
    // The Node runs on its own engine thread; the handle reaches it from
    // this task (or any other).
    let node = swarm.behaviour().handle();
    let deadline = Instant::now() + DIAL_TIMEOUT;

    swarm.dial(address.clone())?;
    let what = format!("a connection to {address}");
    loop {
        match next_event(&mut swarm, deadline, &what).await? {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == listener => break,
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                return Err(format!("could not dial {address}: {error}").into());
            }
            _ => {}
        }
    }
    println!("{prefix}connected to {listener}");

    let peers = values::peers(&[listener]);
    for message in MESSAGES {
        let x = values::bytes(message.as_bytes());
        // The closure runs on the engine thread, so it owns what it uses.
        let (sender, peers) = (sender.clone(), peers.clone());
        node.with_node(move |node| {
            node.invoke(&sender, &[("peers", &peers), ("x", &x)])
                .map(drop)
                .map_err(|e| format!("invoke: {e:?}"))
        })
        .await??;
        println!("{prefix}sent {message:?}");
        let what = format!("the reply to {message:?}");
        loop {
            match next_event(&mut swarm, deadline, &what).await? {
                SwarmEvent::Behaviour(Event::AppEvent {
                    topic, value_bytes, ..
                }) if topic == "y" => {
                    println!("{prefix}reply {:?}", text(&value_bytes)?);
                    break;
                }
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                    return Err(format!("{message:?} not delivered: {reason}").into());
                }
                SwarmEvent::ConnectionClosed { cause, .. } => {
                    return Err(format!("connection closed waiting for {what}: {cause:?}").into());
                }
                SwarmEvent::Behaviour(Event::Engine(EngineStep::OpFailed { error, .. })) => {
                    return Err(format!("{message:?} not sent: {}", error.detail).into());
                }
                _ => {}
            }
        }
    }
    println!("{prefix}all {} replies arrived", MESSAGES.len());
    // Every envelope sent has its outcome by now (a reply came for each);
    // this is how a program that expects no reply knows it may exit.
    node.delivered().await?;

    loop {
        if let SwarmEvent::ConnectionClosed { .. } =
            next_event(&mut swarm, deadline, "the connection to close").await?
        {
            return Ok(());
        }
    }
}

/// Runs a listener as a child process and dials it.
async fn demo(transport: Transport) -> Result<()> {
    let mut listener = Listener::spawn(transport)?;
    let address = listener.address()?;
    let stdout = listener.take_stdout();
    let forward = std::thread::spawn(move || {
        for line in stdout.lines().map_while(std::io::Result::ok) {
            println!("[listener] {line}");
        }
    });
    println!("[listener] listening on {address}");
    let dialed = dial(address, "[dialer] ").await;
    let exited = match dialed {
        Ok(()) => listener.wait(LISTENER_EXIT_TIMEOUT),
        Err(_) => Ok(()),
    };
    drop(listener);
    let _ = forward.join();
    dialed.and(exited)
}

/// A child process in `listen` mode, killed if still running when dropped.
struct Listener {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Listener {
    fn spawn(transport: Transport) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["listen", "--once", "--transport", transport.name()])
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Self { child, stdout })
    }

    /// Reads the `listening on <address>` line.
    fn address(&mut self) -> Result<Multiaddr> {
        let mut line = String::new();
        self.stdout
            .as_mut()
            .expect("stdout is piped")
            .read_line(&mut line)?;
        let address = line
            .trim_end()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("listener printed {line:?}, not its address"))?;
        Ok(address.parse()?)
    }

    fn take_stdout(&mut self) -> BufReader<ChildStdout> {
        self.stdout.take().expect("stdout is piped")
    }

    fn wait(&mut self, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return match status.success() {
                    true => Ok(()),
                    false => Err(format!("listener exited with {status}").into()),
                };
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!("listener still running after {timeout:?}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The next swarm event, or an error naming `what` once `deadline` passes.
async fn next_event(
    swarm: &mut Swarm<Behaviour>,
    deadline: Instant,
    what: &str,
) -> Result<SwarmEvent<Event>> {
    tokio::time::timeout_at(deadline, swarm.select_next_some())
        .await
        .map_err(|_| format!("timed out after {DIAL_TIMEOUT:?} waiting for {what}").into())
}

/// A swarm with a fresh identity whose behaviour, configured by `config`,
/// runs `target` of `model`.
fn build_swarm(
    model: ModelProto,
    target: &str,
    idle_timeout: Duration,
    config: Config,
) -> Result<Swarm<Behaviour>> {
    let key = Keypair::generate_ed25519();
    let behaviour = echo::behaviour(&key, model, target, config)?;
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_behaviour(|_| behaviour)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle_timeout))
        .build())
}
