//! What the [`Behaviour`](crate::Behaviour) reports to the swarm.

use std::fmt;
use std::time::Duration;

use bb_runtime::engine::EngineStep;
use bb_runtime::errors::BootstrapError;
use bb_runtime::framework::BackoffCause;
use libp2p::core::Endpoint;
use libp2p::swarm::ConnectionId;
use libp2p::PeerId;

/// A value the engine published on a Module output
/// (`EngineStep::AppEvent`), as [`NodeHandle::app_events`](crate::NodeHandle::app_events)
/// yields it. [`Event::AppEvent`] carries the same fields.
///
/// Decode `value_bytes` with [`crate::values`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppEvent {
    /// The peer whose envelope started the work that produced the value, as
    /// the transport authenticated it; `None` when the work started on this
    /// Node (an `invoke`). See [`Event::AppEvent::sender`].
    pub sender: Option<PeerId>,
    /// The output (or `AppEmit` topic) name.
    pub topic: String,
    /// The value in its wire encoding; empty for a marker-only event.
    pub value_bytes: Vec<u8>,
}

/// An event of the [`Behaviour`](crate::Behaviour): the swarm's `ToSwarm`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// The engine published a value on a Module output
    /// (`EngineStep::AppEvent`). Decode `value_bytes` with
    /// [`crate::values`].
    ///
    /// The engine does not say which Module published it (its
    /// `module_name` is always empty in bytesandbrains 0.3.8): name outputs
    /// so that `topic` tells them apart.
    AppEvent {
        /// The peer whose envelope started the work that produced the
        /// value, as the transport authenticated it (not a claim inside the
        /// value); `None` when the work started on this Node, with an
        /// `invoke`.
        ///
        /// Every inbound envelope starts an execution of its own, so an
        /// output computed from one received value names that value's
        /// sender. An output that waited for several envelopes names the
        /// sender of the one that completed it. An output written
        /// asynchronously (by an op that completes later) or by a bound
        /// component's op has `None` too: the engine does not say.
        sender: Option<PeerId>,
        /// The output (or `AppEmit` topic) name.
        topic: String,
        /// The value in its wire encoding; empty for a marker-only event.
        value_bytes: Vec<u8>,
    },
    /// The peer acknowledged an outbound envelope: it reached the peer's
    /// engine ingress.
    EnvelopeAcknowledged {
        /// The destination peer.
        peer: PeerId,
        /// The envelope's `WireCorrelation.wire_req_id`, the id the engine
        /// also names in its own steps about it; `None` when it had none.
        wire_req_id: Option<u64>,
    },
    /// An outbound envelope was not delivered. The engine was told with
    /// `IngressEvent::SendFailed` carrying [`SendFailure::label`].
    SendFailed {
        /// The destination peer, when the envelope named one libp2p can use.
        peer: Option<PeerId>,
        /// The envelope's `WireCorrelation.wire_req_id`, the id the engine
        /// also names in its own steps about it; `None` when it had none.
        wire_req_id: Option<u64>,
        /// Why.
        reason: SendFailure,
    },
    /// An inbound envelope was refused; the peer got a rejecting
    /// acknowledgement when the stream still allowed one.
    InboundRejected {
        /// The authenticated peer that sent it.
        peer: PeerId,
        /// The connection it came on; `None` for an envelope handed in with
        /// [`Behaviour::inject_envelope`](crate::Behaviour::inject_envelope).
        connection_id: Option<ConnectionId>,
        /// Why.
        rejection: Rejection,
    },
    /// The Node's PeerGovernor denies `peer`, so the behaviour refused a
    /// connection with it. Where the swarm reports the refusal itself (an
    /// `Err(DialError::Denied)` from `Swarm::dial`, an
    /// `IncomingConnectionError` or `OutgoingConnectionError`), its cause
    /// downcasts to [`PeerDenied`]; a dial this behaviour started is refused
    /// silently and its envelopes fail with [`SendFailure::Denied`].
    ConnectionDenied {
        /// The refused peer.
        peer: PeerId,
        /// The refused connection.
        connection_id: ConnectionId,
        /// `Dialer` when this side dialled, `Listener` when the peer did.
        endpoint: Endpoint,
        /// Why.
        reason: Denial,
    },
    /// The Node's PeerGovernor now denies a connected peer (after
    /// `block_peer` or `set_allowlist`): the behaviour asked the swarm to
    /// close every connection with it.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: Denial,
    },
    /// A peer reached the PeerGovernor's failure threshold: consecutive
    /// sends to it failed to reach it (dial failures, timeouts, closed
    /// connections, unsupported protocol, broken streams), or it sent
    /// `BackoffNotice`s. The behaviour dials it for its envelopes again only
    /// once each back-off has passed; the back-off doubles with every failed
    /// attempt, up to a minute.
    PeerDown {
        /// The peer.
        peer: PeerId,
        /// Consecutive failures so far.
        consecutive_failures: u32,
    },
    /// A peer that was down acknowledged an envelope again.
    PeerUp {
        /// The peer.
        peer: PeerId,
    },
    /// A peer asked this Node to slow down (the engine's `BackoffNotice`,
    /// sent when the peer's ingress passes its high-water mark). The engine
    /// holds its sends to the peer for `retry_in` and counts the notice
    /// towards the peer's failure streak.
    BackoffAdvised {
        /// The peer that sent the notice.
        peer: PeerId,
        /// How long the peer asked this Node to wait.
        retry_in: Duration,
        /// Why the peer asked.
        cause: BackoffCause,
    },
    /// The engine's own outbound queue was full (its `max_outbound_queue`)
    /// and it dropped `count` envelopes, oldest first, before this behaviour
    /// saw them (`EngineStep::OutboundDropped`).
    OutboundDropped {
        /// Envelopes dropped since the last report.
        count: usize,
    },
    /// The Node's bootstrap could not run when the behaviour was created;
    /// its body ops stay parked.
    BootstrapFailed(BootstrapError),
    /// Any other engine step, as the engine reported it.
    ///
    /// `SendEnvelope` and `AppEvent` never appear here (the behaviour ships
    /// the first and reports the second as [`Event::AppEvent`]);
    /// `OpCompleted` and `AsyncSuspended` only with
    /// [`Config::with_op_steps`](crate::Config::with_op_steps).
    Engine(EngineStep),
}

