//! Values sent with `g.net_out` on one Node arrive on another, over libp2p.

mod common;

use std::time::Duration;

use bb_libp2p::{Behaviour, Event};
use bb_runtime::engine::EngineStep;
use common::models::{
    bb_swarm, bytes_value, compile, install, invoke_send, merge, send_value, Other, Ping, RoundTrip,
};
use common::{connect, run_for, until};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::Swarm;

/// Engine steps that mean a fill was lost.
fn is_wire_failure(event: &SwarmEvent<Event>) -> bool {
    matches!(
        event,
        SwarmEvent::Behaviour(Event::Engine(
            EngineStep::WireDecodeFailed { .. } | EngineStep::WireReceiveFailed { .. }
        ))
    )
}

/// Sends `payload` from `a` (which installed Ping's sender) to `b` and
/// returns what `b` emitted on `y`.
async fn ping(
    a: &mut Swarm<Behaviour>,
    b: &mut Swarm<Behaviour>,
    sender: &str,
    payload: &[u8],
) -> Vec<u8> {
    ping_acked(a, b, sender, payload, &mut false).await
}

/// [`ping`], setting `acked` when A sees the acknowledgement meanwhile (the
/// receiver acknowledges once its engine's ingress took the envelope, which
/// may be before its engine thread outputs the value).
async fn ping_acked(
    a: &mut Swarm<Behaviour>,
    b: &mut Swarm<Behaviour>,
    sender: &str,
    payload: &[u8],
    acked: &mut bool,
) -> Vec<u8> {
    send_value(&a.behaviour().handle(), sender, *b.local_peer_id(), payload);
    until(
        &mut [a, b],
        Duration::from_secs(10),
        "AppEvent y on B",
        |i, e| {
            assert!(!is_wire_failure(&e), "swarm {i} lost a fill: {e:?}");
            *acked |= matches!(e, SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }));
            match e {
                SwarmEvent::Behaviour(Event::AppEvent {
                    topic, value_bytes, ..
                }) if i == 1 => {
                    assert_eq!(topic, "y");
                    Some(value_bytes)
                }
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                    panic!("send failed: {reason}")
                }
                _ => None,
            }
        },
    )
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn value_crosses_to_the_receiving_partition() {
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm(&model, &[&targets[0]]);
    let mut b = bb_swarm(&model, &[&targets[1]]);
    connect(&mut a, &mut b).await;

    let mut acked = false;
    let got = ping_acked(&mut a, &mut b, &targets[0], &[1, 2, 3, 4], &mut acked).await;
    // bincode(BytesValue([1, 2, 3, 4])): u64 length, then the bytes.
    assert_eq!(got, [4, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);

    // The acknowledgement reaches A, and neither side reports a lost fill
    // (the Send's suffix-less trigger fill included) for a while after.
    run_for(&mut [&mut a, &mut b], Duration::from_millis(300), |i, e| {
        assert!(!is_wire_failure(&e), "swarm {i} lost a fill: {e:?}");
        acked |= matches!(e, SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }));
    })
    .await;
    assert!(acked, "A saw no acknowledgement");
    // One envelope each way of the count; what A sent is what B took.
    let (sent, received) = (a.behaviour().wire_stats(), b.behaviour().wire_stats());
    assert_eq!((sent.envelopes_sent, sent.envelopes_received), (1, 0));
    assert_eq!(
        (received.envelopes_sent, received.envelopes_received),
        (0, 1)
    );
    assert_eq!(sent.bytes_sent, received.bytes_received);
    assert!(sent.bytes_sent > 12, "{sent:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn round_trip_returns_to_the_sender() {
    let (model, targets) = compile(RoundTrip);
    let mut a = bb_swarm(&model, &[&targets[0]]);
    let mut b = bb_swarm(&model, &[&targets[1]]);
    connect(&mut a, &mut b).await;

    send_value(
        &a.behaviour().handle(),
        &targets[0],
        *b.local_peer_id(),
        b"there and back",
    );
    let got = until(
        &mut [&mut a, &mut b],
        Duration::from_secs(10),
        "reply on A",
        |i, e| {
            assert!(!is_wire_failure(&e), "swarm {i} lost a fill: {e:?}");
            match e {
                SwarmEvent::Behaviour(Event::AppEvent {
                    topic, value_bytes, ..
                }) => {
                    assert_eq!((i, topic.as_str()), (0, "y"), "only A outputs y");
                    Some(value_bytes)
                }
                _ => None,
            }
        },
    )
    .await;
    assert_eq!(got, bytes_value(b"there and back"));
}

