//! Every outbound envelope ends acknowledged or as a failure the engine and
//! the user both hear of.

mod common;

use std::time::{Duration, Instant};

use bb_libp2p::{Behaviour, Config, Event, RejectKind, Rejection, SendFailure};
use bb_runtime::engine::EngineStep;
use common::models::{bb_behaviour, compile, install, send_value, Other, Ping};
use common::{connect, memory_swarm, raw_wire, run_for, until};
use futures::channel::mpsc;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{request_response, Multiaddr, PeerId, Swarm};

const TIMEOUT: Duration = Duration::from_millis(800);

/// A Ping sender whose Node can resolve `dest` (as if the engine had
/// learned of it) and has sent it one value.
fn sender_to(dest: PeerId, config: Config) -> (Swarm<Behaviour>, Option<u64>) {
    let (mut a, id) = idle_sender_to(dest, config);
    send_one(&mut a, dest);
    (a, id)
}

fn idle_sender_to(dest: PeerId, config: Config) -> (Swarm<Behaviour>, Option<u64>) {
    let (model, targets) = compile(Ping);
    let key = Keypair::generate_ed25519();
    let node_key = key.clone();
    let behaviour = Behaviour::new(
        move || {
            let mut node = install(&node_key, &model, &[&targets[0]]);
            node.add_peer(
                bb_libp2p::to_engine_peer(&dest),
                vec![bb_libp2p::p2p_address(&dest)],
            )
            .map(|()| node)
        },
        config,
    )
    .expect("the Node starts");
    // The first Send of a Node mints wire request id 0: the engine tracks
    // it under that id, and the events name it.
    (memory_swarm(key, behaviour), Some(0))
}

fn send_one(a: &mut Swarm<Behaviour>, dest: PeerId) {
    let (_, targets) = compile(Ping);
    send_value(&a.behaviour().handle(), &targets[0], dest, b"lost?");
}

/// Connects `a` to `b`, sends one value and returns the failure `a` reports
/// for it, with the refusal `b` reported (the sender and the rejection).
async fn refused_by(
    a: &mut Swarm<Behaviour>,
    b: &mut Swarm<Behaviour>,
    dest: PeerId,
    wire_req_id: Option<u64>,
) -> (SendFailure, (PeerId, Rejection)) {
    connect(a, b).await;
    send_one(a, dest);
    let mut refused = None;
    let reason = until(&mut [a, b], TIMEOUT * 3, "SendFailed", |i, e| match e {
        SwarmEvent::Behaviour(Event::InboundRejected {
            peer, rejection, ..
        }) if i == 1 => {
            refused = Some((peer, rejection));
            None
        }
        SwarmEvent::Behaviour(Event::AppEvent { .. }) => panic!("delivered"),
        SwarmEvent::Behaviour(Event::SendFailed {
            peer,
            wire_req_id: id,
            reason,
            ..
        }) => {
            assert_eq!((peer, id), (Some(dest), wire_req_id));
            Some(reason)
        }
        _ => None,
    })
    .await;
    (reason, refused.expect("the receiver reported no refusal"))
}

/// Waits for the send failure, checks when it came, and that the engine took
/// it: the failed request leaves the engine's in-flight table, so no
/// `WireTimeout` follows for it.
async fn expect_failure(
    a: &mut Swarm<Behaviour>,
    dest: PeerId,
    wire_req_id: Option<u64>,
) -> SendFailure {
    let start = Instant::now();
    let reason = until(&mut [&mut *a], TIMEOUT * 3, "SendFailed", |_, e| match e {
        SwarmEvent::Behaviour(Event::SendFailed {
            peer,
            wire_req_id: id,
            reason,
            ..
        }) => {
            assert_eq!((peer, id), (Some(dest), wire_req_id));
            Some(reason)
        }
        SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => panic!("acknowledged"),
        _ => None,
    })
    .await;
    assert!(
        start.elapsed() < TIMEOUT + Duration::from_millis(500),
        "failure took {:?}",
        start.elapsed()
    );
    assert_eq!(a.behaviour().envelopes_in_flight(), 0);
    engine_took_the_failure(a).await;
    reason
}

