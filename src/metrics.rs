//! Prometheus metrics of the behaviour, with `prometheus-client` (the library
//! `libp2p-metrics` uses, so one registry serves both).
//!
//! [`Metrics::new`] registers everything under a `bb_libp2p` sub-registry of
//! the application's registry; [`Config::with_metrics`](crate::Config::with_metrics)
//! hands the metrics to a behaviour. Labels are bounded sets (failure
//! reasons, rejection kinds): no label names a peer, so a mesh of any size
//! exports the same series. Many behaviours in one process may share one
//! `Metrics` (it is a handle): counters and gauges then add up across them.
//!
//! ```
//! use prometheus_client::registry::Registry;
//!
//! let mut registry = Registry::default();
//! let metrics = bb_libp2p::Metrics::new(&mut registry);
//! let config = bb_libp2p::Config::default().with_metrics(metrics);
//! # let _ = config;
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
//! assert!(text.contains("bb_libp2p_envelopes_sent_total"));
//! ```

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bb_runtime::ingress::IngressQueueRef;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::engine::host::HostStats;

/// A failure reason: [`SendFailure::label`](crate::SendFailure::label).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    reason: &'static str,
}

/// A rejection kind: [`RejectKind::label`](crate::RejectKind::label).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    kind: &'static str,
}

/// The behaviour's metrics. Cheap to clone: clones share the series.
///
/// Every metric, with its type; the README's Metrics section says the same
/// with an example scrape.
#[derive(Clone, Debug)]
pub struct Metrics {
    envelopes_sent: Counter,
    bytes_sent: Counter,
    envelopes_received: Counter,
    bytes_received: Counter,
    acknowledged: Counter,
    send_failures: Family<ReasonLabel, Counter>,
    inbound_rejections: Family<KindLabel, Counter>,
    busy_answers: Counter,
    retries: Counter,
    in_flight: Gauge,
    queued: Gauge,
    ingress: Arc<IngressProbes>,
    acknowledgement_latency: Histogram,
    envelope_size: Histogram,
    engine_poll: Histogram,
}

