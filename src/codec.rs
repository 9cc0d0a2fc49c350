//! Framing of the `/bytesandbrains/wire/1` request-response protocol.
//!
//! A request is one `WireEnvelope` behind an unsigned-varint length prefix
//! (protobuf's length-delimited form); the response is one [`Ack`] framed the
//! same way. The inbound side checks the prefix against the cap before it
//! reads a byte of the body and grows its buffer only as bytes arrive, so a
//! peer that claims a large size and sends little costs what it sent, not
//! what it claimed.
//!
//! A frame that is wrong but complete enough to answer (bad prefix,
//! oversize, truncated, undecodable, stalled) is not an I/O error: it
//! becomes [`Request::Invalid`] so the behaviour can answer it with a typed
//! rejection on the same stream.
//!
//! Frames are read and written in pieces under the stall rule of
//! [`progress`](mod@crate::progress): one takes as long as its bytes keep
//! moving, so a large value crosses a slow link, and a peer trickling bytes
//! is refused.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bb_runtime::envelope::{EnvelopeCaps, EnvelopeCodec, EnvelopeDecodeError, WireEnvelope};
use futures::prelude::*;
use libp2p::StreamProtocol;
use prost::Message;

use crate::event::{RejectKind, Rejection};
use crate::progress::{self, Progress};

/// The protocol name, versioned: a change to the framing or to the meaning of
/// an acknowledgement gets a new version.
pub const PROTOCOL_NAME: StreamProtocol = StreamProtocol::new("/bytesandbrains/wire/1");

/// Largest encoded acknowledgement read from a peer. An `Ack` is a status, a
/// reason and a detail of at most [`MAX_DETAIL_BYTES`].
const MAX_ACK_BYTES: usize = 4 * 1024;

/// Longest rejection detail put on the wire.
pub(crate) const MAX_DETAIL_BYTES: usize = 1024;

/// Longest unsigned varint accepted for a length prefix (a u64).
const MAX_VARINT_BYTES: usize = 10;

/// The protocol's own messages, generated from `proto/ack.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::enum_variant_names)]
    include!(concat!(env!("OUT_DIR"), "/bb_libp2p.wire.v1.rs"));
}
pub use proto::Ack;

/// One request on the wire.
#[derive(Debug)]
pub enum Request {
    /// An envelope to send, or one that was read and decoded within caps.
    /// Shared, so a sender can keep it for a retry without a copy.
    Envelope(Arc<WireEnvelope>),
    /// An inbound frame that could not become an envelope.
    Invalid(Rejection),
    /// An envelope this side sends, with the [`Progress`] its bytes report
    /// to (the behaviour's watchdog reads it).
    Sending(Arc<WireEnvelope>, Progress),
}

/// The request-response codec of [`PROTOCOL_NAME`]: envelope caps for
/// reading, nothing else. The behaviour builds its own; build one to read or
/// write the protocol's frames elsewhere (a test peer, a fuzzer).
#[derive(Debug, Clone)]
pub struct Codec {
    caps: EnvelopeCaps,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    refuse_expired: bool,
    /// Bytes of the request this codec wrote last (request-response writes
    /// a request and reads its answer with the same codec).
    written: u64,
}

impl Codec {
    /// A codec that reads envelopes within `caps`, with
    /// `max_envelope_bytes` in place of `caps.max_total_bytes`.
    pub fn new(mut caps: EnvelopeCaps, max_envelope_bytes: usize) -> Self {
        caps.max_total_bytes = max_envelope_bytes;
        Self {
            caps,
            read_timeout: None,
            write_timeout: None,
            refuse_expired: false,
            written: 0,
        }
    }

    /// Refuses an envelope that took longer to arrive than its
    /// `remaining_deadline_ns` ([`RejectKind::Expired`]). Off by default:
    /// the time counted starts when the stream is accepted, which includes
    /// a round trip, so it suits links well inside the engine's per-hop
    /// budget.
    pub fn with_expired_refused(mut self, refuse: bool) -> Self {
        self.refuse_expired = refuse;
        self
    }

