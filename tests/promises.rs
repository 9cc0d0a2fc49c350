//! The README's promises, each held where a defect broke it: every
//! envelope gets one outcome, an acknowledgement means the receiving engine
//! took the value, a failing peer is not dialled before its back-off passes.

mod common;

use std::time::Duration;

use bb_libp2p::{Behaviour, Config, EngineStep, Event, RejectKind, Rejection, SendFailure};
use bb_runtime::node::NodeConfig;
use common::models::{bb_swarm, compile, install, invoke_send, numbered, send_values, Ping};
use common::{connect, hold_engine, memory_swarm, run_for, until};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::Swarm;

/// A Ping receiver whose engine holds at most `budget` bytes of values.
fn receiver_with_budget(budget: usize) -> Swarm<Behaviour> {
    let (model, targets) = compile(Ping);
    let key = Keypair::generate_ed25519();
    let node_key = key.clone();
    let behaviour = Behaviour::new(
        move || {
            let node = install(&node_key, &model, &[&targets[1]]);
            let id = node.peer_id();
            Ok::<_, std::convert::Infallible>(
                node.with_config(NodeConfig::new(id).with_ingress_byte_budget(budget)),
            )
        },
        Config::default(),
    )
    .unwrap();
    memory_swarm(key, behaviour)
}

/// Fails on anything that means the receiver's engine dropped a value it
/// was acknowledged for.
fn no_engine_drop(i: usize, e: &SwarmEvent<Event>) {
    if let SwarmEvent::Behaviour(Event::Engine(step @ EngineStep::WireReceiveFailed { .. })) = e {
        panic!("swarm {i}: the engine dropped an acknowledged value: {step:?}");
    }
}

/// A value larger than the receiver's ingress byte budget is refused on the
/// wire (the engine would take it and drop it): never acknowledged.
#[tokio::test(flavor = "current_thread")]
async fn a_value_past_the_byte_budget_is_refused_not_acknowledged() {
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm(&model, &[&targets[0]]);
    let mut b = receiver_with_budget(100 * 1024);
    connect(&mut a, &mut b).await;
    let pb = *b.local_peer_id();
    let payloads = (0..5u8).map(|n| vec![n; 200 * 1024]).collect();
    send_values(&a.behaviour().handle(), &targets[0], pb, payloads);
    let mut refused = 0;
    until(
        &mut [&mut a, &mut b],
        Duration::from_secs(20),
        "5 refusals",
        |i, e| {
            no_engine_drop(i, &e);
            match e {
                SwarmEvent::Behaviour(Event::SendFailed {
                    reason: SendFailure::Rejected(Rejection { kind, .. }),
                    ..
                }) => {
                    assert_eq!(kind, RejectKind::CapsExceeded);
                    refused += 1;
                }
                SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => {
                    panic!("a value past the budget was acknowledged")
                }
                SwarmEvent::Behaviour(Event::AppEvent { .. }) => panic!("delivered"),
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => panic!("{reason}"),
                _ => {}
            }
            (refused == 5).then_some(())
        },
    )
    .await;
}

/// Values that fit the budget one by one but not all at once: the receiver
/// answers busy while its engine holds too much, and every value it
/// acknowledges, its engine outputs.
#[tokio::test(flavor = "current_thread")]
async fn values_past_the_budget_together_wait_and_all_arrive() {
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm(&model, &[&targets[0]]);
    let mut b = receiver_with_budget(100 * 1024);
    connect(&mut a, &mut b).await;
    let pb = *b.local_peer_id();
    let held = hold_engine(&b.behaviour().handle());
    let target = targets[0].clone();
    let sent: Vec<Vec<u8>> = a
        .behaviour()
        .handle()
        .with_node_blocking(move |node| {
            (0..5u8)
                .map(|n| invoke_send(node, &target, pb, &vec![n; 40 * 1024]))
                .collect()
        })
        .unwrap();
    let (mut acked, mut busy, mut got) = (0, 0, Vec::new());
    until(
        &mut [&mut a, &mut b],
        Duration::from_secs(20),
        "a busy answer",
        |i, e| {
            no_engine_drop(i, &e);
            match e {
                SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => acked += 1,
                SwarmEvent::Behaviour(Event::BackoffAdvised { .. }) => busy += 1,
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => panic!("{reason}"),
                _ => {}
            }
            (busy > 0).then_some(())
        },
    )
    .await;
    // 40 KiB values: two fit in 100 KiB, a third does not.
    assert_eq!(acked, 2, "acknowledged past the budget");
    drop(held);
    until(
        &mut [&mut a, &mut b],
        Duration::from_secs(20),
        "every value",
        |i, e| {
            no_engine_drop(i, &e);
            match e {
                SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => acked += 1,
                SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) if i == 1 => {
                    got.push(value_bytes)
                }
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => panic!("{reason}"),
                _ => {}
            }
            (acked == 5 && got.len() == 5).then_some(())
        },
    )
    .await;
    got.sort();
    assert_eq!(got, sent);
    run_for(&mut [&mut a, &mut b], Duration::from_millis(200), |i, e| {
        no_engine_drop(i, &e)
    })
    .await;
}

