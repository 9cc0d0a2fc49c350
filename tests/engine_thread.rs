//! The Node on its engine thread: a `Send` swarm that runs on any executor,
//! a swarm that keeps networking while its Node computes, bounded lanes in
//! both directions, and a clean stop.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bb_ir::proto::onnx::NodeProto;
use bb_libp2p::{Behaviour, Config, EnginePool, EngineStopped, Event};
use bytesandbrains::atomic::DispatchResult;
use bytesandbrains::bus::OpError;
use bytesandbrains::runtime::RuntimeResourceRef;
use bytesandbrains::slot_value::SlotValue;
use bytesandbrains::syscall::values::BytesValue;
use bytesandbrains::{Graph, Module, Output};
use common::models::{bb_behaviour, bytes_value, compile, merge, send_value, Ping};
use common::{connect, hold_engine, memory_swarm, run_for, until};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{ping, PeerId, Swarm};
use libp2p_swarm_test::SwarmExt;

/// How long the `Burn` op computes.
const BURN: Duration = Duration::from_secs(2);

/// Spins a core for [`BURN`], as a training step or a large aggregation
/// would, then outputs the bytes `burnt`.
fn burn(
    _: &NodeProto,
    _: &[(&str, &dyn SlotValue)],
    _: &mut RuntimeResourceRef<'_>,
) -> Result<DispatchResult, OpError> {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < BURN {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    Ok(DispatchResult::Immediate(vec![(
        "burnt".to_string(),
        Box::new(BytesValue(b"burnt".to_vec())) as Box<dyn SlotValue>,
    )]))
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_test.burn",
    op_type: "Burn",
    invoke: burn,
}

/// One Node-local computation: `x` -> `Burn` -> `y`.
struct Burn;
impl Module for Burn {
    fn name(&self) -> &str {
        "Burn"
    }
    fn body(&self, g: &mut Graph) {
        let x = g.input("x");
        g.push_node(NodeProto {
            op_type: "Burn".into(),
            domain: "ai.bytesandbrains.bb_libp2p_test.burn".into(),
            input: vec![x.name.clone()],
            output: vec!["burnt".into()],
            ..Default::default()
        });
        g.declare_value_info("burnt", &bb_ir::types::TYPE_BYTES);
        g.output("y", Output::new("burnt".into(), &bb_ir::types::TYPE_BYTES));
    }
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct WithPing {
    bb: Behaviour,
    ping: ping::Behaviour,
}

/// A swarm that is `Send` runs as a `tokio::spawn`ed task on a
/// multi-thread runtime, and a value crosses it with its exact bytes; the
/// receiver's values come out of its handle's stream, away from the swarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_swarm_exchanges_values() {
    let (model, targets) = compile(Ping);
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let mut a = memory_swarm(
        ka.clone(),
        bb_behaviour(&ka, &model, &[&targets[0]], Config::default()),
    );
    let mut b = memory_swarm(
        kb.clone(),
        bb_behaviour(&kb, &model, &[&targets[1]], Config::default()),
    );
    connect(&mut a, &mut b).await;
    let (a_node, b_node) = (a.behaviour().handle(), b.behaviour().handle());
    let mut values = b_node.app_events().await.expect("B runs");
    let pb = *b.local_peer_id();
    // Each swarm on a task of its own; A's events come back on a channel.
    let (acks_tx, mut acks) = tokio::sync::mpsc::channel(16);
    let a_task = tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(e) = a.select_next_some().await {
                let _ = acks_tx.send(e).await;
            }
        }
    });
    let b_task = tokio::spawn(async move {
        loop {
            b.select_next_some().await;
        }
    });
    let sent = tokio::task::spawn_blocking(move || {
        send_value(&a_node, &targets[0], pb, b"across threads")
    })
    .await
    .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), values.next())
        .await
        .expect("the value arrives")
        .expect("B runs");
    assert_eq!((got.topic.as_str(), got.value_bytes), ("y", sent));
    match tokio::time::timeout(Duration::from_secs(10), acks.recv()).await {
        Ok(Some(Event::EnvelopeAcknowledged { peer, wire_req_id })) => {
            assert_eq!(peer, pb);
            let _ = wire_req_id;
        }
        other => panic!("A reported {other:?} instead of the acknowledgement"),
    }
    a_task.abort();
    b_task.abort();
}