    /// Refuses a request whose frame stops arriving (fewer than
    /// [`MIN_PROGRESS`](crate::progress::MIN_PROGRESS) bytes, or what is
    /// left, in `timeout`: a stalled or trickling peer) with a
    /// [`RejectKind::Timeout`] rejection, while the stream can still carry
    /// the answer. A frame that keeps moving takes as long as it takes.
    /// Without it the request-response timeout drops the stream and nobody
    /// hears why.
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }

    /// Fails a request whose frame stops leaving (the stall rule of
    /// [`Codec::with_read_timeout`]), or whose acknowledgement does not come
    /// within `timeout` plus the
    /// [`drain_allowance`](crate::progress::drain_allowance) of what it
    /// wrote, with an I/O error of kind `TimedOut`.
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = Some(timeout);
        self
    }

    /// Writes the envelope of `req` behind `prefix`, recording what the
    /// frame took for the acknowledgement's wait.
    pub(crate) async fn write_envelope<T: AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        prefix: &[u8],
        req: Request,
    ) -> io::Result<()> {
        let (envelope, moved) = match req {
            Request::Envelope(envelope) => (envelope, None),
            Request::Sending(envelope, moved) => (envelope, Some(moved)),
            Request::Invalid(rejection) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("an invalid inbound frame is never sent: {rejection}"),
                ))
            }
        };
        self.written =
            write_frame(io, prefix, &*envelope, self.write_timeout, moved.as_ref()).await?;
        Ok(())
    }

    /// The read and write timeouts, if set.
    pub(crate) fn timeouts(&self) -> (Option<Duration>, Option<Duration>) {
        (self.read_timeout, self.write_timeout)
    }
}

/// How a length prefix ended.
enum Prefix {
    Len(u64),
    /// The stream ended before the prefix was complete; `read` bytes of it came.
    Eof {
        read: usize,
    },
    /// More than ten bytes, or a value that does not fit a u64.
    Invalid,
}

async fn read_prefix<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Prefix> {
    let mut value: u64 = 0;
    let mut byte = [0u8; 1];
    for i in 0..MAX_VARINT_BYTES {
        if io.read(&mut byte).await? == 0 {
            return Ok(Prefix::Eof { read: i });
        }
        let low = u64::from(byte[0] & 0x7f);
        if i == MAX_VARINT_BYTES - 1 && low > 1 {
            return Ok(Prefix::Invalid);
        }
        value |= low << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(Prefix::Len(value));
        }
    }
    Ok(Prefix::Invalid)
}

/// Reads a whole length-prefixed body of at most `cap` bytes, under the
/// stall rule when `stall` is given.
///
/// `Ok(Err(_))` is a frame that is wrong in a way worth answering;
/// `Err(_)` is a broken stream.
pub(crate) async fn read_frame<T: AsyncRead + Unpin>(
    io: &mut T,
    cap: usize,
    stall: Option<Duration>,
) -> io::Result<Result<Vec<u8>, Rejection>> {
    let prefix = match progress::within(stall, read_prefix(io)).await {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            return Ok(Err(Rejection::new(
                RejectKind::Timeout,
                format!("no length prefix within {:?}", stall.unwrap_or_default()),
            )))
        }
        prefix => prefix?,
    };
    let len = match prefix {
        Prefix::Len(len) => len,
        Prefix::Eof { read } => {
            return Ok(Err(Rejection::new(
                RejectKind::Truncated,
                format!("stream ended inside the length prefix after {read} bytes"),
            )))
        }
        Prefix::Invalid => {
            return Ok(Err(Rejection::new(
                RejectKind::LengthPrefix,
                "length prefix is not an unsigned varint of at most 64 bits".to_string(),
            )))
        }
    };
    if len > cap as u64 {
        return Ok(Err(Rejection::new(
            RejectKind::Oversize,
            format!("length prefix claims {len} bytes, cap is {cap}"),
        )));
    }
    let len = len as usize;
    // Grow with what arrives: the prefix is only a claim.
    Ok(match progress::read_body(io, len, stall).await? {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(got)) => Err(Rejection::new(
            RejectKind::Truncated,
            format!("stream ended after {got} of {len} body bytes"),
        )),
        Err(stalled) => Err(Rejection::new(
            RejectKind::Timeout,
            format!("the frame stopped arriving: {stalled}"),
        )),
    })
}

