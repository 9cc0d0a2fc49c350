//! Many small values in flight: 256 values of 1 KiB handed to A's Node at
//! once, for B, through [`bb_libp2p::Behaviour`], timed until A has all 256
//! acknowledgements, beside 256 raw request-response requests of 1 KiB,
//! each answered with an empty response, timed until A has all 256
//! responses. The behaviour keeps at most 50 envelopes in flight to one
//! peer (half of request-response's 100 streams a connection), the rest
//! queued; the raw side keeps the same 50 requests in flight. Same
//! transport, same process.

use super::ping_pair::PingPair;
use super::*;

/// Values in flight at once (the behaviour's default in-flight bound).
pub(crate) const IN_FLIGHT: usize = 256;

/// Each value's size.
const VALUE_BYTES: usize = 1024;

/// Requests the raw side keeps in flight: what the behaviour keeps to one
/// peer by default.
const RAW_WINDOW: usize = 50;

/// A [`PingPair`] and the number of values A has sent.
pub(crate) struct BbPipelined {
    pair: PingPair,
    sent: u64,
}

impl BbPipelined {
    pub(crate) async fn new() -> Self {
        Self {
            pair: PingPair::new().await,
            sent: 0,
        }
    }

    /// Sends `iters` batches; returns the time until each was acknowledged.
    pub(crate) async fn batches(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            let first = self.sent;
            self.sent += IN_FLIGHT as u64;
            let pair = &mut self.pair;
            let (sender, peers) = (pair.sender.clone(), pair.peers.clone());
            let mut invoked = Box::pin(pair.node_a.with_node(move |node| {
                let mut value = vec![0u8; VALUE_BYTES];
                for n in first..first + IN_FLIGHT as u64 {
                    value[..8].copy_from_slice(&n.to_le_bytes());
                    let x = bb_libp2p::values::bytes(&value);
                    node.invoke(&sender, &[("peers", &peers), ("x", &x)])
                        .expect("invoke");
                }
            }));
            let (a, b) = (&mut pair.a, &mut pair.b);
            let (mut invoked_all, mut acked) = (false, 0);
            within(
                ROUND_TRIP_TIMEOUT,
                poll_fn(|cx| {
                    if !invoked_all && invoked.as_mut().poll(cx).is_ready() {
                        invoked_all = true;
                    }
                    while let Poll::Ready(Some(event)) = b.poll_next_unpin(cx) {
                        check_bb(&event);
                    }
                    while let Poll::Ready(Some(event)) = a.poll_next_unpin(cx) {
                        check_bb(&event);
                        if matches!(
                            event,
                            SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. })
                        ) {
                            acked += 1;
                        }
                    }
                    if invoked_all && acked == IN_FLIGHT {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                }),
            )
            .await;
        }
        start.elapsed()
    }
}

/// Two connected request-response swarms: A asks, B answers empty.
pub(crate) struct RawPipelined {
    a: Swarm<Echo>,
    b: Swarm<Echo>,
    payload: Vec<u8>,
}

impl RawPipelined {
    pub(crate) async fn new() -> Self {
        let swarm = || {
            let behaviour = request_response::Behaviour::with_codec(
                EchoCodec,
                [(ECHO_PROTOCOL, ProtocolSupport::Full)],
                // Room for the streams of answered requests that have not
                // closed yet (100 did not do).
                request_response::Config::default().with_max_concurrent_streams(4 * IN_FLIGHT),
            );
            memory_swarm(Keypair::generate_ed25519(), behaviour)
        };
        let (mut a, mut b) = (swarm(), swarm());
        connect(&mut a, &mut b).await;
        Self {
            a,
            b,
            payload: vec![0; VALUE_BYTES],
        }
    }

    /// Sends `iters` batches; returns the time until each was answered.
    pub(crate) async fn batches(&mut self, iters: u64) -> Duration {
        let peer_b = *self.b.local_peer_id();
        let start = Instant::now();
        for _ in 0..iters {
            for _ in 0..RAW_WINDOW {
                self.a
                    .behaviour_mut()
                    .send_request(&peer_b, self.payload.clone());
            }
            let (a, b, payload) = (&mut self.a, &mut self.b, &self.payload);
            let (mut sent, mut answered) = (RAW_WINDOW, 0);
            within(
                ROUND_TRIP_TIMEOUT,
                poll_fn(|cx| {
                    while let Poll::Ready(Some(event)) = b.poll_next_unpin(cx) {
                        match event {
                            SwarmEvent::Behaviour(request_response::Event::Message {
                                message: request_response::Message::Request { channel, .. },
                                ..
                            }) => {
                                b.behaviour_mut()
                                    .send_response(channel, Vec::new())
                                    .expect("response channel open");
                            }
                            event => check_raw(&event),
                        }
                    }
                    while let Poll::Ready(Some(event)) = a.poll_next_unpin(cx) {
                        match event {
                            SwarmEvent::Behaviour(request_response::Event::Message {
                                message: request_response::Message::Response { .. },
                                ..
                            }) => {
                                answered += 1;
                                if sent < IN_FLIGHT {
                                    a.behaviour_mut().send_request(&peer_b, payload.clone());
                                    sent += 1;
                                }
                            }
                            event => check_raw(&event),
                        }
                    }
                    if answered == IN_FLIGHT {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                }),
            )
            .await;
        }
        start.elapsed()
    }
}
