//! Measures a large value moving between processes: through the behaviour,
//! then the same bytes over a raw libp2p stream on the same transport, in
//! the same run.
//!
//! ```text
//! cargo run --release --example transfer -- --size 256MiB [--transport tcp|quic] [--peers N] [--probe]
//! ```
//!
//! It starts N receiver processes on loopback (copies of itself, `receive`
//! mode) and sends to all of them from its own process: one value of
//! `--size` bytes to every receiver through `bb_libp2p::Behaviour` (an
//! envelope per receiver, timed from the invoke to the last
//! acknowledgement), then the same number of bytes to every receiver over a
//! `libp2p-stream` stream each (timed from opening the streams to the last
//! receiver's one-byte answer). A progress bar shows each phase. It prints
//! what each phase moved per second, every process's peak RSS, and last
//!
//! ```text
//! bb-libp2p: <MiB/s>
//! raw libp2p stream: <MiB/s>
//! ratio: <bb/raw>
//! ```
//!
//! With `--probe`, 1 KiB values go to the first receiver every 20 ms while
//! the large one's chunks move, and the time from each one's invoke to its
//! acknowledgement is printed (median and 99th percentile).

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bb_libp2p::{values, Behaviour, Config, Event};
use bytesandbrains::proto::onnx::ModelProto;
use bytesandbrains::{Compiler, Graph, Module};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{noise, tcp, yamux, Multiaddr, StreamProtocol, Swarm};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

#[path = "common/node.rs"]
mod node;
#[path = "common/rss.rs"]
mod rss;

use rss::peak_rss;

/// The raw baseline's protocol.
const RAW: StreamProtocol = StreamProtocol::new("/bb-libp2p-example/raw-transfer/1");

/// How many bytes the raw baseline writes at once.
const RAW_WRITE: usize = 1 << 20;

/// The sender sends `x` to `peers`; each receiver outputs it as `y`.
struct Ship;
impl Module for Ship {
    fn name(&self) -> &str {
        "Ship"
    }
    fn body(&self, g: &mut Graph) {
        let peers = g.input("peers");
        let x = g.input("x");
        g.net_out("v", peers, x);
        let received = g.lookup_output("v").expect("v");
        g.output("y", received);
    }
}

#[derive(NetworkBehaviour)]
struct Both {
    bb: Behaviour,
    raw: libp2p_stream::Behaviour,
}

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Tcp,
    Quic,
}

struct Options {
    size: usize,
    transport: Transport,
    peers: usize,
    probe: bool,
}

fn parse_size(text: &str) -> Result<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number.parse().map_err(|_| format!("bad size {text:?}"))?;
    let unit = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} (B, KiB, MiB, GiB)").into()),
    };
    Ok(number * unit)
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<(bool, Options)> {
    let mut options = Options {
        size: 256 << 20,
        transport: Transport::Tcp,
        peers: 1,
        probe: false,
    };
    let mut receive = false;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "receive" => receive = true,
            "--size" => options.size = parse_size(&value()?)?,
            "--peers" => options.peers = value()?.parse()?,
            "--probe" => options.probe = true,
            "--transport" => {
                options.transport = match value()?.as_str() {
                    "tcp" => Transport::Tcp,
                    "quic" => Transport::Quic,
                    other => return Err(format!("unknown transport {other:?}").into()),
                }
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok((receive, options))
}

fn compile() -> Result<(ModelProto, bb_libp2p::ports::Port)> {
    bytesandbrains::ops::link_force();
    let model = Compiler::new().compile(Ship.build().map_err(|e| format!("{e:?}"))?)?;
    let port = bb_libp2p::ports::port(&model, "v")?;
    Ok((model, port))
}

fn swarm(model: ModelProto, target: &str, max_value: usize) -> Result<Swarm<Both>> {
    let key = Keypair::generate_ed25519();
    let config = Config::default().with_max_value_bytes(max_value.max(1 << 30));
    let bb = node::behaviour(&key, model, target, config)?;
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_behaviour(|_| Both {
            bb,
            raw: libp2p_stream::Behaviour::new(),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build())
}

/// A receiver: prints its address, takes values and raw streams, and on
/// end of its stdin prints its peak RSS and exits.
async fn receive(options: Options) -> Result<()> {
    let (model, port) = compile()?;
    let mut swarm = swarm(model, &port.receiver, options.size)?;
    let listen: Multiaddr = match options.transport {
        Transport::Tcp => "/ip4/127.0.0.1/tcp/0".parse()?,
        Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1".parse()?,
    };
    swarm.listen_on(listen)?;
    let mut incoming = swarm
        .behaviour()
        .raw
        .new_control()
        .accept(RAW)
        .map_err(|e| format!("{e:?}"))?;
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; RAW_WRITE];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = stream.write_all(&[1]).await;
                let _ = stream.close().await;
            });
        }
    });
    let (eof_tx, mut eof) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = eof_tx.send(());
    });
    loop {
        tokio::select! {
            _ = &mut eof => break,
            event = swarm.select_next_some() => {
                if let SwarmEvent::NewListenAddr { address, .. } = event {
                    let peer = *swarm.local_peer_id();
                    let address = address.with_p2p(peer).map_err(|_| "p2p")?;
                    // The sender reads this; if it is gone, so is the run.
                    let mut out = std::io::stdout();
                    writeln!(out, "listening on {address}")?;
                    out.flush()?;
                }
            }
        }
    }
    let _ = writeln!(std::io::stdout(), "peak rss: {}", peak_rss());
    Ok(())
}