/// Why an outbound envelope was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendFailure {
    /// The envelope's `dest_peer_addresses` named no peer libp2p can address.
    NoDestination,
    /// The encoded envelope is larger than the configured maximum; it was
    /// not sent.
    Oversize {
        /// Encoded size in bytes.
        size: usize,
        /// The maximum.
        cap: usize,
    },
    /// The peer was not connected and could not be dialled.
    DialFailure,
    /// Nothing knows where the peer is: the engine's AddressBook had no
    /// entry for it, and when the behaviour dialled it by its `PeerId` no
    /// behaviour of the swarm (kad, identify, mDNS, the peer store) offered
    /// an address. Connect to the peer, or let discovery find it, and send
    /// again.
    Unresolved,
    /// The exchange stalled: its bytes stopped leaving, or no acknowledgement
    /// came in time after them (see
    /// [`Config::with_request_timeout`](crate::Config::with_request_timeout)).
    Timeout,
    /// The connection closed before the acknowledgement arrived.
    ConnectionClosed,
    /// The peer does not speak `/bytesandbrains/wire/1`.
    UnsupportedProtocol,
    /// The stream failed, or the acknowledgement could not be read.
    Io(String),
    /// The peer read the envelope and refused it.
    Rejected(Rejection),
    /// The Node's PeerGovernor denied the peer before the envelope was
    /// sent: nothing was sent. (An envelope already on the wire when its
    /// peer is denied fails as its connection closes, as
    /// [`SendFailure::ConnectionClosed`]: it may have arrived.)
    Denied(Denial),
    /// The peer is not connected and its back-off after failed attempts has
    /// not passed; it was not dialled.
    Backoff {
        /// Time left until the next attempt is allowed.
        retry_in: Duration,
    },
    /// The envelope's `remaining_deadline_ns` ran out before it was
    /// acknowledged: while it waited in this behaviour's queue (then it was
    /// not sent), or on the wire (a late acknowledgement is ignored).
    DeadlineExceeded {
        /// The envelope's deadline budget: what was left when it was queued
        /// or put on the wire.
        budget: Duration,
    },
    /// The envelope failed for transport reasons to a peer that was
    /// reachable, and was not acknowledged within the delivery window
    /// ([`Config::with_delivery_window`](crate::Config::with_delivery_window)):
    /// it was sent again while the window lasted, or its first attempt
    /// failed after the window (time queued counts).
    WindowPassed {
        /// The delivery window.
        window: Duration,
        /// Why its last attempt failed.
        last: Box<SendFailure>,
        /// Whether any attempt may have reached the peer's engine.
        maybe_delivered: bool,
    },
    /// An earlier attempt may have reached the peer's engine (its
    /// connection closed, its stream broke or no acknowledgement came), and
    /// the envelope, sent again, then failed for `last`: whether the peer
    /// took it is not known.
    Unconfirmed {
        /// Why the last attempt failed.
        last: Box<SendFailure>,
    },
    /// The envelope is larger than a relayed connection may carry
    /// ([`Config::with_max_relayed_envelope_bytes`](crate::Config::with_max_relayed_envelope_bytes)),
    /// the peer was reachable only through a relay, and no direct
    /// connection came within the wait. Nothing was sent.
    RelayedLimit {
        /// Encoded size in bytes.
        size: usize,
        /// The largest envelope a relayed connection carries.
        limit: usize,
        /// How long it waited for a direct connection.
        waited: Duration,
    },
}

