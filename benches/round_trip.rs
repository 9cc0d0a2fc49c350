//! The data path through [`bb_libp2p::Behaviour`], each beside a raw
//! libp2p baseline in the same run:
//!
//! - `round_trip`: one 1 KiB or 1 MiB value there and back, against raw
//!   request-response carrying the same bytes (below);
//! - `one_way`: a 64 MiB value, against a raw `libp2p-stream` stream
//!   (`data_path/one_way.rs`);
//! - `pipelined`: 256 values of 1 KiB in flight at once, against 256 raw
//!   request-response requests (`data_path/pipelined.rs`).
//!
//! The round trip:
//!
//! Both sides run two swarms on libp2p's in-memory transport (plaintext +
//! yamux) in one process, connected once, driven on one current-thread
//! runtime; bb-libp2p's two Nodes run on engine threads of their own, as in
//! any application. One iteration:
//!
//! - `bb_libp2p`: A invokes a Module (through its `NodeHandle`) that sends
//!   `x` to B with `g.net_out`; B sends it back to its sender; A outputs it
//!   as `y`. Timed from the invoke until A's swarm emits
//!   `Event::AppEvent { topic: "y" }`.
//! - `raw_request_response`: A sends the bytes as a request; B answers with
//!   the same bytes; timed until A has the response.
//!
//! The baseline is comparable because the same payload crosses the same
//! transport twice, A to B and B to A, and each side copies it once from the
//! benchmark's buffer. What differs is the work bb-libp2p adds: two
//! requests (one per direction), each answered by an acknowledgement,
//! instead of one request and its response; a `WireEnvelope` around the
//! value; and the engine running the Module on both Nodes.
//!
//! Every iteration sends different bytes (the iteration count, in the first
//! eight), as distinct values in an application would be.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "data_path/one_way.rs"]
mod one_way;
#[path = "data_path/ping_pair.rs"]
mod ping_pair;
#[path = "data_path/pipelined.rs"]
mod pipelined;

use std::future::{poll_fn, Future};
use std::io;
use std::task::Poll;
use std::time::{Duration, Instant};

use bb_libp2p::{Behaviour, Event, NodeHandle};
use bytesandbrains::syscall::values::{BytesValue, PeerIdVecValue};
use common::models::{bb_swarm, compile, RoundTrip};
use common::{connect, memory_swarm};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::prelude::*;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{StreamProtocol, Swarm};

/// The value sizes, with their labels.
const SIZES: [(usize, &str); 2] = [(1024, "1KiB"), (1024 * 1024, "1MiB")];

/// One round trip that takes longer than this has lost its value.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(10);

// ---- The bytesandbrains side ----

/// Two connected bb-libp2p swarms: A sends, B replies.
struct BbPair {
    a: Swarm<Behaviour>,
    b: Swarm<Behaviour>,
    /// A's Node, on its engine thread.
    node_a: NodeHandle,
    sender: String,
    /// `peers` for the invoke: B.
    peers: Vec<u8>,
    /// `x` for the invoke, `bincode(BytesValue(payload))`: a u64 length,
    /// then the payload, whose first eight bytes are rewritten per
    /// iteration.
    x: Vec<u8>,
    sent: u64,
}

impl BbPair {
    async fn new(size: usize) -> Self {
        let (model, targets) = compile(RoundTrip);
        let (sender, receiver) = (&targets[0], &targets[1]);
        let (mut a, mut b) = (bb_swarm(&model, &[sender]), bb_swarm(&model, &[receiver]));
        connect(&mut a, &mut b).await;
        let peers = vec![bb_libp2p::to_engine_peer(b.local_peer_id())];
        Self {
            peers: bincode::serialize(&PeerIdVecValue(peers)).unwrap(),
            x: bincode::serialize(&BytesValue(vec![0; size])).unwrap(),
            sender: sender.clone(),
            node_a: a.behaviour().handle(),
            a,
            b,
            sent: 0,
        }
    }

