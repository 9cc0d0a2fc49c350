//! A mesh upgraded one peer at a time: a peer that speaks only
//! `/bytesandbrains/wire/1` (0.2.0's protocol, framed by the same codec)
//! and a peer of this version exchange every envelope that fits one frame,
//! both ways; a value only a transfer can carry fails, saying why.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bb_libp2p::codec::proto::Status;
use bb_libp2p::codec::{Ack, Codec, Request};
use bb_libp2p::{Event, SendFailure, WireEnvelope, PROTOCOL_NAME};
use bb_runtime::envelope::EnvelopeCaps;
use common::models::{bb_swarm, bytes_value, compile, send_value, wire_envelope, Ping};
use common::{listen, memory_swarm, until};
use futures::channel::mpsc;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};

/// What the old peer saw.
#[derive(Debug)]
enum Seen {
    /// An envelope arrived (and was acknowledged).
    Envelope(WireEnvelope),
    /// The answer to one it sent.
    Answer(Result<Ack, String>),
}

/// A peer of the old protocol alone, on its own task: acknowledges every
/// envelope, reports it, and sends the envelopes it is given to `dest`.
fn old_peer(
    dest: Option<(PeerId, Multiaddr)>,
) -> (
    PeerId,
    Multiaddr,
    mpsc::Sender<WireEnvelope>,
    mpsc::Receiver<Seen>,
) {
    let (envelope_tx, mut envelopes) = mpsc::channel::<WireEnvelope>(1);
    let (mut seen_tx, seen) = mpsc::channel(16);
    let behaviour = request_response::Behaviour::with_codec(
        Codec::new(EnvelopeCaps::default(), 16 << 20),
        [(PROTOCOL_NAME, ProtocolSupport::Full)],
        request_response::Config::default(),
    );
    let key = Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let mut swarm = memory_swarm(key, behaviour);
    swarm.listen_on("/memory/0".parse().unwrap()).unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let dest_peer = dest.as_ref().map(|(p, _)| *p);
    if let Some((peer, addr)) = dest {
        swarm.add_peer_address(peer, addr);
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                envelope = envelopes.next() => match (envelope, dest_peer) {
                    (Some(envelope), Some(dest)) => {
                        swarm.behaviour_mut().send_request(&dest, Request::Envelope(Arc::new(envelope)));
                    }
                    _ => return,
                },
                e = swarm.select_next_some() => {
                    let seen = match e {
                        SwarmEvent::NewListenAddr { address, .. } => {
                            let _ = addr_tx.send(address);
                            continue;
                        }
                        SwarmEvent::Behaviour(request_response::Event::Message {
                            message: request_response::Message::Request { request, channel, .. }, ..
                        }) => {
                            let accepted = Ack { status: Status::Accepted as i32, ..Default::default() };
                            let _ = swarm.behaviour_mut().send_response(channel, accepted);
                            match request {
                                Request::Envelope(envelope) => Seen::Envelope(Arc::unwrap_or_clone(envelope)),
                                other => panic!("the old peer read {other:?}"),
                            }
                        }
                        SwarmEvent::Behaviour(request_response::Event::Message {
                            message: request_response::Message::Response { response, .. }, ..
                        }) => Seen::Answer(Ok(response)),
                        SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                            Seen::Answer(Err(error.to_string()))
                        }
                        _ => continue,
                    };
                    if seen_tx.try_send(seen).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    (peer, addr, envelope_tx, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_peer_sends_to_an_old_one_what_fits_a_frame() {
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm(&model, &[&targets[0]]);
    let (old, addr, _tx, mut seen) = old_peer(None);
    a.add_peer_address(old, addr);

    // A small value: the old protocol is negotiated, and it arrives.
    let sent = send_value(
        &a.behaviour().handle(),
        &targets[0],
        old,
        b"to the old peer",
    );
    until(
        &mut [&mut a],
        Duration::from_secs(10),
        "the acknowledgement",
        |_, e| match e {
            SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { peer, .. }) if peer == old => {
                Some(())
            }
            SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                panic!("send failed: {reason}")
            }
            _ => None,
        },
    )
    .await;
    match seen.next().await {
        Some(Seen::Envelope(envelope)) => {
            assert!(
                envelope.fills.iter().any(|f| f.payload.ends_with(&sent)),
                "{envelope:?}"
            )
        }
        other => panic!("{other:?}"),
    }

    // A value only a transfer can carry: it fails as the old peer lacks
    // the protocol, with nothing half-sent.
    let big = vec![7u8; 5 << 20];
    send_value(&a.behaviour().handle(), &targets[0], old, &big);
    let reason = until(
        &mut [&mut a],
        Duration::from_secs(30),
        "the failure",
        |_, e| match e {
            SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => Some(reason),
            SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => panic!("acknowledged"),
            _ => None,
        },
    )
    .await;
    assert_eq!(reason, SendFailure::UnsupportedProtocol);
    assert_eq!(a.behaviour().transfers_sending(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_peer_sends_to_a_new_one() {
    let (model, targets) = compile(Ping);
    let mut b = bb_swarm(&model, &[&targets[1]]);
    let addr = listen(&mut b).await;
    let pb = *b.local_peer_id();
    let (_old, _, mut tx, mut seen) = old_peer(Some((pb, addr)));
    let payload = b"from the old peer";
    tx.try_send(wire_envelope(&model, &targets[0], pb, payload))
        .unwrap();
    let value = until(
        &mut [&mut b],
        Duration::from_secs(10),
        "the value",
        |_, e| match e {
            SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) => Some(value_bytes),
            SwarmEvent::Behaviour(Event::InboundRejected { rejection, .. }) => {
                panic!("{rejection}")
            }
            _ => None,
        },
    )
    .await;
    assert_eq!(value, bytes_value(payload));
    loop {
        tokio::select! {
            s = seen.next() => match s {
                Some(Seen::Answer(Ok(ack))) => {
                    assert_eq!(ack.status, Status::Accepted as i32);
                    break;
                }
                other => panic!("{other:?}"),
            },
            _ = b.select_next_some() => {}
        }
    }
}
