//! Randomized scenarios over a small mesh on the memory transport: sends
//! (to peers, to the Node itself, to unknown peers), disconnects and
//! redials, block and unblock, snapshots and restarts from them, and busy
//! receivers, mixed by a seed, with the behaviour alone or composed with
//! `connection_limits` before or after it. After each scenario the promises must hold:
//!
//! - every send has exactly one outcome (acknowledged, failed, or for an
//!   unknown peer the engine's `PeerResolveFailed`);
//! - every acknowledged value was output by its receiver's engine, and no
//!   value was output twice; a value output without an acknowledgement
//!   failed with a reason that says it may have been delivered;
//! - in-flight and queued counts return to zero, and the per-peer failure
//!   state stays within its bound.
//!
//! `BB_SCENARIOS=<n>` runs n seeds (default 6); `BB_SCENARIO_SEED=<s>`
//! replays one.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bb_libp2p::{Behaviour, Config, EngineStep, Event, SendFailure};
use bytesandbrains::proto::onnx::ModelProto;
use common::models::{compile, install, invoke_send, Ping};
use common::{hold_engine, listen, memory_swarm, run_for, until};
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm};

/// A composition the scenarios run, with this behaviour inside it.
trait Mesh: NetworkBehaviour + Sized {
    fn wrap(bb: Behaviour) -> Self;
    fn bb(&self) -> &Behaviour;
    fn event(event: Self::ToSwarm) -> Option<Event>;
}

impl Mesh for Behaviour {
    fn wrap(bb: Behaviour) -> Self {
        bb
    }
    fn bb(&self) -> &Behaviour {
        self
    }
    fn event(event: Event) -> Option<Event> {
        Some(event)
    }
}

fn limits() -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        ConnectionLimits::default().with_max_established_per_peer(Some(1)),
    )
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct LimitsFirst {
    limits: connection_limits::Behaviour,
    bb: Behaviour,
}