struct Receiver {
    child: Child,
    stdout: BufReader<ChildStdout>,
    address: Multiaddr,
}

impl Receiver {
    fn spawn(options: &Options) -> Result<Self> {
        let transport = match options.transport {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        };
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "receive",
                "--transport",
                transport,
                "--size",
                &options.size.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or(format!("receiver said {line:?}"))?
            .parse()?;
        Ok(Self {
            child,
            stdout,
            address,
        })
    }

    /// Closes its stdin and returns what it printed last: its peak RSS.
    fn finish(mut self) -> Result<String> {
        drop(self.child.stdin.take());
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        self.child.wait()?;
        Ok(line.trim().trim_start_matches("peak rss: ").to_string())
    }
}

impl Drop for Receiver {
    /// A run that failed leaves no receiver behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bar(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:>18} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

async fn send(options: Options) -> Result<()> {
    let (model, port) = compile()?;
    let receivers: Vec<Receiver> = (0..options.peers)
        .map(|_| Receiver::spawn(&options))
        .collect::<Result<_>>()?;
    let mut swarm = swarm(model, &port.sender, options.size)?;
    let mut peers = Vec::new();
    for r in &receivers {
        let peer = r.address.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
            _ => None,
        });
        peers.push(peer.ok_or("receiver address without /p2p")?);
        swarm.dial(r.address.clone())?;
    }
    let mut connected = std::collections::HashSet::new();
    while connected.len() < peers.len() {
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = swarm.select_next_some().await {
            connected.insert(peer_id);
        }
    }
    let moved = (options.size * options.peers) as u64;

    // 1. Through the behaviour.
    let payload = vec![0x5au8; options.size];
    let x = values::bytes(&payload);
    drop(payload);
    let handle = swarm.behaviour().bb.handle();
    let to = values::peers(&peers);
    let progress = bar(moved, "bb-libp2p");
    let started = Instant::now();
    let invoke = {
        let (target, to, x) = (port.sender.clone(), to.clone(), x);
        let handle = handle.clone();
        tokio::task::spawn_blocking(move || {
            handle.with_node_blocking(move |node| {
                node.invoke(&target, &[("peers", &to), ("x", &x)]).map(drop)
            })
        })
    };
    let mut invoke = Some(invoke);
    let mut acked = 0;
    let mut probes: Vec<Instant> = Vec::new();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    // When the first chunk went: the engine's work on the value before it.
    let mut first_chunk = None;
    let small = values::bytes(&[7u8; 1024]);
    let first = values::peers(&peers[..1]);
    while acked < peers.len() {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(BothEvent::Bb(Event::EnvelopeAcknowledged { wire_req_id, .. })) => {
                    // The large value's envelopes share the first request
                    // id the Node mints, 0; each probe has the next.
                    match wire_req_id.unwrap_or(0) as usize {
                        0 => acked += 1,
                        id => if let Some(sent) = probes.get(id - 1) {
                            latencies.push(sent.elapsed());
                        }
                    }
                }
                SwarmEvent::Behaviour(BothEvent::Bb(Event::SendFailed { reason, .. })) => {
                    return Err(format!("send failed: {reason}").into())
                }
                _ => {}
            },
            _ = tick.tick() => {
                let sent = swarm.behaviour().bb.wire_stats().chunk_bytes_sent;
                if sent > 0 && first_chunk.is_none() {
                    first_chunk = Some(started.elapsed());
                }
                progress.set_position(sent.min(moved));
                if let Some(done) = invoke.as_mut().filter(|i| i.is_finished()) {
                    done.await???;
                    invoke = None;
                }
                // Probes start once the value is on the wire: they measure
                // the network, not the engine's work on the large value.
                if options.probe && first_chunk.is_some() {
                    let (target, to, x) = (port.sender.clone(), first.clone(), small.clone());
                    probes.push(Instant::now());
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        handle.with_node(move |node| {
                            let _ = node.invoke(&target, &[("peers", &to), ("x", &x)]);
                        }).await
                    });
                }
            }
        }
    }
    let bb_secs = started.elapsed().as_secs_f64();
    progress.finish_and_clear();

    // 2. The same bytes over a raw stream to each receiver.
    let control = swarm.behaviour().raw.new_control();
    let progress = bar(moved, "raw libp2p stream");
    let data = std::sync::Arc::new(vec![0x5au8; RAW_WRITE]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for peer in &peers {
        let (mut control, peer) = (control.clone(), *peer);
        let (data, size, progress) = (data.clone(), options.size, progress.clone());
        tasks.push(async move {
            let mut stream = control
                .open_stream(peer, RAW)
                .await
                .map_err(|e| e.to_string())?;
            let mut left = size;
            while left > 0 {
                let n = left.min(RAW_WRITE);
                stream
                    .write_all(&data[..n])
                    .await
                    .map_err(|e| e.to_string())?;
                progress.inc(n as u64);
                left -= n;
            }
            stream.close().await.map_err(|e| e.to_string())?;
            let mut answer = [0u8; 1];
            stream
                .read_exact(&mut answer)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        });
    }
    let all = futures::future::join_all(tasks);
    tokio::pin!(all);
    let results = loop {
        tokio::select! {
            results = &mut all => break results,
            _ = swarm.select_next_some() => {}
        }
    };
    for result in results {
        result?;
    }
    let raw_secs = started.elapsed().as_secs_f64();
    progress.finish_and_clear();

    let mib = moved as f64 / (1 << 20) as f64;
    println!(
        "moved {} MiB to {} receiver(s) over {}",
        options.size >> 20,
        options.peers,
        if options.transport == Transport::Tcp {
            "tcp"
        } else {
            "quic"
        }
    );
    if options.probe {
        latencies.sort();
        let at = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q) as usize);
        match (at(0.5), at(0.99)) {
            (Some(p50), Some(p99)) => println!(
                "1 KiB values during the transfer: {} acknowledged, median {p50:?}, p99 {p99:?}",
                latencies.len()
            ),
            _ => println!("1 KiB values during the transfer: none acknowledged"),
        }
    }
    if let Some(first) = first_chunk {
        println!(
            "bb-libp2p: first chunk on the wire after {first:.2?} (the engine's work on the value)"
        );
    }
    println!("peak rss: sender {}", peak_rss());
    for (i, receiver) in receivers.into_iter().enumerate() {
        println!("peak rss: receiver {} {}", i + 1, receiver.finish()?);
    }
    let (bb, raw) = (mib / bb_secs, mib / raw_secs);
    println!("bb-libp2p: {bb:.1} MiB/s");
    println!("raw libp2p stream: {raw:.1} MiB/s");
    println!("ratio: {:.2}", bb / raw);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let run = async {
        let (receiving, options) = parse(std::env::args().skip(1))?;
        if receiving {
            receive(options).await
        } else {
            send(options).await
        }
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("transfer: {e}");
            ExitCode::FAILURE
        }
    }
}
