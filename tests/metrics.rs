//! Prometheus metrics over real HTTP: after real traffic, a scrape of each
//! side's `/metrics` endpoint (the examples' `--metrics`) shows exactly what
//! was sent, received, acknowledged and failed.

mod common;

#[path = "../examples/common/metrics_endpoint.rs"]
mod metrics_endpoint;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bb_libp2p::{Config, Event, Metrics, SendFailure};
use common::models::{bb_swarm_with, compile, numbered, send_value, send_values, Ping};
use common::{connect, until};
use libp2p::swarm::SwarmEvent;
use libp2p::PeerId;
use prometheus_client::registry::Registry;

const VALUES: u32 = 10;

/// The samples of a Prometheus text scrape, by series (`name{labels}`).
fn scrape(address: std::net::SocketAddr) -> HashMap<String, f64> {
    let body = ureq::get(&format!("http://{address}/metrics"))
        .call()
        .expect("the endpoint answers")
        .body_mut()
        .read_to_string()
        .expect("a text body");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("`series value`");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_what_was_sent() {
    let (model, targets) = compile(Ping);
    let (mut registry_a, mut registry_b) = (Registry::default(), Registry::default());
    let config_a = Config::default().with_metrics(Metrics::new(&mut registry_a));
    let config_b = Config::default().with_metrics(Metrics::new(&mut registry_b));
    let mut a = bb_swarm_with(&model, &[&targets[0]], config_a);
    let mut b = bb_swarm_with(&model, &[&targets[1]], config_b);
    let endpoint = |registry| {
        metrics_endpoint::serve(
            Arc::new(Mutex::new(registry)),
            "127.0.0.1:0".parse().unwrap(),
        )
    };
    let (address_a, address_b) = (
        endpoint(registry_a).await.unwrap(),
        endpoint(registry_b).await.unwrap(),
    );
    connect(&mut a, &mut b).await;
    let pb = *b.local_peer_id();

    send_values(&a.behaviour().handle(), &targets[0], pb, numbered(VALUES));
    // And one to a peer nobody knows.
    send_value(
        &a.behaviour().handle(),
        &targets[0],
        PeerId::random(),
        b"nowhere",
    );
    let (mut acknowledged, mut heard, mut unresolved) = (0, 0, 0);
    until(
        &mut [&mut a, &mut b],
        Duration::from_secs(10),
        "every outcome",
        |_, e| {
            match e {
                SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) => acknowledged += 1,
                SwarmEvent::Behaviour(Event::AppEvent { .. }) => heard += 1,
                SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                    assert_eq!(reason, SendFailure::Unresolved);
                    unresolved += 1;
                }
                _ => {}
            }
            (acknowledged == VALUES && heard == VALUES && unresolved == 1).then_some(())
        },
    )
    .await;
    // One more turn of each swarm, so its gauges settle.
    common::run_for(&mut [&mut a, &mut b], Duration::from_millis(100), |_, _| {}).await;
    let (wire_a, wire_b) = (a.behaviour().wire_stats(), b.behaviour().wire_stats());

    let scraped_a = tokio::task::spawn_blocking(move || scrape(address_a))
        .await
        .unwrap();
    let scraped_b = tokio::task::spawn_blocking(move || scrape(address_b))
        .await
        .unwrap();
    let at = |scraped: &HashMap<String, f64>, series: &str| {
        *scraped
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in {scraped:?}"))
    };
    let n = f64::from(VALUES);
    // The one to nobody was handed to the transport too, whose dial failed.
    assert_eq!(at(&scraped_a, "bb_libp2p_envelopes_sent_total"), n + 1.0);
    assert_eq!(wire_a.envelopes_sent, u64::from(VALUES) + 1);
    assert_eq!(
        at(&scraped_a, "bb_libp2p_sent_bytes_total"),
        wire_a.bytes_sent as f64
    );
    assert_eq!(at(&scraped_a, "bb_libp2p_envelopes_acknowledged_total"), n);
    assert_eq!(
        at(
            &scraped_a,
            "bb_libp2p_send_failures_total{reason=\"unresolved\"}"
        ),
        1.0
    );
    assert_eq!(
        at(
            &scraped_a,
            "bb_libp2p_acknowledgement_latency_seconds_count"
        ),
        n
    );
    assert_eq!(at(&scraped_a, "bb_libp2p_envelopes_in_flight"), 0.0);
    assert_eq!(at(&scraped_a, "bb_libp2p_envelopes_queued"), 0.0);
    assert_eq!(at(&scraped_a, "bb_libp2p_busy_answers_total"), 0.0);
    assert_eq!(at(&scraped_b, "bb_libp2p_envelopes_received_total"), n);
    assert_eq!(
        at(&scraped_b, "bb_libp2p_received_bytes_total"),
        wire_b.bytes_received as f64
    );
    assert_eq!(at(&scraped_b, "bb_libp2p_envelope_size_bytes_count"), n);
    assert_eq!(
        at(&scraped_b, "bb_libp2p_envelope_size_bytes_sum"),
        wire_b.bytes_received as f64
    );
    assert_eq!(at(&scraped_b, "bb_libp2p_engine_ingress_envelopes"), 0.0);
    assert!(at(&scraped_b, "bb_libp2p_engine_poll_seconds_count") >= 1.0);
    assert!(
        !scraped_b.keys().any(|k| k.contains("peer")),
        "no per-peer labels"
    );
}

/// The ingress gauges say what the engine holds when scraped: the values
/// waiting while the engine is busy, none once it has taken them, even if
/// the swarm has not run since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_gauges_follow_the_engine() {
    let (model, targets) = compile(Ping);
    let mut registry = Registry::default();
    let config = Config::default().with_metrics(Metrics::new(&mut registry));
    let mut a = bb_swarm_with(&model, &[&targets[0]], Config::default());
    let mut b = bb_swarm_with(&model, &[&targets[1]], config);
    let address = metrics_endpoint::serve(
        Arc::new(Mutex::new(registry)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    connect(&mut a, &mut b).await;
    let pb = *b.local_peer_id();
    let held = common::hold_engine(&b.behaviour().handle());
    send_values(&a.behaviour().handle(), &targets[0], pb, numbered(5));
    let mut acknowledged = 0;
    until(
        &mut [&mut a, &mut b],
        Duration::from_secs(10),
        "five acknowledgements",
        |_, e| {
            if let SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) = e {
                acknowledged += 1;
            }
            (acknowledged == 5).then_some(())
        },
    )
    .await;
    let gauge = move || {
        scrape(address)
            .get("bb_libp2p_engine_ingress_envelopes")
            .copied()
            .expect("the gauge")
    };
    assert_eq!(tokio::task::spawn_blocking(gauge).await.unwrap(), 5.0);
    drop(held);
    // The engine takes them on its own thread; the swarm is not polled.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::task::spawn_blocking(gauge).await.unwrap() != 0.0 {
        assert!(std::time::Instant::now() < deadline, "the gauge stayed up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