/// The engine's in-flight entry for a request lives 100 ms (the Send's
/// compiled deadline) unless the transport reports it failed; a
/// `WireTimeout` after the failure means the report never arrived.
async fn engine_took_the_failure(a: &mut Swarm<Behaviour>) {
    run_for(&mut [a], Duration::from_millis(300), |_, e| {
        assert!(
            !matches!(
                e,
                SwarmEvent::Behaviour(Event::Engine(EngineStep::WireTimeout { .. }))
            ),
            "engine timed out a request it was told had failed"
        );
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn unreachable_peer_fails_with_dial_failure() {
    let dest = PeerId::random();
    let (mut a, id) = idle_sender_to(dest, Config::default().with_request_timeout(TIMEOUT));
    // An address where nothing listens: the dial is tried, and fails.
    a.add_peer_address(dest, "/memory/4040404".parse().unwrap());
    send_one(&mut a, dest);
    let reason = expect_failure(&mut a, dest, id).await;
    assert_eq!(reason, SendFailure::DialFailure);
    assert_eq!(reason.label(), "dial_failure");
}

/// Serves the crate's protocol but never answers; drops its connections
/// when `close` says so. Returns its address.
fn silent_server(
    mut close: mpsc::Receiver<()>,
) -> (PeerId, impl std::future::Future<Output = Multiaddr>) {
    let key = Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let mut swarm = memory_swarm(key, raw_wire(Duration::from_secs(60)));
    let (addr_tx, mut addr_rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut addr_tx = addr_tx;
        swarm.listen_on("/memory/0".parse().unwrap()).unwrap();
        let mut held = Vec::new();
        loop {
            tokio::select! {
                e = swarm.select_next_some() => match e {
                    SwarmEvent::NewListenAddr { address, .. } => addr_tx.try_send(address).unwrap(),
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Request { channel, .. }, ..
                    }) => held.push(channel),
                    _ => {}
                },
                _ = close.next() => return,
            }
        }
    });
    (peer, async move { addr_rx.next().await.unwrap() })
}

#[tokio::test(flavor = "current_thread")]
async fn unanswered_envelope_times_out() {
    let (_close, rx) = mpsc::channel(1);
    let (dest, addr) = silent_server(rx);
    let addr = addr.await;
    // The Send's 100 ms deadline would end it first (see
    // `envelope_deadline_bounds_the_wire`); the request timeout is what is
    // tested here, as the first attempt's failure (no delivery window).
    let (mut a, id) = sender_to(
        dest,
        Config::default()
            .with_request_timeout(TIMEOUT)
            .with_wire_deadlines(false)
            .with_delivery_window(Duration::ZERO),
    );
    a.add_peer_address(dest, addr);
    let reason = expect_failure(&mut a, dest, id).await;
    assert_eq!(reason, SendFailure::Timeout);
    assert_eq!(reason.label(), "timeout");
}

