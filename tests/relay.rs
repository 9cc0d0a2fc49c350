//! Through a relay (libp2p's circuit relay v2, on the memory transport, as
//! rust-libp2p's own relay tests run it): small values cross a circuit; a
//! value too large for one waits for a direct connection and fails with
//! `relayed_limit` when none comes; once a direct connection appears it goes
//! there, and the relayed connection is closed.

mod common;

use std::time::Duration;

use bb_libp2p::{Behaviour, Config, Event, SendFailure};
use common::models::{bb_behaviour, compile, send_value, Ping};
use common::until;
use futures::StreamExt;
use libp2p::core::transport::{MemoryTransport, OrTransport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{plaintext, relay, yamux, Multiaddr, Swarm, Transport};

/// A peer: the relay client beside the crate's behaviour.
#[derive(NetworkBehaviour)]
struct Peer {
    relay: relay::client::Behaviour,
    bb: Behaviour,
}

fn swarm_config() -> libp2p::swarm::Config {
    libp2p::swarm::Config::with_tokio_executor()
        .with_idle_connection_timeout(Duration::from_secs(3600))
}

fn peer_swarm(key: Keypair, bb: Behaviour) -> Swarm<Peer> {
    let peer = key.public().to_peer_id();
    let (relay_transport, relay) = relay::client::new(peer);
    let transport = OrTransport::new(relay_transport, MemoryTransport::default())
        .upgrade(Version::V1)
        .authenticate(plaintext::Config::new(&key))
        .multiplex(yamux::Config::default())
        .boxed();
    Swarm::new(transport, Peer { relay, bb }, peer, swarm_config())
}

/// Starts a relay server on its own task; returns its address with its id.
fn spawn_relay() -> Multiaddr {
    let key = Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let transport = MemoryTransport::default()
        .upgrade(Version::V1)
        .authenticate(plaintext::Config::new(&key))
        .multiplex(yamux::Config::default())
        .boxed();
    let behaviour = relay::Behaviour::new(peer, relay::Config::default());
    let mut swarm = Swarm::new(transport, behaviour, peer, swarm_config());
    let address: Multiaddr = Protocol::Memory(rand_port()).into();
    swarm.listen_on(address.clone()).unwrap();
    // A relay serves circuits once it has an external address.
    swarm.add_external_address(address.clone());
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    address.with(Protocol::P2p(peer))
}

fn rand_port() -> u64 {
    // Distinct per test process and call; memory ports are process-wide.
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    0x5eed_0000_0000 + u64::from(std::process::id()) * 1000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The listener L, reachable through the relay at the returned circuit
/// address and directly at the other returned address; the dialer D
/// connected to L through the circuit.
async fn through_a_relay(config: Config) -> (Swarm<Peer>, Swarm<Peer>, Multiaddr, String) {
    let (d, l, direct, _, sender) = through_a_relay_at(config).await;
    (d, l, direct, sender)
}

/// [`through_a_relay`], with the circuit address too.
async fn through_a_relay_at(
    config: Config,
) -> (Swarm<Peer>, Swarm<Peer>, Multiaddr, Multiaddr, String) {
    let relay = spawn_relay();
    let (model, targets) = compile(Ping);
    let make = |target: &str| {
        let key = Keypair::generate_ed25519();
        let bb = bb_behaviour(&key, &model, &[target], config.clone());
        peer_swarm(key, bb)
    };
    let (mut d, mut l) = (make(&targets[0]), make(&targets[1]));
    let pl = *l.local_peer_id();
    let direct: Multiaddr = Protocol::Memory(rand_port()).into();
    l.listen_on(direct.clone()).unwrap();
    l.listen_on(relay.clone().with(Protocol::P2pCircuit))
        .unwrap();
    until(
        &mut [&mut l],
        Duration::from_secs(10),
        "a reservation",
        |_, e| {
            matches!(
                e,
                SwarmEvent::Behaviour(PeerEvent::Relay(
                    relay::client::Event::ReservationReqAccepted { .. }
                ))
            )
            .then_some(())
        },
    )
    .await;
    let circuit = relay.with(Protocol::P2pCircuit).with(Protocol::P2p(pl));
    d.dial(circuit.clone()).unwrap();
    until(
        &mut [&mut d, &mut l],
        Duration::from_secs(10),
        "a relayed connection",
        |i, e| match e {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } if i == 0 && peer_id == pl => {
                assert!(endpoint.is_relayed(), "{endpoint:?}");
                Some(())
            }
            _ => None,
        },
    )
    .await;
    (d, l, direct, circuit, targets[0].clone())
}

/// Waits for L to output a value and D to see it acknowledged; fails on
/// any send failure.
async fn delivered(d: &mut Swarm<Peer>, l: &mut Swarm<Peer>, value: &[u8]) {
    let mut acked = false;
    let mut output = false;
    until(&mut [d, l], Duration::from_secs(20), "delivery", |i, e| {
        if let SwarmEvent::Behaviour(PeerEvent::Bb(event)) = e {
            match event {
                Event::EnvelopeAcknowledged { .. } if i == 0 => acked = true,
                Event::AppEvent { value_bytes, .. } if i == 1 => {
                    assert_eq!(value_bytes, value);
                    output = true;
                }
                Event::SendFailed { reason, .. } => panic!("swarm {i}: {reason}"),
                _ => {}
            }
        }
        (acked && output).then_some(())
    })
    .await;
}

fn large() -> Vec<u8> {
    (0..100 * 1024).map(|i| (i % 253) as u8).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_small_value_crosses_a_circuit() {
    let (mut d, mut l, _, sender) = through_a_relay(Config::default()).await;
    let pl = *l.local_peer_id();
    let value = send_value(
        &d.behaviour().bb.handle(),
        &sender,
        pl,
        b"through the relay",
    );
    delivered(&mut d, &mut l, &value).await;
    assert!(d.is_connected(&pl));
}

#[tokio::test(flavor = "current_thread")]
async fn a_large_value_is_refused_on_a_circuit_with_its_label() {
    let wait = Duration::from_millis(500);
    let config = Config::default().with_direct_connection_wait(wait);
    let (mut d, mut l, _, sender) = through_a_relay(config).await;
    let pl = *l.local_peer_id();
    send_value(&d.behaviour().bb.handle(), &sender, pl, &large());
    let reason = until(
        &mut [&mut d, &mut l],
        Duration::from_secs(10),
        "SendFailed",
        |i, e| match e {
            SwarmEvent::Behaviour(PeerEvent::Bb(Event::SendFailed { peer, reason, .. })) => {
                assert_eq!((i, peer), (0, Some(pl)));
                Some(reason)
            }
            SwarmEvent::Behaviour(PeerEvent::Bb(Event::AppEvent { .. })) => {
                panic!("the large value crossed the circuit")
            }
            _ => None,
        },
    )
    .await;
    assert_eq!(reason.label(), "relayed_limit", "{reason}");
    assert!(!reason.may_have_been_delivered(), "nothing was sent");
    let SendFailure::RelayedLimit {
        size,
        limit,
        waited,
    } = reason
    else {
        unreachable!()
    };
    assert!(size > 100 * 1024, "{size}");
    assert_eq!((limit, waited), (64 * 1024, wait));
    // The circuit still carries small values.
    let value = send_value(&d.behaviour().bb.handle(), &sender, pl, b"small");
    delivered(&mut d, &mut l, &value).await;
}

#[tokio::test(flavor = "current_thread")]
async fn once_a_direct_connection_appears_the_value_goes_direct() {
    let (mut d, mut l, direct, sender) = through_a_relay(Config::default()).await;
    let pl = *l.local_peer_id();
    let value = send_value(&d.behaviour().bb.handle(), &sender, pl, &large());
    // It waits while only the circuit is there.
    common::run_for(&mut [&mut d, &mut l], Duration::from_millis(300), |i, e| {
        if let SwarmEvent::Behaviour(PeerEvent::Bb(
            e @ (Event::AppEvent { .. } | Event::SendFailed { .. }),
        )) = e
        {
            panic!("swarm {i} before a direct connection: {e:?}");
        }
    })
    .await;
    assert_eq!(d.behaviour().bb.envelopes_queued(), 1);
    // A direct connection (as dcutr would make): the value goes, and the
    // relayed connection is closed.
    d.dial(direct.with(Protocol::P2p(pl))).unwrap();
    let (mut relayed_closed, mut acked, mut output) = (false, false, false);
    until(
        &mut [&mut d, &mut l],
        Duration::from_secs(20),
        "direct delivery",
        |i, e| {
            match e {
                SwarmEvent::ConnectionClosed {
                    peer_id, endpoint, ..
                } if i == 0 && peer_id == pl => {
                    assert!(endpoint.is_relayed(), "the direct connection closed");
                    relayed_closed = true;
                }
                SwarmEvent::Behaviour(PeerEvent::Bb(Event::EnvelopeAcknowledged { .. }))
                    if i == 0 =>
                {
                    acked = true
                }
                SwarmEvent::Behaviour(PeerEvent::Bb(Event::AppEvent { value_bytes, .. }))
                    if i == 1 =>
                {
                    assert_eq!(value_bytes, value);
                    output = true;
                }
                SwarmEvent::Behaviour(PeerEvent::Bb(Event::SendFailed { reason, .. })) => {
                    panic!("swarm {i}: {reason}")
                }
                _ => {}
            }
            (relayed_closed && acked && output).then_some(())
        },
    )
    .await;
    assert!(d.is_connected(&pl));
}

/// A relayed connection that comes up beside a direct one is closed: it
/// would carry a share of the requests (request-response spreads them over
/// every connection), large ones included.
#[tokio::test(flavor = "current_thread")]
async fn a_relayed_connection_beside_a_direct_one_is_closed() {
    let (mut d, mut l, direct, circuit, _) = through_a_relay_at(Config::default()).await;
    let pl = *l.local_peer_id();
    d.dial(direct.with(Protocol::P2p(pl))).unwrap();
    let mut relayed_closed = 0;
    until(
        &mut [&mut d, &mut l],
        Duration::from_secs(10),
        "the first relayed connection to close",
        |i, e| {
            if let SwarmEvent::ConnectionClosed { endpoint, .. } = e {
                relayed_closed += usize::from(i == 0 && endpoint.is_relayed());
            }
            (relayed_closed == 1).then_some(())
        },
    )
    .await;
    // Through the relay again, beside the direct connection.
    d.dial(circuit).unwrap();
    let (mut opened, mut closed) = (false, false);
    until(
        &mut [&mut d, &mut l],
        Duration::from_secs(10),
        "the new relayed connection to close",
        |i, e| {
            match e {
                SwarmEvent::ConnectionEstablished { endpoint, .. }
                    if i == 0 && endpoint.is_relayed() =>
                {
                    opened = true
                }
                SwarmEvent::ConnectionClosed { endpoint, .. } if i == 0 => {
                    assert!(endpoint.is_relayed(), "the direct connection closed");
                    closed = true;
                }
                _ => {}
            }
            (opened && closed).then_some(())
        },
    )
    .await;
    assert!(d.is_connected(&pl));
}

/// `examples/relayed.rs` end to end: a relay process, a listener that
/// knows only the relay, and a dialer that knows only the circuit address
/// exchange values; the large value comes back over a direct connection
/// (dcutr, which on loopback succeeds) or fails with its label.
#[test]
fn the_relayed_example_exchanges_values_through_a_relay() {
    let stdout = common::run_example("relayed");
    for line in [
        "[listener] received \"hello\"",
        "[dialer] reply \"hello\"",
        "[dialer] reply \"the relay\"",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in\n{stdout}"
        );
    }
    assert!(
        stdout.contains("[dialer] 262144 bytes came back")
            || stdout.contains("relayed_limit")
            || stdout.contains("a relayed connection carries"),
        "{stdout}"
    );
}