    /// Runs `iters` round trips; returns the time they took.
    async fn round_trips(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            self.sent += 1;
            let tag = self.sent.to_le_bytes();
            self.x[8..16].copy_from_slice(&tag);
            // The buffer goes to the engine thread and comes back, so the
            // invoke's copy stays the only one. The swarms run meanwhile: the
            // envelope leaves as soon as the engine yields it, not once the
            // invoke's result is back here.
            let x = std::mem::take(&mut self.x);
            let (sender, peers) = (self.sender.clone(), self.peers.clone());
            let mut invoked = Box::pin(self.node_a.with_node(move |node| {
                node.invoke(&sender, &[("peers", &peers), ("x", &x)])
                    .expect("invoke");
                x
            }));
            let (a, b) = (&mut self.a, &mut self.b);
            let mut back = None;
            let mut y = None;
            within_timeout(poll_fn(|cx| {
                if back.is_none() {
                    if let Poll::Ready(x) = invoked.as_mut().poll(cx) {
                        back = Some(x.expect("A's Node runs"));
                    }
                }
                while let Poll::Ready(Some(event)) = b.poll_next_unpin(cx) {
                    check_bb(&event);
                }
                while y.is_none() {
                    let Poll::Ready(Some(event)) = a.poll_next_unpin(cx) else {
                        break;
                    };
                    check_bb(&event);
                    if let SwarmEvent::Behaviour(Event::AppEvent {
                        topic, value_bytes, ..
                    }) = event
                    {
                        assert_eq!(topic, "y");
                        y = Some(value_bytes);
                    }
                }
                if back.is_some() && y.is_some() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }))
            .await;
            self.x = back.expect("ready above");
            let y = y.expect("ready above");
            assert_eq!((y.len(), &y[8..16]), (self.x.len(), &tag[..]));
        }
        start.elapsed()
    }
}

/// Panics on an event that means the value will not arrive. Other engine
/// steps (a one-way `wire.Send`'s `WireTimeout` among them) are ignored.
fn check_bb(event: &SwarmEvent<Event>) {
    match event {
        SwarmEvent::Behaviour(e @ (Event::SendFailed { .. } | Event::InboundRejected { .. })) => {
            panic!("{e:?}")
        }
        SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
            panic!("connection to {peer_id} closed: {cause:?}")
        }
        _ => {}
    }
}

// ---- The raw request-response side ----

const ECHO_PROTOCOL: StreamProtocol = StreamProtocol::new("/bb-libp2p-bench/echo/1");

/// Largest frame [`EchoCodec`] reads.
const MAX_FRAME_BYTES: usize = 2 * 1024 * 1024;

/// Bytes behind a u32 big-endian length prefix, read the way libp2p's own
/// codecs read (`take` then `read_to_end`), for requests and responses alike.
#[derive(Debug, Clone, Default)]
struct EchoCodec;

async fn read_frame<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut prefix = [0u8; 4];
    io.read_exact(&mut prefix).await?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes, cap is {MAX_FRAME_BYTES}"),
        ));
    }
    let mut body = Vec::new();
    io.take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(body)
}

async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(body).await
}

impl request_response::Codec for EchoCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

type Echo = request_response::Behaviour<EchoCodec>;