/// `libp2p-swarm-test`'s `SwarmExt` applies now that the behaviour is
/// `Send`: ephemeral swarms on its memory transport exchange a value.
#[tokio::test(flavor = "current_thread")]
async fn swarm_test_swarms_exchange_a_value() {
    let (model, targets) = compile(Ping);
    let config = Config::default();
    let mut a = Swarm::new_ephemeral_tokio(|key| {
        bb_behaviour(&key, &model, &[&targets[0]], config.clone())
    });
    let mut b = Swarm::new_ephemeral_tokio(|key| {
        bb_behaviour(&key, &model, &[&targets[1]], config.clone())
    });
    b.listen().with_memory_addr_external().await;
    a.connect(&mut b).await;
    let sent = send_value(
        &a.behaviour().handle(),
        &targets[0],
        *b.local_peer_id(),
        b"swarm-test",
    );
    let (acked, value) = futures::future::join(
        a.wait(|e| match e {
            SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { peer, .. }) => Some(peer),
            _ => None,
        }),
        b.wait(|e| match e {
            SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) => Some(value_bytes),
            _ => None,
        }),
    )
    .await;
    assert_eq!((acked, value), (*b.local_peer_id(), sent));
}

/// A graph op computes for two seconds on B's Node. Meanwhile B's swarm
/// answers ping within 100 ms, and C's envelopes to B are acknowledged
/// within 100 ms each; they reach B's engine once the op is done.
#[tokio::test(flavor = "current_thread")]
async fn a_computing_node_keeps_its_swarm_responsive() {
    let (ping_model, ping_targets) = compile(Ping);
    let (burn_model, burn_targets) = compile(Burn);
    let b_model = merge(ping_model.clone(), &burn_model);
    let ping_config = ping::Config::new().with_interval(Duration::from_millis(50));
    let with_ping = |key: &Keypair, model, targets: &[&str]| {
        let bb = bb_behaviour(key, model, targets, Config::default());
        memory_swarm(
            key.clone(),
            WithPing {
                bb,
                ping: ping::Behaviour::new(ping_config.clone()),
            },
        )
    };
    let (ka, kb, kc) = (
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
    );
    let mut a = with_ping(&ka, &ping_model, &[&ping_targets[0]]);
    // Burn first: on bb-runtime 0.3.8 a test-domain op in a graph installed
    // after Ping's receiver is never dispatched.
    let mut b = with_ping(&kb, &b_model, &[&burn_targets[0], &ping_targets[1]]);
    let mut c = with_ping(&kc, &ping_model, &[&ping_targets[0]]);
    connect(&mut a, &mut b).await;
    connect(&mut c, &mut b).await;
    let (pb, c_node) = (*b.local_peer_id(), c.behaviour().bb.handle());

    // Start the computation on B's engine thread.
    let burn_target = burn_targets[0].clone();
    let started = Instant::now();
    b.behaviour()
        .bb
        .handle()
        .with_node_blocking(move |node| {
            node.invoke(&burn_target, &[("x", &bytes_value(b"go"))])
                .expect("invoke")
        })
        .unwrap();
    run_for(
        &mut [&mut a, &mut b, &mut c],
        Duration::from_millis(100),
        |_, _| {},
    )
    .await;

    let (mut rtts, mut acks, mut sent, mut arrived) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut burnt_at = None;
    while burnt_at.is_none() {
        let payload = (sent.len() as u32).to_le_bytes();
        sent.push(send_value(&c_node, &ping_targets[0], pb, &payload));
        let sent_at = Instant::now();
        let mut acked = false;
        run_for(
            &mut [&mut a, &mut b, &mut c],
            Duration::from_millis(50),
            |i, e| match e {
                SwarmEvent::Behaviour(WithPingEvent::Ping(ping::Event {
                    result: Ok(rtt), ..
                })) if burnt_at.is_none() => rtts.push(rtt),
                SwarmEvent::Behaviour(WithPingEvent::Bb(Event::EnvelopeAcknowledged {
                    ..
                })) if i == 2 => {
                    assert!(!acked);
                    acked = true;
                    acks.push(sent_at.elapsed());
                }
                SwarmEvent::Behaviour(WithPingEvent::Bb(Event::AppEvent {
                    value_bytes, ..
                })) if i == 1 => {
                    if value_bytes == b"burnt" {
                        burnt_at = Some(started.elapsed());
                    } else {
                        assert!(
                            burnt_at.is_some(),
                            "B's engine output a value while it computed"
                        );
                        arrived.push(value_bytes);
                    }
                }
                SwarmEvent::Behaviour(WithPingEvent::Bb(Event::SendFailed { reason, .. })) => {
                    panic!("send failed: {reason}")
                }
                _ => {}
            },
        )
        .await;
        assert!(
            acked || burnt_at.is_some(),
            "envelope {} not acknowledged within 50 ms",
            sent.len()
        );
        assert!(
            started.elapsed() < BURN * 4,
            "the computation never finished"
        );
    }
    let burnt_at = burnt_at.unwrap();
    println!(
        "burn {burnt_at:?}; during it {} pings (max {:?}), {} acks (max {:?})",
        rtts.len(),
        rtts.iter().max(),
        acks.len(),
        acks.iter().max()
    );
    assert!(burnt_at >= BURN, "the op ran {burnt_at:?}");
    assert!(
        rtts.len() >= 10,
        "only {} pings during the computation",
        rtts.len()
    );
    assert!(
        acks.len() >= 10,
        "only {} acks during the computation",
        acks.len()
    );
    assert!(
        rtts.iter().all(|r| *r < Duration::from_millis(100)),
        "{rtts:?}"
    );
    assert!(
        acks.iter().all(|r| *r < Duration::from_millis(100)),
        "{acks:?}"
    );
    // Every value C sent reaches B's engine once it is free, exactly once.
    if arrived.len() < sent.len() {
        until(
            &mut [&mut a, &mut b, &mut c],
            Duration::from_secs(10),
            "C's values on B",
            |i, e| {
                if let SwarmEvent::Behaviour(WithPingEvent::Bb(Event::AppEvent {
                    value_bytes,
                    topic,
                    ..
                })) = e
                {
                    if i == 1 && topic == "y" && value_bytes != b"burnt" {
                        arrived.push(value_bytes);
                    }
                }
                (arrived.len() >= sent.len()).then_some(())
            },
        )
        .await;
    }
    assert_eq!(arrived.len(), sent.len());
    let arrived: HashSet<_> = arrived.into_iter().collect();
    assert_eq!(arrived, sent.into_iter().collect());
}

