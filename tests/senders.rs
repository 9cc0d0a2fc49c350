//! Every `AppEvent` names the peer that sent its value, as the transport
//! authenticated it; a value computed on the Node itself names none.

mod common;

use std::collections::HashMap;
use std::task::Poll;
use std::time::Duration;

use bb_libp2p::{values, EngineStep, Event};
use common::models::{bb_swarm, compile, install, merge, send_value, Other, Ping};
use common::{connect, on_node, until};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::PeerId;

/// Two senders and a local invoke: each value arrives with its own sender.
#[tokio::test(flavor = "current_thread")]
async fn each_value_names_the_peer_that_sent_it() {
    let (ping, targets) = compile(Ping);
    let (other, other_targets) = compile(Other);
    let port = bb_libp2p::ports::port(&ping, "port").unwrap();
    assert_eq!((&port.sender, &port.receiver), (&targets[0], &targets[1]));
    let mut a = bb_swarm(&ping, &[&port.sender]);
    let mut b = bb_swarm(&ping, &[&port.sender]);
    // The receiver also runs a Module of its own.
    let both = merge(ping.clone(), &other);
    let mut r = bb_swarm(&both, &[&other_targets[0], &port.receiver]);
    connect(&mut a, &mut r).await;
    connect(&mut b, &mut r).await;
    let (pa, pb, pr) = (*a.local_peer_id(), *b.local_peer_id(), *r.local_peer_id());

    let mut expected: HashMap<Vec<u8>, Option<PeerId>> = HashMap::new();
    for i in 0..3u8 {
        for (swarm, name, peer) in [(&a, b"from a", pa), (&b, b"from b", pb)] {
            let mut payload = name.to_vec();
            payload.push(i);
            let sent = send_value(&swarm.behaviour().handle(), &port.sender, pr, &payload);
            expected.insert(sent, Some(peer));
        }
        let local = values::bytes(&[b'l', i]);
        expected.insert(local.clone(), None);
        let target = other_targets[0].clone();
        on_node(&r, move |node| {
            node.invoke(&target, &[("a", &local)]).map(|_| ())
        })
        .unwrap();
    }

    let mut heard: HashMap<Vec<u8>, Option<PeerId>> = HashMap::new();
    until(
        &mut [&mut r, &mut a, &mut b],
        Duration::from_secs(10),
        "nine values",
        |i, e| {
            match e {
                SwarmEvent::Behaviour(Event::AppEvent {
                    sender,
                    value_bytes,
                    ..
                }) if i == 0 => {
                    assert!(heard.insert(value_bytes, sender).is_none(), "a value twice");
                }
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => panic!("{reason}"),
                _ => {}
            }
            (heard.len() == expected.len()).then_some(())
        },
    )
    .await;
    assert_eq!(heard, expected);
}

/// Guards `compat::senders`: the engine's `AppEvent` still has exactly
/// these fields, and leaves `module_name` empty. A new field (a sender of
/// its own) fails to compile here.
#[test]
fn upstream_app_events_still_carry_no_sender() {
    let (model, targets) = compile(Other);
    let mut node = install(&Keypair::generate_ed25519(), &model, &[&targets[0]]);
    let value = values::bytes(b"local");
    node.invoke(&targets[0], &[("a", &value)]).unwrap();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut events = Vec::new();
    for _ in 0..4 {
        if let Poll::Ready(steps) = node.poll(&mut cx) {
            for step in steps {
                if let EngineStep::AppEvent {
                    module_name,
                    topic,
                    value_bytes,
                } = step
                {
                    events.push((module_name, topic, value_bytes));
                }
            }
        }
    }
    assert_eq!(events, vec![(String::new(), "o".to_string(), value)]);
}
