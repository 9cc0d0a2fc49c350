//! The engine's AddressBook follows the peers the swarm knows: connections,
//! identify, the peer store and `Swarm::add_peer_address`.

mod common;

use std::future::poll_fn;
use std::task::Poll;
use std::time::{Duration, Instant};

use bb_libp2p::{p2p_address, to_engine_peer, Behaviour, Event, Node};
use common::models::{bb_behaviour, bytes_value, compile, send_value, Ping};
use common::{connect, listen, memory_swarm, on_node, run_for, until};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::peer_store::{self, memory_store::MemoryStore};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, Multiaddr, PeerId, Swarm};

/// What an application that keeps a peer store composes.
#[derive(NetworkBehaviour)]
struct Stored {
    bb: Behaviour,
    identify: identify::Behaviour,
    store: peer_store::Behaviour<MemoryStore>,
}

fn stored(key: Keypair, bb: Behaviour) -> Swarm<Stored> {
    let behaviour = Stored {
        bb,
        identify: identify::Behaviour::new(identify::Config::new("/test/1".into(), key.public())),
        store: peer_store::Behaviour::new(MemoryStore::new(Default::default())),
    };
    memory_swarm(key, behaviour)
}

/// Ping's sender and receiver on swarms built by `make`.
fn pair<B: NetworkBehaviour>(
    make: impl Fn(Keypair, Behaviour) -> Swarm<B>,
) -> (Swarm<B>, Swarm<B>, String) {
    let (model, targets) = compile(Ping);
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let config = bb_libp2p::Config::default;
    let a = make(
        ka.clone(),
        bb_behaviour(&ka, &model, &[&targets[0]], config()),
    );
    let b = make(
        kb.clone(),
        bb_behaviour(&kb, &model, &[&targets[1]], config()),
    );
    (a, b, targets[0].clone())
}

fn plain(key: Keypair, bb: Behaviour) -> Swarm<Behaviour> {
    memory_swarm(key, bb)
}

