//! A sender outpacing its receiver: both sides stay within their bounds,
//! the receiver answers "busy", the sender waits and sends again, and every
//! envelope ends delivered or as a failure event.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use std::future::poll_fn;
use std::task::Poll;

use bb_libp2p::codec::proto::{Reason, Status};
use bb_libp2p::codec::{Ack, Codec, Request};
use bb_libp2p::{Behaviour, Config, Event, RejectKind, SendFailure, PROTOCOL_NAME};
use bb_runtime::envelope::{EnvelopeCaps, WireEnvelope};
use bb_runtime::ingress::IngressEvent;
use common::models::{bb_behaviour, bytes_value, compile, send_value, Ping};
use common::{connect, hold_engine, listen, memory_swarm, on_node, run_for, until};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm};

/// Ping's sender and receiver with the given configurations.
fn pair(sender: Config, receiver: Config) -> (Swarm<Behaviour>, Swarm<Behaviour>, String) {
    let (model, targets) = compile(Ping);
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let a = memory_swarm(
        ka.clone(),
        bb_behaviour(&ka, &model, &[&targets[0]], sender),
    );
    let b = memory_swarm(
        kb.clone(),
        bb_behaviour(&kb, &model, &[&targets[1]], receiver),
    );
    (a, b, targets[0].clone())
}

/// A peer that speaks the wire protocol with answers the test chooses,
/// known to `a`'s swarm.
async fn wire_server(
    a: &mut Swarm<Behaviour>,
) -> (Swarm<request_response::Behaviour<Codec>>, PeerId) {
    let key = Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let mut server = memory_swarm(
        key,
        request_response::Behaviour::with_codec(
            Codec::new(EnvelopeCaps::default(), 1 << 20),
            [(PROTOCOL_NAME, ProtocolSupport::Full)],
            request_response::Config::default(),
        ),
    );
    a.add_peer_address(peer, listen(&mut server).await);
    (server, peer)
}

/// Drives both swarms until `sends` of `a`'s envelopes are acknowledged or
/// expired, calling `sample` between short slices. On a loaded machine a
/// queued envelope can outwait the engine's 100 ms budget: an outcome, not a
/// loss; any other failure fails the test.
async fn settle(
    a: &mut Swarm<Behaviour>,
    b: &mut Swarm<Behaviour>,
    sends: u32,
    mut sample: impl FnMut(&Swarm<Behaviour>, &Swarm<Behaviour>),
) {
    let (mut acked, mut expired) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked + expired < sends {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{acked} acknowledged, {expired} expired of {sends}"
        );
        run_for(
            &mut [&mut *a, &mut *b],
            Duration::from_millis(1),
            |_, e| match e {
                SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => acked += 1,
                SwarmEvent::Behaviour(Event::SendFailed {
                    reason: SendFailure::DeadlineExceeded { .. },
                    ..
                }) => expired += 1,
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                    panic!("lost an envelope: {reason}")
                }
                _ => {}
            },
        )
        .await;
        sample(a, b);
    }
}

/// An acknowledgement: "busy", or accepted.
fn answer(busy: bool) -> Ack {
    if busy {
        Ack {
            status: Status::Rejected as i32,
            reason: Reason::Busy as i32,
            detail: "busy".into(),
        }
    } else {
        Ack {
            status: Status::Accepted as i32,
            ..Default::default()
        }
    }
}

