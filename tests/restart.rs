//! A sender stopped and restarted from `Behaviour::snapshot` sends what was
//! never acknowledged again, and the receiver's engine takes each value
//! once.

mod common;

use std::time::Duration;

use bb_libp2p::{Behaviour, Config, Event};
use common::models::{bb_behaviour, bytes_value, compile, install, send_value, Ping};
use common::{connect, memory_swarm, run_for, until};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::Swarm;

/// One envelope in flight at a time, so the others wait in the queue;
/// wire deadlines off, as the sender is stopped mid-request.
fn sender_config() -> Config {
    Config::default()
        .with_max_envelopes_in_flight(1)
        .with_wire_deadlines(false)
}

/// A Ping sender A and receiver B, connected, and A's key.
async fn pair(
    model: &bytesandbrains::proto::onnx::ModelProto,
    targets: &[String],
) -> (Swarm<Behaviour>, Swarm<Behaviour>, Keypair) {
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let mut a = memory_swarm(
        ka.clone(),
        bb_behaviour(&ka, model, &[&targets[0]], sender_config()),
    );
    let mut b = memory_swarm(
        kb.clone(),
        bb_behaviour(&kb, model, &[&targets[1]], Config::default()),
    );
    connect(&mut a, &mut b).await;
    (a, b, ka)
}

/// A's behaviour restarted from `snapshot`: the same identity and model.
fn restarted(
    key: &Keypair,
    model: &bytesandbrains::proto::onnx::ModelProto,
    target: &str,
    snapshot: bb_libp2p::NodeSnapshot,
) -> Behaviour {
    let (key, model, target) = (key.clone(), model.clone(), target.to_string());
    Behaviour::new(
        move || {
            let mut node = install(&key, &model, &[&target]);
            Behaviour::restore(&mut node, snapshot).map(|()| node)
        },
        sender_config(),
    )
    .expect("restore")
}

#[tokio::test(flavor = "current_thread")]
async fn unacknowledged_envelopes_survive_a_restart_and_arrive_once() {
    let (model, targets) = compile(Ping);
    let (mut a, mut b, ka) = pair(&model, &targets).await;
    let pb = *b.local_peer_id();
    let values: Vec<Vec<u8>> = (1..=3u8).map(|n| vec![n; 4]).collect();
    for value in &values {
        send_value(&a.behaviour().handle(), &targets[0], pb, value);
    }
    run_for(&mut [&mut a], Duration::from_millis(20), |_, _| {}).await;
    assert_eq!(
        (
            a.behaviour().envelopes_in_flight(),
            a.behaviour().envelopes_queued()
        ),
        (1, 2)
    );

    // B takes the first value; its acknowledgement never reaches A, which
    // stops here.
    let mut got = Vec::new();
    until(
        &mut [&mut b],
        Duration::from_secs(5),
        "the first value",
        |_, e| {
            if let SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) = e {
                got.push(value_bytes);
                return Some(());
            }
            None
        },
    )
    .await;
    let snapshot = a.behaviour().snapshot().await.expect("snapshot");
    drop(a);

    // The restarted sender: same identity and model, the snapshot's state.
    let mut a = memory_swarm(ka.clone(), restarted(&ka, &model, &targets[0], snapshot));
    // It dials B for the envelopes it sends again on its first poll.
    let b_addr = b.listeners().next().cloned().expect("B listens");
    a.add_peer_address(pb, b_addr);
    let mut acked = 0;
    run_for(
        &mut [&mut a, &mut b],
        Duration::from_millis(500),
        |i, e| match e {
            SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) => {
                assert_eq!(i, 1);
                got.push(value_bytes);
            }
            SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => acked += 1,
            SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                panic!("lost after the restart: {reason}")
            }
            _ => {}
        },
    )
    .await;
    // All three were sent again (the first too: its acknowledgement was
    // lost), and B's engine output each value once.
    assert_eq!(acked, 3);
    let want: Vec<Vec<u8>> = values.iter().map(|v| bytes_value(v)).collect();
    assert_eq!(got, want);

    // The restored Node does new work too.
    send_value(&a.behaviour().handle(), &targets[0], pb, &[4; 4]);
    let fourth = until(
        &mut [&mut a, &mut b],
        Duration::from_secs(5),
        "a new value",
        |i, e| match e {
            SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) if i == 1 => {
                Some(value_bytes)
            }
            _ => None,
        },
    )
    .await;
    assert_eq!(fourth, bytes_value(&[4; 4]));
}

