//! The README's promises, each held where a defect broke it: every
//! envelope gets one outcome, an acknowledgement means the receiving engine
//! took the value, a failing peer is not dialled before its back-off passes.

mod common;

use std::time::Duration;

use bb_libp2p::{Behaviour, Config, EngineStep, Event, RejectKind, Rejection, SendFailure};
use bb_runtime::node::NodeConfig;
use common::models::{bb_swarm, compile, install, invoke_send, Ping};
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
    let target = targets[0].clone();
    a.behaviour()
        .handle()
        .with_node_blocking(move |node| {
            for n in 0..5u8 {
                invoke_send(node, &target, pb, &vec![n; 200 * 1024]);
            }
        })
        .unwrap();
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
