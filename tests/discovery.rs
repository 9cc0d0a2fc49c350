//! Discovery over libp2p: clients announce themselves to a registry with the
//! engine's GlobalRegistry protocol, and the registry reaches a sample of
//! the clients it learned.

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bb_libp2p::{to_engine_peer, Behaviour, Config, EnginePool, Event, Node};
use bb_runtime::engine::EngineStep;
use bytesandbrains::protocols::global_registry::GlobalRegistryServerConfig;
use common::alloc::{live, vm_rss_kib, HEAP};
use common::models::bytes_value;
use common::registry::{
    client_node, client_state, deployment, registry_node, registry_view, Deployment,
};
use common::{listen, memory_swarm, on_node, run_for};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm};

/// Counts the heap bytes the whole process holds: the Nodes allocate on
/// their engine threads, the swarms on the test's. The tests hold [`HEAP`],
/// so one test's figures do not include another's allocations.
#[global_allocator]
static ALLOC: common::alloc::Counting = common::alloc::Counting;

/// What the swarms reported. Anything that means an envelope or a fill was
/// lost fails the test at once, naming the swarm.
#[derive(Default)]
struct Observed {
    /// Peers each swarm's envelopes were acknowledged by, in order.
    acked: HashMap<usize, Vec<PeerId>>,
    /// `got` outputs: swarm and value.
    got: Vec<(usize, Vec<u8>)>,
    /// Requests the engine gave up waiting for a response to.
    wire_timeouts: usize,
}

impl Observed {
    fn record(&mut self, i: usize, event: SwarmEvent<Event>) {
        let SwarmEvent::Behaviour(event) = event else {
            return;
        };
        match event {
            Event::EnvelopeAcknowledged { peer, .. } => self.acked.entry(i).or_default().push(peer),
            Event::AppEvent {
                topic, value_bytes, ..
            } => {
                assert_eq!(topic, "got", "swarm {i} output an unexpected value");
                self.got.push((i, value_bytes));
            }
            // A one-way `net_out` registers a request that nothing answers.
            Event::Engine(EngineStep::WireTimeout { .. }) => self.wire_timeouts += 1,
            Event::Engine(
                step @ (EngineStep::WireDecodeFailed { .. }
                | EngineStep::WireReceiveFailed { .. }
                | EngineStep::OpFailed { .. }
                | EngineStep::PeerResolveFailed { .. }
                | EngineStep::PeerBlocked { .. }
                | EngineStep::OutboundDropped { .. }),
            ) => panic!("swarm {i}: engine step {step:?}"),
            event @ (Event::SendFailed { .. }
            | Event::InboundRejected { .. }
            | Event::BootstrapFailed(_)
            | Event::BackoffAdvised { .. }
            | Event::PeerDown { .. }) => panic!("swarm {i}: {event:?}"),
            _ => {}
        }
    }

    fn acked_by(&self, i: usize) -> HashSet<PeerId> {
        self.acked.get(&i).into_iter().flatten().copied().collect()
    }
}

/// Polls every swarm, recording their events, until `done` holds.
/// Panics after `timeout`, naming what it waited for and where it stood.
async fn drive_until(
    swarms: &mut [&mut Swarm<Behaviour>],
    observed: &mut Observed,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&mut [&mut Swarm<Behaviour>], &Observed) -> Result<(), String>,
) {
    let deadline = Instant::now() + timeout;
    // Each check asks engine threads and the first turn of each round polls
    // every swarm: with many swarms, check less often, so the checks do not
    // grow the time they measure.
    let round = Duration::from_millis((swarms.len() as u64 / 10).max(10));
    loop {
        run_for(swarms, round, |i, e| observed.record(i, e)).await;
        match done(swarms, observed) {
            Ok(()) => return,
            Err(state) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {state}")
            }
            Err(_) => {}
        }
    }
}