/// A restarted sender that cannot reach the peer again reports the
/// envelopes its snapshot carried as unconfirmed, never as "not sent": the
/// first had reached the peer, its acknowledgement lost with the process.
#[tokio::test(flavor = "current_thread")]
async fn carried_envelopes_that_fail_again_are_unconfirmed() {
    let (model, targets) = compile(Ping);
    let (mut a, mut b, ka) = pair(&model, &targets).await;
    let pb = *b.local_peer_id();
    for n in 1..=2u8 {
        send_value(&a.behaviour().handle(), &targets[0], pb, &[n; 4]);
    }
    run_for(&mut [&mut a], Duration::from_millis(20), |_, _| {}).await;
    // B takes the first value; A stops before it hears so.
    until(
        &mut [&mut b],
        Duration::from_secs(5),
        "the first value",
        |_, e| matches!(e, SwarmEvent::Behaviour(Event::AppEvent { .. })).then_some(()),
    )
    .await;
    let snapshot = a.behaviour().snapshot().await.expect("snapshot");
    drop(a);

    // Restarted where no address for B is known: the dial finds none.
    let mut a = memory_swarm(ka.clone(), restarted(&ka, &model, &targets[0], snapshot));
    let mut failures = Vec::new();
    until(
        &mut [&mut a],
        Duration::from_secs(5),
        "both carried envelopes to fail",
        |_, e| {
            match e {
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => failures.push(reason),
                SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => {
                    panic!("acknowledged without a connection")
                }
                _ => {}
            }
            (failures.len() == 2).then_some(())
        },
    )
    .await;
    for reason in &failures {
        assert_eq!(reason.label(), "unconfirmed", "{reason}");
        assert!(reason.may_have_been_delivered());
    }
}

/// bb-runtime 0.3.8's own `Node::restore` leaves a Node that takes invokes
/// and runs nothing (see `Behaviour::restore`). When this fails, upstream
/// has fixed it and `Behaviour::restore` can restore the snapshot's graphs.
#[tokio::test(flavor = "current_thread")]
async fn upstream_restore_still_strands_new_work() {
    let (model, targets) = compile(Ping);
    let key = Keypair::generate_ed25519();
    let a = memory_swarm(
        key.clone(),
        bb_behaviour(&key, &model, &[&targets[0]], Config::default()),
    );
    let snapshot = a.behaviour().snapshot().await.expect("snapshot");
    let (restored_key, restored_model, target) = (key.clone(), model.clone(), targets[0].clone());
    let restored = Behaviour::new(
        move || {
            let mut node = install(&restored_key, &restored_model, &[&target]);
            node.restore(snapshot).map(|()| node)
        },
        Config::default(),
    )
    .expect("restore");
    let mut a = memory_swarm(key, restored);
    let dest = Keypair::generate_ed25519().public().to_peer_id();
    send_value(&a.behaviour().handle(), &targets[0], dest, b"anything");
    // A working Node would send it, and fail to resolve or dial the peer.
    run_for(&mut [&mut a], Duration::from_millis(300), |_, e| {
        if let SwarmEvent::Behaviour(e) = e {
            assert!(
                !matches!(
                    e,
                    Event::SendFailed { .. }
                        | Event::Engine(bb_runtime::engine::EngineStep::PeerResolveFailed { .. })
                ),
                "the restored Node ran the invoke: {e:?}"
            );
        }
    })
    .await;
    assert_eq!(a.behaviour().wire_stats().envelopes_sent, 0);
}
