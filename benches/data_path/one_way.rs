//! One way: a 64 MiB value from A to B through [`bb_libp2p::Behaviour`]
//! (a transfer in chunks), timed from the invoke until A's swarm reports
//! the acknowledgement and B's swarm the value (its engine decoded it and
//! its graph output it), beside the same bytes over a raw libp2p stream
//! (`libp2p-stream`), timed from opening the stream until B's one-byte
//! answer, after it read them all. Same memory transport, same process.

use libp2p_stream::Control;

use super::ping_pair::PingPair;
use super::*;

/// The value's size.
pub(crate) const ONE_WAY_BYTES: usize = 64 << 20;

const RAW_STREAM: StreamProtocol = StreamProtocol::new("/bb-libp2p-bench/stream/1");

/// How much the raw side writes at once.
const RAW_WRITE: usize = 1 << 20;

/// A [`PingPair`] and the value A sends, tagged with its number.
pub(crate) struct BbOneWay {
    pair: PingPair,
    x: Vec<u8>,
    sent: u64,
}

impl BbOneWay {
    pub(crate) async fn new() -> Self {
        Self {
            pair: PingPair::new().await,
            x: bb_libp2p::values::bytes(&vec![0; ONE_WAY_BYTES]),
            sent: 0,
        }
    }

    /// Sends `iters` values; returns the time until each was acknowledged.
    pub(crate) async fn sends(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            self.sent += 1;
            self.x[8..16].copy_from_slice(&self.sent.to_le_bytes());
            let x = std::mem::take(&mut self.x);
            let pair = &mut self.pair;
            let (sender, peers) = (pair.sender.clone(), pair.peers.clone());
            let mut invoked = Box::pin(pair.node_a.with_node(move |node| {
                node.invoke(&sender, &[("peers", &peers), ("x", &x)])
                    .expect("invoke");
                x
            }));
            let (a, b) = (&mut pair.a, &mut pair.b);
            let (mut back, mut acked, mut output) = (None, false, false);
            within(
                LARGE_TIMEOUT,
                poll_fn(|cx| {
                    if back.is_none() {
                        if let Poll::Ready(x) = invoked.as_mut().poll(cx) {
                            back = Some(x.expect("A's Node runs"));
                        }
                    }
                    while let Poll::Ready(Some(event)) = b.poll_next_unpin(cx) {
                        check_bb(&event);
                        output |= matches!(event, SwarmEvent::Behaviour(Event::AppEvent { .. }));
                    }
                    while let Poll::Ready(Some(event)) = a.poll_next_unpin(cx) {
                        check_bb(&event);
                        acked |= matches!(
                            event,
                            SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. })
                        );
                    }
                    if back.is_some() && acked && output {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                }),
            )
            .await;
            self.x = back.expect("ready above");
        }
        start.elapsed()
    }
}

/// Two connected swarms with `libp2p-stream`, each polled by a task of its
/// own; B reads every stream on [`RAW_STREAM`] to its end and answers one
/// byte.
pub(crate) struct RawOneWay {
    control: Control,
    peer_b: libp2p::PeerId,
    data: Vec<u8>,
}

impl RawOneWay {
    pub(crate) async fn new() -> Self {
        let mut a = memory_swarm(Keypair::generate_ed25519(), libp2p_stream::Behaviour::new());
        let mut b = memory_swarm(Keypair::generate_ed25519(), libp2p_stream::Behaviour::new());
        connect(&mut a, &mut b).await;
        let control = a.behaviour().new_control();
        let mut incoming = b
            .behaviour()
            .new_control()
            .accept(RAW_STREAM)
            .expect("registered once");
        let peer_b = *b.local_peer_id();
        tokio::spawn(async move {
            loop {
                let _ = a.select_next_some().await;
            }
        });
        tokio::spawn(async move {
            loop {
                let _ = b.select_next_some().await;
            }
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; RAW_WRITE];
            while let Some((_, mut stream)) = incoming.next().await {
                while stream.read(&mut buf).await.expect("the stream reads") > 0 {}
                stream.write_all(&[1]).await.expect("the answer goes");
                stream.close().await.expect("the stream closes");
            }
        });
        Self {
            control,
            peer_b,
            data: vec![0; RAW_WRITE],
        }
    }

    /// Sends `iters` times [`ONE_WAY_BYTES`]; returns the time until each
    /// was answered.
    pub(crate) async fn sends(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            let (control, data, peer) = (&mut self.control, &self.data, self.peer_b);
            within(LARGE_TIMEOUT, async move {
                let mut stream = control
                    .open_stream(peer, RAW_STREAM)
                    .await
                    .expect("a stream opens");
                for _ in 0..ONE_WAY_BYTES / RAW_WRITE {
                    stream.write_all(data).await.expect("the stream writes");
                }
                stream.close().await.expect("the stream closes");
                let mut answer = [0u8; 1];
                stream.read_exact(&mut answer).await.expect("B answers");
            })
            .await;
        }
        start.elapsed()
    }
}
