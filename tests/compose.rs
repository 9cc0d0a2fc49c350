//! The behaviour inside a user's `#[derive(NetworkBehaviour)]` struct, beside
//! identify and ping; and an idle connected pair that does not busy-poll.

mod common;

use std::cell::Cell;
use std::convert::Infallible;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bb_libp2p::Event;
use bb_runtime::engine::EngineStep;
use bytesandbrains::proto::onnx::ModelProto;
use common::models::{bb_behaviour, bytes_value, compile, send_value, Ping};
use common::{connect, memory_swarm, run_for, until};
use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::identity::Keypair;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, SwarmEvent, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{identify, ping, Multiaddr, PeerId, Swarm};

/// Counts how often the swarm polls its behaviours.
#[derive(Default)]
struct PollCounter(Rc<Cell<u64>>);

impl NetworkBehaviour for PollCounter {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        e: THandlerOutEvent<Self>,
    ) {
        match e {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        self.0.set(self.0.get() + 1);
        Poll::Pending
    }
}

/// What a user's application might compose.
#[derive(NetworkBehaviour)]
struct App {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    bb: bb_libp2p::Behaviour,
    polls: PollCounter,
}

/// The application's swarm, its bytesandbrains Node running `target` of
/// `model`.
fn app(key: &Keypair, model: &ModelProto, target: &str) -> (Swarm<App>, Rc<Cell<u64>>) {
    let polls = PollCounter::default();
    let count = polls.0.clone();
    let behaviour = App {
        identify: identify::Behaviour::new(identify::Config::new("/app/1".into(), key.public())),
        ping: ping::Behaviour::default(),
        bb: bb_behaviour(key, model, &[target], bb_libp2p::Config::default()),
        polls,
    };
    (memory_swarm(key.clone(), behaviour), count)
}

#[tokio::test(flavor = "current_thread")]
async fn composed_with_identify_and_ping() {
    let (model, targets) = compile(Ping);
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (mut a, _) = app(&ka, &model, &targets[0]);
    let (mut b, b_polls) = app(&kb, &model, &targets[1]);
    connect(&mut a, &mut b).await;

    let dest = *b.local_peer_id();
    let mut identified = [false, false];
    let mut pinged = false;
    let mut got = Vec::new();
    for n in 0u8..3 {
        send_value(&a.behaviour().bb.handle(), &targets[0], dest, &[n; 3]);
        got.push(
            until(
                &mut [&mut a, &mut b],
                Duration::from_secs(10),
                "value on B",
                |i, e| match e {
                    SwarmEvent::Behaviour(AppEvent::Identify(identify::Event::Received {
                        ..
                    })) => {
                        identified[i] = true;
                        None
                    }
                    SwarmEvent::Behaviour(AppEvent::Ping(ping::Event {
                        result: Ok(_), ..
                    })) => {
                        pinged = true;
                        None
                    }
                    SwarmEvent::Behaviour(AppEvent::Bb(Event::AppEvent {
                        value_bytes, ..
                    })) if i == 1 => Some(value_bytes),
                    _ => None,
                },
            )
            .await,
        );
    }
    assert_eq!(
        got,
        (0u8..3).map(|n| bytes_value(&[n; 3])).collect::<Vec<_>>()
    );
    run_for(
        &mut [&mut a, &mut b],
        Duration::from_millis(500),
        |i, e| match e {
            SwarmEvent::Behaviour(AppEvent::Identify(identify::Event::Received { .. })) => {
                identified[i] = true
            }
            SwarmEvent::Behaviour(AppEvent::Ping(ping::Event { result: Ok(_), .. })) => {
                pinged = true
            }
            _ => {}
        },
    )
    .await;
    assert_eq!(
        identified,
        [true, true],
        "identify ran beside the behaviour"
    );
    assert!(pinged, "ping ran beside the behaviour");
    assert!(b_polls.get() > 0);
}

/// A connected pair that has exchanged a value, and whose engine deadlines
/// have all passed, must not keep its task awake, nor its engine threads.
#[tokio::test(flavor = "current_thread")]
async fn idle_pair_does_not_busy_poll() {
    let (model, targets) = compile(Ping);
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (mut a, a_polls) = app(&ka, &model, &targets[0]);
    let (mut b, b_polls) = app(&kb, &model, &targets[1]);
    connect(&mut a, &mut b).await;
    send_value(
        &a.behaviour().bb.handle(),
        &targets[0],
        *b.local_peer_id(),
        b"then quiet",
    );
    // The acknowledgement settles the Send's request: the engine has nothing
    // left to do, and no `WireTimeout` comes.
    until(&mut [&mut a, &mut b], Duration::from_secs(5), "A's acknowledgement", |i, e| {
        matches!(e, SwarmEvent::Behaviour(AppEvent::Bb(Event::EnvelopeAcknowledged { .. })) if i == 0)
            .then_some(())
    })
    .await;
    run_for(&mut [&mut a, &mut b], Duration::from_millis(500), |i, e| {
        assert!(
            !matches!(
                e,
                SwarmEvent::Behaviour(AppEvent::Bb(Event::Engine(EngineStep::WireTimeout { .. })))
            ),
            "swarm {i}: a WireTimeout after the acknowledgement"
        );
    })
    .await;

    let (ha, hb) = (a.behaviour().bb.handle(), b.behaviour().bb.handle());
    let (a0, b0) = (a_polls.get(), b_polls.get());
    let (ea0, eb0) = (ha.engine_wakeups(), hb.engine_wakeups());
    let idle = Duration::from_secs(2);
    run_for(&mut [&mut a, &mut b], idle, |_, _| {}).await;
    let per_second = |polls: u64| polls as f64 / idle.as_secs_f64();
    let (a_rate, b_rate) = (
        per_second(a_polls.get() - a0),
        per_second(b_polls.get() - b0),
    );
    // Idle libp2p wakes a handful of times a second at most (ping runs every
    // 15 s); a spinning behaviour polls thousands of times.
    assert!(
        a_rate <= 10.0 && b_rate <= 10.0,
        "polls per idle second: A {a_rate}, B {b_rate}"
    );
    // The engines, on threads of their own now, are as still.
    let (ea_rate, eb_rate) = (
        per_second(ha.engine_wakeups() - ea0),
        per_second(hb.engine_wakeups() - eb0),
    );
    assert!(
        ea_rate <= 10.0 && eb_rate <= 10.0,
        "engine wake-ups per idle second: A {ea_rate}, B {eb_rate}"
    );
}