impl Mesh for LimitsFirst {
    fn wrap(bb: Behaviour) -> Self {
        Self {
            limits: limits(),
            bb,
        }
    }
    fn bb(&self) -> &Behaviour {
        &self.bb
    }
    fn event(event: LimitsFirstEvent) -> Option<Event> {
        match event {
            LimitsFirstEvent::Bb(e) => Some(e),
            LimitsFirstEvent::Limits(_) => None,
        }
    }
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct LimitsAfter {
    bb: Behaviour,
    limits: connection_limits::Behaviour,
}

impl Mesh for LimitsAfter {
    fn wrap(bb: Behaviour) -> Self {
        Self {
            bb,
            limits: limits(),
        }
    }
    fn bb(&self) -> &Behaviour {
        &self.bb
    }
    fn event(event: LimitsAfterEvent) -> Option<Event> {
        match event {
            LimitsAfterEvent::Bb(e) => Some(e),
            LimitsAfterEvent::Limits(_) => None,
        }
    }
}

/// A swarm whose Node runs Ping's sender and receiver, restored from
/// `snapshot` when there is one.
fn node_swarm<M: Mesh>(
    key: &Keypair,
    model: &ModelProto,
    targets: &[String],
    snapshot: Option<bb_libp2p::NodeSnapshot>,
) -> Swarm<M> {
    let (k, m, t) = (key.clone(), model.clone(), targets.to_vec());
    let bb = Behaviour::new(
        move || {
            let mut node = install(&k, &m, &[&t[0], &t[1]]);
            if let Some(snapshot) = snapshot {
                Behaviour::restore(&mut node, snapshot).expect("restores");
            }
            Ok::<_, std::convert::Infallible>(node)
        },
        // Envelopes caught by disconnects and blocks go again for 5 s (a
        // minute by default), so every send ends within the settling time.
        Config::default().with_delivery_window(Duration::from_secs(5)),
    )
    .expect("the Node starts");
    memory_swarm(key.clone(), M::wrap(bb))
}

const NODES: usize = 4;
const STEPS: usize = 40;

/// xorshift64*: reproducible from its seed, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What one scenario saw.
#[derive(Default)]
struct Ledger {
    /// Sends each Node made.
    sends: Vec<usize>,
    /// Outcomes each Node reported.
    outcomes: Vec<usize>,
    /// Acknowledged and may-have-been-delivered outcomes, per (sender, receiver).
    acked: HashMap<(usize, usize), usize>,
    maybe: HashMap<(usize, usize), usize>,
    /// Values each receiver output, as (sender, counter).
    arrived: HashMap<usize, Vec<(usize, u32)>>,
}

fn index_of(peers: &[PeerId], peer: &PeerId) -> Option<usize> {
    peers.iter().position(|p| p == peer)
}

fn record<M: Mesh>(ledger: &mut Ledger, peers: &[PeerId], i: usize, event: SwarmEvent<M::ToSwarm>) {
    let SwarmEvent::Behaviour(event) = event else {
        return;
    };
    let Some(event) = M::event(event) else {
        return;
    };
    match event {
        Event::EnvelopeAcknowledged { peer, .. } => {
            ledger.outcomes[i] += 1;
            let to = index_of(peers, &peer).expect("acknowledged by a mesh peer");
            *ledger.acked.entry((i, to)).or_default() += 1;
        }
        Event::SendFailed { peer, reason, .. } => {
            ledger.outcomes[i] += 1;
            if reason.may_have_been_delivered() {
                let to = peer.and_then(|p| index_of(peers, &p)).expect("a mesh peer");
                *ledger.maybe.entry((i, to)).or_default() += 1;
            } else {
                assert!(
                    !matches!(reason, SendFailure::Oversize { .. }),
                    "node {i}: {reason}"
                );
            }
        }
        Event::Engine(EngineStep::PeerResolveFailed { .. }) => ledger.outcomes[i] += 1,
        Event::OutboundDropped { count } => panic!("node {i}: the engine dropped {count}"),
        Event::AppEvent { value_bytes, .. } => {
            // bincode(BytesValue): an 8-byte length, then sender and counter.
            let sender = u32::from_le_bytes(value_bytes[8..12].try_into().unwrap()) as usize;
            let n = u32::from_le_bytes(value_bytes[12..16].try_into().unwrap());
            ledger.arrived.entry(i).or_default().push((sender, n));
        }
        _ => {}
    }
}

async fn scenario<M: Mesh>(seed: u64) {
    let mut rng = Rng(seed | 1);
    let (model, targets) = compile(Ping);
    let keys: Vec<Keypair> = (0..NODES).map(|_| Keypair::generate_ed25519()).collect();
    let mut swarms: Vec<Swarm<M>> = keys
        .iter()
        .map(|key| node_swarm(key, &model, &targets, None))
        .collect();
    let mut addrs: Vec<Multiaddr> = Vec::new();
    for swarm in &mut swarms {
        addrs.push(listen(swarm).await);
    }
    let peers: Vec<PeerId> = swarms.iter().map(|s| *s.local_peer_id()).collect();
    for (i, swarm) in swarms.iter_mut().enumerate() {
        for (j, addr) in addrs.iter().enumerate() {
            if i != j {
                swarm.add_peer_address(peers[j], addr.clone());
            }
        }
    }
    let mut ledger = Ledger {
        sends: vec![0; NODES],
        outcomes: vec![0; NODES],
        ..Default::default()
    };
    let mut counter = 0u32;
    let mut blocked: HashSet<(usize, usize)> = HashSet::new();
    // A Node restarted from a snapshot has lost what its engine took after
    // it (and outputs its engine made but its swarm had not reported).
    let mut restarted: HashSet<usize> = HashSet::new();
    // Engines held busy, by Node; a call into a held Node's engine waits
    // for it, so its hold ends first.
    let mut held = HashMap::new();
    for _ in 0..STEPS {
        let (i, j) = (rng.below(NODES), rng.below(NODES));
        let op = rng.below(10);
        // Every operation on i but a disconnect or a dial calls into its
        // engine (a new hold too).
        if !matches!(op, 5 | 6) {
            held.remove(&i);
        }
        match op {
            0..=4 => {
                // A burst of sends from i: to j (maybe itself), now and then
                // to a peer nobody knows.
                let dest = if rng.below(8) == 0 {
                    PeerId::random()
                } else {
                    peers[j]
                };
                let burst = 1 + rng.below(20);
                let target = targets[0].clone();
                let first = counter;
                counter += burst as u32;
                swarms[i]
                    .behaviour()
                    .bb()
                    .handle()
                    .with_node_blocking(move |node| {
                        for n in first..first + burst as u32 {
                            let value = [i as u32, n].map(u32::to_le_bytes).concat();
                            invoke_send(node, &target, dest, &value);
                        }
                    })
                    .unwrap();
                ledger.sends[i] += burst;
            }
            5 => {
                let _ = swarms[i].disconnect_peer_id(peers[j]);
            }
            6 => {
                let _ = swarms[i].dial(addrs[j].clone());
            }
            7 if i != j => {
                let p = bb_libp2p::to_engine_peer(&peers[j]);
                if blocked.remove(&(i, j)) {
                    swarms[i]
                        .behaviour()
                        .bb()
                        .handle()
                        .with_node_blocking(move |node| node.unblock_peer(p))
                        .unwrap();
                } else {
                    blocked.insert((i, j));
                    swarms[i]
                        .behaviour()
                        .bb()
                        .handle()
                        .with_node_blocking(move |node| node.block_peer(p))
                        .unwrap();
                }
            }
            8 => match swarms[i].behaviour().bb().snapshot().await {
                // Now and then the Node restarts from it: a new swarm, the
                // same identity, a new address.
                Ok(snapshot) if rng.below(2) == 0 => {
                    blocked.retain(|(from, _)| *from != i);
                    restarted.insert(i);
                    swarms[i] = node_swarm(&keys[i], &model, &targets, Some(snapshot));
                    // The restored Node sends what it carried at once: its
                    // outcomes count from the first poll.
                    swarms[i].listen_on("/memory/0".parse().unwrap()).unwrap();
                    addrs[i] = until(
                        &mut [&mut swarms[i]],
                        Duration::from_secs(10),
                        "a listen address",
                        |_, e| match e {
                            SwarmEvent::NewListenAddr { address, .. } => Some(address),
                            e => {
                                record::<M>(&mut ledger, &peers, i, e);
                                None
                            }
                        },
                    )
                    .await;
                    for (j, swarm) in swarms.iter_mut().enumerate() {
                        if j != i {
                            swarm.add_peer_address(peers[i], addrs[i].clone());
                        }
                    }
                    for (j, addr) in addrs.clone().into_iter().enumerate() {
                        if j != i {
                            swarms[i].add_peer_address(peers[j], addr);
                        }
                    }
                }
                Ok(_) | Err(bb_libp2p::SnapshotFailed::TooManyUnacknowledged { .. }) => {}
                Err(e) => panic!("snapshot: {e}"),
            },
            _ => {
                // A receiver deep in a computation for a moment.
                held.insert(i, hold_engine(&swarms[i].behaviour().bb().handle()));
            }
        }
        let mut refs: Vec<&mut Swarm<M>> = swarms.iter_mut().collect();
        run_for(
            &mut refs,
            Duration::from_millis(1 + rng.below(20) as u64),
            |i, e| record::<M>(&mut ledger, &peers, i, e),
        )
        .await;
        if rng.below(3) == 0 {
            held.clear();
        }
    }
    held.clear();
    // Settle: every Node answers again, and everything ends.
    for (i, j) in blocked.drain() {
        let p = bb_libp2p::to_engine_peer(&peers[j]);
        swarms[i]
            .behaviour()
            .bb()
            .handle()
            .with_node_blocking(move |node| node.unblock_peer(p))
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut refs: Vec<&mut Swarm<M>> = swarms.iter_mut().collect();
        run_for(&mut refs, Duration::from_millis(200), |i, e| {
            record::<M>(&mut ledger, &peers, i, e)
        })
        .await;
        let settled = ledger.outcomes == ledger.sends
            && swarms.iter().all(|s| {
                s.behaviour().bb().envelopes_in_flight() + s.behaviour().bb().envelopes_queued()
                    == 0
            });
        if settled {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: sends {:?}, outcomes {:?}, held (in flight, queued) {:?}",
            ledger.sends,
            ledger.outcomes,
            swarms
                .iter()
                .map(|s| (
                    s.behaviour().bb().envelopes_in_flight(),
                    s.behaviour().bb().envelopes_queued(),
                    s.behaviour().bb().engine_backlog()
                ))
                .collect::<Vec<_>>()
        );
    }
    // A late outcome would be a second one.
    let mut refs: Vec<&mut Swarm<M>> = swarms.iter_mut().collect();
    run_for(&mut refs, Duration::from_millis(300), |i, e| {
        record::<M>(&mut ledger, &peers, i, e)
    })
    .await;
    assert_eq!(
        ledger.outcomes, ledger.sends,
        "seed {seed}: one outcome per send"
    );
    for (to, values) in &ledger.arrived {
        let distinct: HashSet<_> = values.iter().collect();
        assert_eq!(
            distinct.len(),
            values.len(),
            "seed {seed}: node {to} output a value twice"
        );
        for from in 0..NODES {
            let got = values.iter().filter(|(s, _)| *s == from).count();
            let acked = ledger.acked.get(&(from, *to)).copied().unwrap_or(0);
            let maybe = ledger.maybe.get(&(from, *to)).copied().unwrap_or(0);
            // A restarted receiver may have lost what it took after its
            // snapshot; it still never outputs a value twice, nor one that
            // was neither acknowledged nor possibly delivered.
            let lost_ok = restarted.contains(to);
            assert!(
                (acked <= got || lost_ok) && got <= acked + maybe,
                "seed {seed}: {from} -> {to}: {got} output, {acked} acknowledged, {maybe} may have been"
            );
        }
    }
    for (from, to) in ledger
        .acked
        .keys()
        .filter(|(_, to)| !restarted.contains(to))
    {
        assert!(
            ledger.arrived.contains_key(to),
            "seed {seed}: {from} -> {to} acknowledged, nothing output"
        );
    }
    for swarm in &swarms {
        assert!(swarm.behaviour().bb().peers_with_failure_state() <= NODES);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn randomized_scenarios_keep_every_promise() {
    if let Some(seed) = std::env::var("BB_SCENARIO_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return run(seed).await;
    }
    let runs: u64 = std::env::var("BB_SCENARIOS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    for case in 0..runs {
        let seed = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(case + 1);
        println!("scenario seed {seed}");
        run(seed).await;
    }
}

/// The seed also picks the composition: the behaviour alone, or with
/// `connection_limits` (one connection per peer) before or after it.
async fn run(seed: u64) {
    match seed % 3 {
        0 => scenario::<Behaviour>(seed).await,
        1 => scenario::<LimitsFirst>(seed).await,
        _ => scenario::<LimitsAfter>(seed).await,
    }
}
