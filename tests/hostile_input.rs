//! A raw client on `/bytesandbrains/wire/1` that does not follow the
//! framing gets a typed rejection for each frame; the receiver keeps serving
//! and allocates only what arrives. A client that trickles a frame is
//! refused, and let go, within the receiver's request timeout.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bb_libp2p::codec::proto::{Reason, Status};
use bb_libp2p::codec::Ack;
use bb_libp2p::{Behaviour, Config, Event, RejectKind};
use common::alloc::{live, peak, reset_peak, HEAP};
use common::models::{bb_behaviour, bb_swarm, bytes_value, compile, send_value, Ping};
use common::{connect, listen, memory_swarm, raw_wire, run_for, until, RawCodec};
use futures::channel::mpsc;
use futures::{AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::OutboundFailure;
use libp2p::swarm::SwarmEvent;
use libp2p::{request_response, PeerId, Swarm};
use prost::Message;

/// Counts live heap bytes and their high-water mark, process-wide: the
/// receiver's engine thread counts too. Tests that read the counters hold
/// [`HEAP`], so they run one at a time.
#[global_allocator]
static ALLOC: common::alloc::Counting = common::alloc::Counting;

fn varint(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint(n, &mut out);
    out
}

/// Runs a raw client on its own task: sends each frame it is given to
/// `dest` and hands back the raw response.
fn raw_client(
    dest: PeerId,
    addr: libp2p::Multiaddr,
) -> (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
    let (frame_tx, mut frames) = mpsc::channel::<Vec<u8>>(1);
    let (mut resp_tx, responses) = mpsc::channel(1);
    let mut swarm = memory_swarm(
        Keypair::generate_ed25519(),
        raw_wire(Duration::from_secs(10)),
    );
    swarm.add_peer_address(dest, addr);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                frame = frames.next() => match frame {
                    Some(frame) => { swarm.behaviour_mut().send_request(&dest, frame); }
                    None => return,
                },
                e = swarm.select_next_some() => match e {
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Response { response, .. }, ..
                    }) => resp_tx.try_send(response).unwrap(),
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                        panic!("raw client: {error}")
                    }
                    SwarmEvent::ConnectionClosed { .. } => panic!("raw client: connection closed"),
                    _ => {}
                },
            }
        }
    });
    (frame_tx, responses)
}

#[tokio::test(flavor = "current_thread")]
async fn bad_frames_get_typed_rejections_and_traffic_goes_on() {
    let _heap = HEAP.lock().await;
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm(&model, &[&targets[0]]);
    let mut b = bb_swarm(&model, &[&targets[1]]);
    let addr = listen(&mut b).await;
    let dest = *b.local_peer_id();
    let (mut frames, mut responses) = raw_client(dest, addr);

    let cap: u64 = 16 * 1024 * 1024;
    let cases: Vec<(&str, Vec<u8>, Reason, RejectKind, String)> = vec![
        (
            "garbage",
            [varint(4), vec![0xff, 0xff, 0xff, 0xff]].concat(),
            Reason::Malformed,
            RejectKind::Malformed,
            "malformed envelope bytes".into(),
        ),
        (
            "truncated frame",
            [varint(10), vec![1, 2, 3]].concat(),
            Reason::Truncated,
            RejectKind::Truncated,
            "stream ended after 3 of 10 body bytes".into(),
        ),
        (
            "oversize length prefix",
            [varint(1 << 40), vec![0; 64]].concat(),
            Reason::Oversize,
            RejectKind::Oversize,
            format!("length prefix claims {} bytes, cap is {cap}", 1u64 << 40),
        ),
        (
            // Within the cap: read, but only what arrives is allocated.
            "large claim, little data",
            [varint(cap - 1), vec![7; 10]].concat(),
            Reason::Truncated,
            RejectKind::Truncated,
            format!("stream ended after 10 of {} body bytes", cap - 1),
        ),
    ];
    for (label, frame, reason, kind, detail) in cases {
        reset_peak();
        let before = live();
        frames.try_send(frame).unwrap();
        let rejection = until(
            &mut [&mut b],
            Duration::from_secs(5),
            label,
            |_, e| match e {
                SwarmEvent::Behaviour(Event::InboundRejected { rejection, .. }) => Some(rejection),
                SwarmEvent::Behaviour(e) => panic!("{label}: unexpected {e:?}"),
                _ => None,
            },
        )
        .await;
        assert_eq!(rejection.kind, kind, "{label}");
        assert!(
            rejection.detail.starts_with(&detail),
            "{label}: {}",
            rejection.detail
        );
        // Keep B running while the acknowledgement travels.
        let mut swarms = [&mut b];
        let serve = until(
            &mut swarms,
            Duration::from_secs(5),
            "acknowledgement",
            |_, _| None::<()>,
        );
        let response = tokio::select! {
            r = responses.next() => r.unwrap(),
            _ = serve => unreachable!(),
        };
        let ack = Ack::decode_length_delimited(response.as_slice()).expect("an Ack");
        assert_eq!(ack.status(), Status::Rejected, "{label}");
        assert_eq!(ack.reason(), reason, "{label}");
        assert_eq!(ack.detail, rejection.detail, "{label}");
        // Connection setup and the engine's per-poll buffers cost about
        // 1 MiB; a receiver that trusted the 16 MiB claim would cost more.
        let grew = peak().saturating_sub(before);
        assert!(grew < 4 * 1024 * 1024, "{label}: heap grew by {grew} bytes");
    }

    // The raw client is still connected and a real peer still delivers.
    assert_eq!(
        b.connected_peers().count(),
        1,
        "the raw client stays connected"
    );
    still_delivers(&mut a, &mut b, &targets[0], b"still here").await;
}

