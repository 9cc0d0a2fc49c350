//! Equal values are not duplicates: two peers sending the same bytes, and
//! one peer sending the same bytes again, each deliver every value.

mod common;

use std::task::Poll;
use std::time::Duration;

use bb_libp2p::{Behaviour, Config, EngineStep, Event, IngressEvent};
use common::models::{bare_envelope, bb_swarm, compile, install, send_value, wire_envelope, Ping};
use common::{connect, until};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::PeerId;

/// Two senders send the same value, and each sends it twice: the receiver
/// outputs it four times, twice from each.
#[tokio::test(flavor = "current_thread")]
async fn equal_values_from_two_senders_and_again_all_arrive() {
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm(&model, &[&targets[0]]);
    let mut b = bb_swarm(&model, &[&targets[0]]);
    let mut r = bb_swarm(&model, &[&targets[1]]);
    connect(&mut a, &mut r).await;
    connect(&mut b, &mut r).await;
    let (pa, pb, pr) = (*a.local_peer_id(), *b.local_peer_id(), *r.local_peer_id());
    let mut sent = Vec::new();
    for _ in 0..2 {
        sent.push(send_value(&a.behaviour().handle(), &targets[0], pr, b"0.5"));
        sent.push(send_value(&b.behaviour().handle(), &targets[0], pr, b"0.5"));
    }
    assert!(
        sent.windows(2).all(|w| w[0] == w[1]),
        "the same bytes each time"
    );
    let mut heard: Vec<PeerId> = Vec::new();
    until(
        &mut [&mut r, &mut a, &mut b],
        Duration::from_secs(10),
        "four values",
        |i, e| {
            match e {
                SwarmEvent::Behaviour(Event::AppEvent {
                    sender,
                    value_bytes,
                    ..
                }) if i == 0 => {
                    assert_eq!(value_bytes, sent[0]);
                    heard.push(sender.expect("from a peer"));
                }
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => panic!("{reason}"),
                SwarmEvent::Behaviour(Event::Engine(step)) => panic!("{step:?}"),
                _ => {}
            }
            (heard.len() == 4).then_some(())
        },
    )
    .await;
    heard.sort();
    let mut want = vec![pa, pa, pb, pb];
    want.sort();
    assert_eq!(heard, want);
}

/// The same envelope from the same peer twice (a restarted sender sending
/// again what its snapshot carried) is still output once; the same bytes
/// from another peer are output too.
#[tokio::test(flavor = "current_thread")]
async fn a_second_delivery_of_one_envelope_is_dropped() {
    let (model, targets) = compile(Ping);
    let mut r = bb_swarm(&model, &[&targets[1]]);
    let envelope = wire_envelope(&model, &targets[0], *r.local_peer_id(), b"once");
    let (a, b) = (PeerId::random(), PeerId::random());
    for from in [a, a, b] {
        r.behaviour_mut()
            .inject_envelope(from, envelope.clone())
            .expect("taken");
    }
    let (mut outputs, duplicates) = outputs_of(&mut r).await;
    outputs.sort();
    let mut want = vec![Some(a), Some(b)];
    want.sort();
    assert_eq!(outputs, want);
    assert_eq!(duplicates, 1);
}

/// A receiver restarted from its snapshot drops an envelope it took before
/// the snapshot (a sender whose acknowledgement was lost sends it again):
/// the keys of what it took are in the snapshot.
#[tokio::test(flavor = "current_thread")]
async fn a_receiver_restarted_from_its_snapshot_does_not_take_twice() {
    let (model, targets) = compile(Ping);
    let key = Keypair::generate_ed25519();
    let receiver = |snapshot: Option<bb_libp2p::NodeSnapshot>| {
        let (k, m, t) = (key.clone(), model.clone(), targets[1].clone());
        let behaviour = Behaviour::new(
            move || {
                let mut node = install(&k, &m, &[&t]);
                if let Some(snapshot) = snapshot {
                    Behaviour::restore(&mut node, snapshot).expect("restores");
                }
                Ok::<_, std::convert::Infallible>(node)
            },
            Config::default(),
        )
        .expect("the Node starts");
        common::memory_swarm(key.clone(), behaviour)
    };
    let mut r = receiver(None);
    let envelope = wire_envelope(&model, &targets[0], *r.local_peer_id(), b"once");
    let (a, b) = (PeerId::random(), PeerId::random());
    // Before the restart; after it; after a restart from the restored
    // receiver's own snapshot (which carries the keys on).
    let rounds = [
        (vec![a], (vec![Some(a)], 0)),
        (vec![a, b], (vec![Some(b)], 1)),
        (vec![a, b], (vec![], 2)),
    ];
    for (round, (senders, want)) in rounds.into_iter().enumerate() {
        if round > 0 {
            let snapshot = r.behaviour().snapshot().await.expect("a snapshot");
            drop(r);
            r = receiver(Some(snapshot));
        }
        for from in senders {
            r.behaviour_mut()
                .inject_envelope(from, envelope.clone())
                .expect("taken");
        }
        assert_eq!(outputs_of(&mut r).await, want, "round {round}");
    }
}

/// The senders of what `r` outputs within 300 ms, and how many envelopes
/// its dedup gate dropped.
async fn outputs_of(r: &mut libp2p::Swarm<Behaviour>) -> (Vec<Option<PeerId>>, usize) {
    let (mut outputs, mut duplicates) = (Vec::new(), 0);
    common::run_for(&mut [r], Duration::from_millis(300), |_, e| match e {
        SwarmEvent::Behaviour(Event::AppEvent { sender, .. }) => outputs.push(sender),
        SwarmEvent::Behaviour(Event::Engine(EngineStep::OpFailed { error, .. }))
            if error.detail.contains("duplicate") =>
        {
            duplicates += 1
        }
        SwarmEvent::NewListenAddr { .. } => {}
        other => panic!("{other:?}"),
    })
    .await;
    (outputs, duplicates)
}

/// Guards `compat::dedup`: on bare Nodes, a receiver given the same
/// envelope from two peers outputs it once. If this fails, upstream's
/// receive dedup gate no longer keys on the payload alone.
#[test]
fn upstream_dedup_still_keys_on_the_payload() {
    let (model, targets) = compile(Ping);
    let kr = Keypair::generate_ed25519();
    let mut receiver = install(&kr, &model, &[&targets[1]]);
    let pr = kr.public().to_peer_id();
    let envelope = bare_envelope(&model, &targets[0], &mut receiver, pr, b"same");
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for from in [PeerId::random(), PeerId::random()] {
        let event = IngressEvent::EnvelopeFrom {
            src_peer: bb_libp2p::to_engine_peer(&from),
            envelope: envelope.clone(),
            src_observed_address: None,
        };
        receiver.ingress_handle().push(event).unwrap();
    }
    let mut outputs = 0;
    for _ in 0..4 {
        if let Poll::Ready(steps) = receiver.poll(&mut cx) {
            outputs += steps
                .iter()
                .filter(|s| matches!(s, EngineStep::AppEvent { .. }))
                .count();
        }
    }
    assert_eq!(outputs, 1, "upstream took an equal value twice");
}