/// Reads the answer to a request of `written` bytes: a frame of at most
/// `cap` bytes, due a stall period (`write_timeout`) after the last byte
/// could have arrived at the slowest accepted pace (see progress.rs).
pub(crate) async fn read_answer<T: AsyncRead + Unpin>(
    io: &mut T,
    cap: usize,
    write_timeout: Option<Duration>,
    written: u64,
) -> io::Result<Vec<u8>> {
    let frame = read_frame(io, cap, None);
    let due = write_timeout.map(|period| period + progress::drain_allowance(written, period));
    progress::within(due, frame).await?.map_err(|rejection| {
        let kind = match rejection.kind {
            RejectKind::Timeout => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, rejection.to_string())
    })
}

/// Writes `msg` length-prefixed; returns the bytes the frame took.
/// `prefix` goes in the same write (a protocol's tag byte), so a small
/// request is one write, one transport frame.
pub(crate) async fn write_frame<T: AsyncWrite + Unpin, M: Message>(
    io: &mut T,
    prefix: &[u8],
    msg: &M,
    stall: Option<Duration>,
    moved: Option<&Progress>,
) -> io::Result<u64> {
    // request-response closes the stream after each write.
    let len = msg.encoded_len();
    let mut frame = Vec::with_capacity(prefix.len() + MAX_VARINT_BYTES + len);
    frame.extend_from_slice(prefix);
    prost::encoding::encode_varint(len as u64, &mut frame);
    msg.encode_raw(&mut frame);
    progress::write_all(io, &frame, stall, moved).await?;
    Ok(frame.len() as u64)
}

/// The refusal of an envelope whose deadline budget ran out while it was
/// being received.
fn expired(envelope: &WireEnvelope, took: Duration) -> Option<Rejection> {
    let budget = Duration::from_nanos(envelope.remaining_deadline_ns);
    (envelope.remaining_deadline_ns > 0 && took > budget).then(|| {
        Rejection::new(
            RejectKind::Expired,
            format!("took {took:?} to arrive, its deadline budget was {budget:?}"),
        )
    })
}

