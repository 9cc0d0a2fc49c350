//! Slow links with `Config::default()`: the data plane, a round trip, a
//! registry join and large values across links of 300 ms and 500 ms round
//! trip at 10 Mbit/s, one of them losing 1 % of its packets, on the
//! link-shaping memory transport (`common::link`).

mod common;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bb_libp2p::{Behaviour, Config, Event};
use bb_runtime::engine::EngineStep;
use common::link::{shaped_swarm, LinkControl, Shape};
use common::models::{bb_behaviour, compile, send_value, Ping, RoundTrip};
use common::registry::{client_node, client_state, deployment, registry_node, registry_view};
use common::{connect, on_node, run_for, until};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::Swarm;

const RTT_300: Duration = Duration::from_millis(300);
const RTT_500: Duration = Duration::from_millis(500);

/// Two swarms over one shaped link, A running `targets[0]` and B
/// `targets[1]` of `module`.
fn pair(
    module: impl bytesandbrains::Module,
    shape: Shape,
    control: &LinkControl,
) -> (Swarm<Behaviour>, Swarm<Behaviour>, Vec<String>) {
    let (model, targets) = compile(module);
    let mut swarms = targets[..2].iter().map(|target| {
        let key = Keypair::generate_ed25519();
        let behaviour = bb_behaviour(&key, &model, &[target], Config::default());
        shaped_swarm(key, behaviour, shape, control)
    });
    let (a, b) = (swarms.next().unwrap(), swarms.next().unwrap());
    (a, b, targets)
}

/// A value of `len` bytes that is not all one byte.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Fails on anything that means an envelope or a fill was lost or late.
fn no_loss(i: usize, event: &Event) {
    match event {
        Event::SendFailed { .. }
        | Event::InboundRejected { .. }
        | Event::Engine(
            EngineStep::WireTimeout { .. }
            | EngineStep::WireDecodeFailed { .. }
            | EngineStep::WireReceiveFailed { .. }
            | EngineStep::OpFailed { .. },
        ) => panic!("swarm {i}: {event:?}"),
        _ => {}
    }
}

/// Sends each of `payloads` from A's Ping sender to B and waits until B
/// output all of them and A saw each acknowledged. Returns the time taken.
async fn ping_all(
    a: &mut Swarm<Behaviour>,
    b: &mut Swarm<Behaviour>,
    sender: &str,
    payloads: &[Vec<u8>],
) -> Duration {
    let start = Instant::now();
    let dest = *b.local_peer_id();
    let mut expected: Vec<Vec<u8>> = payloads
        .iter()
        .map(|p| send_value(&a.behaviour().handle(), sender, dest, p))
        .collect();
    let mut acked = 0;
    until(
        &mut [a, b],
        Duration::from_secs(60),
        "every value output and acknowledged",
        |i, e| {
            let SwarmEvent::Behaviour(event) = e else {
                return None;
            };
            no_loss(i, &event);
            match event {
                Event::EnvelopeAcknowledged { .. } if i == 0 => acked += 1,
                Event::AppEvent {
                    topic, value_bytes, ..
                } if i == 1 => {
                    assert_eq!(topic, "y");
                    let at = expected
                        .iter()
                        .position(|v| *v == value_bytes)
                        .unwrap_or_else(|| {
                            panic!(
                                "B output a value it was not sent, or twice ({} bytes)",
                                value_bytes.len()
                            )
                        });
                    expected.remove(at);
                }
                _ => {}
            }
            (expected.is_empty() && acked == payloads.len()).then_some(())
        },
    )
    .await;
    start.elapsed()
}