/// Whether the client on `swarm` has taken a Handshake.
fn handshaken(swarm: &Swarm<Behaviour>) -> bool {
    on_node(swarm, |node| client_state(node).last_assigned_ttl_ns != 0)
}

/// A swarm with the identity of `key` whose Node `make_node` builds on an
/// engine thread: one of `pool`'s, or its own.
fn swarm_with(
    key: &Keypair,
    pool: Option<&EnginePool>,
    make_node: impl FnOnce() -> Node + Send + 'static,
) -> Swarm<Behaviour> {
    let make_node = move || Ok::<_, Infallible>(make_node());
    let behaviour = match pool {
        Some(pool) => Behaviour::with_pool(pool, make_node, Config::default()),
        None => Behaviour::new(make_node, Config::default()),
    };
    memory_swarm(key.clone(), behaviour.expect("the Node starts"))
}

/// The registry of `d` with the identity of `key`.
fn registry_swarm(
    key: &Keypair,
    d: &Arc<Deployment>,
    pool: Option<&EnginePool>,
) -> Swarm<Behaviour> {
    let (k, d) = (key.clone(), Arc::clone(d));
    swarm_with(key, pool, move || registry_node(&k, &d))
}

/// A client of the registry of `d` with the identity of `key`.
fn client_swarm(key: &Keypair, d: &Arc<Deployment>, pool: Option<&EnginePool>) -> Swarm<Behaviour> {
    let (k, d) = (key.clone(), Arc::clone(d));
    swarm_with(key, pool, move || client_node(&k, &d))
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_joins_the_registry_over_libp2p() {
    // Keeps this test's allocations out of the other's heap figures.
    let _heap = HEAP.lock().await;
    let registry_key = Keypair::generate_ed25519();
    let registry_peer = registry_key.public().to_peer_id();
    let d = Arc::new(deployment(&registry_peer, 1));
    let mut registry = registry_swarm(&registry_key, &d, None);
    let registry_addr = listen(&mut registry).await;

    let client_key = Keypair::generate_ed25519();
    let client_peer = client_key.public().to_peer_id();
    let mut client = client_swarm(&client_key, &d, None);
    // The bootstrap (run by Behaviour::new) put the registry in the
    // engine's AddressBook; the swarm does not know it yet.
    assert!(
        on_node(&client, move |node| {
            node.engine_install_handle()
                .framework
                .address_book
                .lookup(to_engine_peer(&registry_peer))
                .is_some()
        }),
        "the bootstrap's InsertMany did not add the registry to the client's AddressBook"
    );
    assert!(!client.behaviour().is_known(&registry_peer));
    client.add_peer_address(registry_peer, registry_addr);

    let mut observed = Observed::default();
    let mut swarms = [&mut registry, &mut client];
    drive_until(
        &mut swarms,
        &mut observed,
        Duration::from_secs(10),
        "Announce and Handshake",
        |swarms, observed| {
            let view = on_node(swarms[0], registry_view);
            let handshaken = handshaken(swarms[1]);
            let idle = swarms
                .iter()
                .all(|s| s.behaviour().envelopes_in_flight() == 0);
            let acked = [
                observed.acked_by(1).contains(&registry_peer),
                observed.acked_by(0).contains(&client_peer),
            ];
            (!view.is_empty() && handshaken && idle && acked == [true, true])
                .then_some(())
                .ok_or(format!(
                    "registry view {view:?}, client handshaken {handshaken}, idle {idle}, \
                     Announce/Handshake acknowledged {acked:?}"
                ))
        },
    )
    .await;
    // Nothing more goes wrong for a while.
    run_for(&mut swarms, Duration::from_millis(200), |i, e| {
        observed.record(i, e)
    })
    .await;

    assert_eq!(
        on_node(&registry, registry_view),
        HashSet::from([client_peer]),
        "the registry's view holds exactly the client"
    );
    let state = on_node(&client, client_state);
    let policy = GlobalRegistryServerConfig::default();
    assert_eq!(state.last_assigned_ttl_ns, policy.default_ttl_ns);
    assert_eq!(state.last_heartbeat_interval_ns, policy.default_ttl_ns / 3);
    assert_eq!(observed.acked_by(1), HashSet::from([registry_peer]));
    assert_eq!(observed.acked_by(0), HashSet::from([client_peer]));
    assert!(observed.got.is_empty());
}

/// What forming a registry mesh of `nodes` Nodes took.
struct Figures {
    nodes: usize,
    formed: Duration,
    heap_kib: u64,
    rss_kib: Option<u64>,
}

impl Figures {
    fn print(&self) {
        let n = self.nodes as u64;
        eprintln!(
            "{} nodes: formed in {} ms ({:.2} ms per node), {} KiB heap per node{}",
            self.nodes,
            self.formed.as_millis(),
            self.formed.as_secs_f64() * 1000.0 / n as f64,
            self.heap_kib / n,
            self.rss_kib
                .map(|r| format!(", {} KiB RSS per node", r / n))
                .unwrap_or_default()
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn fifty_node_registry_mesh() {
    let _heap = HEAP.lock().await;
    registry_mesh(49, 10).await.print();
}

/// 100, 300 and 1,000 Nodes, each mesh formed completely, with the time and
/// memory per Node printed. Release only (a debug build takes minutes):
/// `cargo test --release --test discovery -- --ignored --nocapture`.
#[tokio::test(flavor = "current_thread")]
#[ignore = "release only: cargo test --release --test discovery -- --ignored --nocapture"]
async fn registry_meshes_of_100_300_and_1000_nodes() {
    let _heap = HEAP.lock().await;
    for nodes in [100, 300, 1000] {
        registry_mesh(nodes - 1, 10).await.print();
    }
}

/// A registry and `client_count` clients on the memory transport, two engine
/// threads: every client joins and is handshaken, with no envelope failing
/// on the way, and a value the registry sends to a sample of `sample`
/// arrives at exactly that sample.
async fn registry_mesh(client_count: usize, sample: usize) -> Figures {
    // The 50 Nodes share two engine threads, started before the baseline:
    // the figures below are the Nodes' and their swarms'.
    let pool = EnginePool::new(2).expect("engine threads");
    let rss_before = vm_rss_kib();
    let heap_before = live();
    let started = Instant::now();

    let registry_key = Keypair::generate_ed25519();
    let registry_peer = registry_key.public().to_peer_id();
    let d = Arc::new(deployment(&registry_peer, sample as u32));
    let mut swarms = vec![registry_swarm(&registry_key, &d, Some(&pool))];
    let registry_addr = listen(&mut swarms[0]).await;
    let mut clients = HashSet::new();
    for _ in 0..client_count {
        let key = Keypair::generate_ed25519();
        clients.insert(key.public().to_peer_id());
        let mut swarm = client_swarm(&key, &d, Some(&pool));
        // All a client is told: the registry's address, which it dials.
        // Its bootstrap's Announce goes out on the first poll, before the
        // connection is up: the `/p2p` suffix tells the swarm which peer
        // the dial is for, so the Announce waits for that connection
        // instead of dialling a peer it has no address for.
        swarm
            .dial(registry_addr.clone().with_p2p(registry_peer).unwrap())
            .unwrap();
        swarms.push(swarm);
    }
    let built = started.elapsed();

    let mut observed = Observed::default();
    let mut refs: Vec<&mut Swarm<Behaviour>> = swarms.iter_mut().collect();
    // A client once handshaken stays so; the check asks each engine thread
    // only about clients still waiting, so it costs less as the mesh forms.
    let mut waiting: Vec<usize> = (1..=client_count).collect();
    drive_until(
        &mut refs,
        &mut observed,
        Duration::from_secs(30 + client_count as u64 / 10),
        "every client in the registry's view",
        |swarms, _| {
            let view = on_node(swarms[0], registry_view);
            // Clients are asked only once the registry knows them all.
            if view == clients {
                waiting.retain(|&i| !handshaken(swarms[i]));
            }
            let waiting = waiting.len();
            let in_flight: usize = swarms
                .iter()
                .map(|s| s.behaviour().envelopes_in_flight())
                .sum();
            (view == clients && waiting == 0 && in_flight == 0)
                .then_some(())
                .ok_or(format!(
                    "{} of {client_count} in the view ({} unknown), {waiting} clients without a \
                     Handshake, {in_flight} envelopes in flight",
                    view.intersection(&clients).count(),
                    view.difference(&clients).count(),
                ))
        },
    )
    .await;
    let formed = started.elapsed();
    let heap_formed = live();
    let rss_formed = vm_rss_kib();
    for i in 1..=client_count {
        assert!(
            observed.acked_by(i).contains(&registry_peer),
            "client {i}'s Announce was not acknowledged"
        );
    }
    assert_eq!(observed.acked_by(0), clients, "Handshakes acknowledged");

    // The registry sends to a sample of its view.
    let payload = b"to a sample of the registry's view";
    let broadcast_started = Instant::now();
    observed.acked.clear();
    let target = d.broadcast.clone();
    on_node(refs[0], move |node| {
        node.invoke(&target, &[("x", &bytes_value(payload))])
            .expect("invoke Broadcast")
    });
    drive_until(
        &mut refs,
        &mut observed,
        Duration::from_secs(10),
        "the sampled clients' outputs",
        |_, observed| {
            let got = observed.got.len();
            (got >= sample && observed.acked_by(0).len() >= sample)
                .then_some(())
                .ok_or(format!(
                    "{got} of {sample} outputs, {} acknowledgements",
                    observed.acked_by(0).len()
                ))
        },
    )
    .await;
    let broadcast = broadcast_started.elapsed();
    // No other client receives it.
    run_for(&mut refs, Duration::from_millis(300), |i, e| {
        observed.record(i, e)
    })
    .await;

    let peer_of = |i: usize| *refs[i].local_peer_id();
    let receivers: HashSet<PeerId> = observed.got.iter().map(|(i, _)| peer_of(*i)).collect();
    assert_eq!(observed.got.len(), sample, "outputs: {:?}", observed.got);
    assert_eq!(receivers.len(), sample, "one output per sampled client");
    assert!(
        observed.got.iter().all(|(i, _)| *i != 0),
        "the registry output the value itself"
    );
    for (i, value) in &observed.got {
        assert_eq!(*value, bytes_value(payload), "client {i} got other bytes");
    }
    assert_eq!(
        receivers,
        observed.acked_by(0),
        "exactly the clients the registry sent to output the value"
    );
    assert!(receivers.is_subset(&clients));

    let nodes = client_count + 1;
    let heap = heap_formed.saturating_sub(heap_before) as u64 / 1024;
    eprintln!(
        "{nodes} nodes: swarms built in {} ms, registry view complete in {} ms ({:.1} ms per node); \
         broadcast to {sample} sampled clients in {} ms",
        built.as_millis(),
        formed.as_millis(),
        formed.as_secs_f64() * 1000.0 / nodes as f64,
        broadcast.as_millis(),
    );
    eprintln!(
        "{nodes} nodes: {heap} KiB heap ({} KiB per node)",
        heap / nodes as u64
    );
    if let (Some(before), Some(after)) = (rss_before, rss_formed) {
        let rss = after.saturating_sub(before);
        eprintln!(
            "{nodes} nodes: {rss} KiB RSS growth ({} KiB RSS per node)",
            rss / nodes as u64
        );
    }
    eprintln!(
        "{nodes} nodes: {} WireTimeout steps (one-way sends nothing answers)",
        observed.wire_timeouts
    );
    Figures {
        nodes,
        formed,
        heap_kib: heap,
        rss_kib: rss_before.zip(rss_formed).map(|(b, a)| a.saturating_sub(b)),
    }
}
