//! A link cut loses nothing: envelopes caught by the cut, and those sent
//! while it lasts, go again once the link is back, within the delivery
//! window; the receiver takes each once. Past the window they fail, saying
//! so.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bb_libp2p::{Behaviour, Config, Event, SendFailure};
use common::link::{shaped_swarm, LinkControl, Shape};
use common::models::{bb_behaviour, compile, send_value, Ping};
use common::{connect, run_for, until};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::Swarm;

/// A 20 ms round trip: envelopes are on the wire when the cut comes.
fn shape() -> Shape {
    Shape::wan(Duration::from_millis(20), 100)
}

fn pair(config: Config, control: &LinkControl) -> (Swarm<Behaviour>, Swarm<Behaviour>, String) {
    let (model, targets) = compile(Ping);
    let swarm = |target: &str| {
        let key = Keypair::generate_ed25519();
        let behaviour = bb_behaviour(&key, &model, &[target], config.clone());
        shaped_swarm(key, behaviour, shape(), control)
    };
    let (a, b) = (swarm(&targets[0]), swarm(&targets[1]));
    (a, b, targets[0].clone())
}

/// What the two swarms reported.
#[derive(Default)]
struct Seen {
    acknowledged: usize,
    failed: Vec<SendFailure>,
    /// B's outputs, and how often each.
    outputs: HashMap<Vec<u8>, usize>,
}

impl Seen {
    fn record(&mut self, i: usize, event: SwarmEvent<Event>) {
        match event {
            SwarmEvent::Behaviour(Event::EnvelopeAcknowledged { .. }) if i == 0 => {
                self.acknowledged += 1
            }
            SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => self.failed.push(reason),
            SwarmEvent::Behaviour(Event::AppEvent { value_bytes, .. }) if i == 1 => {
                *self.outputs.entry(value_bytes).or_default() += 1
            }
            _ => {}
        }
    }

    fn ended(&self) -> usize {
        self.acknowledged + self.failed.len()
    }
}

/// Sends `n` numbered values from A to B, `per_tick` at a time every
/// 10 ms, recording what happens.
async fn send_numbered(
    a: &mut Swarm<Behaviour>,
    b: &mut Swarm<Behaviour>,
    sender: &str,
    range: std::ops::Range<u32>,
    seen: &mut Seen,
) -> Vec<Vec<u8>> {
    let dest = *b.local_peer_id();
    let mut sent = Vec::new();
    for i in range {
        sent.push(send_value(
            &a.behaviour().handle(),
            sender,
            dest,
            &i.to_le_bytes(),
        ));
        run_for(&mut [a, b], Duration::from_millis(10), |i, e| {
            seen.record(i, e)
        })
        .await;
    }
    sent
}

#[tokio::test(flavor = "current_thread")]
async fn a_link_cut_loses_nothing() {
    let control = LinkControl::default();
    let (mut a, mut b, sender) = pair(Config::default(), &control);
    connect(&mut a, &mut b).await;
    let mut seen = Seen::default();

    // Before, during (1.5 s) and after the cut.
    let mut sent = send_numbered(&mut a, &mut b, &sender, 0..30, &mut seen).await;
    control.cut();
    sent.extend(send_numbered(&mut a, &mut b, &sender, 30..60, &mut seen).await);
    run_for(
        &mut [&mut a, &mut b],
        Duration::from_millis(1200),
        |i, e| seen.record(i, e),
    )
    .await;
    let acknowledged_before_restore = seen.acknowledged;
    control.restore();
    sent.extend(send_numbered(&mut a, &mut b, &sender, 60..80, &mut seen).await);

    until(
        &mut [&mut a, &mut b],
        Duration::from_secs(50),
        "every envelope to end",
        |i, e| {
            seen.record(i, e);
            (seen.ended() == sent.len()).then_some(())
        },
    )
    .await;
    // B's engine may output after the acknowledgement: give it a moment.
    run_for(&mut [&mut a, &mut b], Duration::from_millis(300), |i, e| {
        seen.record(i, e)
    })
    .await;

    assert!(seen.failed.is_empty(), "failures: {:?}", seen.failed);
    assert_eq!(seen.acknowledged, 80);
    assert!(
        acknowledged_before_restore < 80,
        "the cut caught nothing ({acknowledged_before_restore} acknowledged before the link came back)"
    );
    for value in &sent {
        assert_eq!(
            seen.outputs.get(value),
            Some(&1),
            "B took {value:?} other than once"
        );
    }
    assert_eq!(seen.outputs.len(), 80);
    assert_eq!(
        a.behaviour().envelopes_in_flight() + a.behaviour().envelopes_queued(),
        0
    );
}

/// Connects A and B with `config`, cuts their link, sends a value into the
/// cut and returns how it failed, and A.
async fn failure_in_a_cut(config: Config) -> (SendFailure, Swarm<Behaviour>) {
    let control = LinkControl::default();
    let (mut a, mut b, sender) = pair(config, &control);
    connect(&mut a, &mut b).await;
    control.cut();
    // Let both sides see the cut, then send into it.
    run_for(&mut [&mut a, &mut b], Duration::from_millis(200), |_, _| {}).await;
    send_value(
        &a.behaviour().handle(),
        &sender,
        *b.local_peer_id(),
        b"lost",
    );
    let reason = until(
        &mut [&mut a, &mut b],
        Duration::from_secs(10),
        "SendFailed",
        |i, e| match e {
            SwarmEvent::Behaviour(Event::SendFailed { reason, .. }) => Some(reason),
            SwarmEvent::Behaviour(Event::AppEvent { .. }) => panic!("swarm {i} output a value"),
            _ => None,
        },
    )
    .await;
    (reason, a)
}

#[tokio::test(flavor = "current_thread")]
async fn past_the_window_an_envelope_fails_saying_so() {
    let window = Duration::from_millis(1500);
    let (reason, a) = failure_in_a_cut(Config::default().with_delivery_window(window)).await;
    assert_eq!(reason.label(), "window_passed", "{reason}");
    let SendFailure::WindowPassed { window: w, .. } = &reason else {
        unreachable!()
    };
    assert_eq!(*w, window);
    assert_eq!(a.behaviour().envelopes_queued(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn with_no_window_a_cut_fails_at_once() {
    let started = std::time::Instant::now();
    let config = Config::default().with_delivery_window(Duration::ZERO);
    let (reason, _) = failure_in_a_cut(config).await;
    assert!(started.elapsed() < Duration::from_secs(5), "it waited");
    assert!(
        matches!(
            reason,
            SendFailure::DialFailure | SendFailure::Backoff { .. }
        ),
        "{reason}"
    );
}