/// A receiver answering "busy" (here one that speaks the wire protocol
/// and refuses every other envelope it is sent) makes the sender wait and
/// send again, within its bounds. Every envelope ends acknowledged or as a
/// failure event (one whose waits outlast the engine's 100 ms deadline
/// fails), and none is taken twice.
#[tokio::test(flavor = "current_thread")]
async fn a_busy_receiver_makes_the_sender_wait_and_resend() {
    const SENDS: u32 = 24;
    let (mut a, _, sender) = pair(
        Config::default()
            .with_max_envelopes_in_flight(8)
            .with_max_queued_envelopes(64)
            .with_wire_deadlines(false),
        Config::default(),
    );
    let (mut b, pb) = wire_server(&mut a).await;
    for n in 0..SENDS {
        send_value(&a.behaviour().handle(), &sender, pb, &n.to_le_bytes());
    }

    let (mut taken, mut refused, mut waits) = (Vec::new(), 0, 0);
    let (mut acked, mut failed) = (0, 0);
    let mut worst = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked + failed < SENDS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{acked} acknowledged and {failed} failed of {SENDS}; {} in flight, {} queued",
            a.behaviour().envelopes_in_flight(),
            a.behaviour().envelopes_queued()
        );
        let wait = poll_fn(|cx| {
            let mut progressed = false;
            while let Poll::Ready(Some(e)) = a.poll_next_unpin(cx) {
                progressed = true;
                match e {
                    SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => acked += 1,
                    SwarmEvent::Behaviour(Event::BackoffAdvised { peer, .. }) => {
                        assert_eq!(peer, pb);
                        waits += 1;
                    }
                    SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                        assert!(
                            matches!(&reason, SendFailure::DeadlineExceeded { .. })
                                || matches!(
                                    &reason,
                                    SendFailure::Rejected(r) if r.kind == RejectKind::Expired
                                ),
                            "{reason}"
                        );
                        failed += 1;
                    }
                    _ => {}
                }
            }
            while let Poll::Ready(Some(e)) = b.poll_next_unpin(cx) {
                progressed = true;
                if let SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                }) = e
                {
                    let envelope = match request {
                        Request::Envelope(envelope) | Request::Sending(envelope, _) => envelope,
                        // A retry whose budget ran out on the way.
                        Request::Invalid(rejection) => {
                            assert_eq!(rejection.kind, RejectKind::Expired, "{rejection}");
                            let ack = Ack {
                                status: Status::Rejected as i32,
                                reason: Reason::Expired as i32,
                                detail: rejection.detail,
                            };
                            b.behaviour_mut().send_response(channel, ack).unwrap();
                            continue;
                        }
                    };
                    let busy = (taken.len() + refused) % 2 == 1;
                    if busy {
                        refused += 1;
                    } else {
                        taken.push(envelope.fills[0].payload.clone());
                    }
                    let ack = answer(busy);
                    b.behaviour_mut().send_response(channel, ack).unwrap();
                }
            }
            if progressed {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let _ = tokio::time::timeout(Duration::from_millis(50), wait).await;
        worst = (
            worst.0.max(a.behaviour().envelopes_in_flight()),
            worst.1.max(a.behaviour().envelopes_queued()),
        );
    }
    assert!(
        worst.0 <= 8 && worst.1 <= 64,
        "in flight, queued: {worst:?}"
    );
    assert!(
        refused > 0 && waits > 0,
        "refused {refused}, waited {waits}"
    );
    assert!(acked > 0, "nothing got through");
    // A fill carries the value's wire bytes as a byte string.
    let all: HashSet<Vec<u8>> = (0..SENDS)
        .map(|n| bincode::serialize(&bytes_value(&n.to_le_bytes())).unwrap())
        .collect();
    let distinct: HashSet<Vec<u8>> = taken.iter().cloned().collect();
    assert_eq!(distinct.len(), taken.len(), "an envelope was taken twice");
    assert!(distinct.is_subset(&all), "{distinct:?}");
    assert_eq!(
        taken.len() as u32,
        acked,
        "what was taken is what was acknowledged"
    );
    assert_eq!(
        (
            a.behaviour().envelopes_in_flight(),
            a.behaviour().envelopes_queued()
        ),
        (0, 0)
    );
}

/// The receiving side of "busy": past its ingress bound, the Node refuses
/// an envelope with a typed rejection instead of queueing without end.
#[tokio::test(flavor = "current_thread")]
async fn a_receiver_past_its_ingress_bound_says_busy() {
    let (a, mut b, _) = pair(
        Config::default(),
        Config::default().with_max_ingress_envelopes(2),
    );
    // Two events already wait in B's ingress (B's engine is busy, so it
    // takes nothing from it).
    let now = on_node(&b, |node| {
        node.engine_install_handle().framework.scheduler.now_ns()
    });
    let handle = b.behaviour().handle();
    let held = hold_engine(&handle);
    for _ in 0..2 {
        handle
            .deliver(IngressEvent::TimerMatured { at_ns: now })
            .unwrap();
    }
    let refused = b
        .behaviour_mut()
        .inject_envelope(*a.local_peer_id(), WireEnvelope::default())
        .unwrap_err();
    drop(held);
    assert_eq!(refused.kind, RejectKind::Busy);
    assert_eq!(refused.detail, "engine ingress full (2 of 2 events)");
}

