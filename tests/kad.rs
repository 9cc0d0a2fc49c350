//! Finding peers with kad: twenty Nodes, each told one bootstrap peer, learn
//! of each other from kad's routing tables and send each other a value,
//! all to all, each arriving with its exact bytes and its sender. The
//! behaviour learns the addresses kad reports (`NewExternalAddrOfPeer`) and
//! those of its connections; for any other peer a send names, kad offers
//! the address when the swarm dials it by id.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bb_libp2p::{ports, values, Behaviour, Event};
use common::models::{bb_behaviour, compile, Ping};
use common::{listen, memory_swarm, until};
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, PeerId, Swarm};

const NODES: usize = 20;

/// What a mesh application composes: the engine, kad to find peers, and
/// identify so that kad learns the addresses peers listen on.
#[derive(NetworkBehaviour)]
struct Mesh {
    bb: Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
}

fn mesh(bb: impl FnOnce(&Keypair) -> Behaviour) -> Swarm<Mesh> {
    let key = Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let mut kad = kad::Behaviour::new(peer, MemoryStore::new(peer));
    // The memory transport confirms no external address; serve anyway.
    kad.set_mode(Some(kad::Mode::Server));
    let identify = identify::Behaviour::new(identify::Config::new("/mesh/1".into(), key.public()));
    memory_swarm(
        key.clone(),
        Mesh {
            bb: bb(&key),
            kad,
            identify,
        },
    )
}

/// kad's routing table: the peers this Node has found.
fn found(swarm: &mut Swarm<Mesh>) -> Vec<PeerId> {
    let mut peers = Vec::new();
    for bucket in swarm.behaviour_mut().kad.kbuckets() {
        peers.extend(bucket.iter().map(|e| *e.node.key.preimage()));
    }
    peers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_find_each_other_through_kad_and_exchange_values() {
    let (model, _) = compile(Ping);
    let port = ports::port(&model, "port").unwrap();
    let targets = [port.sender.as_str(), port.receiver.as_str()];
    let mut swarms: Vec<Swarm<Mesh>> = (0..NODES)
        .map(|_| mesh(|key| bb_behaviour(key, &model, &targets, Default::default())))
        .collect();
    let ids: Vec<PeerId> = swarms.iter().map(|s| *s.local_peer_id()).collect();

    let bootstrap = listen(&mut swarms[0]).await;
    for swarm in &mut swarms[1..] {
        listen(swarm).await;
        swarm
            .behaviour_mut()
            .kad
            .add_address(&ids[0], bootstrap.clone());
        swarm.behaviour_mut().kad.bootstrap().unwrap();
    }

    // Until every routing table holds every other Node.
    let mut rounds = 0;
    loop {
        let complete = swarms.iter_mut().all(|s| found(s).len() == NODES - 1);
        if complete {
            break;
        }
        rounds += 1;
        assert!(rounds <= 20, "kad did not find every Node in 20 rounds");
        let mut listening = Vec::new();
        let mut refs: Vec<&mut Swarm<Mesh>> = swarms.iter_mut().collect();
        common::run_for(&mut refs, Duration::from_millis(500), |i, e| {
            if let SwarmEvent::Behaviour(MeshEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) = e
            {
                listening.push((i, peer_id, info.listen_addrs));
            }
        })
        .await;
        // Identify says where a peer that dialled in listens; kad keeps it.
        for (i, peer, addresses) in listening {
            for address in addresses {
                swarms[i].behaviour_mut().kad.add_address(&peer, address);
            }
        }
        for swarm in &mut swarms[1..] {
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }
    }

    // Each Node sends its own value to every peer kad found.
    let mut expected: HashMap<(usize, PeerId), Vec<u8>> = HashMap::new();
    for (i, swarm) in swarms.iter_mut().enumerate() {
        let peers = found(swarm);
        let value = values::bytes(format!("value of node {i}").as_bytes());
        for j in 0..NODES {
            if j != i {
                expected.insert((j, ids[i]), value.clone());
            }
        }
        let (sender, peers) = (port.sender.clone(), values::peers(&peers));
        swarm
            .behaviour()
            .bb
            .handle()
            .with_node_blocking(move |node| {
                node.invoke(&sender, &[("peers", &peers), ("x", &value)])
            })
            .unwrap()
            .unwrap();
    }

    let mut heard: HashMap<(usize, PeerId), Vec<u8>> = HashMap::new();
    let mut acknowledged = 0;
    let mut refs: Vec<&mut Swarm<Mesh>> = swarms.iter_mut().collect();
    until(
        &mut refs,
        Duration::from_secs(60),
        "every value at every Node",
        |i, e| {
            match e {
                SwarmEvent::Behaviour(MeshEvent::Bb(Event::AppEvent {
                    sender,
                    value_bytes,
                    ..
                })) => {
                    let sender = sender.expect("a value from a peer names it");
                    assert!(heard.insert((i, sender), value_bytes).is_none(), "twice");
                }
                SwarmEvent::Behaviour(MeshEvent::Bb(Event::EnvelopeAcknowledged { .. })) => {
                    acknowledged += 1
                }
                SwarmEvent::Behaviour(MeshEvent::Bb(Event::SendFailed {
                    peer, reason, ..
                })) => {
                    panic!("node {i} to {peer:?}: {reason}")
                }
                _ => {}
            }
            (heard.len() == NODES * (NODES - 1) && acknowledged == NODES * (NODES - 1))
                .then_some(())
        },
    )
    .await;
    assert_eq!(heard, expected);

    // Every Node is connected to every other now, so the engine resolves
    // them all through the behaviour.
    for (i, swarm) in swarms.iter().enumerate() {
        let resolvable: HashSet<PeerId> = swarm
            .behaviour()
            .bb
            .resolvable_peers()
            .into_iter()
            .collect();
        let others: HashSet<PeerId> = ids.iter().copied().filter(|p| *p != ids[i]).collect();
        assert_eq!(resolvable, others, "node {i}");
    }
}