/// A flood from the swarm side while B's engine is busy: B's ingress fills,
/// B answers busy, A waits and resends, and once B's engine is free every
/// value arrives exactly once, each with one acknowledgement.
#[tokio::test(flavor = "current_thread")]
async fn a_flood_into_a_busy_engine_loses_nothing() {
    const N: u32 = 50;
    let (model, targets) = compile(Ping);
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let mut a = memory_swarm(
        ka.clone(),
        bb_behaviour(&ka, &model, &[&targets[0]], Config::default()),
    );
    let b_config = Config::default().with_max_ingress_envelopes(16);
    let mut b = memory_swarm(
        kb.clone(),
        bb_behaviour(&kb, &model, &[&targets[1]], b_config),
    );
    connect(&mut a, &mut b).await;
    let (a_node, pb) = (a.behaviour().handle(), *b.local_peer_id());
    let held = hold_engine(&b.behaviour().handle());
    let sent = common::models::send_values(&a_node, &targets[0], pb, common::models::numbered(N));
    let (mut acked, mut busy, mut arrived) = (0, 0, Vec::new());
    // Until B's full ingress has answered busy.
    until(
        &mut [&mut a, &mut b],
        Duration::from_secs(10),
        "a busy answer",
        |i, e| {
            match e {
                SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => acked += 1,
                SwarmEvent::Behaviour(Event::BackoffAdvised { .. }) if i == 0 => busy += 1,
                SwarmEvent::Behaviour(Event::AppEvent { .. }) => {
                    panic!("a held engine output a value")
                }
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                    panic!("send failed: {reason}")
                }
                _ => {}
            }
            (busy > 0).then_some(())
        },
    )
    .await;
    assert!(acked <= 16, "B's ingress of 16 took {acked}");
    drop(held);
    until(
        &mut [&mut a, &mut b],
        Duration::from_secs(30),
        "every value",
        |i, e| {
            match e {
                SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => acked += 1,
                SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) if i == 1 => {
                    arrived.push(value_bytes)
                }
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                    panic!("send failed: {reason}")
                }
                _ => {}
            }
            (acked == N && arrived.len() == N as usize).then_some(())
        },
    )
    .await;
    let arrived: HashSet<_> = arrived.into_iter().collect();
    assert_eq!(arrived.len(), N as usize, "a value arrived twice");
    assert_eq!(arrived, sent.into_iter().collect());
}

/// The engine's lane to the swarm is bounded: a Node that produces faster
/// than its swarm is polled waits (its own outbound queue holds the rest),
/// and once the swarm is polled every event comes out, in order.
#[tokio::test(flavor = "current_thread")]
async fn a_swarm_that_falls_behind_its_engine_loses_nothing() {
    let (model, targets) = compile(common::models::Other);
    let key = Keypair::generate_ed25519();
    let mut swarm = memory_swarm(
        key.clone(),
        bb_behaviour(&key, &model, &[&targets[0]], Config::default()),
    );
    let node = swarm.behaviour().handle();
    const N: usize = 3000;
    // Invoked in batches so the engine produces while the swarm sleeps.
    for batch in 0..(N / 100) {
        let target = targets[0].clone();
        node.with_node_blocking(move |node| {
            for n in 0..100 {
                let v = bytes_value(&((batch * 100 + n) as u32).to_le_bytes());
                node.invoke(&target, &[("a", &v)]).expect("invoke");
            }
        })
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let waiting = swarm.behaviour().engine_backlog();
    assert!(
        waiting <= 1024,
        "{waiting} steps wait for the swarm: the lane is not bounded"
    );
    assert!(waiting > 0, "nothing waited");
    let mut got = Vec::new();
    until(
        &mut [&mut swarm],
        Duration::from_secs(30),
        "every output",
        |_, e| {
            if let SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) = e {
                got.push(value_bytes);
            }
            (got.len() == N).then_some(())
        },
    )
    .await;
    let want: Vec<Vec<u8>> = (0..N)
        .map(|n| bytes_value(&(n as u32).to_le_bytes()))
        .collect();
    assert_eq!(got, want);
}