/// Envelopes queued behind a failed dial do not dial again inside the
/// back-off: they fail as `backoff`, and the dial failures count once.
#[tokio::test(flavor = "current_thread")]
async fn queued_envelopes_respect_the_back_off() {
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm(&model, &[&targets[0]]);
    // A peer whose address nothing listens on.
    let dest = libp2p::PeerId::random();
    a.add_peer_address(dest, "/memory/4242424242".parse().unwrap());
    send_values(&a.behaviour().handle(), &targets[0], dest, numbered(200));
    // All 200 wait for the swarm before it runs, so they meet the first
    // dial's failure together, however slow the machine.
    let handed = std::time::Instant::now();
    while a.behaviour().engine_backlog() < 200 {
        assert!(
            handed.elapsed() < Duration::from_secs(10),
            "the engine handed over too few"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (mut dial_failures, mut backoffs, mut dials) = (0, 0, 0);
    until(
        &mut [&mut a],
        Duration::from_secs(20),
        "200 outcomes",
        |_, e| {
            match e {
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => match reason {
                    SendFailure::DialFailure => dial_failures += 1,
                    SendFailure::Backoff { .. } => backoffs += 1,
                    other => panic!("unexpected failure {other:?}"),
                },
                SwarmEvent::OutgoingConnectionError { .. } => dials += 1,
                SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => panic!("acknowledged"),
                _ => {}
            }
            (dial_failures + backoffs == 200).then_some(())
        },
    )
    .await;
    // At most the first batch in flight (half the stream limit) went to one
    // dial; the rest waited and then met the back-off.
    assert!(
        dial_failures <= 50,
        "{dial_failures} dial failures, {backoffs} back-offs"
    );
    assert!(
        backoffs >= 150,
        "{dial_failures} dial failures, {backoffs} back-offs"
    );
    assert!(dials <= 2, "{dials} dials inside the first back-off");
    let failures = common::on_node(&a, move |node| {
        node.peer_health(bb_libp2p::to_engine_peer(&dest))
            .map(|h| h.consecutive_failures)
    });
    assert_eq!(failures, Some(1), "one attempt, one failure");
}

/// A snapshot that cannot carry every unacknowledged envelope (the
/// engine's outbound queue is smaller than what the behaviour holds) fails
/// with an error instead of dropping some, and the running sender loses
/// nothing.
#[tokio::test(flavor = "current_thread")]
async fn a_snapshot_that_cannot_carry_everything_fails() {
    let (model, targets) = compile(Ping);
    let key = Keypair::generate_ed25519();
    let (node_key, node_model, sender) = (key.clone(), model.clone(), targets[0].clone());
    let behaviour = Behaviour::new(
        move || {
            let node = install(&node_key, &node_model, &[&sender]);
            let id = node.peer_id();
            Ok::<_, std::convert::Infallible>(
                node.with_config(NodeConfig::new(id).with_max_outbound_queue(100)),
            )
        },
        Config::default(),
    )
    .unwrap();
    let mut a = memory_swarm(key, behaviour);
    let mut b = bb_swarm(&model, &[&targets[1]]);
    connect(&mut a, &mut b).await;
    let pb = *b.local_peer_id();
    // In batches, so the engine's own queue of 100 never overflows.
    for batch in 0..6u32 {
        let target = targets[0].clone();
        a.behaviour()
            .handle()
            .with_node_blocking(move |node| {
                for n in 0..50 {
                    invoke_send(node, &target, pb, &(batch * 50 + n).to_le_bytes());
                }
            })
            .unwrap();
        // B is not polled: nothing is acknowledged.
        run_for(&mut [&mut a], Duration::from_millis(50), |_, e| {
            assert!(!matches!(
                e,
                SwarmEvent::Behaviour(Event::OutboundDropped { .. })
            ));
        })
        .await;
    }
    assert_eq!(
        a.behaviour().envelopes_in_flight() + a.behaviour().envelopes_queued(),
        300
    );
    match a.behaviour().snapshot().await {
        Err(bb_libp2p::SnapshotFailed::TooManyUnacknowledged { held, cap }) => {
            assert_eq!((held, cap), (300, 100))
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| "a snapshot")),
    }
    // Nothing was dropped: every envelope arrives, none reported lost.
    let (mut acked, mut got) = (0, 0);
    until(
        &mut [&mut a, &mut b],
        Duration::from_secs(30),
        "300 deliveries",
        |i, e| {
            match e {
                SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => acked += 1,
                SwarmEvent::Behaviour(Event::AppEvent { .. }) if i == 1 => got += 1,
                SwarmEvent::Behaviour(Event::OutboundDropped { count }) => {
                    panic!("dropped {count}")
                }
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => panic!("{reason}"),
                _ => {}
            }
            (acked == 300 && got == 300).then_some(())
        },
    )
    .await;
}

/// Blocking a peer with envelopes in flight and queued: the queued ones
/// fail as `denied` (never sent), the ones on the wire as closed
/// connections (they may have arrived), and every value the peer's engine
/// took is among those not labelled "definitely not delivered".
#[tokio::test(flavor = "current_thread")]
async fn denied_means_not_sent() {
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm(&model, &[&targets[0]]);
    let mut b = bb_swarm(&model, &[&targets[1]]);
    connect(&mut a, &mut b).await;
    let pb = *b.local_peer_id();
    send_values(&a.behaviour().handle(), &targets[0], pb, numbered(200));
    // Let some go out and arrive, then block B from A.
    let (mut acked, mut arrived, mut denied, mut maybe) = (0, 0, 0, 0);
    let mut count = |i: usize, e: SwarmEvent<Event>| match e {
        SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => acked += 1,
        SwarmEvent::Behaviour(Event::AppEvent { .. }) if i == 1 => arrived += 1,
        SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => match reason {
            SendFailure::Denied(_) => denied += 1,
            r if r.may_have_been_delivered() => maybe += 1,
            r => panic!("unexpected failure {r:?}"),
        },
        _ => {}
    };
    run_for(&mut [&mut a, &mut b], Duration::from_millis(5), &mut count).await;
    let engine_pb = bb_libp2p::to_engine_peer(&pb);
    common::on_node(&a, move |node| node.block_peer(engine_pb));
    run_for(&mut [&mut a, &mut b], Duration::from_secs(3), &mut count).await;
    assert_eq!(
        acked + denied + maybe,
        200,
        "{acked} acked, {denied} denied, {maybe} maybe"
    );
    assert!(denied > 0, "nothing was still queued");
    // What arrived was acknowledged or may have been delivered; nothing
    // labelled denied arrived.
    assert!(
        arrived <= acked + maybe,
        "{arrived} arrived, {acked} acked, {maybe} maybe"
    );
    assert!(arrived >= acked);
}

/// Failure state stays bounded however many peers fail: a thousand peers
/// at most, here and in the engine's tables, and a peer the behaviour
/// forgets takes its state with it.
#[tokio::test(flavor = "current_thread")]
async fn failure_state_is_bounded() {
    const ROUNDS: usize = 4;
    const PEERS: usize = 400;
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm(&model, &[&targets[0]]);
    let mut port = 5_000_000_000u64;
    for _ in 0..ROUNDS {
        // Peers learned, then found unreachable: addresses nothing listens on.
        let peers: Vec<libp2p::PeerId> = (0..PEERS).map(|_| libp2p::PeerId::random()).collect();
        for peer in &peers {
            port += 1;
            a.add_peer_address(*peer, format!("/memory/{port}").parse().unwrap());
        }
        let target = targets[0].clone();
        a.behaviour()
            .handle()
            .with_node_blocking(move |node| {
                for peer in peers {
                    invoke_send(node, &target, peer, b"x");
                }
            })
            .unwrap();
        let mut failed = 0;
        until(
            &mut [&mut a],
            Duration::from_secs(60),
            "every failure",
            |_, e| {
                match e {
                    SwarmEvent::Behaviour(Event::SendFailed { .. }) => failed += 1,
                    SwarmEvent::Behaviour(e @ Event::Engine(_)) => panic!("{e:?}"),
                    _ => {}
                }
                (failed == PEERS).then_some(())
            },
        )
        .await;
    }
    let here = a.behaviour().peers_with_failure_state();
    assert!(here <= 1000, "{here} peers with failure state");
    assert!(here >= PEERS, "{here}: the last round's state went missing");
    run_for(&mut [&mut a], Duration::from_millis(100), |_, _| {}).await;
    let (backoff, governor) = common::on_node(&a, |node| {
        let state = &node.engine_install_handle().framework.peer_state;
        (state.backoff.len(), state.governor.tracked_peers())
    });
    assert!(
        backoff <= 1000 && governor <= 1000,
        "engine: {backoff} back-offs, {governor} health records"
    );
}

#[derive(libp2p::swarm::NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct LimitsAfter {
    bb: Behaviour,
    limits: libp2p::connection_limits::Behaviour,
}

