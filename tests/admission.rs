//! The Node's PeerGovernor at libp2p's connection level: blocklist and
//! allowlist in both directions, and back-off of peers that keep failing.

mod common;

use std::time::{Duration, Instant};

use bb_libp2p::{to_engine_peer, Behaviour, Denial, Event, PeerDenied, SendFailure};
use common::models::{bb_behaviour, bytes_value, compile, send_value, Ping};
use common::{connect, listen, memory_swarm, on_node, run_for, until};
use libp2p::core::Endpoint;
use libp2p::identity::Keypair;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm};

/// Swarms running Ping: the first `senders` send, the rest receive.
fn swarms(senders: usize, receivers: usize) -> (Vec<Swarm<Behaviour>>, String) {
    swarms_with(senders, receivers, bb_libp2p::Config::default())
}

/// [`swarms`] with `config`.
fn swarms_with(
    senders: usize,
    receivers: usize,
    config: bb_libp2p::Config,
) -> (Vec<Swarm<Behaviour>>, String) {
    let (model, targets) = compile(Ping);
    let swarms = (0..senders + receivers)
        .map(|i| {
            let key = Keypair::generate_ed25519();
            let target = &targets[usize::from(i >= senders)];
            let behaviour = bb_behaviour(&key, &model, &[target], config.clone());
            memory_swarm(key, behaviour)
        })
        .collect();
    (swarms, targets[0].clone())
}

/// Blocks `peer` on `swarm`'s Node. The engine thread reports the new
/// lists to the swarm, which applies them on a later poll (see [`settle`]).
fn block(swarm: &Swarm<Behaviour>, peer: &PeerId) {
    let peer = to_engine_peer(peer);
    on_node(swarm, move |node| node.block_peer(peer));
}

/// Polls `swarm` briefly, so that a block or allow list changed through the
/// handle (which reaches the swarm side asynchronously) is in force before
/// the test makes or takes a connection. No connection comes or goes
/// meanwhile, so no event of interest is dropped.
async fn settle(swarm: &mut Swarm<Behaviour>) {
    run_for(&mut [swarm], Duration::from_millis(100), |_, e| {
        assert!(
            !matches!(
                e,
                SwarmEvent::ConnectionEstablished { .. } | SwarmEvent::ConnectionClosed { .. }
            ),
            "a connection came or went while settling: {e:?}"
        )
    })
    .await;
}

