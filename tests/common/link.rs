//! A link-shaping transport for tests: libp2p's `MemoryTransport` with each
//! connection's outgoing bytes delayed, paced to a bandwidth, stalled now
//! and then as a lost packet would stall a TCP stream, and cut on demand.
//!
//! Both ends of a link shape what they send, so a [`Shape`] with a one-way
//! delay of 150 ms gives a 300 ms round trip. Bytes are delivered in order:
//! a transport under libp2p is a reliable stream, so a lost packet shows up
//! as a retransmission stall of at least 200 ms (Linux's minimum TCP
//! retransmission timeout), during which everything behind it waits.
//!
//! A [`LinkControl`] shared by the swarms of a link cuts every connection
//! (both ends read end-of-file) and fails every dial until it is restored.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::mpsc;
use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, SinkExt, StreamExt};
use libp2p::core::transport::{MemoryTransport, Transport};
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::Swarm;
use tokio::sync::watch;
use tokio::time::Instant;

/// Chunks queued on a link's sending side before writes wait: with chunks
/// of up to 16 KiB, room for a 10 Mbit/s link's 300 ms of bytes in flight.
const QUEUED_CHUNKS: usize = 256;

/// Largest chunk taken from one write.
const MAX_CHUNK: usize = 16 * 1024;

/// What a link does to the bytes crossing it, in each direction.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Time from a byte leaving one end to reaching the other.
    pub one_way: Duration,
    /// Bits per second each direction carries; `None` for no limit.
    pub bits_per_sec: Option<u64>,
    /// The chance that a chunk is lost and sent again after a stall.
    pub loss: f64,
}

impl Shape {
    /// A link with `rtt` round trip, `mbit` Mbit/s each way and no loss.
    pub fn wan(rtt: Duration, mbit: u64) -> Self {
        Self {
            one_way: rtt / 2,
            bits_per_sec: Some(mbit * 1_000_000),
            loss: 0.0,
        }
    }

    /// The same link losing `loss` of its chunks.
    pub fn with_loss(self, loss: f64) -> Self {
        Self { loss, ..self }
    }

    /// The stall of a lost chunk: a retransmission timeout, at least
    /// 200 ms and at least a round trip.
    fn stall(&self) -> Duration {
        (self.one_way * 2).max(Duration::from_millis(200))
    }
}

/// Cuts and restores the links of the swarms built with it.
#[derive(Clone)]
pub struct LinkControl {
    cuts: Arc<watch::Sender<u64>>,
    down: Arc<AtomicBool>,
    /// Chunks stalled as lost, across the links.
    pub stalls: Arc<AtomicU64>,
}

impl Default for LinkControl {
    fn default() -> Self {
        Self {
            cuts: Arc::new(watch::channel(0).0),
            down: Arc::new(AtomicBool::new(false)),
            stalls: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl LinkControl {
    /// Breaks every open connection (both ends read end-of-file) and fails
    /// new ones until [`LinkControl::restore`].
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

/// A swarm with `behaviour` on a shaped memory transport (plaintext +
/// yamux), its links governed by `control`.
pub fn shaped_swarm<B: NetworkBehaviour>(
    key: Keypair,
    behaviour: B,
    shape: Shape,
    control: &LinkControl,
) -> Swarm<B> {
    let peer = key.public().to_peer_id();
    let control = control.clone();
    let seed = u64::from_le_bytes(peer.to_bytes()[2..10].try_into().unwrap());
    let links = Arc::new(AtomicU64::new(seed | 1));
    let transport = MemoryTransport::default().and_then(move |channel, _| {
        let control = control.clone();
        let seed = links.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        async move {
            if control.is_down() {
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "link cut"));
            }
            Ok(Shaped::new(channel, shape, &control, seed))
        }
    });
    super::swarm_over(key, transport, behaviour)
}

/// One end of a shaped connection: reads pass through; writes go to a task
/// that delivers them late, paced and now and then stalled.
struct Shaped<S> {
    reader: ReadHalf<S>,
    chunks: mpsc::Sender<(Instant, Vec<u8>)>,
    cut: watch::Receiver<u64>,
}

impl<S> Shaped<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    fn new(stream: S, shape: Shape, control: &LinkControl, seed: u64) -> Self {
        let (reader, writer) = stream.split();
        let (chunks, queue) = mpsc::channel(QUEUED_CHUNKS);
        let cut = control.cuts.subscribe();
        tokio::spawn(deliver(
            writer,
            queue,
            shape,
            cut.clone(),
            seed,
            Arc::clone(&control.stalls),
        ));
        Self {
            reader,
            chunks,
            cut,
        }
    }
}

impl<S> Shaped<S> {
    fn is_cut(&self) -> bool {
        self.cut.has_changed().unwrap_or(true)
    }
}

/// Writes each chunk when it arrives at the far end: after the chunks
/// before it, its own time on the wire at the link's rate, the one-way
/// delay, and a stall when it is lost. Closes the stream when the link is
/// cut or the connection is done.
async fn deliver<S: AsyncWrite + Unpin>(
    mut writer: WriteHalf<S>,
    mut queue: mpsc::Receiver<(Instant, Vec<u8>)>,
    shape: Shape,
    mut cut: watch::Receiver<u64>,
    mut seed: u64,
    stalls: Arc<AtomicU64>,
) {
    let mut wire_free = Instant::now();
    loop {
        let (sent, chunk) = tokio::select! {
            next = queue.next() => match next {
                Some(next) => next,
                None => break,
            },
            _ = cut.changed() => break,
        };
        let on_wire = shape.bits_per_sec.map_or(Duration::ZERO, |bps| {
            Duration::from_secs_f64(chunk.len() as f64 * 8.0 / bps as f64)
        });
        wire_free = wire_free.max(sent) + on_wire;
        let mut arrival = wire_free + shape.one_way;
        if shape.loss > 0.0 && uniform(&mut seed) < shape.loss {
            stalls.fetch_add(1, Ordering::Relaxed);
            arrival += shape.stall();
            // Everything behind a lost packet waits for its retransmission.
            wire_free += shape.stall();
        }
        tokio::select! {
            _ = tokio::time::sleep_until(arrival) => {}
            _ = cut.changed() => break,
        }
        if writer.write_all(&chunk).await.is_err() || writer.flush().await.is_err() {
            break;
        }
    }
    let _ = writer.close().await;
}

/// A number in [0, 1) from a xorshift generator.
fn uniform(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Shaped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_cut() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Shaped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_cut() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        let closed = || io::Error::from(io::ErrorKind::BrokenPipe);
        match self.chunks.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(Err(closed())),
            Poll::Pending => return Poll::Pending,
        }
        let n = buf.len().min(MAX_CHUNK);
        self.chunks
            .start_send((Instant::now(), buf[..n].to_vec()))
            .map_err(|_| closed())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued chunks are on the wire: the link delivers them.
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The task closes the stream after the last chunk.
        let _ = self.chunks.poll_close_unpin(cx);
        Poll::Ready(Ok(()))
    }
}
