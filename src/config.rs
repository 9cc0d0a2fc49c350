//! Configuration of the [`Behaviour`](crate::Behaviour).

use std::time::Duration;

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
    max_concurrent_streams: usize,
    emit_op_steps: bool,
}

impl Default for Config {
    /// - request timeout: 10 s, request-response's own default; an envelope
    ///   that is not acknowledged by then fails with `"timeout"`.
    /// - maximum envelope size: unset, meaning the Node's
    ///   `config().envelope_caps.max_total_bytes` (16 MiB by default), so the
    ///   wire refuses exactly what the engine's decoder would refuse.
    /// - concurrent streams: 100 per connection, request-response's default.
    /// - per-op engine steps: not emitted (they fire once per op and would
    ///   flood the swarm's event stream).
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            max_envelope_bytes: None,
            max_concurrent_streams: 100,
            emit_op_steps: false,
        }
    }
}

impl Config {
    /// Sets how long an outbound envelope may wait for its acknowledgement,
    /// and how long an inbound stream may take to deliver its envelope.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the largest encoded envelope this behaviour sends or reads.
    ///
    /// An inbound length prefix above it is refused before the body is read;
    /// an outbound envelope above it fails locally with
    /// [`SendFailure::Oversize`](crate::SendFailure::Oversize).
    pub fn with_max_envelope_bytes(mut self, bytes: usize) -> Self {
        self.max_envelope_bytes = Some(bytes);
        self
    }

    /// Sets the number of concurrent inbound plus outbound envelope streams
    /// per connection.
    pub fn with_max_concurrent_streams(mut self, streams: usize) -> Self {
        self.max_concurrent_streams = streams;
        self
    }

    /// Also emit the engine's per-op steps (`OpCompleted`, `AsyncSuspended`)
    /// as [`Event::Engine`](crate::Event::Engine). Useful for tracing a graph;
    /// off by default.
    pub fn with_op_steps(mut self, emit: bool) -> Self {
        self.emit_op_steps = emit;
        self
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The configured maximum envelope size, or `None` for the Node's own cap.
    pub fn max_envelope_bytes(&self) -> Option<usize> {
        self.max_envelope_bytes
    }

    /// The concurrent stream limit per connection.
    pub fn max_concurrent_streams(&self) -> usize {
        self.max_concurrent_streams
    }

    /// Whether per-op engine steps are emitted.
    pub fn op_steps(&self) -> bool {
        self.emit_op_steps
    }
}