impl Metrics {
    /// Registers the behaviour's metrics in a `bb_libp2p` sub-registry of
    /// `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("bb_libp2p");
        let metrics = Self {
            envelopes_sent: Counter::default(),
            bytes_sent: Counter::default(),
            envelopes_received: Counter::default(),
            bytes_received: Counter::default(),
            acknowledged: Counter::default(),
            send_failures: Family::default(),
            inbound_rejections: Family::default(),
            busy_answers: Counter::default(),
            retries: Counter::default(),
            in_flight: Gauge::default(),
            queued: Gauge::default(),
            ingress: Arc::default(),
            // 100 µs to 52 s.
            acknowledgement_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 20)),
            // 64 B to 256 MiB.
            envelope_size: Histogram::new(exponential_buckets(64.0, 4.0, 12)),
            // 10 µs to 5 s.
            engine_poll: Histogram::new(exponential_buckets(0.00001, 2.0, 20)),
        };
        registry.register(
            "envelopes_sent",
            "Envelopes handed to the transport as requests, retries included",
            metrics.envelopes_sent.clone(),
        );
        registry.register_with_unit(
            "sent",
            "Encoded bytes of the envelopes put on the wire",
            Unit::Bytes,
            metrics.bytes_sent.clone(),
        );
        registry.register(
            "envelopes_received",
            "Envelopes received that decoded within the caps, taken or refused",
            metrics.envelopes_received.clone(),
        );
        registry.register_with_unit(
            "received",
            "Encoded bytes of the envelopes received",
            Unit::Bytes,
            metrics.bytes_received.clone(),
        );
        registry.register(
            "envelopes_acknowledged",
            "Envelopes a peer's engine took",
            metrics.acknowledged.clone(),
        );
        registry.register(
            "send_failures",
            "Envelopes not delivered, by reason (the SendFailure label)",
            metrics.send_failures.clone(),
        );
        registry.register(
            "inbound_rejections",
            "Inbound envelopes refused, by kind",
            metrics.inbound_rejections.clone(),
        );
        registry.register(
            "busy_answers",
            "Busy answers this Node's envelopes got from their peers",
            metrics.busy_answers.clone(),
        );
        registry.register(
            "retries",
            "Envelopes sent again: after a busy answer, or after a transport failure within the delivery window",
            metrics.retries.clone(),
        );
        registry.register(
            "envelopes_in_flight",
            "Envelopes on the wire, not yet acknowledged or failed",
            metrics.in_flight.clone(),
        );
        registry.register(
            "envelopes_queued",
            "Envelopes waiting to go on the wire",
            metrics.queued.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&metrics.ingress)));
        registry.register_with_unit(
            "acknowledgement_latency",
            "Time from putting an envelope on the wire to its acknowledgement",
            Unit::Seconds,
            metrics.acknowledgement_latency.clone(),
        );
        registry.register_with_unit(
            "envelope_size",
            "Encoded size of each envelope sent or received",
            Unit::Bytes,
            metrics.envelope_size.clone(),
        );
        registry.register_with_unit(
            "engine_poll",
            "Time of each engine poll on the engine thread",
            Unit::Seconds,
            metrics.engine_poll.clone(),
        );
        metrics
    }

    pub(crate) fn sent(&self, size: usize, retry: bool) {
        self.envelopes_sent.inc();
        self.bytes_sent.inc_by(size as u64);
        self.envelope_size.observe(size as f64);
        if retry {
            self.retries.inc();
        }
    }

    pub(crate) fn received(&self, size: usize) {
        self.envelopes_received.inc();
        self.bytes_received.inc_by(size as u64);
        self.envelope_size.observe(size as f64);
    }

    pub(crate) fn acknowledged(&self, latency: Duration) {
        self.acknowledged.inc();
        self.acknowledgement_latency.observe(latency.as_secs_f64());
    }

    pub(crate) fn busy_answer(&self) {
        self.busy_answers.inc();
    }

    pub(crate) fn send_failed(&self, reason: &'static str) {
        self.send_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub(crate) fn rejected(&self, kind: &'static str) {
        self.inbound_rejections
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    pub(crate) fn engine_polled(&self, took: Duration) {
        self.engine_poll.observe(took.as_secs_f64());
    }

    /// Reads `probe`'s Node's ingress on every scrape, for as long as the
    /// probe lives.
    pub(crate) fn watch_ingress(&self, probe: &Arc<IngressProbe>) {
        let mut probes = self
            .ingress
            .probes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        probes.retain(|p| p.strong_count() > 0);
        probes.push(Arc::downgrade(probe));
    }
}

/// One Node's engine ingress, as the metrics read it.
pub(crate) struct IngressProbe {
    ingress: IngressQueueRef,
    host: Arc<HostStats>,
}

impl IngressProbe {
    pub(crate) fn new(ingress: IngressQueueRef, host: Arc<HostStats>) -> Self {
        Self { ingress, host }
    }
}

/// The ingress gauges, read from every live Node's ingress when scraped:
/// the engine thread drains an ingress without waking anyone, so a gauge
/// set by the swarm's side would show a level long gone.
#[derive(Default)]
struct IngressProbes {
    probes: Mutex<Vec<Weak<IngressProbe>>>,
}

impl std::fmt::Debug for IngressProbes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressProbes").finish_non_exhaustive()
    }
}

impl Collector for IngressProbes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (mut envelopes, mut bytes) = (0usize, 0usize);
        for probe in self
            .probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
        {
            envelopes += probe.ingress.len();
            bytes += probe.host.ingress_bytes.committed();
        }
        let metric = encoder.encode_descriptor(
            "engine_ingress_envelopes",
            "Inbound envelopes in the engine's ingress, not yet taken by the engine",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(envelopes as i64).encode(metric)?;
        let metric = encoder.encode_descriptor(
            "engine_ingress",
            "Payload bytes the engine's ingress holds against its byte budget",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        ConstGauge::new(bytes as i64).encode(metric)
    }
}

/// What one behaviour holds now, for the gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Levels {
    pub(crate) in_flight: usize,
    pub(crate) queued: usize,
}

/// One behaviour's share of the gauges. Behaviours that share [`Metrics`]
/// each add what they hold, so the gauges move by differences; dropping
/// the share takes its part back out.
#[derive(Debug)]
pub(crate) struct GaugeShare {
    metrics: Metrics,
    reported: Levels,
}

impl GaugeShare {
    pub(crate) fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            reported: Levels::default(),
        }
    }

    /// The metrics this share reports to.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Moves the gauges by what changed since the last report.
    pub(crate) fn report(&mut self, now: Levels) {
        if now == self.reported {
            return;
        }
        let m = &self.metrics;
        let was = self.reported;
        move_by(&m.in_flight, was.in_flight, now.in_flight);
        move_by(&m.queued, was.queued, now.queued);
        self.reported = now;
    }
}

impl Drop for GaugeShare {
    fn drop(&mut self) {
        self.report(Levels::default());
    }
}

fn move_by(gauge: &Gauge, was: usize, now: usize) {
    let delta = now as i64 - was as i64;
    if delta != 0 {
        gauge.inc_by(delta);
    }
}