/// The receiver's site ids differ with what it installed and in which
/// order; delivery must not.
#[tokio::test(flavor = "current_thread")]
async fn delivery_does_not_depend_on_install_order() {
    let (ping_model, ping_targets) = compile(Ping);
    let (other_model, other_targets) = compile(Other);
    let merged = merge(ping_model.clone(), &other_model);
    let (send, recv, other) = (&ping_targets[0], &ping_targets[1], &other_targets[0]);

    // Unrelated Nodes installed first in this process.
    let _unrelated: Vec<_> = (0..3)
        .map(|_| install(&Keypair::generate_ed25519(), &merged, &[other, recv]))
        .collect();

    let cases: [(&str, Vec<&str>); 3] = [
        ("receiver installed alone", vec![recv]),
        ("receiver installed last", vec![other, recv]),
        ("receiver installed first", vec![recv, other]),
    ];
    for (n, (label, receiver_targets)) in cases.into_iter().enumerate() {
        let mut a = bb_swarm(&ping_model, &[send]);
        let mut b = bb_swarm(&merged, &receiver_targets);
        connect(&mut a, &mut b).await;
        let payload = [n as u8, 42];
        let got = ping(&mut a, &mut b, send, &payload).await;
        assert_eq!(got, bytes_value(&payload), "{label}");
    }
}

/// Guards the engine limitation `bb_libp2p::sites` covers. If this fails,
/// bytesandbrains now stamps data-plane suffixes itself: check what it
/// stamps and retire the bridge.
#[test]
fn upstream_still_leaves_send_suffixes_empty() {
    let (model, targets) = compile(Ping);
    let key = Keypair::generate_ed25519();
    let mut node = install(&key, &model, &[&targets[0]]);
    let engine = node.engine_install_handle();
    let send = &engine.graph(&targets[0]).unwrap().function.node;
    let stamped: Vec<_> = send
        .iter()
        .flat_map(|n| &n.attribute)
        .filter(|a| a.name.starts_with(bb_ir::keys::DEST_SUFFIX_ATTR_PREFIX))
        .map(|a| a.name.clone())
        .collect();
    assert!(
        stamped.is_empty(),
        "bytesandbrains now stamps {stamped:?} on wire.Send: revisit src/compat/sites.rs"
    );

    let other = libp2p::PeerId::random();
    node.add_peer(
        bb_libp2p::to_engine_peer(&other),
        vec![bb_libp2p::p2p_address(&other)],
    )
    .unwrap();
    invoke_send(&mut node, &targets[0], other, &[9]);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut suffixes = Vec::new();
    for _ in 0..10 {
        if let std::task::Poll::Ready(steps) = node.poll(&mut cx) {
            for step in steps {
                if let EngineStep::SendEnvelope(env) = step {
                    suffixes.extend(env.fills.into_iter().map(|f| f.dest_suffix));
                }
            }
        }
    }
    assert_eq!(
        suffixes,
        vec![Vec::<u8>::new(), Vec::new()],
        "wire.Send now emits data-plane suffixes itself: revisit src/compat/sites.rs"
    );
}

/// A peer the engine can resolve but the swarm is not connected to is
/// dialled with the addresses libp2p knows for it.
#[tokio::test(flavor = "current_thread")]
async fn unconnected_peer_is_dialled() {
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm(&model, &[&targets[0]]);
    let mut b = bb_swarm(&model, &[&targets[1]]);
    let addr = common::listen(&mut b).await;
    let dest = *b.local_peer_id();
    a.add_peer_address(dest, addr);
    common::on_node(&a, move |node| {
        node.add_peer(
            bb_libp2p::to_engine_peer(&dest),
            vec![bb_libp2p::p2p_address(&dest)],
        )
    })
    .unwrap();
    assert!(!a.is_connected(&dest));
    let got = ping(&mut a, &mut b, &targets[0], b"dialled").await;
    assert_eq!(got, bytes_value(b"dialled"));
}
