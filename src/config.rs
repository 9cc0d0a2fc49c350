//! Configuration of the [`Behaviour`](crate::Behaviour).

use std::time::Duration;

use crate::metrics::Metrics;

/// Room beside the largest value for what wraps it in an envelope's
/// payloads.
pub(crate) const VALUE_WRAPPING: usize = 64 * 1024;

/// Configuration of the [`Behaviour`](crate::Behaviour).
///
/// Built with [`Config::default`] and the by-value `with_*` setters:
///
/// ```
/// use std::time::Duration;
/// let config = bb_libp2p::Config::default()
///     .with_request_timeout(Duration::from_secs(5))
///     .with_max_envelope_bytes(1024 * 1024)
///     .with_max_concurrent_streams(64);
/// assert_eq!(config.request_timeout(), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    request_timeout: Duration,
    max_envelope_bytes: Option<usize>,
    max_value_bytes: usize,
    transfer_budget: Option<usize>,
    max_concurrent_streams: usize,
    max_envelopes_in_flight: usize,
    max_queued_envelopes: usize,
    max_ingress_envelopes: Option<usize>,
    wire_deadlines: bool,
    delivery_window: Duration,
    max_relayed_envelope_bytes: usize,
    direct_connection_wait: Duration,
    emit_op_steps: bool,
    metrics: Option<Metrics>,
}

impl Default for Config {
    /// - request timeout: 10 s, request-response's own default, as a stall
    ///   bound rather than a flat one: an envelope fails with `"timeout"`
    ///   when its bytes stop leaving (fewer than 16 KiB, or what is left, in
    ///   10 s) or no acknowledgement comes within 10 s of the time its
    ///   bytes may take to cross at that pace
    ///   ([`drain_allowance`](crate::progress::drain_allowance)). A value
    ///   that keeps moving takes as long as the link needs, up to an hour
    ///   (request-response's own timeout, a backstop): 3 MiB over a link of
    ///   500 ms round trip losing 1 % (some 35 KB/s over TCP) takes a minute
    ///   and a half, and arrives.
    /// - largest value: 1 GiB, sent and accepted. It fits a float32 model of
    ///   268 million parameters, and a machine with a few GiB of memory can
    ///   hold one in flight each way (a receiver holds the value once while
    ///   it arrives, plus what its engine makes of it). The engine's caps are
    ///   raised to it; see [`Config::with_max_value_bytes`].
    /// - largest single frame: unset, meaning 16 MiB, bytesandbrains' own
    ///   envelope cap (what a 0.2.0 peer reads). Envelopes above 4 MiB
    ///   travel as transfers in chunks instead (see [`crate::transfer`]).
    /// - transfer budget: unset, meaning the largest value (and 64 KiB for
    ///   what wraps it): what the values arriving in chunks may hold
    ///   together on this side. Past it a sender is answered busy and
    ///   waits.
    /// - concurrent streams: 100 per connection, request-response's default.
    /// - envelopes in flight: 256 sent and not yet acknowledged, across all
    ///   peers; more wait in the queue.
    /// - queued envelopes: 1024. Once the envelopes in flight and queued
    ///   reach both bounds together, the behaviour takes no more from the
    ///   engine until one ends: the engine holds them (its own outbound
    ///   queue, 10,000 by default, drops its oldest past that and says so
    ///   with `OutboundDropped`). A sender outpacing its peers slows down,
    ///   with bounded memory, instead of failing envelopes to healthy
    ///   peers.
    /// - inbound envelopes waiting in the engine's ingress: unset, meaning
    ///   the ingress's own capacity (4096 events by default); past it
    ///   peers are answered "busy".
    /// - wire deadlines: off. The engine gives each Send a per-hop budget
    ///   (`remaining_deadline_ns`, a compile-time 100 ms) that knows nothing
    ///   of the link: charged against queueing and the wire it fails a burst
    ///   waiting its turn, a fan-in, and every envelope on a link with a
    ///   round trip above it. So by default an envelope waits as long as its
    ///   queue and the request timeout allow; turn them on where the budget
    ///   is meant.
    /// - delivery window: 60 s. An envelope that fails for a transport
    ///   reason (connection closed, stream error, no acknowledgement in
    ///   time, a dial failure or back-off) to a peer connected within the
    ///   last 60 s is sent again once the peer is reachable, until 60 s
    ///   after the engine handed it over; only then does it fail, as
    ///   [`SendFailure::WindowPassed`](crate::SendFailure::WindowPassed). A
    ///   minute rides out a restarting peer, a roaming laptop or a flapping
    ///   link, and is short enough that a peer gone for good is reported
    ///   while the work it was part of can still be redone.
    /// - largest envelope over a relayed connection: 64 KiB, half of what a
    ///   relay lets through one circuit by default (128 KiB both ways, then
    ///   it closes the circuit). A larger envelope to a peer reached only
    ///   through a relay waits up to 30 s for a direct connection (dcutr's
    ///   hole punch takes a few round trips), then fails as
    ///   [`SendFailure::RelayedLimit`](crate::SendFailure::RelayedLimit).
    /// - per-op engine steps: not emitted (they fire once per op and would
    ///   flood the swarm's event stream).
    /// - metrics: none recorded.
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            max_envelope_bytes: None,
            max_value_bytes: 1 << 30,
            transfer_budget: None,
            max_concurrent_streams: 100,
            max_envelopes_in_flight: 256,
            max_queued_envelopes: 1024,
            max_ingress_envelopes: None,
            wire_deadlines: false,
            delivery_window: Duration::from_secs(60),
            max_relayed_envelope_bytes: 64 * 1024,
            direct_connection_wait: Duration::from_secs(30),
            emit_op_steps: false,
            metrics: None,
        }
    }
}