impl SendFailure {
    /// The stable label passed to the engine as `IngressEvent::SendFailed`'s
    /// `reason`. The engine's own vocabulary names `"nak"` (a refusal) and
    /// `"timeout"`; the others name the transport failure.
    pub fn label(&self) -> &'static str {
        match self {
            SendFailure::NoDestination => "no_destination",
            SendFailure::Oversize { .. } => "oversize",
            SendFailure::DialFailure => "dial_failure",
            SendFailure::Unresolved => "unresolved",
            SendFailure::Timeout => "timeout",
            SendFailure::ConnectionClosed => "connection_closed",
            SendFailure::UnsupportedProtocol => "unsupported_protocol",
            SendFailure::Io(_) => "io",
            SendFailure::Rejected(_) => "nak",
            SendFailure::Denied(_) => "denied",
            SendFailure::Backoff { .. } => "backoff",
            SendFailure::DeadlineExceeded { .. } => "deadline",
            SendFailure::WindowPassed { .. } => "window_passed",
            SendFailure::RelayedLimit { .. } => "relayed_limit",
            SendFailure::Unconfirmed { .. } => "unconfirmed",
        }
    }

    /// Whether the envelope may have reached the peer's engine all the same:
    /// the connection closed, the stream broke or the acknowledgement did
    /// not come in time after the envelope was written. Every other failure
    /// means it was not taken (it never left this Node, or the peer refused
    /// it): an application may send those again without risking a
    /// duplicate, and should not assume either way about these.
    pub fn may_have_been_delivered(&self) -> bool {
        matches!(
            self,
            SendFailure::Timeout
                | SendFailure::ConnectionClosed
                | SendFailure::Io(_)
                | SendFailure::DeadlineExceeded { .. }
                | SendFailure::WindowPassed {
                    maybe_delivered: true,
                    ..
                }
                | SendFailure::Unconfirmed { .. }
        )
    }

    /// Whether the failure says the peer could not be reached (dial failure,
    /// timeout, closed connection, stream error, unsupported protocol). These
    /// count towards the peer's back-off and the PeerGovernor's failure
    /// streak; a refusal, a local decision or an oversize envelope do not.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            SendFailure::DialFailure
                | SendFailure::Timeout
                | SendFailure::ConnectionClosed
                | SendFailure::UnsupportedProtocol
                | SendFailure::Io(_)
        )
    }
}

impl fmt::Display for SendFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendFailure::NoDestination => write!(f, "envelope names no libp2p peer"),
            SendFailure::Oversize { size, cap } => {
                write!(f, "envelope is {size} bytes encoded, the maximum is {cap}")
            }
            SendFailure::DialFailure => write!(f, "could not dial the peer"),
            SendFailure::Unresolved => write!(f, "no address is known for the peer"),
            SendFailure::Timeout => write!(f, "the exchange stalled past the request timeout"),
            SendFailure::ConnectionClosed => {
                write!(f, "connection closed before the acknowledgement")
            }
            SendFailure::UnsupportedProtocol => {
                write!(f, "peer does not support {}", crate::PROTOCOL_NAME)
            }
            SendFailure::Io(e) => write!(f, "stream error: {e}"),
            SendFailure::Rejected(r) => write!(f, "peer refused the envelope: {r}"),
            SendFailure::Denied(d) => write!(f, "peer denied: {d}"),
            SendFailure::Backoff { retry_in } => {
                write!(f, "peer unreachable, next attempt in {retry_in:?}")
            }
            SendFailure::DeadlineExceeded { budget } => {
                write!(f, "waited longer than its deadline of {budget:?}")
            }
            SendFailure::WindowPassed { window, last, .. } => {
                write!(
                    f,
                    "not delivered within its window of {window:?} (last: {last})"
                )
            }
            SendFailure::Unconfirmed { last } => write!(
                f,
                "an earlier attempt may have arrived; the last failed: {last}"
            ),
            SendFailure::RelayedLimit {
                size,
                limit,
                waited,
            } => write!(
                f,
                "{size} bytes exceed the {limit} a relayed connection carries, \
                 and no direct connection came within {waited:?}"
            ),
        }
    }
}

