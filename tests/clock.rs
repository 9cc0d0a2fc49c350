//! The behaviour moves the engine's clock and wakes for what the engine has
//! due, and for work pushed into the Node between polls.

mod common;

use std::future::poll_fn;
use std::task::Poll;
use std::time::{Duration, Instant};

use bb_libp2p::{Config, Event};
use bb_runtime::engine::EngineStep;
use common::models::{
    bb_behaviour, bb_swarm, bytes_value, compile, install, invoke_send, send_value, Other, Ping,
};
use common::{connect, memory_swarm, on_node, until};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;

/// The Send's compiled deadline: its request lives this long in the engine.
const SEND_DEADLINE: Duration = Duration::from_millis(100);

/// The engine's clock moves and wakes the engine when a request's time to
/// live passes. (A request handed to the transport ends with the
/// transport's outcome instead, see `tests/wire_requests.rs`; this one is
/// registered by hand, as one no outcome will ever come for.)
#[tokio::test(flavor = "current_thread")]
async fn wire_timeout_fires_on_time() {
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm(&model, &[&targets[0]]);
    let start = Instant::now();
    let started_at_ns = on_node(&a, |node| {
        let engine = node.engine_install_handle();
        let now_ns = engine.framework.scheduler.now_ns();
        engine.framework.request_tracker.register_in_flight(
            999,
            now_ns,
            bb_runtime::ids::NodeSiteId::from(0u64),
            None,
            std::num::NonZeroU64::new(SEND_DEADLINE.as_nanos() as u64).unwrap(),
            None,
        );
        now_ns
    });
    let (wire_req_id, started) = until(
        &mut [&mut a],
        Duration::from_secs(5),
        "WireTimeout",
        |_, e| match e {
            SwarmEvent::Behaviour(Event::Engine(EngineStep::WireTimeout {
                wire_req_id,
                started_at_ns,
                ..
            })) => Some((wire_req_id, started_at_ns)),
            _ => None,
        },
    )
    .await;
    let elapsed = start.elapsed();
    assert_eq!((wire_req_id, started), (999, started_at_ns));
    // The engine's clock moved: the request started after the Node did.
    assert!(started_at_ns > 0);
    assert!(elapsed >= SEND_DEADLINE, "fired early, after {elapsed:?}");
    assert!(elapsed < SEND_DEADLINE * 5, "fired late, after {elapsed:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn invoke_between_polls_wakes_the_swarm() {
    let (model, targets) = compile(Other);
    let key = Keypair::generate_ed25519();
    let mut a = memory_swarm(
        key.clone(),
        bb_behaviour(&key, &model, &[&targets[0]], Config::default()),
    );
    let handle = a.behaviour().handle();
    let value = bytes_value(b"wake up");
    let mut invoked = false;
    let wait = poll_fn(|cx| {
        while let Poll::Ready(Some(e)) = a.poll_next_unpin(cx) {
            if let SwarmEvent::Behaviour(Event::AppEvent {
                topic, value_bytes, ..
            }) = e
            {
                return Poll::Ready((topic, value_bytes));
            }
        }
        // The swarm is idle and its task about to sleep. Only the engine
        // thread handing over the invocation's output can bring it back.
        if !invoked {
            invoked = true;
            let (target, value) = (targets[0].clone(), value.clone());
            handle
                .with_node_blocking(move |node| {
                    node.invoke(&target, &[("a", &value)]).unwrap();
                })
                .expect("the Node runs");
        }
        Poll::Pending
    });
    let (topic, got) = tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("the invocation never woke the swarm");
    assert_eq!(topic, "o");
    assert_eq!(got, value);
}

/// With the engine's clock moving, a Send long after start-up still goes out
/// (its compiled deadline gate holds a 100 ms budget, not a time of day).
#[tokio::test(flavor = "current_thread")]
async fn send_long_after_start_is_delivered() {
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm(&model, &[&targets[0]]);
    let mut b = bb_swarm(&model, &[&targets[1]]);
    connect(&mut a, &mut b).await;
    common::run_for(&mut [&mut a, &mut b], SEND_DEADLINE * 3, |_, _| {}).await;
    let x = send_value(
        &a.behaviour().handle(),
        &targets[0],
        *b.local_peer_id(),
        b"late",
    );
    let got = until(
        &mut [&mut a, &mut b],
        Duration::from_secs(5),
        "late value on B",
        |i, e| match e {
            SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) if i == 1 => {
                Some(value_bytes)
            }
            SwarmEvent::Behaviour(Event::Engine(EngineStep::OpFailed { error, .. })) => {
                panic!("{i}: {error:?}")
            }
            _ => None,
        },
    )
    .await;
    assert_eq!(got, x);
}

/// Guards the engine limitation `clock::disarm_deadline_gates` covers. If
/// this fails, a Send's deadline gate no longer fails once the engine clock
/// passes its relative budget: check the gate and retire the disarming.
#[test]
fn upstream_deadline_gates_still_read_budgets_as_absolute() {
    let (model, targets) = compile(Ping);
    let key = Keypair::generate_ed25519();
    let mut node = install(&key, &model, &[&targets[0]]);
    let other = libp2p::PeerId::random();
    node.add_peer(
        bb_libp2p::to_engine_peer(&other),
        vec![bb_libp2p::p2p_address(&other)],
    )
    .unwrap();
    node.engine_install_handle()
        .framework
        .scheduler
        .set_now(SEND_DEADLINE.as_nanos() as u64 * 2);
    invoke_send(&mut node, &targets[0], other, &[1]);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut failures = Vec::new();
    for _ in 0..10 {
        if let Poll::Ready(steps) = node.poll(&mut cx) {
            for step in steps {
                match step {
                    EngineStep::OpFailed { error, .. } => failures.push(error.detail),
                    EngineStep::SendEnvelope(_) => panic!(
                        "a Send past its budget went out: upstream fixed DeadlineCheck, revisit clock::disarm_deadline_gates"
                    ),
                    _ => {}
                }
            }
        }
    }
    assert_eq!(failures, ["deadline exceeded"]);
}