/// The rejection an envelope decode error becomes.
pub(crate) fn decode_rejection(err: EnvelopeDecodeError) -> Rejection {
    let kind = match err {
        EnvelopeDecodeError::Malformed(_) => RejectKind::Malformed,
        EnvelopeDecodeError::OversizeEnvelope { .. } => RejectKind::Oversize,
        _ => RejectKind::CapsExceeded,
    };
    Rejection::new(kind, err.to_string())
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Ack;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let started = Instant::now();
        let frame = read_frame(io, self.caps.max_total_bytes, self.read_timeout).await?;
        Ok(match frame {
            Ok(body) => match EnvelopeCodec::decode_capped(&body, &self.caps) {
                Ok(envelope) => {
                    match expired(&envelope, started.elapsed()).filter(|_| self.refuse_expired) {
                        Some(rejection) => Request::Invalid(rejection),
                        None => Request::Envelope(Arc::new(envelope)),
                    }
                }
                Err(err) => Request::Invalid(decode_rejection(err)),
            },
            Err(rejection) => Request::Invalid(rejection),
        })
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Ack>
    where
        T: AsyncRead + Unpin + Send,
    {
        let body = read_answer(io, MAX_ACK_BYTES, self.write_timeout, self.written).await?;
        Ack::decode(body.as_slice()).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("acknowledgement: {e}"))
        })
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_envelope(io, &[], req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        ack: Ack,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &[], &ack, self.read_timeout, None)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use libp2p::request_response::Codec as _;

    fn read(bytes: &[u8], cap: usize) -> Request {
        let mut codec = Codec::new(EnvelopeCaps::default(), cap);
        block_on(codec.read_request(&PROTOCOL_NAME, &mut futures::io::Cursor::new(bytes))).unwrap()
    }

    fn rejection(req: Request) -> Rejection {
        match req {
            Request::Invalid(r) => r,
            Request::Envelope(e) | Request::Sending(e, _) => {
                panic!("expected a rejection, decoded {e:?}")
            }
        }
    }

    #[test]
    fn envelope_round_trips() {
        let env = WireEnvelope {
            schema_version: 1,
            src_peer_bytes: vec![1, 2, 3],
            ..Default::default()
        };
        let mut buf = futures::io::Cursor::new(Vec::new());
        let mut codec = Codec::new(EnvelopeCaps::default(), 1024);
        block_on(codec.write_request(
            &PROTOCOL_NAME,
            &mut buf,
            Request::Envelope(Arc::new(env.clone())),
        ))
        .unwrap();
        match read(&buf.into_inner(), 1024) {
            Request::Envelope(got) | Request::Sending(got, _) => assert_eq!(*got, env),
            Request::Invalid(r) => panic!("{r}"),
        }
    }

    #[test]
    fn oversize_prefix_is_refused_unread() {
        // Prefix claims 2^40 bytes; no body follows.
        let mut frame = Vec::new();
        prost::encoding::encode_varint(1 << 40, &mut frame);
        let r = rejection(read(&frame, 1024));
        assert_eq!(r.kind, RejectKind::Oversize);
        assert_eq!(
            r.detail,
            "length prefix claims 1099511627776 bytes, cap is 1024"
        );
    }

    #[test]
    fn truncated_body_and_prefix() {
        let r = rejection(read(&[10, 1, 2, 3], 1024));
        assert_eq!(
            (r.kind, r.detail.as_str()),
            (
                RejectKind::Truncated,
                "stream ended after 3 of 10 body bytes"
            )
        );
        let r = rejection(read(&[0x80], 1024));
        assert_eq!(r.kind, RejectKind::Truncated);
        let r = rejection(read(&[], 1024));
        assert_eq!(r.kind, RejectKind::Truncated);
    }

    #[test]
    fn overlong_prefix_is_invalid() {
        let r = rejection(read(&[0xff; 11], 1024));
        assert_eq!(r.kind, RejectKind::LengthPrefix);
        let r = rejection(read(
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            1024,
        ));
        assert_eq!(r.kind, RejectKind::LengthPrefix);
    }

    #[test]
    fn garbage_body_is_malformed() {
        let r = rejection(read(&[3, 0xff, 0xff, 0xff], 1024));
        assert_eq!(r.kind, RejectKind::Malformed);
    }

    #[test]
    fn caps_are_checked_after_decode() {
        let env = WireEnvelope {
            schema_version: 9,
            ..Default::default()
        };
        let r = rejection(read(&env.encode_length_delimited_to_vec(), 1024));
        assert_eq!(r.kind, RejectKind::CapsExceeded);
        assert!(r.detail.contains("got=9"), "{}", r.detail);
    }

    mod properties {
        use super::*;
        use bb_runtime::envelope::{SlotFill, WireCorrelation};
        use proptest::collection::vec;
        use proptest::prelude::*;

        /// Small caps, so that generated envelopes reach them.
        fn caps() -> EnvelopeCaps {
            EnvelopeCaps {
                max_total_bytes: 64 * 1024,
                max_slot_fills: 8,
                max_per_fill_bytes: 4 * 1024,
                max_dest_suffix_bytes: 64,
                max_src_peer_addresses: 4,
                max_src_peer_address_bytes: 64,
            }
        }

        fn fill() -> impl Strategy<Value = SlotFill> {
            (
                vec(any::<u8>(), 0..=64),
                vec(any::<u8>(), 0..=4096),
                any::<bool>(),
                any::<u64>(),
            )
                .prop_map(|(dest_suffix, payload, trigger_only, type_hash)| SlotFill {
                    dest_suffix,
                    payload,
                    trigger_only,
                    type_hash,
                })
        }

        /// Any envelope within `caps()`.
        fn envelope() -> impl Strategy<Value = WireEnvelope> {
            (
                vec(vec(any::<u8>(), 0..48), 0..4),
                vec(fill(), 0..=8),
                proptest::option::of((0..3i32, any::<u64>())),
                any::<u64>(),
                vec(any::<u8>(), 0..48),
                prop_oneof![Just(0u32), Just(1u32)],
                vec(vec(any::<u8>(), 0..=64), 0..=4),
            )
                .prop_map(
                    |(dest, fills, correlation, deadline, src, schema_version, src_addrs)| {
                        WireEnvelope {
                            dest_peer_addresses: dest,
                            fills,
                            correlation: correlation
                                .map(|(kind, wire_req_id)| WireCorrelation { kind, wire_req_id }),
                            remaining_deadline_ns: deadline,
                            src_peer_bytes: src,
                            schema_version,
                            src_peer_addresses: src_addrs,
                            ..Default::default()
                        }
                    },
                )
        }

        fn write(envelope: &WireEnvelope) -> Vec<u8> {
            let mut buf = futures::io::Cursor::new(Vec::new());
            let mut codec = Codec::new(caps(), caps().max_total_bytes);
            block_on(codec.write_request(
                &PROTOCOL_NAME,
                &mut buf,
                Request::Envelope(Arc::new(envelope.clone())),
            ))
            .unwrap();
            buf.into_inner()
        }

        fn read_with_caps(bytes: &[u8]) -> io::Result<Request> {
            let mut codec = Codec::new(caps(), caps().max_total_bytes);
            block_on(codec.read_request(&PROTOCOL_NAME, &mut futures::io::Cursor::new(bytes)))
        }

        proptest! {
            /// An envelope within the caps arrives as itself, and re-encodes
            /// to the very bytes that were sent.
            #[test]
            fn envelopes_within_caps_round_trip_byte_exactly(envelope in envelope()) {
                let frame = write(&envelope);
                match read_with_caps(&frame).unwrap() {
                    Request::Envelope(got) | Request::Sending(got, _) => {
                        prop_assert_eq!(&*got, &envelope);
                        prop_assert_eq!(write(&got), frame);
                    }
                    Request::Invalid(r) => prop_assert!(false, "refused: {}", r),
                }
            }

            /// Whatever arrives becomes an envelope or a typed refusal: never
            /// a broken stream, never a panic.
            #[test]
            fn any_bytes_yield_an_envelope_or_a_typed_refusal(bytes in vec(any::<u8>(), 0..2048)) {
                prop_assert!(read_with_caps(&bytes).is_ok());
            }

            /// The same with a well-formed length prefix in front, so the
            /// body reaches the envelope decoder and its caps.
            #[test]
            fn any_body_yields_an_envelope_or_a_typed_refusal(body in vec(any::<u8>(), 0..4096)) {
                let mut frame = Vec::new();
                prost::encoding::encode_varint(body.len() as u64, &mut frame);
                frame.extend_from_slice(&body);
                match read_with_caps(&frame).unwrap() {
                    Request::Envelope(env) | Request::Sending(env, _) => {
                        prop_assert!(env.fills.len() <= caps().max_slot_fills);
                    }
                    Request::Invalid(r) => prop_assert!(matches!(
                        r.kind,
                        RejectKind::Malformed | RejectKind::CapsExceeded | RejectKind::Oversize
                    ), "{:?}", r),
                }
            }
        }
    }
}