impl std::error::Error for SendFailure {}

/// Why an envelope was refused, as the receiver says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The kind of refusal.
    pub kind: RejectKind,
    /// Details: sizes, the decoder's message.
    pub detail: String,
}

impl Rejection {
    pub(crate) fn new(kind: RejectKind, detail: String) -> Self {
        Self { kind, detail }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.label(), self.detail)
    }
}

/// The kinds of refusal an acknowledgement can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectKind {
    /// The length prefix was not a valid unsigned varint.
    LengthPrefix,
    /// The length prefix claimed more than the receiver's cap; the body was
    /// not read.
    Oversize,
    /// The stream ended before the claimed bytes arrived.
    Truncated,
    /// The body is not a `WireEnvelope`.
    Malformed,
    /// The envelope breaks the receiver's envelope caps (fill count or size,
    /// source addresses, schema version).
    CapsExceeded,
    /// The receiver's engine ingress is full.
    Busy,
    /// The receiver's PeerGovernor denies the sender (blocked, or not on
    /// its allowlist).
    Denied,
    /// The envelope is for a `g.net_out` port no graph on the receiving
    /// Node receives (it installed no matching receiver target).
    NoReceiver,
    /// Receiving the envelope took longer than its `remaining_deadline_ns`:
    /// it arrived expired, and the receiver dropped it.
    Expired,
    /// The envelope did not arrive within the receiver's read timeout
    /// (three quarters of its request timeout; a peer trickling bytes ends
    /// here), or could not be answered within the request timeout.
    Timeout,
    /// The stream or connection failed before the envelope could be answered.
    /// Never sent in an acknowledgement.
    Stream,
    /// A refusal this version does not know (a newer peer).
    Unknown,
    /// A chunk for a transfer the receiver does not hold: never started,
    /// already ended, or dropped after it stalled.
    UnknownTransfer,
    /// A chunk outside its transfer, off a chunk boundary, or of the wrong
    /// length.
    ChunkRange,
    /// A transferred value's bytes do not hash to the digest its transfer
    /// declared; nothing of it reached the engine.
    Integrity,
}

impl RejectKind {
    /// A stable lower-case label.
    pub fn label(&self) -> &'static str {
        match self {
            RejectKind::LengthPrefix => "length_prefix",
            RejectKind::Oversize => "oversize",
            RejectKind::Truncated => "truncated",
            RejectKind::Malformed => "malformed",
            RejectKind::CapsExceeded => "caps_exceeded",
            RejectKind::Busy => "busy",
            RejectKind::Denied => "denied",
            RejectKind::NoReceiver => "no_receiver",
            RejectKind::Expired => "expired",
            RejectKind::Timeout => "timeout",
            RejectKind::Stream => "stream",
            RejectKind::Unknown => "unknown",
            RejectKind::UnknownTransfer => "unknown_transfer",
            RejectKind::ChunkRange => "chunk_range",
            RejectKind::Integrity => "integrity",
        }
    }
}

/// Why the Node's PeerGovernor denies a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Denial {
    /// The peer is on the blocklist (`Node::block_peer`).
    Blocked,
    /// An allowlist is set (`Node::set_allowlist`) and the peer is not on it.
    NotAllowlisted,
}

impl Denial {
    /// A stable lower-case label.
    pub fn label(&self) -> &'static str {
        match self {
            Denial::Blocked => "blocked",
            Denial::NotAllowlisted => "not_allowlisted",
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The cause of a connection the behaviour denied, as the swarm reports it
/// (`ConnectionDenied::downcast::<PeerDenied>()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerDenied {
    /// The denied peer.
    pub peer: PeerId,
    /// Why.
    pub reason: Denial,
}

impl fmt::Display for PeerDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {} denied by the Node: {}", self.peer, self.reason)
    }
}

impl std::error::Error for PeerDenied {}