fn echo_swarm(key: Keypair) -> Swarm<Echo> {
    let behaviour = request_response::Behaviour::with_codec(
        EchoCodec,
        [(ECHO_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default(),
    );
    memory_swarm(key, behaviour)
}

/// Two connected request-response swarms: A asks, B echoes.
struct RawPair {
    a: Swarm<Echo>,
    b: Swarm<Echo>,
    payload: Vec<u8>,
    sent: u64,
}

impl RawPair {
    async fn new(size: usize) -> Self {
        let mut a = echo_swarm(Keypair::generate_ed25519());
        let mut b = echo_swarm(Keypair::generate_ed25519());
        connect(&mut a, &mut b).await;
        Self {
            a,
            b,
            payload: vec![0; size],
            sent: 0,
        }
    }

    /// Runs `iters` round trips; returns the time they took.
    async fn round_trips(&mut self, iters: u64) -> Duration {
        let peer_b = *self.b.local_peer_id();
        let start = Instant::now();
        for _ in 0..iters {
            self.sent += 1;
            let tag = self.sent.to_le_bytes();
            self.payload[..8].copy_from_slice(&tag);
            let id = self
                .a
                .behaviour_mut()
                .send_request(&peer_b, self.payload.clone());
            let (a, b) = (&mut self.a, &mut self.b);
            let echoed = within_timeout(poll_fn(|cx| {
                while let Poll::Ready(Some(event)) = b.poll_next_unpin(cx) {
                    match event {
                        SwarmEvent::Behaviour(request_response::Event::Message {
                            message:
                                request_response::Message::Request {
                                    request, channel, ..
                                },
                            ..
                        }) => {
                            b.behaviour_mut()
                                .send_response(channel, request)
                                .expect("response channel open");
                        }
                        event => check_raw(&event),
                    }
                }
                while let Poll::Ready(Some(event)) = a.poll_next_unpin(cx) {
                    match event {
                        SwarmEvent::Behaviour(request_response::Event::Message {
                            message:
                                request_response::Message::Response {
                                    request_id,
                                    response,
                                },
                            ..
                        }) if request_id == id => return Poll::Ready(response),
                        event => check_raw(&event),
                    }
                }
                Poll::Pending
            }))
            .await;
            assert_eq!((echoed.len(), &echoed[..8]), (self.payload.len(), &tag[..]));
        }
        start.elapsed()
    }
}

/// Panics on an event that means the echo will not arrive.
fn check_raw(event: &SwarmEvent<request_response::Event<Vec<u8>, Vec<u8>>>) {
    match event {
        SwarmEvent::Behaviour(
            e @ (request_response::Event::OutboundFailure { .. }
            | request_response::Event::InboundFailure { .. }),
        ) => panic!("{e:?}"),
        SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
            panic!("connection to {peer_id} closed: {cause:?}")
        }
        _ => {}
    }
}

async fn within_timeout<T>(f: impl Future<Output = T>) -> T {
    within(ROUND_TRIP_TIMEOUT, f).await
}

/// How long a 64 MiB value may take.
const LARGE_TIMEOUT: Duration = Duration::from_secs(120);

async fn within<T>(timeout: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(timeout, f)
        .await
        .unwrap_or_else(|_| panic!("nothing came within {timeout:?}"))
}

fn round_trip(c: &mut Criterion) {
    // The swarms live outside the runtime and every sample drives them with
    // `block_on` on this thread, bb-libp2p's and request-response's alike.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("round_trip");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    for (size, label) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut bb = rt.block_on(BbPair::new(size));
        group.bench_function(BenchmarkId::new("bb_libp2p", label), |b| {
            b.iter_custom(|iters| rt.block_on(bb.round_trips(iters)))
        });
        drop(bb);
        let mut raw = rt.block_on(RawPair::new(size));
        group.bench_function(BenchmarkId::new("raw_request_response", label), |b| {
            b.iter_custom(|iters| rt.block_on(raw.round_trips(iters)))
        });
    }
    group.finish();
}

fn one_way(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("one_way");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Bytes(one_way::ONE_WAY_BYTES as u64));
    let mut bb = rt.block_on(one_way::BbOneWay::new());
    group.bench_function(BenchmarkId::new("bb_libp2p", "64MiB"), |b| {
        b.iter_custom(|iters| rt.block_on(bb.sends(iters)))
    });
    drop(bb);
    let mut raw = rt.block_on(one_way::RawOneWay::new());
    group.bench_function(BenchmarkId::new("raw_libp2p_stream", "64MiB"), |b| {
        b.iter_custom(|iters| rt.block_on(raw.sends(iters)))
    });
    group.finish();
}

fn pipelined(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("pipelined");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(pipelined::IN_FLIGHT as u64));
    let mut bb = rt.block_on(pipelined::BbPipelined::new());
    group.bench_function(BenchmarkId::new("bb_libp2p", "256x1KiB"), |b| {
        b.iter_custom(|iters| rt.block_on(bb.batches(iters)))
    });
    drop(bb);
    let mut raw = rt.block_on(pipelined::RawPipelined::new());
    group.bench_function(BenchmarkId::new("raw_request_response", "256x1KiB"), |b| {
        b.iter_custom(|iters| rt.block_on(raw.batches(iters)))
    });
    group.finish();
}

criterion_group!(benches, round_trip, one_way, pipelined);
criterion_main!(benches);
