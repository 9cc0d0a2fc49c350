//! Fairness under a flood: one peer sending as fast as it can into a
//! receiver whose engine is busy (held for a while, as by a long
//! computation) does not starve ten peers sending at an honest pace. The
//! flooder fills its share of the receiver's ingress and is answered busy;
//! the honest envelopes are acknowledged at once, and the metrics say who
//! got the busy answers.

mod common;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bb_libp2p::{Behaviour, Config, Event, Metrics};
use common::models::{bb_swarm_with, compile, numbered, send_values, Ping};
use common::{connect, hold_engine};
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

const HONEST: usize = 10;
const HONEST_VALUES: usize = 20;
const HONEST_EVERY: Duration = Duration::from_millis(50);
const FLOOD: u32 = 1000;
/// The receiver's ingress: the flood alone would fill it; its share (half)
/// leaves room for every honest value sent while the engine is held.
const INGRESS: usize = 512;

/// The value of one series in a text scrape of `registry`.
fn sample(registry: &Registry, series: &str) -> f64 {
    let mut text = String::new();
    encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Sends `HONEST_VALUES` values to `to`, one every `HONEST_EVERY`, on its
/// own task; returns the time from each send to its acknowledgement.
async fn honest(
    mut swarm: Swarm<Behaviour>,
    target: String,
    to: PeerId,
    i: usize,
) -> Vec<Duration> {
    let handle = swarm.behaviour().handle();
    let mut tick = tokio::time::interval(HONEST_EVERY);
    let (mut sent, mut latencies) = (VecDeque::new(), Vec::new());
    let mut n = 0;
    while latencies.len() < HONEST_VALUES {
        tokio::select! {
            _ = tick.tick(), if n < HONEST_VALUES => {
                let (target, value) = (target.clone(), common::models::bytes_value(format!("honest {i} {n}").as_bytes()));
                let peers = common::models::peers_value(&[to]);
                sent.push_back(Instant::now());
                handle
                    .with_node(move |node| node.invoke(&target, &[("peers", &peers), ("x", &value)]).map(drop))
                    .await
                    .unwrap()
                    .unwrap();
                n += 1;
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => {
                    latencies.push(sent.pop_front().unwrap().elapsed());
                }
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                    panic!("honest peer {i}: a value failed: {reason}")
                }
                _ => {}
            }
        }
    }
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooder_gets_the_busy_answers_and_honest_peers_do_not_wait() {
    let (model, targets) = compile(Ping);
    let (mut flooder_registry, mut honest_registry) = (Registry::default(), Registry::default());
    let flooder_metrics = Metrics::new(&mut flooder_registry);
    let honest_metrics = Metrics::new(&mut honest_registry);
    // A small ingress, so that the flood fills it.
    let mut receiver = bb_swarm_with(
        &model,
        &[&targets[1]],
        Config::default().with_max_ingress_envelopes(INGRESS),
    );
    let mut flooder = bb_swarm_with(
        &model,
        &[&targets[0]],
        Config::default().with_metrics(flooder_metrics),
    );
    let mut honest_swarms: Vec<Swarm<Behaviour>> = (0..HONEST)
        .map(|_| {
            let config = Config::default().with_metrics(honest_metrics.clone());
            bb_swarm_with(&model, &[&targets[0]], config)
        })
        .collect();
    connect(&mut flooder, &mut receiver).await;
    for swarm in &mut honest_swarms {
        connect(swarm, &mut receiver).await;
    }
    let pr = *receiver.local_peer_id();
    let honest_ids: Vec<PeerId> = honest_swarms.iter().map(|s| *s.local_peer_id()).collect();

    // The receiver's engine is busy at first: its ingress fills, and only
    // then drains.
    let held = hold_engine(&receiver.behaviour().handle());
    let (heard_tx, mut heard_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(Event::AppEvent {
                sender: Some(sender),
                ..
            }) = receiver.select_next_some().await
            {
                let _ = heard_tx.send(sender);
            }
        }
    });
    // The flood: every value at once, with the engine held.
    let flood = flooder.behaviour().handle();
    let flood_target = targets[0].clone();
    tokio::task::spawn_blocking(move || send_values(&flood, &flood_target, pr, numbered(FLOOD)))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            flooder.select_next_some().await;
        }
    });
    // The honest peers start once the flood has met a full ingress (or a
    // full share of it).
    let flood_started = Instant::now();
    while sample(&flooder_registry, "bb_libp2p_busy_answers_total") == 0.0 {
        assert!(
            flood_started.elapsed() < Duration::from_secs(10),
            "the flood never filled the ingress"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The engine stays held until every honest value was sent.
    let release = tokio::spawn(async move {
        tokio::time::sleep(HONEST_EVERY * HONEST_VALUES as u32 + Duration::from_millis(200)).await;
        drop(held);
    });
    let runs: Vec<_> = honest_swarms
        .into_iter()
        .enumerate()
        .map(|(i, swarm)| tokio::spawn(honest(swarm, targets[0].clone(), pr, i)))
        .collect();
    let mut latencies = Vec::new();
    for run in runs {
        let run = tokio::time::timeout(Duration::from_secs(30), run);
        latencies.extend(
            run.await
                .expect("honest values acknowledged in 30 s")
                .unwrap(),
        );
    }
    release.await.unwrap();
    let mut heard: HashMap<PeerId, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while heard.values().sum::<usize>() < HONEST * HONEST_VALUES {
        let sender = tokio::time::timeout_at(deadline, heard_rx.recv())
            .await
            .expect("every honest value arrives")
            .unwrap();
        if honest_ids.contains(&sender) {
            *heard.entry(sender).or_default() += 1;
        }
    }

    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let median = latencies[latencies.len() / 2];
    let flooder_busy = sample(&flooder_registry, "bb_libp2p_busy_answers_total");
    let honest_busy = sample(&honest_registry, "bb_libp2p_busy_answers_total");
    println!(
        "honest acknowledgements: median {median:?}, p99 {p99:?}; busy answers: flooder {flooder_busy}, honest {honest_busy}"
    );
    assert!(p99 <= Duration::from_millis(100), "p99 {p99:?}");
    assert!(flooder_busy > 0.0, "the flood never met a full share");
    assert_eq!(honest_busy, 0.0);
    assert_eq!(heard.len(), HONEST);
    assert!(heard.values().all(|n| *n == HONEST_VALUES), "{heard:?}");
}
