//! `NodeHandle::delivered`: a future for "every envelope sent so far has its
//! outcome", so an application need not poll counters or sleep.

mod common;

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use bb_libp2p::{EngineStopped, Event};
use common::connect;
use common::models::{bb_swarm, compile, numbered, send_values, Ping};
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;

/// 30 values to a peer and 5 to a peer nobody can reach: the future
/// resolves once all 35 have their outcome, not before.
#[tokio::test(flavor = "current_thread")]
async fn delivered_resolves_once_every_envelope_has_its_outcome() {
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm(&model, &[&targets[0]]);
    let mut b = bb_swarm(&model, &[&targets[1]]);
    connect(&mut a, &mut b).await;
    let nowhere = libp2p::PeerId::random();
    a.add_peer_address(nowhere, "/memory/4343434343".parse().unwrap());
    let handle = a.behaviour().handle();
    send_values(&handle, &targets[0], *b.local_peer_id(), numbered(30));
    send_values(&handle, &targets[0], nowhere, numbered(5));
    let mut delivered = pin!(handle.delivered());
    let (mut acked, mut failed) = (0, 0);
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        poll_fn(|cx| {
            while let Poll::Ready(Some(_)) = b.poll_next_unpin(cx) {}
            while let Poll::Ready(Some(e)) = a.poll_next_unpin(cx) {
                match e {
                    SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => acked += 1,
                    SwarmEvent::Behaviour(Event::SendFailed { .. }) => failed += 1,
                    _ => {}
                }
            }
            let outcomes_before = acked + failed;
            match delivered.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready((r, outcomes_before)),
                Poll::Pending => {
                    assert!(acked + failed < 35, "all 35 ended and it did not resolve");
                    Poll::Pending
                }
            }
        }),
    )
    .await
    .expect("delivered resolved");
    assert_eq!(result.0, Ok(()));
    // Every outcome was reported by the time it resolved (the last ones
    // may still be on their way out of the behaviour).
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), a.next()).await {
        match e {
            SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => acked += 1,
            SwarmEvent::Behaviour(Event::SendFailed { .. }) => failed += 1,
            _ => {}
        }
    }
    assert_eq!((acked, failed), (30, 5));
    assert!(result.1 <= 35);
}

/// Waiting on a Node whose swarm is dropped ends with `EngineStopped`.
#[tokio::test(flavor = "current_thread")]
async fn delivered_ends_when_the_behaviour_is_dropped() {
    let (model, targets) = compile(Ping);
    let a = bb_swarm(&model, &[&targets[0]]);
    let handle = a.behaviour().handle();
    // An envelope nobody will ever carry: A's swarm is never polled.
    let dest = libp2p::PeerId::random();
    handle
        .with_node_blocking(move |node| {
            node.add_peer(
                bb_libp2p::to_engine_peer(&dest),
                vec![bb_libp2p::p2p_address(&dest)],
            )
        })
        .unwrap()
        .unwrap();
    send_values(&handle, &targets[0], dest, numbered(1));
    let waiting = tokio::spawn({
        let handle = handle.clone();
        async move { handle.delivered().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    drop(a);
    let ended = tokio::time::timeout(Duration::from_secs(5), waiting).await;
    assert_eq!(ended.expect("it ends").unwrap(), Err(EngineStopped));
}