impl Config {
    /// Sets how long an exchange may stall: an outbound envelope fails as
    /// a timeout when fewer than
    /// [`MIN_PROGRESS`](crate::progress::MIN_PROGRESS) bytes of it (or what
    /// is left) leave in this time, or no acknowledgement comes within it
    /// plus the [`drain_allowance`](crate::progress::drain_allowance) of its
    /// bytes; an inbound frame stalling for three quarters of it is refused
    /// as [`RejectKind::Timeout`](crate::RejectKind::Timeout).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the largest encoded envelope this behaviour sends or reads as
    /// one frame.
    ///
    /// An inbound length prefix above it is refused before the body is read.
    /// An outbound envelope above it (or above 4 MiB) crosses as a transfer
    /// in chunks when the peer speaks
    /// [`TRANSFER_PROTOCOL`](crate::transfer::TRANSFER_PROTOCOL), and fails
    /// with [`SendFailure::UnsupportedProtocol`](crate::SendFailure::UnsupportedProtocol)
    /// when it does not.
    pub fn with_max_envelope_bytes(mut self, bytes: usize) -> Self {
        self.max_envelope_bytes = Some(bytes);
        self
    }

    /// Sets the largest value (the payloads of one envelope together) this
    /// behaviour sends and accepts; see [`Config::default`].
    ///
    /// The Node's engine caps are raised to fit it: the per-fill and total
    /// envelope caps, the ingress byte budget and `max_invoke_bytes`, each
    /// when it is still at bytesandbrains' default (a cap the Node's maker
    /// set, higher or lower, stands: a lower ingress byte budget refuses
    /// larger values as [`RejectKind::CapsExceeded`](crate::RejectKind::CapsExceeded)). A larger outbound value fails with
    /// [`SendFailure::Oversize`](crate::SendFailure::Oversize); a transfer
    /// claiming more is refused as
    /// [`RejectKind::Oversize`](crate::RejectKind::Oversize) before any of
    /// its bytes are read.
    pub fn with_max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// Sets how many bytes the values arriving in chunks may hold together
    /// on this side (at least the largest value and 64 KiB, so one always
    /// fits). A
    /// transfer that would pass it is answered busy; its sender waits and
    /// asks again.
    pub fn with_transfer_budget(mut self, bytes: usize) -> Self {
        self.transfer_budget = Some(bytes);
        self
    }

    /// Sets the number of concurrent inbound plus outbound envelope streams
    /// per connection.
    pub fn with_max_concurrent_streams(mut self, streams: usize) -> Self {
        self.max_concurrent_streams = streams;
        self
    }

    /// Sets how many outbound envelopes may be sent and not yet acknowledged
    /// at once (at least 1); the rest wait in the queue.
    pub fn with_max_envelopes_in_flight(mut self, envelopes: usize) -> Self {
        self.max_envelopes_in_flight = envelopes.max(1);
        self
    }

    /// Sets how many outbound envelopes may wait to be sent (at least 1).
    /// When in flight and queued together reach both bounds, the behaviour
    /// takes no more envelopes from the engine until one ends. An envelope
    /// a busy peer refused waits for its retry in the queue: it was in
    /// flight a moment ago.
    pub fn with_max_queued_envelopes(mut self, envelopes: usize) -> Self {
        self.max_queued_envelopes = envelopes.max(1);
        self
    }

