//! What one round put on the wire and took off it, as the coordinator sees
//! it: the parameters going out to the cohort, and the updates coming back.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use bb_libp2p::{Event, WireStats};
use libp2p::PeerId;

/// Watches one round at the coordinator: its behaviour's events, and its
/// [`WireStats`] sampled as the round runs.
pub struct WireMeter {
    started: Instant,
    at_start: WireStats,
    /// When each peer last acknowledged an envelope of the coordinator's:
    /// during a round, the last one a client acknowledges is its
    /// parameters (the first round's may follow the registry's answer).
    acknowledged: HashMap<PeerId, Instant>,
    /// When the first bytes of an update arrived.
    first_in: Option<Instant>,
    /// When the last update was taken.
    last_update: Option<Instant>,
}

impl WireMeter {
    /// Starts watching a round that starts now, from the behaviour's
    /// `stats`.
    pub fn start(stats: WireStats) -> Self {
        Self {
            started: Instant::now(),
            at_start: stats,
            acknowledged: HashMap::new(),
            first_in: None,
            last_update: None,
        }
    }

    /// Takes one event of the coordinator's behaviour, seen at `now`.
    pub fn on_event(&mut self, event: &Event, now: Instant) {
        match event {
            Event::EnvelopeAcknowledged { peer, .. } => {
                self.acknowledged.insert(*peer, now);
            }
            Event::AppEvent { topic, .. } if topic == "update_info" => self.last_update = Some(now),
            _ => {}
        }
    }

    /// Takes the behaviour's `stats` at `now`: the first inbound bytes
    /// mark when updates started to arrive.
    pub fn sample(&mut self, stats: WireStats, now: Instant) {
        let inbound = |s: &WireStats| s.bytes_received + s.chunk_bytes_received;
        if self.first_in.is_none() && inbound(&stats) > inbound(&self.at_start) {
            self.first_in = Some(now);
        }
    }

    /// The round's figures, from the behaviour's `stats` at its end; the
    /// parameters went to the clients of `cohort`.
    pub fn finish(self, stats: WireStats, cohort: &[PeerId]) -> RoundWire {
        let out_done = cohort
            .iter()
            .map(|peer| self.acknowledged.get(peer).copied())
            .collect::<Option<Vec<Instant>>>()
            .and_then(|times| times.into_iter().max());
        RoundWire {
            out_bytes: stats.bytes_sent - self.at_start.bytes_sent,
            in_bytes: stats.bytes_received - self.at_start.bytes_received,
            out_time: out_done.map(|at| at - self.started),
            in_time: self
                .first_in
                .zip(self.last_update)
                .map(|(first, last)| last.saturating_duration_since(first)),
        }
    }
}

/// One round on the wire, at the coordinator.
#[derive(Clone, Copy, Debug)]
pub struct RoundWire {
    /// Envelope bytes sent: the parameters, to each client of the cohort
    /// (and any other envelope of the round, each attempt counted).
    pub out_bytes: u64,
    /// Envelope bytes received: the updates (and any other envelope).
    pub in_bytes: u64,
    /// From the round's start until every client of the cohort had
    /// acknowledged its parameters (`None` if one never did).
    pub out_time: Option<Duration>,
    /// From the first bytes of an update arriving until the last update
    /// was taken (`None` if none came).
    pub in_time: Option<Duration>,
}

/// `bytes`, in the unit that suits them.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// A time, or `-` for none.
fn time(time: Option<Duration>) -> String {
    match time {
        None => "-".into(),
        Some(t) if t < Duration::from_secs(1) => format!("{} ms", t.as_millis()),
        Some(t) => format!("{:.2} s", t.as_secs_f64()),
    }
}

impl fmt::Display for RoundWire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "parameters out {} in {}, updates in {} in {}",
            size(self.out_bytes),
            time(self.out_time),
            size(self.in_bytes),
            time(self.in_time),
        )
    }
}
