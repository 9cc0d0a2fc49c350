//! Values too large for one frame cross as transfers in chunks
//! (`/bytesandbrains/transfer/1`): above every old cap, resumed after a cut,
//! within the receiver's budget.

mod common;

use std::time::{Duration, Instant};

use bb_libp2p::{Behaviour, Config, Event};
use common::models::{bb_swarm_with, bytes_value, compile, send_value, Ping};
use common::{connect, until};
use libp2p::swarm::SwarmEvent;
use libp2p::Swarm;

/// `len` bytes that differ from chunk to chunk and from run to run of `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// Sends `payload` from `a` to `b` with Ping; returns the value `b` output
/// and whether `a` saw it acknowledged.
async fn cross(
    a: &mut Swarm<Behaviour>,
    b: &mut Swarm<Behaviour>,
    sender: &str,
    payload: &[u8],
    timeout: Duration,
) -> (Vec<u8>, bool) {
    let sent = send_value(&a.behaviour().handle(), sender, *b.local_peer_id(), payload);
    let mut acked = false;
    let mut value = None;
    until(&mut [a, b], timeout, "the value, acknowledged", |i, e| {
        match e {
            SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) if i == 0 => acked = true,
            SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) if i == 1 => {
                value = Some(value_bytes)
            }
            SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => {
                panic!("send failed: {reason}")
            }
            SwarmEvent::Behaviour(Event::InboundRejected { rejection, .. }) => {
                panic!("rejected: {rejection}")
            }
            _ => {}
        }
        (acked && value.is_some()).then_some(())
    })
    .await;
    let value = value.unwrap();
    assert_eq!(value.len(), sent.len());
    assert!(value == sent, "the value arrived changed");
    (value, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_48_mib_value_crosses_above_every_old_cap() {
    let (model, targets) = compile(Ping);
    let mut a = bb_swarm_with(&model, &[&targets[0]], Config::default());
    let mut b = bb_swarm_with(&model, &[&targets[1]], Config::default());
    connect(&mut a, &mut b).await;
    let payload = pattern(48 << 20, 7);
    let started = Instant::now();
    cross(
        &mut a,
        &mut b,
        &targets[0],
        &payload,
        Duration::from_secs(240),
    )
    .await;
    println!("48 MiB crossed in {:?}", started.elapsed());
    let stats = b.behaviour().wire_stats();
    assert_eq!(stats.envelopes_received, 1);
    assert_eq!(b.behaviour().transfers_receiving(), (0, 0));
    assert_eq!(a.behaviour().transfers_sending(), 0);
    // Each byte of the value crossed once.
    assert!(stats.bytes_received >= 48 << 20 && stats.bytes_received < (48 << 20) + 4096);
    let _ = bytes_value(&[]);
}
