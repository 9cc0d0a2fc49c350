//! A raw client on `/bytesandbrains/wire/1` that does not follow the
//! framing gets a typed rejection for each frame; the receiver keeps serving
//! and allocates only what arrives.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bb_libp2p::codec::proto::{Reason, Status};
use bb_libp2p::codec::Ack;
use bb_libp2p::{Event, RejectKind};
use common::models::{bb_swarm, bytes_value, compile, send_value, Ping};
use common::{connect, listen, memory_swarm, raw_wire, until};
use futures::channel::mpsc;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{request_response, PeerId};
use prost::Message;

/// Counts live heap bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

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
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
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
        let grew = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        assert!(grew < 4 * 1024 * 1024, "{label}: heap grew by {grew} bytes");
    }

    // The raw client is still connected and a real peer still delivers.
    assert_eq!(
        b.connected_peers().count(),
        1,
        "the raw client stays connected"
    );
    connect(&mut a, &mut b).await;
    send_value(
        a.behaviour_mut().node_mut(),
        &targets[0],
        dest,
        b"still here",
    );
    let got = until(
        &mut [&mut a, &mut b],
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
    assert_eq!(got, bytes_value(b"still here"));
}
