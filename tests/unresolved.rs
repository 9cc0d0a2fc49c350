//! A send to a peer the engine cannot resolve: the behaviour dials it by
//! `PeerId` through the swarm's other behaviours, and says `unresolved`
//! when none of them knows where it is.

mod common;

use std::task::Poll;
use std::time::Duration;

use bb_libp2p::{Behaviour, EngineStep, Event, SendFailure};
use common::models::{bb_behaviour, compile, install, invoke_send, send_value, Ping};
use common::{listen, memory_swarm, until};
use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::identity::Keypair;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, SwarmEvent, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Knows one peer's address and offers it when the swarm dials that peer,
/// as kad or mDNS would.
struct Directory {
    peer: PeerId,
    address: Option<Multiaddr>,
}

impl NetworkBehaviour for Directory {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        Ok(match (peer, &self.address) {
            (Some(p), Some(a)) if p == self.peer => vec![a.clone()],
            _ => Vec::new(),
        })
    }

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
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[derive(NetworkBehaviour)]
struct WithDirectory {
    bb: Behaviour,
    directory: Directory,
}

/// The engine never heard of B; another behaviour knows B's address. The
/// value arrives, sent by A.
#[tokio::test(flavor = "current_thread")]
async fn a_peer_another_behaviour_knows_is_dialled_by_id() {
    let (model, targets) = compile(Ping);
    let key_b = Keypair::generate_ed25519();
    let mut b = memory_swarm(
        key_b.clone(),
        bb_behaviour(&key_b, &model, &[&targets[1]], Default::default()),
    );
    let address = listen(&mut b).await;
    let pb = *b.local_peer_id();

    let key_a = Keypair::generate_ed25519();
    let bb = bb_behaviour(&key_a, &model, &[&targets[0]], Default::default());
    let directory = Directory {
        peer: pb,
        address: Some(address),
    };
    let mut a = memory_swarm(key_a, WithDirectory { bb, directory });
    let pa = *a.local_peer_id();
    assert!(!a.behaviour().bb.is_known(&pb));
    assert!(a.behaviour().bb.resolvable_peers().is_empty());

    let sent = send_value(&a.behaviour().bb.handle(), &targets[0], pb, b"found you");
    let mut acknowledged = false;
    let mut heard = None;
    let mut events_a = Vec::new();
    let wait_a = async {
        loop {
            use futures::StreamExt;
            tokio::select! {
                e = a.select_next_some() => events_a.push(e),
                e = b.select_next_some() => {
                    if let SwarmEvent::Behaviour(Event::AppEvent { sender, value_bytes, .. }) = e {
                        heard = Some((sender, value_bytes));
                    }
                }
            }
            for e in events_a.drain(..) {
                match e {
                    SwarmEvent::Behaviour(WithDirectoryEvent::Bb(
                        Event::EnvelopeAcknowledged { peer, .. },
                    )) => {
                        assert_eq!(peer, pb);
                        acknowledged = true;
                    }
                    SwarmEvent::Behaviour(WithDirectoryEvent::Bb(Event::SendFailed {
                        reason,
                        ..
                    })) => panic!("{reason}"),
                    _ => {}
                }
            }
            if acknowledged && heard.is_some() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait_a)
        .await
        .expect("delivered within 10 s");
    assert_eq!(heard, Some((Some(pa), sent)));
    // Connected now: the engine resolves B through the behaviour.
    assert_eq!(a.behaviour().bb.resolvable_peers(), vec![pb]);
}

/// Nobody knows B: the send fails as `unresolved`, once, naming B, and the
/// engine's own `PeerResolveFailed` does not surface.
#[tokio::test(flavor = "current_thread")]
async fn a_peer_nobody_knows_fails_as_unresolved() {
    let (model, targets) = compile(Ping);
    let key = Keypair::generate_ed25519();
    let mut a = memory_swarm(
        key.clone(),
        bb_behaviour(&key, &model, &[&targets[0]], Default::default()),
    );
    let nobody = PeerId::random();
    send_value(&a.behaviour().handle(), &targets[0], nobody, b"lost");
    let reason = until(
        &mut [&mut a],
        Duration::from_secs(10),
        "SendFailed",
        |_, e| match e {
            SwarmEvent::Behaviour(Event::SendFailed { peer, reason, .. }) => {
                assert_eq!(peer, Some(nobody));
                Some(reason)
            }
            SwarmEvent::Behaviour(Event::Engine(step)) => panic!("{step:?}"),
            _ => None,
        },
    )
    .await;
    assert_eq!(reason, SendFailure::Unresolved);
    assert_eq!(reason.label(), "unresolved");
    assert!(!reason.may_have_been_delivered());
    assert!(
        !reason.is_unreachable(),
        "an unknown peer is not a failing one"
    );
    assert_eq!(a.behaviour().envelopes_in_flight(), 0);
    assert_eq!(a.behaviour().peers_with_failure_state(), 0);
}

/// Guards `compat::unresolved`: a bare Node's `wire.Send` to a peer its
/// AddressBook lacks still sends nothing and reports `PeerResolveFailed`.
#[test]
fn upstream_send_still_skips_unknown_peers() {
    let (model, targets) = compile(Ping);
    let mut node = install(&Keypair::generate_ed25519(), &model, &[&targets[0]]);
    let nobody = PeerId::random();
    invoke_send(&mut node, &targets[0], nobody, b"lost");
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut steps = Vec::new();
    for _ in 0..4 {
        if let Poll::Ready(s) = node.poll(&mut cx) {
            steps.extend(s);
        }
    }
    assert!(!steps
        .iter()
        .any(|s| matches!(s, EngineStep::SendEnvelope(_))));
    assert!(steps.iter().any(|s| matches!(
        s,
        EngineStep::PeerResolveFailed { peer: Some(p), .. }
            if *p == bb_libp2p::to_engine_peer(&nobody)
    )));
}