/// Bounds sampled at every event, not just at the end.
#[tokio::test(flavor = "current_thread")]
async fn the_senders_bounds_hold_throughout() {
    let (mut a, mut b, sender) = pair(
        Config::default()
            .with_max_envelopes_in_flight(4)
            .with_max_queued_envelopes(16),
        Config::default().with_max_ingress_envelopes(2),
    );
    let pb = *b.local_peer_id();
    connect(&mut a, &mut b).await;
    for n in 0..20u32 {
        send_value(&a.behaviour().handle(), &sender, pb, &n.to_le_bytes());
    }
    let (mut worst, mut held) = ((0, 0), 0);
    settle(&mut a, &mut b, 20, |a, b| {
        let bb = a.behaviour();
        worst = (
            worst.0.max(bb.envelopes_in_flight()),
            worst.1.max(bb.envelopes_queued()),
        );
        held = held.max(bb.envelopes_in_flight() + bb.envelopes_queued());
        assert!(
            b.behaviour().handle().ingress().len() <= 2,
            "the receiver's ingress passed its bound"
        );
    })
    .await;
    // A refused envelope waits for its retry in the queue, past the queue's
    // bound if need be; what the sender holds in all stays bounded.
    assert!(
        worst.0 <= 4 && worst.1 <= 16 + 4 && held <= 4 + 16,
        "in flight, queued: {worst:?}, held {held}"
    );
    assert!(worst.0 == 4, "the in-flight bound was reached: {worst:?}");
}

/// Past its bounds the sender takes no more envelopes from its engine,
/// fails none, and sends the rest as room frees: all arrive.
#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_holds_the_engine_back_and_loses_nothing() {
    let (mut a, mut b, sender) = pair(
        Config::default()
            .with_max_envelopes_in_flight(1)
            .with_max_queued_envelopes(2),
        Config::default(),
    );
    let pb = *b.local_peer_id();
    connect(&mut a, &mut b).await;
    for n in 0..5u32 {
        send_value(&a.behaviour().handle(), &sender, pb, &n.to_le_bytes());
    }
    // B is not polled: nothing is acknowledged, one envelope is in flight,
    // two wait, and the engine holds the other two.
    run_for(&mut [&mut a], Duration::from_millis(100), |_, e| {
        if let SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) = e {
            panic!("an envelope failed: {reason}");
        }
    })
    .await;
    assert_eq!(
        (
            a.behaviour().envelopes_in_flight(),
            a.behaviour().envelopes_queued(),
            a.behaviour().engine_backlog(),
        ),
        (1, 2, 2)
    );
    let mut got = HashSet::new();
    until(
        &mut [&mut a, &mut b],
        Duration::from_secs(10),
        "five values",
        |i, e| {
            match e {
                SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) => {
                    assert_eq!(i, 1);
                    got.insert(value_bytes);
                }
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                    panic!("an envelope failed: {reason}")
                }
                _ => {}
            }
            (got.len() == 5).then_some(())
        },
    )
    .await;
    let want: HashSet<Vec<u8>> = (0..5u32).map(|n| bytes_value(&n.to_le_bytes())).collect();
    assert_eq!(got, want);
}

/// With wire deadlines on, the time an envelope waits in the sender's queue
/// counts against its deadline budget (the engine gives each Send 100 ms):
/// behind one that is never answered, it fails with an event within the
/// budget, as the one ahead of it does on the wire, rather than go late.
#[tokio::test(flavor = "current_thread")]
async fn an_envelope_that_outwaits_its_deadline_is_not_sent() {
    let (mut a, mut b, sender) = pair(
        Config::default()
            .with_max_envelopes_in_flight(1)
            .with_wire_deadlines(true),
        Config::default(),
    );
    let pb = *b.local_peer_id();
    connect(&mut a, &mut b).await;
    for n in 0..2u32 {
        send_value(&a.behaviour().handle(), &sender, pb, &n.to_le_bytes());
    }
    // B sleeps 300 ms with the first envelope unanswered; the second waits.
    let mut reasons = Vec::new();
    run_for(&mut [&mut a], Duration::from_millis(300), |_, e| {
        if let SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) = e {
            reasons.push(reason);
        }
    })
    .await;
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().all(|r| matches!(r, SendFailure::DeadlineExceeded { budget } if *budget <= Duration::from_millis(100))),
        "{reasons:?}"
    );
    assert_eq!(reasons[0].label(), "deadline");
    assert_eq!(a.behaviour().envelopes_queued(), 0);
    assert_eq!(a.behaviour().envelopes_in_flight(), 0);
    // Only the first can arrive (a deadline failure, like a timeout, may
    // still have reached the peer).
    let mut got = Vec::new();
    run_for(&mut [&mut a, &mut b], Duration::from_millis(200), |i, e| {
        if let SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) = e {
            assert_eq!(i, 1);
            got.push(value_bytes);
        }
    })
    .await;
    // Each at most once, and only what was sent.
    let sent: HashSet<Vec<u8>> = (0..2u32).map(|n| bytes_value(&n.to_le_bytes())).collect();
    assert!(got.len() <= 2 && got.iter().collect::<HashSet<_>>().len() == got.len());
    assert!(got.iter().all(|v| sent.contains(v)), "{got:?}");
}