/// Gap between the bytes of a trickled request.
const TRICKLE: Duration = Duration::from_millis(50);

/// A request-response codec that writes each request one byte at a time,
/// [`TRICKLE`] apart, counting the bytes the stream took.
#[derive(Clone)]
struct TrickleCodec {
    written: Arc<AtomicUsize>,
}

impl request_response::Codec for TrickleCodec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    // Reads and answers as the plain raw codec does.
    async fn read_request<T>(&mut self, p: &Self::Protocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        RawCodec.read_request(p, io).await
    }

    async fn read_response<T>(&mut self, p: &Self::Protocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        RawCodec.read_response(p, io).await
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
        for byte in req {
            io.write_all(&[byte]).await?;
            io.flush().await?;
            self.written.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(TRICKLE).await;
        }
        Ok(())
    }

    async fn write_response<T>(
        &mut self,
        p: &Self::Protocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        RawCodec.write_response(p, io, res).await
    }
}

/// What the trickling client saw.
#[derive(Debug)]
enum ClientEvent {
    Connected,
    Failed(OutboundFailure),
    Answered(Vec<u8>),
}

/// Runs a trickling client on its own task: connects to `dest`, sends
/// each frame it is given, and reports what happens to it.
fn trickle_client(
    dest: PeerId,
    addr: libp2p::Multiaddr,
    written: Arc<AtomicUsize>,
) -> (
    PeerId,
    mpsc::Sender<Vec<u8>>,
    mpsc::Receiver<(Instant, ClientEvent)>,
) {
    let (frame_tx, mut frames) = mpsc::channel::<Vec<u8>>(1);
    let (mut event_tx, events) = mpsc::channel(8);
    // Its own timeout is far off: whatever ends its request comes from the
    // receiver.
    let behaviour = request_response::Behaviour::with_codec(
        TrickleCodec { written },
        [(
            bb_libp2p::PROTOCOL_NAME,
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
    );
    let mut swarm = memory_swarm(Keypair::generate_ed25519(), behaviour);
    let me = *swarm.local_peer_id();
    swarm.dial(addr).unwrap();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                frame = frames.next() => match frame {
                    Some(frame) => {
                        swarm.behaviour_mut().send_request(&dest, frame);
                        continue;
                    }
                    None => return,
                },
                e = swarm.select_next_some() => match e {
                    SwarmEvent::ConnectionEstablished { .. } => ClientEvent::Connected,
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                        ClientEvent::Failed(error)
                    }
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Response { response, .. },
                        ..
                    }) => ClientEvent::Answered(response),
                    _ => continue,
                },
            };
            if event_tx.try_send((Instant::now(), event)).is_err() {
                return;
            }
        }
    });
    (me, frame_tx, events)
}

/// The receiver's request timeout in the trickle test.
const TIMEOUT: Duration = Duration::from_millis(500);