#[tokio::test(flavor = "current_thread")]
async fn small_and_large_values_cross_a_300ms_10mbit_link() {
    let (mut a, mut b, targets) = pair(Ping, Shape::wan(RTT_300, 10), &LinkControl::default());
    connect(&mut a, &mut b).await;
    let small = ping_all(&mut a, &mut b, &targets[0], &[vec![1, 2, 3]]).await;
    // 3 MiB: just under the engine's 4 MiB cap per fill.
    let large = ping_all(&mut a, &mut b, &targets[0], &[payload(3 << 20)]).await;
    println!("300 ms / 10 Mbit/s: 3 B in {small:?}, 3 MiB in {large:?}");
    // A one-way value takes at least half a round trip, and 3 MiB at
    // 10 Mbit/s at least 2.5 s: the link was really shaped.
    assert!(small >= RTT_300 / 2, "{small:?}");
    assert!(large >= Duration::from_millis(2500), "{large:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_round_trip_completes_across_a_300ms_link() {
    let (mut a, mut b, targets) = pair(RoundTrip, Shape::wan(RTT_300, 10), &LinkControl::default());
    connect(&mut a, &mut b).await;
    round_trips(
        &mut a,
        &mut b,
        &targets[0],
        &[vec![7; 16], payload(1 << 20)],
        RTT_300,
    )
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn values_cross_a_500ms_link_losing_1_percent() {
    let control = LinkControl::default();
    let shape = Shape::wan(RTT_500, 10).with_loss(0.01);
    let (mut a, mut b, targets) = pair(RoundTrip, shape, &control);
    connect(&mut a, &mut b).await;
    let values: Vec<Vec<u8>> = (0..20u8)
        .map(|i| vec![i; 64])
        .chain([payload(1 << 20)])
        .collect();
    round_trips(&mut a, &mut b, &targets[0], &values, RTT_500).await;
    println!(
        "500 ms / 10 Mbit/s / 1 % loss: {} chunks stalled as lost",
        control.stalls.load(Ordering::Relaxed)
    );
}

/// Sends each of `values` from A to B with the RoundTrip graph and waits
/// for each to come back to A; each takes at least `rtt`.
async fn round_trips(
    a: &mut Swarm<Behaviour>,
    b: &mut Swarm<Behaviour>,
    sender: &str,
    values: &[Vec<u8>],
    rtt: Duration,
) {
    let dest = *b.local_peer_id();
    let start = Instant::now();
    let mut expected: Vec<Vec<u8>> = values
        .iter()
        .map(|v| send_value(&a.behaviour().handle(), sender, dest, v))
        .collect();
    until(
        &mut [a, b],
        Duration::from_secs(60),
        "every value back on A",
        |i, e| {
            let SwarmEvent::Behaviour(event) = e else {
                return None;
            };
            no_loss(i, &event);
            if let Event::AppEvent {
                topic,
                value_bytes,
                sender,
            } = event
            {
                assert_eq!((i, topic.as_str()), (0, "y"), "only A outputs, on y");
                assert_eq!(sender, Some(dest), "the reply names B");
                let at = expected
                    .iter()
                    .position(|v| *v == value_bytes)
                    .expect("a value A sent, once");
                expected.remove(at);
            }
            expected.is_empty().then_some(())
        },
    )
    .await;
    let took = start.elapsed();
    println!("{} round trips at {rtt:?}: {took:?}", values.len());
    assert!(took >= rtt, "{took:?}");
    // Nothing fails afterwards (the engine's own request timers included).
    run_for(&mut [a, b], rtt * 2, |i, e| {
        if let SwarmEvent::Behaviour(event) = e {
            no_loss(i, &event);
        }
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_joins_the_registry_across_a_300ms_link() {
    let control = LinkControl::default();
    let shape = Shape::wan(RTT_300, 10);
    let registry_key = Keypair::generate_ed25519();
    let registry_peer = registry_key.public().to_peer_id();
    let d = Arc::new(deployment(&registry_peer, 1));
    let swarm = |key: &Keypair, registry: bool| {
        let (k, d) = (key.clone(), Arc::clone(&d));
        let behaviour = Behaviour::new(
            move || {
                Ok::<_, Infallible>(if registry {
                    registry_node(&k, &d)
                } else {
                    client_node(&k, &d)
                })
            },
            Config::default(),
        )
        .expect("the Node starts");
        shaped_swarm(key.clone(), behaviour, shape, &control)
    };
    let mut registry = swarm(&registry_key, true);
    let client_key = Keypair::generate_ed25519();
    let client_peer = client_key.public().to_peer_id();
    let mut client = swarm(&client_key, false);
    let address = common::listen(&mut registry).await;
    client.add_peer_address(registry_peer, address);

    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);
    loop {
        run_for(
            &mut [&mut registry, &mut client],
            Duration::from_millis(100),
            |i, e| {
                if let SwarmEvent::Behaviour(event) = e {
                    no_loss(i, &event);
                }
            },
        )
        .await;
        let joined = on_node(&registry, registry_view).contains(&client_peer)
            && on_node(&client, |n| client_state(n).last_assigned_ttl_ns != 0);
        if joined {
            break;
        }
        assert!(Instant::now() < deadline, "the client did not join in 30 s");
    }
    let took = start.elapsed();
    println!("registry join at 300 ms: {took:?}");
    // Announce out, Handshake back: at least a round trip (plus the dial's).
    assert!(took >= RTT_300, "{took:?}");
}

/// The request timeout bounds a stall, not an exchange: a value that takes
/// four times the request timeout to cross a 1 Mbit/s link arrives, since
/// its bytes keep moving.
#[tokio::test(flavor = "current_thread")]
async fn a_value_slower_than_the_request_timeout_arrives_while_it_moves() {
    let timeout = Duration::from_secs(2);
    let (model, targets) = compile(Ping);
    let control = LinkControl::default();
    let shape = Shape {
        one_way: Duration::from_millis(10),
        bits_per_sec: Some(1_000_000),
        loss: 0.0,
    };
    let mut swarms = targets[..2].iter().map(|target| {
        let key = Keypair::generate_ed25519();
        let config = Config::default().with_request_timeout(timeout);
        let behaviour = bb_behaviour(&key, &model, &[target], config);
        shaped_swarm(key, behaviour, shape, &control)
    });
    let (mut a, mut b) = (swarms.next().unwrap(), swarms.next().unwrap());
    connect(&mut a, &mut b).await;
    // 1 MiB at 1 Mbit/s: 8.4 s on the wire.
    let took = ping_all(&mut a, &mut b, &targets[0], &[payload(1 << 20)]).await;
    println!("1 MiB at 1 Mbit/s with a request timeout of {timeout:?}: {took:?}");
    assert!(took > timeout * 4, "{took:?}");
}