/// Reads `bb`'s Node with `f` until it gives `want`, and panics with the
/// last reading if it does not within five seconds.
///
/// What the swarm side tells the engine thread (a peer connected, learned,
/// forgotten) reaches the Node's AddressBook asynchronously, on a lane of
/// its own: a `with_node` sent right after it can run first. So a reading
/// is taken as the engine's once it settles on the value the test expects.
fn engine_reads<R>(bb: &Behaviour, want: R, f: impl Fn(&mut Node) -> R + Clone + Send + 'static)
where
    R: PartialEq + std::fmt::Debug + Send + 'static,
{
    let handle = bb.handle();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = handle.with_node_blocking(f.clone()).expect("the Node runs");
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the engine reads {got:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Asserts whether the engine's AddressBook can route a `wire.Send` to
/// `peer` (once the swarm side's changes have reached it, see
/// [`engine_reads`]).
fn resolves(bb: &Behaviour, peer: &PeerId, want: bool) {
    let peer = *peer;
    engine_reads(bb, want, move |node| {
        node.resolve_peer_addresses(to_engine_peer(&peer))
            .is_some_and(|a| a.contains(&p2p_address(&peer)))
    });
}

async fn disconnect<B: NetworkBehaviour>(a: &mut Swarm<B>, b: &mut Swarm<B>) {
    let (pa, pb) = (*a.local_peer_id(), *b.local_peer_id());
    a.disconnect_peer_id(pb).unwrap();
    let mut closed = [false, false];
    until(
        &mut [a, b],
        Duration::from_secs(5),
        "both sides closed",
        |i, e| {
            if let SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } = e
            {
                closed[i] |= peer_id == [pb, pa][i];
            }
            (closed == [true, true]).then_some(())
        },
    )
    .await;
}

/// Waits for `value` on B's `y`, failing on any send failure.
async fn delivered<B>(
    swarms: &mut [&mut Swarm<B>],
    value: &[u8],
    pick: fn(B::ToSwarm) -> Option<Event>,
) where
    B: NetworkBehaviour,
{
    let want = bytes_value(value);
    until(
        swarms,
        Duration::from_secs(10),
        "the value on B",
        |i, e| match e {
            SwarmEvent::Behaviour(e) => match pick(e) {
                Some(Event::AppEvent { value_bytes, .. }) if i == 1 => {
                    assert_eq!(value_bytes, want);
                    Some(())
                }
                Some(Event::SendFailed { reason, .. }) => panic!("send failed: {reason}"),
                _ => None,
            },
            _ => None,
        },
    )
    .await
}

fn bb_event(e: Event) -> Option<Event> {
    Some(e)
}

fn stored_event(e: StoredEvent) -> Option<Event> {
    match e {
        StoredEvent::Bb(e) => Some(e),
        _ => None,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn connected_peers_resolve_until_they_are_unreachable() {
    let (mut a, mut b, sender) = pair(plain);
    let (pa, pb) = (*a.local_peer_id(), *b.local_peer_id());
    // The Node's own address bag names the swarm's identity.
    assert!(on_node(&a, move |node| node
        .local_addresses()
        .contains(&p2p_address(&pa))));
    resolves(a.behaviour(), &pb, false);

    connect(&mut a, &mut b).await;
    resolves(a.behaviour(), &pb, true);
    resolves(b.behaviour(), &pa, true);

    disconnect(&mut a, &mut b).await;
    // B only saw A's ephemeral dialling address: nothing left to reach A by.
    resolves(b.behaviour(), &pa, false);
    assert!(!b.behaviour().is_known(&pa));
    // A dialled B's listening address and keeps it.
    resolves(a.behaviour(), &pb, true);

    a.behaviour_mut().remove_peer(&pb);
    resolves(a.behaviour(), &pb, false);
    // The engine cannot resolve B now; the behaviour dials B by its id, no
    // behaviour of the swarm knows an address, and the send fails so.
    send_value(&a.behaviour().handle(), &sender, pb, b"nowhere");
    let failed = until(
        &mut [&mut a, &mut b],
        Duration::from_secs(5),
        "SendFailed",
        |i, e| match e {
            SwarmEvent::Behaviour(Event::SendFailed { peer, reason, .. }) if i == 0 => {
                Some((peer, reason))
            }
            SwarmEvent::Behaviour(Event::AppEvent { .. }) => {
                panic!("delivered to an unresolvable peer")
            }
            _ => None,
        },
    )
    .await;
    assert_eq!(failed, (Some(pb), bb_libp2p::SendFailure::Unresolved));
    assert_eq!(failed.1.label(), "unresolved");
}

#[tokio::test(flavor = "current_thread")]
async fn releasing_a_peer_leaves_the_engines_own_entry() {
    let (mut a, mut b, _) = pair(plain);
    let pb = *b.local_peer_id();
    let engine_pb = to_engine_peer(&pb);
    // An engine protocol (say a registry handshake) registered B first.
    on_node(&a, move |node| {
        let book = &mut node.engine_install_handle().framework.address_book;
        book.add_peer(engine_pb, vec![p2p_address(&pb)]).unwrap();
    });

    connect(&mut a, &mut b).await;
    let count = move |node: &mut Node| {
        node.engine_install_handle()
            .framework
            .address_book
            .ref_count(engine_pb)
    };
    engine_reads(a.behaviour(), 2, count);
    disconnect(&mut a, &mut b).await;
    a.behaviour_mut().remove_peer(&pb);
    assert!(!a.behaviour().is_known(&pb));
    // The engine's reference stays.
    engine_reads(a.behaviour(), 1, count);
    resolves(a.behaviour(), &pb, true);
}

/// A listening peer that dialled in is learned through identify: after the
/// connection goes, the Node can still reach it, and the behaviour dials it
/// at the address identify reported.
#[tokio::test(flavor = "current_thread")]
async fn identify_keeps_a_peer_resolvable_and_dialable() {
    let (mut a, mut b, sender) = pair(stored);
    let pb = *b.local_peer_id();
    listen(&mut b).await;
    let a_addr = listen(&mut a).await;
    b.dial(a_addr).unwrap();
    let mut identified = false;
    until(&mut [&mut a, &mut b], Duration::from_secs(10), "A identifies B", |i, e| {
        identified |= i == 0 && matches!(e, SwarmEvent::Behaviour(StoredEvent::Identify(identify::Event::Received { peer_id, .. })) if peer_id == pb);
        identified.then_some(())
    })
    .await;
    disconnect(&mut a, &mut b).await;
    resolves(a.behaviour().bb(), &pb, true);

    send_value(&a.behaviour().bb.handle(), &sender, pb, b"redial");
    delivered(&mut [&mut a, &mut b], b"redial", stored_event).await;
}

impl Stored {
    fn bb(&self) -> &Behaviour {
        &self.bb
    }
}

/// Polls the swarms like `until`, handing every peer-store event to the
/// behaviour first, as an application's event loop does.
async fn until_stored<T>(
    swarms: &mut [&mut Swarm<Stored>],
    what: &str,
    mut f: impl FnMut(usize, &SwarmEvent<StoredEvent>) -> Option<T>,
) -> T {
    let wait = poll_fn(|cx| {
        for (i, swarm) in swarms.iter_mut().enumerate() {
            while let Poll::Ready(Some(event)) = swarm.poll_next_unpin(cx) {
                if let SwarmEvent::Behaviour(StoredEvent::Store(e)) = &event {
                    swarm.behaviour_mut().bb.on_peer_store_event(e);
                }
                if let Some(t) = f(i, &event) {
                    return Poll::Ready(t);
                }
            }
        }
        Poll::Pending
    });
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "current_thread")]
async fn the_peer_store_teaches_and_forgets() {
    let (mut a, mut b, sender) = pair(stored);
    let pb = *b.local_peer_id();
    let b_addr = listen(&mut b).await;

    // Learned through the store alone (no FromSwarm event): the engine
    // resolves B once the store's event is handed over.
    a.behaviour_mut()
        .store
        .store_mut()
        .add_address(&pb, &b_addr);
    resolves(a.behaviour().bb(), &pb, false);
    until_stored(&mut [&mut a, &mut b], "the store's event", |_, e| {
        matches!(e, SwarmEvent::Behaviour(StoredEvent::Store(_))).then_some(())
    })
    .await;
    resolves(a.behaviour().bb(), &pb, true);

    // The Node reaches B by dialling the stored address.
    send_value(&a.behaviour().bb.handle(), &sender, pb, b"stored");
    let want = bytes_value(b"stored");
    until_stored(&mut [&mut a, &mut b], "the value on B", |i, e| match e {
        SwarmEvent::Behaviour(StoredEvent::Bb(Event::AppEvent { value_bytes, .. })) if i == 1 => {
            assert_eq!(*value_bytes, want);
            Some(())
        }
        SwarmEvent::Behaviour(StoredEvent::Bb(Event::SendFailed { reason, .. })) => {
            panic!("send failed: {reason}")
        }
        _ => None,
    })
    .await;

    // The store forgets B's address: while connected B stays resolvable;
    // once the connection goes, the engine forgets B too.
    assert!(a
        .behaviour_mut()
        .store
        .store_mut()
        .remove_address(&pb, &b_addr));
    until_stored(&mut [&mut a, &mut b], "the store's removal", |_, e| {
        matches!(
            e,
            SwarmEvent::Behaviour(StoredEvent::Store(
                peer_store::memory_store::Event::PeerAddressRemoved { .. }
            ))
        )
        .then_some(())
    })
    .await;
    resolves(a.behaviour().bb(), &pb, true);
    a.disconnect_peer_id(pb).unwrap();
    until_stored(&mut [&mut a, &mut b], "A's disconnect", |i, e| {
        matches!(e, SwarmEvent::ConnectionClosed { num_established: 0, .. } if i == 0).then_some(())
    })
    .await;
    resolves(a.behaviour().bb(), &pb, false);
    assert!(!a.behaviour().bb.is_known(&pb));
}

/// `X` and `X/p2p/<peer>` are one address: dialling the peer by its id
/// tries it once, not twice.
#[tokio::test(flavor = "current_thread")]
async fn both_forms_of_an_address_are_dialled_once() {
    let (mut a, mut b, _) = pair(plain);
    let pb = *b.local_peer_id();
    let x: Multiaddr = listen(&mut b).await;
    a.add_peer_address(pb, x.clone().with_p2p(pb).unwrap());
    a.add_peer_address(pb, x);
    a.dial(DialOpts::peer_id(pb).build()).unwrap();
    let mut incoming = 0;
    run_for(&mut [&mut a, &mut b], Duration::from_millis(500), |i, e| {
        if i == 1 && matches!(e, SwarmEvent::IncomingConnection { .. }) {
            incoming += 1;
        }
    })
    .await;
    assert_eq!(incoming, 1, "B saw {incoming} connection attempts");
    assert!(a.is_connected(&pb));
}

#[tokio::test(flavor = "current_thread")]
async fn a_peer_added_to_the_swarm_is_reachable_without_a_store() {
    let (mut a, mut b, sender) = pair(plain);
    let pb = *b.local_peer_id();
    let x = listen(&mut b).await;
    a.add_peer_address(pb, x);
    resolves(a.behaviour(), &pb, true);
    send_value(&a.behaviour().handle(), &sender, pb, b"added");
    delivered(&mut [&mut a, &mut b], b"added", bb_event).await;
}