/// How late after [`TIMEOUT`] the receiver may act.
const MARGIN: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "current_thread")]
async fn a_trickling_client_is_refused_and_let_go_within_the_request_timeout() {
    let _heap = HEAP.lock().await;
    let (model, targets) = compile(Ping);
    let key = Keypair::generate_ed25519();
    let behaviour = bb_behaviour(
        &key,
        &model,
        &[&targets[1]],
        Config::default().with_request_timeout(TIMEOUT),
    );
    let mut b = memory_swarm(key, behaviour);
    let addr = listen(&mut b).await;
    let dest = *b.local_peer_id();
    let written = Arc::new(AtomicUsize::new(0));
    let (client, mut frames, mut client_events) = trickle_client(dest, addr, written.clone());

    // Serve B until the client has its connection.
    let mut swarms = [&mut b];
    let serve = until(&mut swarms, Duration::from_secs(5), "connection", |_, _| {
        None::<()>
    });
    tokio::select! {
        e = client_events.next() => assert!(matches!(e, Some((_, ClientEvent::Connected))), "{e:?}"),
        _ = serve => unreachable!(),
    }

    // A frame that claims 1 KiB and brings 40 bytes of it: two seconds of
    // trickle, well past the timeout.
    let frame = [varint(1024), vec![7; 40]].concat();
    let total = frame.len();
    let sent = Instant::now();
    frames.try_send(frame).unwrap();
    let mut refused = None;
    let mut swarms = [&mut b];
    let serve = run_for(&mut swarms, Duration::from_secs(5), |_, e| match e {
        SwarmEvent::Behaviour(Event::InboundRejected {
            peer, rejection, ..
        }) => {
            assert!(refused.is_none(), "refused twice: {rejection}");
            refused = Some((
                sent.elapsed(),
                peer,
                rejection,
                written.load(Ordering::Relaxed),
            ));
        }
        SwarmEvent::Behaviour(e) => panic!("unexpected {e:?}"),
        _ => {}
    });
    let ended = async {
        while let Some((at, e)) = client_events.next().await {
            if !matches!(e, ClientEvent::Connected) {
                return (at.duration_since(sent), e);
            }
        }
        unreachable!("the client stopped")
    };
    let (ended_after, end) = tokio::select! {
        end = ended => end,
        _ = serve => panic!("the client's request was never let go"),
    };

    let Some((after, peer, rejection, written_then)) = refused else {
        panic!("B reported no refusal; the client's request ended with {end:?}");
    };
    assert_eq!(peer, client);
    assert_eq!(rejection.kind, RejectKind::Timeout, "{rejection}");
    assert!(
        (TIMEOUT / 2..TIMEOUT + MARGIN).contains(&after),
        "refused after {after:?}"
    );
    assert!(
        written_then < total,
        "B waited for the whole frame ({total} bytes)"
    );
    // B holds nothing of the stream: it either reset it, failing the
    // client's write, or answered and closed its end (the client reads the
    // answer to the end of the stream once its trickle is over).
    match end {
        ClientEvent::Failed(OutboundFailure::Io(e)) => assert!(
            ended_after < TIMEOUT + MARGIN,
            "reset after {ended_after:?}: {e}"
        ),
        ClientEvent::Answered(response) => {
            let ack = Ack::decode_length_delimited(response.as_slice()).expect("an Ack");
            assert_eq!(
                (ack.status(), ack.reason()),
                (Status::Rejected, Reason::Timeout)
            );
            assert_eq!(ack.detail, rejection.detail);
        }
        e => panic!("the client's request ended with {e:?}"),
    }
    assert_eq!(b.behaviour().wire_stats().envelopes_received, 0);

    // A real peer still delivers.
    let mut a = bb_swarm(&model, &[&targets[0]]);
    still_delivers(&mut a, &mut b, &targets[0], b"after").await;
}

/// A real peer `a` (running Ping's `sender`) connects to `b` and delivers
/// `payload` to it, byte-exactly.
async fn still_delivers(
    a: &mut Swarm<Behaviour>,
    b: &mut Swarm<Behaviour>,
    sender: &str,
    payload: &[u8],
) {
    let dest = *b.local_peer_id();
    connect(a, b).await;
    send_value(&a.behaviour().handle(), sender, dest, payload);
    let got = until(
        &mut [a, b],
        Duration::from_secs(10),
        "delivery",
        |i, e| match e {
            SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) if i == 1 => {
                Some(value_bytes)
            }
            _ => None,
        },
    )
    .await;
    assert_eq!(got, bytes_value(payload));
}