/// Composed with `connection_limits` declared after it, and two peers
/// dialling each other at once: the limits refuse the second connection
/// after request-response took it (rust-libp2p#4870). No envelope is routed
/// to that connection that never was: all arrive.
#[tokio::test(flavor = "current_thread")]
async fn connection_limits_after_the_behaviour_lose_nothing() {
    let (model, targets) = compile(Ping);
    let limited = |key: &Keypair, target: &str| {
        let bb = common::models::bb_behaviour(key, &model, &[target], Config::default());
        let limits = libp2p::connection_limits::Behaviour::new(
            libp2p::connection_limits::ConnectionLimits::default()
                .with_max_established_per_peer(Some(1)),
        );
        memory_swarm(key.clone(), LimitsAfter { bb, limits })
    };
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let mut a = limited(&ka, &targets[0]);
    let mut b = limited(&kb, &targets[1]);
    let (addr_a, addr_b) = (common::listen(&mut a).await, common::listen(&mut b).await);
    // Both dial at once.
    a.dial(addr_b).unwrap();
    b.dial(addr_a).unwrap();
    let mut refused = 0;
    run_for(&mut [&mut a, &mut b], Duration::from_millis(300), |_, e| {
        if matches!(
            e,
            SwarmEvent::IncomingConnectionError { .. } | SwarmEvent::OutgoingConnectionError { .. }
        ) {
            refused += 1;
        }
    })
    .await;
    assert!(a.is_connected(b.local_peer_id()));
    let pb = *b.local_peer_id();
    let target = targets[0].clone();
    let sent: Vec<Vec<u8>> = a
        .behaviour()
        .bb
        .handle()
        .with_node_blocking(move |node| {
            (0..20u8)
                .map(|n| invoke_send(node, &target, pb, &[n]))
                .collect()
        })
        .unwrap();
    let (mut acked, mut got) = (0, Vec::new());
    until(
        &mut [&mut a, &mut b],
        Duration::from_secs(15),
        "20 deliveries",
        |i, e| {
            match e {
                SwarmEvent::Behaviour(LimitsAfterEvent::Bb(Event::EnvelopeAcknowledged {
                    ..
                })) => acked += 1,
                SwarmEvent::Behaviour(LimitsAfterEvent::Bb(Event::AppEvent {
                    value_bytes,
                    ..
                })) if i == 1 => got.push(value_bytes),
                SwarmEvent::Behaviour(LimitsAfterEvent::Bb(Event::SendFailed {
                    reason, ..
                })) => {
                    panic!("failed: {reason} ({refused} connections refused)")
                }
                _ => {}
            }
            (acked == 20 && got.len() == 20).then_some(())
        },
    )
    .await;
    got.sort();
    assert_eq!(got, sent);
    println!("{refused} connections refused by the limits");
}