/// A burst to one peer larger than a connection's stream limit (shared by
/// both directions; 20 here) waits for streams instead of failing the
/// excess with "max sub-streams reached".
#[tokio::test(flavor = "current_thread")]
async fn a_burst_past_the_stream_limit_is_queued_not_failed() {
    const SENDS: u32 = 45;
    let streams = || Config::default().with_max_concurrent_streams(20);
    let (mut a, mut b, sender) = pair(streams(), streams());
    let pb = *b.local_peer_id();
    connect(&mut a, &mut b).await;
    for n in 0..SENDS {
        send_value(&a.behaviour().handle(), &sender, pb, &n.to_le_bytes());
    }
    let mut most = 0;
    settle(&mut a, &mut b, SENDS, |a, _| {
        most = most.max(a.behaviour().envelopes_in_flight());
    })
    .await;
    assert_eq!(most, 10, "in flight to one peer: half the stream limit");
}

/// A receiver's engine state does not grow with the values it has taken:
/// bb-runtime 0.3.8 keeps an inbound context per value for ever, which the
/// behaviour prunes.
#[tokio::test(flavor = "current_thread")]
async fn a_receivers_engine_state_stays_bounded() {
    // Batches small enough to go out at once (no queueing, so no value
    // outwaits its budget), enough of them to pass 2048 values.
    const BATCHES: u32 = 60;
    const BATCH: u32 = 40;
    let (mut a, mut b, sender) = pair(Config::default(), Config::default());
    let pb = *b.local_peer_id();
    connect(&mut a, &mut b).await;
    let (mut acked, mut most) = (0, 0);
    let mut output = 0;
    for batch in 0..BATCHES {
        for n in 0..BATCH {
            let value = (batch * BATCH + n).to_le_bytes();
            send_value(&a.behaviour().handle(), &sender, pb, &value);
        }
        let mut settled = 0;
        // B acknowledges a value once its engine's ingress took it, so wait
        // for B's engine to output every value acknowledged so far too: the
        // contexts are counted after the values were taken.
        until(
            &mut [&mut a, &mut b],
            Duration::from_secs(30),
            "the batch",
            |i, e| {
                match e {
                    SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) if i == 0 => {
                        acked += 1;
                        settled += 1;
                    }
                    SwarmEvent::Behaviour(Event::SendFailed { .. }) if i == 0 => settled += 1,
                    SwarmEvent::Behaviour(Event::AppEvent { .. }) if i == 1 => output += 1,
                    _ => {}
                }
                (settled == BATCH && output == acked).then_some(())
            },
        )
        .await;
        most = most.max(on_node(&b, |node| {
            node.engine_install_handle()
                .framework
                .inbound_contexts
                .len()
        }));
    }
    assert!(acked > 2048, "only {acked} values taken");
    assert!(
        most <= 1024 + BATCH as usize,
        "{most} inbound contexts held after {acked} values"
    );
}

/// After a busy answer the envelope goes again when its wait ends, woken by
/// nothing but that wait (the swarms here are polled only when woken).
#[tokio::test(flavor = "current_thread")]
async fn a_retry_goes_out_when_its_wait_ends() {
    let (mut a, _, sender) = pair(Config::default(), Config::default());
    let (mut b, pb) = wire_server(&mut a).await;
    send_value(&a.behaviour().handle(), &sender, pb, b"again");
    let mut answers = 0;
    let acked = poll_fn(|cx| {
        while let Poll::Ready(Some(e)) = a.poll_next_unpin(cx) {
            match e {
                SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => {
                    return Poll::Ready(answers)
                }
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                    panic!("failed: {reason}")
                }
                _ => {}
            }
        }
        while let Poll::Ready(Some(e)) = b.poll_next_unpin(cx) {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            }) = e
            {
                // Busy the first time, then take it.
                let ack = answer(answers == 0);
                answers += 1;
                b.behaviour_mut().send_response(channel, ack).unwrap();
            }
        }
        Poll::Pending
    });
    let answers = tokio::time::timeout(Duration::from_secs(2), acked)
        .await
        .expect("the retry never went out");
    assert_eq!(answers, 2);
}