/// The threads of this process whose names start with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

/// Dropping a swarm mid-transfer stops its Node and engine thread: the
/// handle reports the engine stopped, the thread exits, and the sender's
/// envelopes all end with an outcome.
#[tokio::test(flavor = "current_thread")]
async fn dropping_a_swarm_mid_transfer_stops_its_engine() {
    let (model, targets) = compile(Ping);
    let pool = EnginePool::named(1, "bbt-drop").unwrap();
    let key = Keypair::generate_ed25519();
    let (m, t) = (model.clone(), targets[1].clone());
    let k = key.clone();
    let receiver = Behaviour::with_pool(
        &pool,
        move || Ok::<_, std::convert::Infallible>(common::models::install(&k, &m, &[&t])),
        Config::default(),
    )
    .unwrap();
    drop(pool);
    let mut b = memory_swarm(key, receiver);
    // Each envelope is tried once: B does not come back.
    let once = Config::default().with_delivery_window(Duration::ZERO);
    let mut a = common::models::bb_swarm_with(&model, &[&targets[0]], once);
    connect(&mut a, &mut b).await;
    let (b_node, pb) = (b.behaviour().handle(), *b.local_peer_id());
    assert_eq!(threads_named("bbt-drop"), 1);
    let payloads = common::models::numbered(200);
    common::models::send_values(&a.behaviour().handle(), &targets[0], pb, payloads);
    // Until the transfer is under way.
    let mut outcomes = 0;
    until(
        &mut [&mut a, &mut b],
        Duration::from_secs(10),
        "a first delivery",
        |i, e| {
            if let SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) = e {
                assert_eq!(i, 0);
                outcomes += 1;
                return Some(());
            }
            None
        },
    )
    .await;
    drop(b);
    let stopped = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if b_node.with_node(|_| ()).await == Err(EngineStopped) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        stopped.is_ok(),
        "B's Node still runs after its swarm was dropped"
    );
    assert!(b_node.is_stopped());
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads_named("bbt-drop") > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        threads_named("bbt-drop"),
        0,
        "B's engine thread did not exit"
    );
    // A accounts for every envelope: acknowledged before the drop, or failed.
    until(
        &mut [&mut a],
        Duration::from_secs(30),
        "every outcome",
        |_, e| {
            if let SwarmEvent::Behaviour(
                Event::EnvelopeAcknowledged { .. } | Event::SendFailed { .. },
            ) = e
            {
                outcomes += 1;
            }
            (outcomes == 200).then_some(())
        },
    )
    .await;
    assert_eq!(
        a.behaviour().envelopes_in_flight() + a.behaviour().envelopes_queued(),
        0
    );
}

/// Two hundred Nodes on a pool of two engine threads: one thread per Node is
/// not needed, and each Node answers its handle.
#[tokio::test(flavor = "current_thread")]
async fn many_nodes_share_a_few_engine_threads() {
    let (model, targets) = compile(Ping);
    let pool = EnginePool::named(2, "bbt-many").unwrap();
    let behaviours: Vec<(PeerId, Behaviour)> = (0..200)
        .map(|_| {
            let key = Keypair::generate_ed25519();
            let (m, t, k) = (model.clone(), targets[1].clone(), key.clone());
            let b = Behaviour::with_pool(
                &pool,
                move || Ok::<_, std::convert::Infallible>(common::models::install(&k, &m, &[&t])),
                Config::default(),
            )
            .unwrap();
            (key.public().to_peer_id(), b)
        })
        .collect();
    assert_eq!(pool.nodes(), 200);
    assert_eq!(
        threads_named("bbt-many"),
        2,
        "Nodes started threads of their own"
    );
    for (peer, behaviour) in &behaviours {
        let got = behaviour
            .handle()
            .with_node(|node| node.peer_id())
            .await
            .unwrap();
        assert_eq!(got, bb_libp2p::to_engine_peer(peer));
    }
    drop(behaviours);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.nodes() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        pool.nodes(),
        0,
        "dropped behaviours left their Nodes running"
    );
}
