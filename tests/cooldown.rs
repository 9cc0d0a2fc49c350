//! A value from a peer this Node is backing off from (it failed to reach
//! that peer a moment ago) is still processed once the transport
//! acknowledged it: the link that failed is not the one it came over.

mod common;

use std::task::Poll;
use std::time::Duration;

use bb_libp2p::{to_engine_peer, EngineStep, Event, IngressEvent, Node};
use common::models::{bare_envelope, bb_swarm, compile, install, wire_envelope, Ping};
use common::{on_node, run_for};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::PeerId;

/// Records failures to reach `peer` in `node`'s back-off table, enough for
/// a back-off of seconds.
fn cooling_down(node: &mut Node, peer: PeerId) {
    let engine = node.engine_install_handle();
    let now = engine.framework.scheduler.now_ns();
    for _ in 0..10 {
        engine
            .framework
            .peer_state
            .backoff
            .record_failure(to_engine_peer(&peer), now);
    }
    assert!(!engine
        .framework
        .peer_state
        .backoff
        .should_retry(to_engine_peer(&peer), now));
}

#[tokio::test(flavor = "current_thread")]
async fn a_value_from_a_peer_cooling_down_is_processed() {
    let (model, targets) = compile(Ping);
    let mut r = bb_swarm(&model, &[&targets[1]]);
    let a = PeerId::random();
    on_node(&r, move |node| cooling_down(node, a));
    let envelope = wire_envelope(&model, &targets[0], *r.local_peer_id(), b"late");
    r.behaviour_mut()
        .inject_envelope(a, envelope)
        .expect("taken");
    let mut outputs = Vec::new();
    run_for(&mut [&mut r], Duration::from_millis(300), |_, e| match e {
        SwarmEvent::Behaviour(Event::AppEvent {
            sender,
            value_bytes,
            ..
        }) => outputs.push((sender, value_bytes)),
        SwarmEvent::Behaviour(e @ Event::Engine(EngineStep::OpFailed { .. })) => {
            panic!("the engine dropped it: {e:?}")
        }
        _ => {}
    })
    .await;
    assert_eq!(outputs, [(Some(a), bb_libp2p::values::bytes(b"late"))]);
}

/// Guards `compat::backoff_rx`: on a bare Node, a value from a peer in
/// back-off is dropped by the receive chain's back-off gate. If this fails,
/// upstream no longer drops it.
#[test]
fn upstream_backoff_gate_still_drops_inbound_values() {
    let (model, targets) = compile(Ping);
    let kr = Keypair::generate_ed25519();
    let mut receiver = install(&kr, &model, &[&targets[1]]);
    let pr = kr.public().to_peer_id();
    let envelope = bare_envelope(&model, &targets[0], &mut receiver, pr, b"late");
    let a = PeerId::random();
    cooling_down(&mut receiver, a);
    let event = IngressEvent::EnvelopeFrom {
        src_peer: to_engine_peer(&a),
        envelope,
        src_observed_address: None,
    };
    receiver.ingress_handle().push(event).unwrap();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let (mut outputs, mut cooldowns) = (0, 0);
    for _ in 0..4 {
        if let Poll::Ready(steps) = receiver.poll(&mut cx) {
            for step in steps {
                match step {
                    EngineStep::AppEvent { .. } => outputs += 1,
                    EngineStep::OpFailed { error, .. } if error.detail.contains("cooldown") => {
                        cooldowns += 1
                    }
                    _ => {}
                }
            }
        }
    }
    assert_eq!((outputs, cooldowns), (0, 1), "upstream no longer drops it");
}
