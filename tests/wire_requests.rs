//! The engine's wire requests end with the transport's outcome: an
//! acknowledged send raises no `WireTimeout`, a send to the Node itself is
//! acknowledged like any other, and the engine still registers one-way
//! sends the way `compat::wire_requests` expects.

mod common;

use std::task::Poll;
use std::time::Duration;

use bb_libp2p::{EngineStep, Event};
use common::models::{bb_swarm, compile, install, invoke_send, send_value, Ping};
use common::{connect, on_node, run_for, until};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;

/// Guards `compat::wire_requests`: a bare Node's one-way `wire.Send`
/// registers a request with a 100 ms time to live and no parked op. If this
/// fails, upstream changed how sends are tracked: revisit the bridge.
#[test]
fn upstream_still_gives_one_way_sends_a_short_ttl() {
    let (model, targets) = compile(Ping);
    let key = Keypair::generate_ed25519();
    let mut node = install(&key, &model, &[&targets[0]]);
    let dest = libp2p::PeerId::random();
    node.add_peer(
        bb_libp2p::to_engine_peer(&dest),
        vec![bb_libp2p::p2p_address(&dest)],
    )
    .unwrap();
    invoke_send(&mut node, &targets[0], dest, b"ttl");
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut ids = Vec::new();
    for _ in 0..8 {
        if let Poll::Ready(steps) = node.poll(&mut cx) {
            for step in steps {
                if let EngineStep::SendEnvelope(envelope) = step {
                    ids.extend(envelope.correlation.map(|c| c.wire_req_id));
                }
            }
        }
    }
    assert!(!ids.is_empty(), "the Send carried no correlation");
    let tracker = &node.engine_install_handle().framework.request_tracker;
    for id in ids {
        let entry = tracker.peek(id).expect("the request is tracked");
        assert_eq!(entry.expires_at_ns - entry.started_at_ns, 100_000_000);
        assert!(entry.parked_op.is_none());
    }
}

/// An acknowledged one-way send settles the engine's request: no
/// `WireTimeout` comes after, and the engine tracks nothing in flight.
#[tokio::test(flavor = "current_thread")]
async fn an_acknowledged_send_raises_no_wire_timeout() {
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm(&model, &[&targets[0]]);
    let mut b = bb_swarm(&model, &[&targets[1]]);
    connect(&mut a, &mut b).await;
    let pb = *b.local_peer_id();
    for n in 0..5u8 {
        send_value(&a.behaviour().handle(), &targets[0], pb, &[n]);
    }
    let mut acked = 0;
    until(
        &mut [&mut a, &mut b],
        Duration::from_secs(10),
        "5 acknowledgements",
        |i, e| {
            if let SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) = e {
                assert_eq!(i, 0);
                acked += 1;
            }
            (acked == 5).then_some(())
        },
    )
    .await;
    // Past the engine's 100 ms time to live, twice over.
    run_for(
        &mut [&mut a, &mut b],
        Duration::from_millis(300),
        |i, e| match e {
            SwarmEvent::Behaviour(Event::Engine(step @ EngineStep::WireTimeout { .. })) => {
                panic!("swarm {i}: a false alarm after the acknowledgement: {step:?}")
            }
            SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => acked += 1,
            _ => {}
        },
    )
    .await;
    assert_eq!(acked, 5);
    let in_flight = on_node(&a, |node| {
        node.engine_install_handle()
            .framework
            .request_tracker
            .in_flight_count()
    });
    assert_eq!(
        in_flight, 0,
        "the engine still tracks acknowledged requests"
    );
}

/// A Node that sends to its own peer id (a broadcast to a sample that
/// includes it) gets an outcome for each envelope, as for any peer.
#[tokio::test(flavor = "current_thread")]
async fn a_send_to_self_is_acknowledged() {
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm(&model, &[&targets[0], &targets[1]]);
    let me = *a.local_peer_id();
    let sent: Vec<Vec<u8>> = (0..5u8)
        .map(|n| send_value(&a.behaviour().handle(), &targets[0], me, &[n, n]))
        .collect();
    let (mut acked, mut got) = (Vec::new(), Vec::new());
    until(
        &mut [&mut a],
        Duration::from_secs(10),
        "5 values and 5 outcomes",
        |_, e| {
            match e {
                SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { peer, wire_req_id }) => {
                    acked.push((peer, wire_req_id))
                }
                SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) => got.push(value_bytes),
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                    panic!("failed: {reason}")
                }
                _ => {}
            }
            (acked.len() == 5 && got.len() == 5).then_some(())
        },
    )
    .await;
    assert_eq!(got, sent);
    assert!(
        acked.iter().all(|(peer, id)| *peer == me && id.is_some()),
        "{acked:?}"
    );
    assert_eq!(
        a.behaviour().wire_stats().envelopes_sent,
        0,
        "nothing went on the wire"
    );
}

/// An acknowledgement that takes longer than the engine's 100 ms time to
/// live (a slow link, a busy receiver) raises no `WireTimeout` either: the
/// transport, not the engine's clock, ends the request.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_acknowledgement_raises_no_wire_timeout() {
    let (model, targets) = compile(Ping);
    // Without wire deadlines the envelope's 100 ms budget does not bound the
    // wire, so only the engine's own time to live could end it early.
    let config = bb_libp2p::Config::default().with_wire_deadlines(false);
    let mut a = common::models::bb_swarm_with(&model, &[&targets[0]], config.clone());
    let mut b = common::models::bb_swarm_with(&model, &[&targets[1]], config);
    connect(&mut a, &mut b).await;
    send_value(
        &a.behaviour().handle(),
        &targets[0],
        *b.local_peer_id(),
        b"slow",
    );
    let no_timeout = |i: usize, e: &SwarmEvent<Event>| {
        if let SwarmEvent::Behaviour(Event::Engine(step @ EngineStep::WireTimeout { .. })) = e {
            panic!("swarm {i}: the engine timed out a request still in flight: {step:?}")
        }
    };
    // B's swarm is not polled: the request waits on the wire.
    run_for(&mut [&mut a], Duration::from_millis(300), |i, e| {
        no_timeout(i, &e);
        assert!(!matches!(
            e,
            SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. })
        ));
    })
    .await;
    until(
        &mut [&mut a, &mut b],
        Duration::from_secs(10),
        "the acknowledgement",
        |i, e| {
            no_timeout(i, &e);
            matches!(e, SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. })).then_some(())
        },
    )
    .await;
    run_for(&mut [&mut a, &mut b], Duration::from_millis(200), |i, e| {
        no_timeout(i, &e)
    })
    .await;
}