/// Waits for `value` on swarm 1's `y`, failing on any send failure.
async fn delivered(a: &mut Swarm<Behaviour>, b: &mut Swarm<Behaviour>, value: &[u8]) {
    let want = bytes_value(value);
    // B's output and A's acknowledgement: the value is done with on both
    // sides (a connection closed before the acknowledgement fails it).
    let (mut output, mut acknowledged) = (false, false);
    until(
        &mut [a, b],
        Duration::from_secs(10),
        "the value and its acknowledgement",
        |i, e| {
            match e {
                SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) if i == 1 => {
                    assert_eq!(value_bytes, want);
                    output = true;
                }
                SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) if i == 0 => {
                    acknowledged = true;
                }
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                    panic!("send failed: {reason}")
                }
                _ => {}
            }
            (output && acknowledged).then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn a_blocked_peer_gets_no_connection_either_way() {
    let (mut s, sender) = swarms(1, 1);
    let (mut a, mut b) = (s.remove(0), s.remove(0));
    let (pa, pb) = (*a.local_peer_id(), *b.local_peer_id());
    block(&a, &pb);
    settle(&mut a).await;
    let a_addr = listen(&mut a).await;
    let b_addr = listen(&mut b).await;

    // B dials A: A refuses it as listener.
    b.dial(a_addr).unwrap();
    let denied = until(
        &mut [&mut a, &mut b],
        Duration::from_secs(5),
        "A's denial",
        |i, e| match e {
            SwarmEvent::Behaviour(Event::ConnectionDenied {
                peer,
                endpoint,
                reason,
                ..
            }) if i == 0 => Some((peer, endpoint, reason)),
            _ => None,
        },
    )
    .await;
    assert_eq!(denied, (pb, Endpoint::Listener, Denial::Blocked));

    // A dials B by its id: refused before any transport dial, with a cause
    // the swarm's error carries.
    let err = a
        .dial(
            DialOpts::peer_id(pb)
                .addresses(vec![b_addr.clone()])
                .build(),
        )
        .unwrap_err();
    let DialError::Denied { cause } = err else {
        panic!("expected a denied dial, got {err:?}")
    };
    assert_eq!(
        cause.downcast::<PeerDenied>().unwrap(),
        PeerDenied {
            peer: pb,
            reason: Denial::Blocked
        }
    );

    // A dials B's address alone: refused once B's identity is known.
    a.dial(b_addr.clone()).unwrap();
    let denied = until(
        &mut [&mut a, &mut b],
        Duration::from_secs(5),
        "A's denial",
        |i, e| match e {
            SwarmEvent::Behaviour(Event::ConnectionDenied { peer, endpoint, .. }) if i == 0 => {
                Some((peer, endpoint))
            }
            _ => None,
        },
    )
    .await;
    assert_eq!(denied, (pb, Endpoint::Dialer));
    run_for(&mut [&mut a, &mut b], Duration::from_millis(100), |_, _| {}).await;
    assert!(!a.is_connected(&pb) && !b.is_connected(&pa));

    // A's engine sends to B: it fails at once and nothing is dialled.
    a.add_peer_address(pb, b_addr);
    send_value(&a.behaviour().handle(), &sender, pb, b"blocked");
    let mut dialled = false;
    let reason = until(
        &mut [&mut a, &mut b],
        Duration::from_secs(5),
        "A's send failure",
        |i, e| match e {
            SwarmEvent::Dialing { .. } if i == 0 => {
                dialled = true;
                None
            }
            SwarmEvent::Behaviour(Event::SendFailed { peer, reason, .. }) if i == 0 => {
                assert_eq!(peer, Some(pb));
                Some(reason)
            }
            SwarmEvent::Behaviour(Event::AppEvent { .. }) => panic!("delivered to a blocked peer"),
            _ => None,
        },
    )
    .await;
    assert_eq!(reason, SendFailure::Denied(Denial::Blocked));
    assert!(!dialled);

    // Unblocked, the same pair connects and delivers.
    // (The engine thread reports the lifted block before the envelope, and
    // the swarm applies them in that order.)
    let engine_pb = to_engine_peer(&pb);
    on_node(&a, move |node| node.unblock_peer(engine_pb));
    send_value(&a.behaviour().handle(), &sender, pb, b"unblocked");
    delivered(&mut a, &mut b, b"unblocked").await;
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_a_connected_peer_disconnects_it_and_drops_its_envelopes() {
    // A cannot tell B's refusal from a cut link: it tries again for its
    // delivery window, kept short here.
    let window = Duration::from_millis(300);
    let config = bb_libp2p::Config::default().with_delivery_window(window);
    let (mut s, sender) = swarms_with(1, 1, config);
    let (mut a, mut b) = (s.remove(0), s.remove(0));
    let (pa, pb) = (*a.local_peer_id(), *b.local_peer_id());
    connect(&mut a, &mut b).await;
    send_value(&a.behaviour().handle(), &sender, pb, b"before");
    delivered(&mut a, &mut b, b"before").await;

    // The receiver blocks the sender.
    block(&b, &pa);
    let mut closed = [false, false];
    let mut disconnected = None;
    until(
        &mut [&mut a, &mut b],
        Duration::from_secs(5),
        "both sides closed",
        |i, e| {
            match e {
                SwarmEvent::Behaviour(Event::PeerDisconnected { peer, reason }) if i == 1 => {
                    disconnected = Some((peer, reason));
                }
                SwarmEvent::ConnectionClosed {
                    num_established: 0, ..
                } => closed[i] = true,
                _ => {}
            }
            (closed == [true, true]).then_some(())
        },
    )
    .await;
    assert_eq!(disconnected, Some((pa, Denial::Blocked)));

    // Whatever A sends now ends in a failure event on A; none reaches B.
    for n in 0..3u8 {
        send_value(&a.behaviour().handle(), &sender, pb, &[b'x', n]);
    }
    let mut failed = Vec::new();
    run_for(
        &mut [&mut a, &mut b],
        Duration::from_secs(1),
        |i, e| match e {
            SwarmEvent::Behaviour(Event::SendFailed { peer, reason, .. }) if i == 0 => {
                assert_eq!(peer, Some(pb));
                failed.push(reason);
            }
            SwarmEvent::Behaviour(Event::AppEvent { .. }) if i == 1 => {
                panic!("a blocked peer's value reached the engine")
            }
            SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => {
                panic!("a blocked peer's envelope was accepted")
            }
            _ => {}
        },
    )
    .await;
    assert_eq!(failed.len(), 3, "one failure per envelope: {failed:?}");
    for reason in &failed {
        assert_eq!(reason.label(), "window_passed", "{reason}");
    }
    assert!(!a.is_connected(&pb));
}

#[tokio::test(flavor = "current_thread")]
async fn an_allowlist_admits_only_its_peers() {
    let (mut s, sender) = swarms(2, 1);
    let (mut listed, mut other, mut r) = (s.remove(0), s.remove(0), s.remove(0));
    let (pl, po) = (*listed.local_peer_id(), *other.local_peer_id());
    let pr = *r.local_peer_id();
    let engine_pl = to_engine_peer(&pl);
    on_node(&r, move |node| node.set_allowlist(Some([engine_pl].into())));
    settle(&mut r).await;
    let r_addr: Multiaddr = listen(&mut r).await;

    other.dial(r_addr.clone()).unwrap();
    let denied = until(
        &mut [&mut other, &mut r],
        Duration::from_secs(5),
        "R's denial",
        |i, e| match e {
            SwarmEvent::Behaviour(Event::ConnectionDenied {
                peer,
                endpoint,
                reason,
                ..
            }) if i == 1 => Some((peer, endpoint, reason)),
            _ => None,
        },
    )
    .await;
    assert_eq!(denied, (po, Endpoint::Listener, Denial::NotAllowlisted));
    // The other side sees its connection go.
    until(
        &mut [&mut other, &mut r],
        Duration::from_secs(5),
        "the close",
        |i, e| (i == 0 && matches!(e, SwarmEvent::ConnectionClosed { .. })).then_some(()),
    )
    .await;

    listed.add_peer_address(pr, r_addr.clone());
    send_value(&listed.behaviour().handle(), &sender, pr, b"listed");
    delivered(&mut listed, &mut r, b"listed").await;

    // Lifting the allowlist admits the other peer too.
    on_node(&r, |node| node.set_allowlist(None));
    settle(&mut r).await;
    other.add_peer_address(pr, r_addr);
    send_value(&other.behaviour().handle(), &sender, pr, b"other");
    delivered(&mut other, &mut r, b"other").await;
}

/// A peer that cannot be reached is dialled again only after a back-off
/// that doubles per attempt; past the PeerGovernor's threshold it is
/// reported down, and up once it answers.
#[tokio::test(flavor = "current_thread")]
async fn a_failing_peer_is_backed_off_then_down_then_up() {
    let (mut s, sender) = swarms(1, 1);
    let (mut a, mut b) = (s.remove(0), s.remove(0));
    let pb = *b.local_peer_id();
    // B will listen here, later.
    let b_addr: Multiaddr = format!("/memory/{}", rand_port()).parse().unwrap();
    a.add_peer_address(pb, b_addr.clone());

    let started = Instant::now();
    let mut dials = Vec::new();
    let mut backoffs = 0;
    let mut down = None;
    let mut n = 0u32;
    while down.is_none() {
        assert!(started.elapsed() < Duration::from_secs(10), "no PeerDown");
        n += 1;
        send_value(&a.behaviour().handle(), &sender, pb, &n.to_le_bytes());
        until(
            &mut [&mut a],
            Duration::from_secs(5),
            "a send failure",
            |_, e| match e {
                SwarmEvent::Dialing { peer_id, .. } => {
                    assert_eq!(peer_id, Some(pb));
                    dials.push(started.elapsed());
                    None
                }
                SwarmEvent::Behaviour(Event::PeerDown {
                    peer,
                    consecutive_failures,
                }) => {
                    down = Some((peer, consecutive_failures));
                    None
                }
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                    match reason {
                        SendFailure::DialFailure => {}
                        SendFailure::Backoff { retry_in } => {
                            assert!(retry_in <= Duration::from_secs(60));
                            backoffs += 1;
                        }
                        other => panic!("unexpected failure {other}"),
                    }
                    Some(())
                }
                _ => None,
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(down, Some((pb, 5)));
    assert_eq!(dials.len(), 5, "one dial per back-off window: {dials:?}");
    assert!(backoffs > 0, "sends inside a back-off were not dialled");
    // The gaps between attempts grow (10, 20, 40, 80 ms at least).
    let gaps: Vec<Duration> = dials.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, gap) in gaps.iter().enumerate() {
        assert!(*gap >= Duration::from_millis(10 << i), "gaps {gaps:?}");
    }

    // B comes up at the address; the next attempt after the back-off
    // reaches it and A reports it up.
    b.listen_on(b_addr).unwrap();
    let mut up = false;
    let mut n = 100u32;
    while !up {
        assert!(started.elapsed() < Duration::from_secs(10), "no PeerUp");
        n += 1;
        send_value(&a.behaviour().handle(), &sender, pb, &n.to_le_bytes());
        let got = until(
            &mut [&mut a, &mut b],
            Duration::from_secs(5),
            "an outcome",
            |i, e| match e {
                SwarmEvent::Behaviour(Event::PeerUp { peer }) => {
                    assert_eq!(peer, pb);
                    up = true;
                    None
                }
                SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) if i == 1 => {
                    Some(Some(value_bytes))
                }
                SwarmEvent::Behaviour(Event::SendFailed {
                    reason: SendFailure::Backoff { .. },
                    ..
                }) => Some(None),
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                    panic!("unexpected failure {reason}")
                }
                _ => None,
            },
        )
        .await;
        if let Some(value) = got {
            assert_eq!(value, bytes_value(&n.to_le_bytes()));
            run_for(&mut [&mut a, &mut b], Duration::from_millis(50), |_, e| {
                up |= matches!(e, SwarmEvent::Behaviour(Event::PeerUp { .. }));
            })
            .await;
            assert!(up, "delivered, but no PeerUp");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A memory port no other test in this process uses.
fn rand_port() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) | 1 << 40
}

/// A peer that accepts connections and drops them at once (here: it blocks
/// this Node) is no more answering than one that refuses them: its back-off
/// grows and it is reported down, rather than redialled every few
/// milliseconds.
#[tokio::test(flavor = "current_thread")]
async fn a_peer_that_drops_every_connection_is_backed_off() {
    let (mut s, sender) = swarms(1, 1);
    let (mut a, mut b) = (s.remove(0), s.remove(0));
    let (pa, pb) = (*a.local_peer_id(), *b.local_peer_id());
    block(&b, &pa);
    settle(&mut b).await;
    let b_addr = listen(&mut b).await;
    a.add_peer_address(pb, b_addr);

    let started = Instant::now();
    let (mut dials, mut down, mut n) = (0, false, 0u32);
    while started.elapsed() < Duration::from_millis(1500) {
        n += 1;
        send_value(&a.behaviour().handle(), &sender, pb, &n.to_le_bytes());
        run_for(
            &mut [&mut a, &mut b],
            Duration::from_millis(5),
            |i, e| match e {
                SwarmEvent::Dialing { .. } if i == 0 => dials += 1,
                SwarmEvent::Behaviour(Event::PeerDown { peer, .. }) if i == 0 => {
                    assert_eq!(peer, pb);
                    down = true;
                }
                SwarmEvent::Behaviour(Event::AppEvent { .. }) => panic!("delivered"),
                _ => {}
            },
        )
        .await;
    }
    assert!(down, "no PeerDown after {dials} dials");
    // 10, 20, 40, 80, 160, 320, 640 ms apart: at most eight in 1.5 s, where
    // a peer redialled on every send would be dialled over a hundred times.
    assert!(dials <= 8, "{dials} dials for {n} sends");
}

/// A connected peer the engine's AddressBook had no room for is still
/// disconnected when it is blocked.
#[tokio::test(flavor = "current_thread")]
async fn a_peer_missing_from_a_full_address_book_is_still_disconnected() {
    let (mut s, _) = swarms(1, 1);
    let (mut a, mut b) = (s.remove(0), s.remove(0));
    let pb = *b.local_peer_id();
    on_node(&a, |node| {
        let book = &mut node.engine_install_handle().framework.address_book;
        let full = book.len();
        book.set_cap(full);
    });
    connect(&mut a, &mut b).await;
    // The engine thread reports the refusal; the swarm takes it when polled.
    run_for(&mut [&mut a, &mut b], Duration::from_millis(50), |_, _| {}).await;
    assert!(!a.behaviour().is_known(&pb), "the book had no room");

    block(&a, &pb);
    let closed = until(
        &mut [&mut a, &mut b],
        Duration::from_secs(5),
        "A's disconnect",
        |i, e| match e {
            SwarmEvent::Behaviour(Event::PeerDisconnected { peer, reason }) if i == 0 => {
                Some((peer, reason))
            }
            _ => None,
        },
    )
    .await;
    assert_eq!(closed, (pb, Denial::Blocked));
}

/// A peer's engine asking this Node to slow down (`BackoffNotice`) is
/// reported, held to by the engine, and five in a row mark the peer down.
#[tokio::test(flavor = "current_thread")]
async fn a_peers_backoff_notices_are_reported_and_counted() {
    use bytesandbrains::framework::{
        build_backoff_notice_envelope, BackoffCause, BackoffNoticePayload,
    };
    let (mut s, _) = swarms(1, 1);
    let (mut a, mut b) = (s.remove(0), s.remove(0));
    let (pa, pb) = (*a.local_peer_id(), *b.local_peer_id());
    connect(&mut a, &mut b).await;

    let wait = Duration::from_millis(400);
    let mut reported = Vec::new();
    let mut down = None;
    for _ in 0..5 {
        // B's engine sends A what its ingress back-pressure would.
        let notice = build_backoff_notice_envelope(
            to_engine_peer(&pb),
            to_engine_peer(&pa),
            BackoffNoticePayload::new(wait.as_nanos() as u64, BackoffCause::QueueFull, None),
        );
        on_node(&b, move |node| {
            node.engine_install_handle()
                .framework
                .outbound_queue
                .push(notice)
        });
        let advised = until(
            &mut [&mut a, &mut b],
            Duration::from_secs(5),
            "BackoffAdvised",
            |i, e| match e {
                SwarmEvent::Behaviour(Event::BackoffAdvised {
                    peer,
                    retry_in,
                    cause,
                }) if i == 0 => Some((peer, retry_in, cause)),
                SwarmEvent::Behaviour(Event::PeerDown {
                    peer,
                    consecutive_failures,
                }) if i == 0 => {
                    down = Some((peer, consecutive_failures));
                    None
                }
                _ => None,
            },
        )
        .await;
        reported.push(advised);
    }
    assert_eq!(reported, vec![(pb, wait, BackoffCause::QueueFull); 5]);
    run_for(&mut [&mut a, &mut b], Duration::from_millis(50), |i, e| {
        if let SwarmEvent::Behaviour(Event::PeerDown {
            peer,
            consecutive_failures,
        }) = e
        {
            assert_eq!(i, 0);
            down = Some((peer, consecutive_failures));
        }
    })
    .await;
    assert_eq!(down, Some((pb, 5)));
    // The engine holds its sends to B for the wait the notice asked for.
    let engine_pb = to_engine_peer(&pb);
    let retry = on_node(&a, move |node| {
        let engine = node.engine_install_handle();
        let now = engine.framework.scheduler.now_ns();
        engine
            .framework
            .peer_state
            .backoff
            .should_retry(engine_pb, now)
    });
    assert!(!retry);
}