/// An unanswered envelope fails when its deadline budget (the engine's
/// 100 ms per hop) runs out, well before the request timeout.
#[tokio::test(flavor = "current_thread")]
async fn envelope_deadline_bounds_the_wire() {
    let (_close, rx) = mpsc::channel(1);
    let (dest, addr) = silent_server(rx);
    let addr = addr.await;
    let (mut a, id) = sender_to(
        dest,
        Config::default()
            .with_request_timeout(TIMEOUT)
            .with_wire_deadlines(true),
    );
    a.add_peer_address(dest, addr);
    let start = Instant::now();
    let reason = expect_failure(&mut a, dest, id).await;
    // The budget left when it went on the wire: the 100 ms, less the
    // moments it spent in the behaviour.
    let SendFailure::DeadlineExceeded { budget } = reason else {
        panic!("expected a deadline failure, got {reason:?}")
    };
    assert!(
        budget <= Duration::from_millis(100) && budget > Duration::from_millis(95),
        "{budget:?}"
    );
    assert_eq!(reason.label(), "deadline");
    // (`expect_failure` watches the engine for 300 ms after the failure.)
    assert!(
        start.elapsed() < TIMEOUT,
        "failed after {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn closed_connection_fails_the_envelope() {
    let (mut close, rx) = mpsc::channel(1);
    let (dest, addr) = silent_server(rx);
    let addr = addr.await;
    let (mut a, id) = sender_to(
        dest,
        Config::default()
            .with_request_timeout(Duration::from_secs(30))
            .with_wire_deadlines(false)
            .with_delivery_window(Duration::ZERO),
    );
    a.add_peer_address(dest, addr);
    // Once the request is out, the server goes away.
    until(
        &mut [&mut a],
        Duration::from_secs(5),
        "connection",
        |_, e| matches!(e, SwarmEvent::ConnectionEstablished { .. }).then_some(()),
    )
    .await;
    run_for(&mut [&mut a], Duration::from_millis(100), |_, _| {}).await;
    close.try_send(()).unwrap();
    let reason = expect_failure(&mut a, dest, id).await;
    assert_eq!(reason, SendFailure::ConnectionClosed);
    assert_eq!(reason.label(), "connection_closed");
}

#[tokio::test(flavor = "current_thread")]
async fn peer_without_the_protocol_is_unsupported() {
    let key = Keypair::generate_ed25519();
    let dest = key.public().to_peer_id();
    let mut other = memory_swarm(key, libp2p::ping::Behaviour::default());
    other.listen_on("/memory/0".parse().unwrap()).unwrap();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = other.select_next_some().await {
            break address;
        }
    };
    tokio::spawn(async move {
        loop {
            other.select_next_some().await;
        }
    });
    let (mut a, id) = sender_to(dest, Config::default().with_request_timeout(TIMEOUT));
    a.add_peer_address(dest, addr);
    let reason = expect_failure(&mut a, dest, id).await;
    assert_eq!(reason, SendFailure::UnsupportedProtocol);
    assert_eq!(reason.label(), "unsupported_protocol");
}

#[tokio::test(flavor = "current_thread")]
async fn rejecting_acknowledgement_is_a_nak() {
    let (model, targets) = compile(Ping);
    let kb = Keypair::generate_ed25519();
    let dest = kb.public().to_peer_id();
    let mut b = memory_swarm(
        kb.clone(),
        bb_behaviour(
            &kb,
            &model,
            &[&targets[1]],
            Config::default().with_max_envelope_bytes(16),
        ),
    );
    let (mut a, id) = idle_sender_to(dest, Config::default().with_request_timeout(TIMEOUT));
    let (reason, refused) = refused_by(&mut a, &mut b, dest, id).await;
    let SendFailure::Rejected(rejection) = &reason else {
        panic!("expected a rejection, got {reason:?}");
    };
    assert_eq!(rejection.kind, RejectKind::Oversize);
    assert!(
        rejection.detail.ends_with("cap is 16"),
        "{}",
        rejection.detail
    );
    assert_eq!(reason.label(), "nak");
    assert_eq!(refused, (*a.local_peer_id(), rejection.clone()));
    engine_took_the_failure(&mut a).await;
}

/// A value for a port the receiving Node has no graph for would vanish in
/// the engine; the receiver refuses it instead, and the sender hears why.
#[tokio::test(flavor = "current_thread")]
async fn value_for_a_port_without_receiver_is_refused() {
    let kb = Keypair::generate_ed25519();
    let dest = kb.public().to_peer_id();
    let (other, other_targets) = compile(Other);
    let mut b = memory_swarm(
        kb.clone(),
        bb_behaviour(&kb, &other, &[&other_targets[0]], Config::default()),
    );
    let (mut a, id) = idle_sender_to(dest, Config::default().with_request_timeout(TIMEOUT));
    let (reason, refused) = refused_by(&mut a, &mut b, dest, id).await;
    let SendFailure::Rejected(rejection) = &reason else {
        panic!("expected a rejection, got {reason:?}");
    };
    assert_eq!(rejection.kind, RejectKind::NoReceiver);
    assert_eq!(
        rejection.detail,
        format!(
            "no graph on this Node receives portable site {:#x}",
            bb_libp2p::sites::portable_site_id("port")
        )
    );
    assert_eq!(refused, (*a.local_peer_id(), rejection.clone()));
    engine_took_the_failure(&mut a).await;
}