    /// Sets how many events the engine's ingress may hold before inbound
    /// envelopes are refused as busy (at least 1; the ingress's own
    /// capacity bounds it too). The sender waits and sends them again.
    pub fn with_max_ingress_envelopes(mut self, envelopes: usize) -> Self {
        self.max_ingress_envelopes = Some(envelopes.max(1));
        self
    }

    /// Whether an envelope's `remaining_deadline_ns` bounds its life here:
    /// the time it waits in this behaviour's queue counts against it, it
    /// bounds the request timeout, and it fails with
    /// [`SendFailure::DeadlineExceeded`](crate::SendFailure::DeadlineExceeded)
    /// when the budget runs out first; as a receiver, an envelope that took
    /// longer than its budget to arrive is refused as expired. Off by
    /// default (see [`Config::default`]): then the request timeout alone
    /// bounds an envelope on the wire, and nothing while it is queued.
    pub fn with_wire_deadlines(mut self, bound: bool) -> Self {
        self.wire_deadlines = bound;
        self
    }

    /// Sets the delivery window: how long, counted from when the engine
    /// handed an envelope over, it may be sent again after transport
    /// failures to a peer connected within that time. `Duration::ZERO`
    /// sends each envelope once: its first failure is reported as it is.
    /// See [`Config::default`].
    pub fn with_delivery_window(mut self, window: Duration) -> Self {
        self.delivery_window = window;
        self
    }

    /// Sets the largest encoded envelope sent over a relayed connection
    /// (libp2p's circuit relay). A larger one to a peer with only relayed
    /// connections waits for a direct one; see
    /// [`Config::with_direct_connection_wait`].
    pub fn with_max_relayed_envelope_bytes(mut self, bytes: usize) -> Self {
        self.max_relayed_envelope_bytes = bytes;
        self
    }

    /// Sets how long an envelope too large for a relayed connection waits
    /// for a direct connection to its peer before it fails as
    /// [`SendFailure::RelayedLimit`](crate::SendFailure::RelayedLimit).
    pub fn with_direct_connection_wait(mut self, wait: Duration) -> Self {
        self.direct_connection_wait = wait;
        self
    }

    /// Also emit the engine's per-op steps (`OpCompleted`, `AsyncSuspended`)
    /// as [`Event::Engine`](crate::Event::Engine). Useful for tracing a graph;
    /// off by default.
    pub fn with_op_steps(mut self, emit: bool) -> Self {
        self.emit_op_steps = emit;
        self
    }

    /// Records the behaviour's [`Metrics`]. Give every behaviour of a process
    /// the same `Metrics` to add them up; see [`Metrics::new`].
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// See [`Config::with_metrics`].
    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref()
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The configured maximum frame size, or `None` for the default.
    pub fn max_envelope_bytes(&self) -> Option<usize> {
        self.max_envelope_bytes
    }

    /// The largest value sent and accepted.
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    /// What values arriving in chunks may hold together: at least one
    /// largest value.
    pub fn transfer_budget(&self) -> usize {
        self.transfer_budget
            .unwrap_or(0)
            .max(self.max_payload_bytes())
    }

    /// The largest payload an envelope may carry: the largest value and
    /// 64 KiB for what wraps it (its encoding's length, other fills).
    pub(crate) fn max_payload_bytes(&self) -> usize {
        self.max_value_bytes.saturating_add(VALUE_WRAPPING)
    }

    /// The concurrent stream limit per connection.
    pub fn max_concurrent_streams(&self) -> usize {
        self.max_concurrent_streams
    }

    /// The bound on envelopes in flight.
    pub fn max_envelopes_in_flight(&self) -> usize {
        self.max_envelopes_in_flight
    }

    /// The bound on queued envelopes.
    pub fn max_queued_envelopes(&self) -> usize {
        self.max_queued_envelopes
    }

    /// The configured bound on the engine's ingress, or `None` for its own
    /// capacity.
    pub fn max_ingress_envelopes(&self) -> Option<usize> {
        self.max_ingress_envelopes
    }

    /// Whether envelope deadlines bound the request timeout.
    pub fn wire_deadlines(&self) -> bool {
        self.wire_deadlines
    }

    /// The delivery window.
    pub fn delivery_window(&self) -> Duration {
        self.delivery_window
    }

    /// The largest envelope sent over a relayed connection.
    pub fn max_relayed_envelope_bytes(&self) -> usize {
        self.max_relayed_envelope_bytes
    }

    /// How long an envelope waits for a direct connection.
    pub fn direct_connection_wait(&self) -> Duration {
        self.direct_connection_wait
    }

    /// Whether per-op engine steps are emitted.
    pub fn op_steps(&self) -> bool {
        self.emit_op_steps
    }
}