/// A fan-in of 200 senders × 20 values to one receiver, with the default
/// Config: queueing slows them down, nothing fails, each value arrives once.
#[tokio::test(flavor = "current_thread")]
async fn a_fan_in_of_two_hundred_senders_delivers_everything() {
    const SENDERS: usize = 200;
    const VALUES: u32 = 20;
    let (model, targets) = compile(Ping);
    let pool = bb_libp2p::EnginePool::new(2).unwrap();
    let mut receiver = bb_swarm(&model, &[&targets[1]]);
    let addr = common::listen(&mut receiver).await;
    let pr = *receiver.local_peer_id();
    let mut senders: Vec<Swarm<Behaviour>> = (0..SENDERS)
        .map(|_| {
            let key = Keypair::generate_ed25519();
            let (k, m, t) = (key.clone(), model.clone(), targets[0].clone());
            let bb = Behaviour::with_pool(
                &pool,
                move || Ok::<_, std::convert::Infallible>(install(&k, &m, &[&t])),
                Config::default(),
            )
            .unwrap();
            let mut swarm = memory_swarm(key, bb);
            swarm.add_peer_address(pr, addr.clone());
            swarm
        })
        .collect();
    for (s, sender) in senders.iter().enumerate() {
        let target = targets[0].clone();
        sender
            .behaviour()
            .handle()
            .with_node_blocking(move |node| {
                for n in 0..VALUES {
                    invoke_send(
                        node,
                        &target,
                        pr,
                        &[s as u32, n].map(u32::to_le_bytes).concat(),
                    );
                }
            })
            .unwrap();
    }
    let (mut acked, mut got) = (0, std::collections::HashSet::new());
    let mut swarms: Vec<&mut Swarm<Behaviour>> = senders.iter_mut().collect();
    swarms.push(&mut receiver);
    let total = SENDERS * VALUES as usize;
    until(
        &mut swarms,
        Duration::from_secs(120),
        "every value",
        |i, e| {
            match e {
                SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => acked += 1,
                SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) if i == SENDERS => {
                    assert!(got.insert(value_bytes), "a value arrived twice");
                }
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                    panic!("failed: {reason}")
                }
                _ => {}
            }
            (acked == total && got.len() == total).then_some(())
        },
    )
    .await;
}
