//! Discovery over libp2p: clients announce themselves to a registry with the
//! engine's GlobalRegistry protocol, and the registry reaches a sample of
//! the clients it learned.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bb_libp2p::{to_engine_peer, Behaviour, Config, Event};
use bb_runtime::engine::EngineStep;
use bytesandbrains::protocols::global_registry::GlobalRegistryServerConfig;
use common::models::bytes_value;
use common::registry::{client_node, client_state, deployment, registry_node, registry_view};
use common::{listen, memory_swarm, run_for};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm};

/// Counts the heap bytes each thread holds. A test runs on its own thread
/// and its swarms on its one task, so the count is what that test's Nodes
/// and swarms allocate.
struct PerThread;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(bytes: isize) {
    let _ = LIVE.try_with(|live| live.set(live.get() + bytes));
}

unsafe impl GlobalAlloc for PerThread {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: PerThread = PerThread;

fn live_heap() -> isize {
    LIVE.with(Cell::get)
}

/// The process's resident set, from `/proc/self/status` (Linux), in KiB.
fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

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
    loop {
        run_for(swarms, Duration::from_millis(10), |i, e| {
            observed.record(i, e)
        })
        .await;
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
fn handshaken(swarm: &mut Swarm<Behaviour>) -> bool {
    client_state(swarm.behaviour_mut().node_mut()).last_assigned_ttl_ns != 0
}

fn swarm_with(key: Keypair, node: bytesandbrains::Node) -> Swarm<Behaviour> {
    memory_swarm(key, Behaviour::new(node, Config::default()))
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_joins_the_registry_over_libp2p() {
    let registry_key = Keypair::generate_ed25519();
    let registry_peer = registry_key.public().to_peer_id();
    let d = deployment(&registry_peer, 1);
    let mut registry = swarm_with(registry_key.clone(), registry_node(&registry_key, &d));
    let registry_addr = listen(&mut registry).await;

    let client_key = Keypair::generate_ed25519();
    let client_peer = client_key.public().to_peer_id();
    let mut client = swarm_with(client_key.clone(), client_node(&client_key, &d));
    // The bootstrap (run by Behaviour::new) put the registry in the
    // engine's AddressBook; the swarm does not know it yet.
    assert!(
        client
            .behaviour_mut()
            .node_mut()
            .engine_install_handle()
            .framework
            .address_book
            .lookup(to_engine_peer(&registry_peer))
            .is_some(),
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
            let view = registry_view(swarms[0].behaviour_mut().node_mut());
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
        registry_view(registry.behaviour_mut().node_mut()),
        HashSet::from([client_peer]),
        "the registry's view holds exactly the client"
    );
    let state = client_state(client.behaviour_mut().node_mut());
    let policy = GlobalRegistryServerConfig::default();
    assert_eq!(state.last_assigned_ttl_ns, policy.default_ttl_ns);
    assert_eq!(state.last_heartbeat_interval_ns, policy.default_ttl_ns / 3);
    assert_eq!(observed.acked_by(1), HashSet::from([registry_peer]));
    assert_eq!(observed.acked_by(0), HashSet::from([client_peer]));
    assert!(observed.got.is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn fifty_node_registry_mesh() {
    const CLIENTS: usize = 49;
    const SAMPLE: usize = 10;
    let rss_before = vm_rss_kib();
    let heap_before = live_heap();
    let started = Instant::now();

    let registry_key = Keypair::generate_ed25519();
    let registry_peer = registry_key.public().to_peer_id();
    let d = deployment(&registry_peer, SAMPLE as u32);
    let mut swarms = vec![swarm_with(
        registry_key.clone(),
        registry_node(&registry_key, &d),
    )];
    let registry_addr = listen(&mut swarms[0]).await;
    let mut clients = HashSet::new();
    for _ in 0..CLIENTS {
        let key = Keypair::generate_ed25519();
        clients.insert(key.public().to_peer_id());
        let mut swarm = swarm_with(key.clone(), client_node(&key, &d));
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
    drive_until(
        &mut refs,
        &mut observed,
        Duration::from_secs(30),
        "every client in the registry's view",
        |swarms, _| {
            let view = registry_view(swarms[0].behaviour_mut().node_mut());
            let waiting = swarms[1..]
                .iter_mut()
                .map(|s| !handshaken(s))
                .filter(|&w| w)
                .count();
            let in_flight: usize = swarms
                .iter()
                .map(|s| s.behaviour().envelopes_in_flight())
                .sum();
            (view == clients && waiting == 0 && in_flight == 0)
                .then_some(())
                .ok_or(format!(
                    "{} of {CLIENTS} in the view ({} unknown), {waiting} clients without a \
                     Handshake, {in_flight} envelopes in flight",
                    view.intersection(&clients).count(),
                    view.difference(&clients).count(),
                ))
        },
    )
    .await;
    let formed = started.elapsed();
    let heap_formed = live_heap();
    let rss_formed = vm_rss_kib();
    for i in 1..=CLIENTS {
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
    refs[0]
        .behaviour_mut()
        .node_mut()
        .invoke(&d.broadcast, &[("x", &bytes_value(payload))])
        .expect("invoke Broadcast");
    drive_until(
        &mut refs,
        &mut observed,
        Duration::from_secs(10),
        "the sampled clients' outputs",
        |_, observed| {
            let got = observed.got.len();
            (got >= SAMPLE && observed.acked_by(0).len() >= SAMPLE)
                .then_some(())
                .ok_or(format!(
                    "{got} of {SAMPLE} outputs, {} acknowledgements",
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
    assert_eq!(observed.got.len(), SAMPLE, "outputs: {:?}", observed.got);
    assert_eq!(receivers.len(), SAMPLE, "one output per sampled client");
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

    let nodes = CLIENTS + 1;
    let heap = (heap_formed - heap_before).max(0) as u64 / 1024;
    eprintln!(
        "{nodes} nodes: swarms built in {} ms, registry view complete in {} ms ({:.1} ms per node); \
         broadcast to {SAMPLE} sampled clients in {} ms",
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
}
