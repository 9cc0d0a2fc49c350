//! The one test support: swarms on libp2p's in-memory transport driven
//! together on the test's task, waiters, models, a counting allocator, and
//! ways to hold a Node's engine thread busy. Tests, benches and the fuzz
//! target share it.
#![allow(dead_code)]

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{plaintext, yamux, Multiaddr, Swarm, Transport};

/// A swarm with `behaviour` on the memory transport (plaintext + yamux).
pub fn memory_swarm<B: NetworkBehaviour>(key: Keypair, behaviour: B) -> Swarm<B> {
    swarm_over(key, MemoryTransport::default(), behaviour)
}

/// A swarm with `behaviour` on `transport`, upgraded with plaintext and
/// yamux.
pub fn swarm_over<B, T>(key: Keypair, transport: T, behaviour: B) -> Swarm<B>
where
    B: NetworkBehaviour,
    T: Transport + Send + Unpin + 'static,
    T::Output: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    let peer = key.public().to_peer_id();
    let transport = transport
        .upgrade(Version::V1)
        .authenticate(plaintext::Config::new(&key))
        .multiplex(yamux::Config::default())
        .boxed();
    Swarm::new(
        transport,
        behaviour,
        peer,
        // Long enough for a benchmark's pauses between samples.
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(3600)),
    )
}

/// Listens on a fresh memory address and returns it once the swarm reports it.
pub async fn listen<B: NetworkBehaviour>(swarm: &mut Swarm<B>) -> Multiaddr {
    swarm.listen_on("/memory/0".parse().unwrap()).unwrap();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return address;
        }
    }
}

/// Polls every swarm until `f` returns `Some` for one of their events.
/// Panics after `timeout`, naming what it was waiting for.
pub async fn until<B, T>(
    swarms: &mut [&mut Swarm<B>],
    timeout: Duration,
    what: &str,
    mut f: impl FnMut(usize, SwarmEvent<B::ToSwarm>) -> Option<T>,
) -> T
where
    B: NetworkBehaviour,
{
    let wait = poll_fn(|cx| {
        for (i, swarm) in swarms.iter_mut().enumerate() {
            while let Poll::Ready(Some(event)) = swarm.poll_next_unpin(cx) {
                if let Some(t) = f(i, event) {
                    return Poll::Ready(t);
                }
            }
        }
        Poll::Pending
    });
    match tokio::time::timeout(timeout, wait).await {
        Ok(t) => t,
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls every swarm for `duration`, handing each event to `f`.
pub async fn run_for<B: NetworkBehaviour>(
    swarms: &mut [&mut Swarm<B>],
    duration: Duration,
    mut f: impl FnMut(usize, SwarmEvent<B::ToSwarm>),
) {
    let wait = poll_fn(|cx| {
        for (i, swarm) in swarms.iter_mut().enumerate() {
            while let Poll::Ready(Some(event)) = swarm.poll_next_unpin(cx) {
                f(i, event);
            }
        }
        Poll::<()>::Pending
    });
    let _ = tokio::time::timeout(duration, wait).await;
}

/// Dials `b` from `a` and waits until both sides have the connection.
pub async fn connect<B: NetworkBehaviour>(a: &mut Swarm<B>, b: &mut Swarm<B>) {
    let addr = listen(b).await;
    a.dial(addr).unwrap();
    let (pa, pb) = (*a.local_peer_id(), *b.local_peer_id());
    let mut seen = [false, false];
    until(
        &mut [a, b],
        Duration::from_secs(10),
        "connection",
        |i, e| {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } = e {
                if (i == 0 && peer_id == pb) || (i == 1 && peer_id == pa) {
                    seen[i] = true;
                }
            }
            (seen[0] && seen[1]).then_some(())
        },
    )
    .await;
}

/// Runs `f` on the Node of `swarm`'s behaviour, on its engine thread, and
/// returns what it returns.
pub fn on_node<R: Send + 'static>(
    swarm: &Swarm<bb_libp2p::Behaviour>,
    f: impl FnOnce(&mut bb_libp2p::Node) -> R + Send + 'static,
) -> R {
    swarm
        .behaviour()
        .handle()
        .with_node_blocking(f)
        .expect("the Node runs")
}

/// Keeps a Node's engine thread busy until dropped: the Node takes nothing
/// from its ingress meanwhile, as a Node deep in a computation would.
pub struct EngineHeld(Option<std::sync::mpsc::Sender<()>>);

/// Holds the engine thread of the Node behind `handle` (see [`EngineHeld`]).
/// Returns once the engine is held.
pub fn hold_engine(handle: &bb_libp2p::NodeHandle) -> EngineHeld {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (held, is_held) = std::sync::mpsc::channel::<()>();
    let handle = handle.clone();
    std::thread::spawn(move || {
        let _ = handle.with_node_blocking(move |_| {
            let _ = held.send(());
            let _ = released.recv();
        });
    });
    is_held.recv().expect("the engine thread runs the hold");
    EngineHeld(Some(release))
}

impl Drop for EngineHeld {
    fn drop(&mut self) {
        self.0.take();
    }
}

/// Waits until swarm `i` of `swarms` reports an `AppEvent` carrying
/// `value`, failing on any `SendFailed`.
pub async fn until_value(
    swarms: &mut [&mut Swarm<bb_libp2p::Behaviour>],
    i: usize,
    value: &[u8],
    timeout: Duration,
) {
    until(swarms, timeout, "the value", |j, e| match e {
        SwarmEvent::Behaviour(bb_libp2p::Event::AppEvent { value_bytes, .. })
            if j == i && value_bytes == value =>
        {
            Some(())
        }
        SwarmEvent::Behaviour(bb_libp2p::Event::SendFailed { reason, .. }) => {
            panic!("send failed: {reason}")
        }
        _ => None,
    })
    .await
}

pub mod alloc;
pub mod models;
#[path = "../../examples/federated/registry.rs"]
pub mod registry;

/// A request-response codec that writes requests and responses as raw bytes
/// and reads them to the end of the stream: a peer that speaks
/// `/bytesandbrains/wire/1` without following its framing.
#[derive(Clone, Default)]
pub struct RawCodec;

impl libp2p::request_response::Codec for RawCodec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        futures::AsyncReadExt::read_to_end(io, &mut buf).await?;
        Ok(buf)
    }

    async fn read_response<T>(&mut self, p: &Self::Protocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        self.read_request(p, io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        futures::AsyncWriteExt::write_all(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        futures::AsyncWriteExt::write_all(io, &res).await
    }
}

/// A raw request-response behaviour on the crate's protocol.
pub fn raw_wire(timeout: Duration) -> libp2p::request_response::Behaviour<RawCodec> {
    libp2p::request_response::Behaviour::with_codec(
        RawCodec,
        [(
            bb_libp2p::PROTOCOL_NAME,
            libp2p::request_response::ProtocolSupport::Full,
        )],
        libp2p::request_response::Config::default().with_request_timeout(timeout),
    )
}
pub mod link;

/// Runs the example binary `name` (`cargo test` builds it beside the test
/// binaries) with no arguments; returns its stdout once it exited 0.
pub fn run_example(name: &str) -> String {
    let mut dir = std::env::current_exe().expect("the test binary's path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let output = std::process::Command::new(dir.join("examples").join(name))
        .output()
        .expect("the example runs (cargo test builds it)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
