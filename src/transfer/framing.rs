//! The codec of both protocols the behaviour speaks: [`PROTOCOL_NAME`]
//! exactly as before, and [`TRANSFER_PROTOCOL`], which carries envelopes
//! the same way behind a tag byte, and transfers.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bb_runtime::envelope::WireEnvelope;
use futures::prelude::*;
use libp2p::request_response::Codec as _;
use libp2p::StreamProtocol;
use prost::Message as _;

use super::plan::segments;
use super::proto::{ChunkHeader, Reply, Start};
use crate::codec::{read_answer, read_frame, write_frame, Ack, Codec, Request, PROTOCOL_NAME};
use crate::event::{RejectKind, Rejection};
use crate::progress::{self, Progress};

/// The transfer protocol's name; see [`crate::transfer`].
pub const TRANSFER_PROTOCOL: StreamProtocol = StreamProtocol::new("/bytesandbrains/transfer/1");

/// The tag of an envelope on [`TRANSFER_PROTOCOL`].
const TAG_ENVELOPE: u8 = 0;
/// The tag of a [`Start`].
const TAG_START: u8 = 1;
/// The tag of a chunk.
const TAG_CHUNK: u8 = 2;

/// Largest `Start` read: a header within the envelope caps, with its
/// payloads empty, and one length per fill.
const MAX_START_BYTES: usize = 1 << 20;
/// Largest chunk header read: a digest and an offset.
const MAX_CHUNK_HEADER_BYTES: usize = 64;
/// Largest reply read: a bit per chunk of a value of up to 64 GiB in 1 MiB
/// chunks, and an acknowledgement.
const MAX_REPLY_BYTES: usize = 16 * 1024;

/// The error of a transfer request written on a stream negotiated as
/// [`PROTOCOL_NAME`]: the peer does not speak [`TRANSFER_PROTOCOL`].
pub(crate) const PEER_LACKS_TRANSFERS: &str = "the peer speaks only /bytesandbrains/wire/1";

/// One request of either protocol.
#[derive(Debug)]
pub enum Message {
    /// An envelope, as on [`PROTOCOL_NAME`].
    Wire(Request),
    /// Opens a transfer, or asks how far one got.
    Start(Start),
    /// One chunk of a transfer.
    Chunk(Chunk),
    /// A transfer's request that could not be read: answered with a
    /// [`Reply`] that refuses it (an envelope's is a
    /// [`Request::Invalid`], answered with an [`Ack`]).
    Refused(Rejection),
}

/// One chunk of a transfer.
#[derive(Debug)]
pub struct Chunk {
    /// The transfer's digest.
    pub digest: Vec<u8>,
    /// Where the chunk starts in the payloads laid end to end.
    pub offset: u64,
    /// Its bytes.
    pub bytes: ChunkBytes,
}

/// The payloads a transfer's chunks are read from, laid end to end in
/// fill order; shared by every chunk and every peer, never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payloads(pub(crate) Arc<Vec<Arc<Vec<u8>>>>);

impl Payloads {
    /// The payloads of `envelope`'s fills, moved out of it.
    pub fn of(envelope: WireEnvelope) -> Self {
        Self(Arc::new(
            envelope
                .fills
                .into_iter()
                .map(|f| Arc::new(f.payload))
                .collect(),
        ))
    }

    /// Each payload's length.
    pub(crate) fn lengths(&self) -> Vec<u64> {
        self.0.iter().map(|p| p.len() as u64).collect()
    }
}

/// A chunk's bytes: read from the wire, or to be written from the
/// payloads that hold them.
#[derive(Debug)]
pub enum ChunkBytes {
    /// What was read.
    Received(Vec<u8>),
    /// `len` bytes at the chunk's offset of `payloads`, with the
    /// [`Progress`] the writing reports to.
    Sending {
        /// The payloads that hold the bytes.
        payloads: Payloads,
        /// How many.
        len: u64,
        /// Where the bytes written are counted.
        progress: Progress,
    },
}

/// The answer to a request of either protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// An envelope's acknowledgement.
    Ack(Ack),
    /// A transfer's state.
    Reply(Reply),
}

/// The codec of [`PROTOCOL_NAME`] and [`TRANSFER_PROTOCOL`].
#[derive(Debug, Clone)]
pub struct Framing {
    wire: Codec,
    max_chunk: usize,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// Whether the request this codec wrote last was a transfer's (its
    /// answer is a [`Reply`]), and the bytes it took.
    wrote_transfer: bool,
    written: u64,
}

impl Framing {
    /// Envelopes framed by `wire`, whose read and write timeouts apply to
    /// transfer frames too; chunks of at most `max_chunk` bytes read.
    pub fn new(wire: Codec, max_chunk: usize) -> Self {
        let (read_timeout, write_timeout) = wire.timeouts();
        Self {
            wire,
            max_chunk,
            read_timeout,
            write_timeout,
            wrote_transfer: false,
            written: 0,
        }
    }
}

/// A transfer frame that could not be read becomes a refusal of the whole
/// request.
fn invalid(rejection: Rejection) -> Message {
    Message::Refused(rejection)
}

async fn read_tag<T: AsyncRead + Unpin>(io: &mut T, stall: Option<Duration>) -> io::Result<u8> {
    let mut tag = [0u8; 1];
    progress::within(stall, io.read_exact(&mut tag)).await?;
    Ok(tag[0])
}

impl Framing {
    async fn read_transfer<T: AsyncRead + Unpin + Send>(
        &mut self,
        io: &mut T,
    ) -> io::Result<Message> {
        let stall = self.read_timeout;
        match read_tag(io, stall).await {
            Ok(TAG_ENVELOPE) => {}
            Ok(TAG_START) => {
                return Ok(match read_frame(io, MAX_START_BYTES, stall).await? {
                    Ok(body) => match Start::decode(body.as_slice()) {
                        Ok(start) => Message::Start(start),
                        Err(e) => invalid(malformed("start", e)),
                    },
                    Err(rejection) => invalid(rejection),
                });
            }
            Ok(TAG_CHUNK) => {
                let header = match read_frame(io, MAX_CHUNK_HEADER_BYTES, stall).await? {
                    Ok(body) => match ChunkHeader::decode(body.as_slice()) {
                        Ok(header) => header,
                        Err(e) => return Ok(invalid(malformed("chunk header", e))),
                    },
                    Err(rejection) => return Ok(invalid(rejection)),
                };
                return Ok(match read_frame(io, self.max_chunk, stall).await? {
                    Ok(bytes) => Message::Chunk(Chunk {
                        digest: header.digest,
                        offset: header.offset,
                        bytes: ChunkBytes::Received(bytes),
                    }),
                    Err(rejection) => invalid(rejection),
                });
            }
            Ok(tag) => {
                return Ok(Message::Wire(Request::Invalid(Rejection::new(
                    RejectKind::Malformed,
                    format!("unknown message tag {tag}"),
                ))))
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Ok(Message::Wire(Request::Invalid(Rejection::new(
                    RejectKind::Truncated,
                    "stream ended before the message tag".to_string(),
                ))))
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Ok(Message::Wire(Request::Invalid(Rejection::new(
                    RejectKind::Timeout,
                    e.to_string(),
                ))))
            }
            Err(e) => return Err(e),
        }
        self.wire
            .read_request(&PROTOCOL_NAME, io)
            .await
            .map(Message::Wire)
    }

    async fn write_chunk<T: AsyncWrite + Unpin + Send>(
        &mut self,
        io: &mut T,
        chunk: Chunk,
    ) -> io::Result<u64> {
        let ChunkBytes::Sending {
            payloads,
            len,
            progress,
        } = chunk.bytes
        else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a received chunk is never sent",
            ));
        };
        let header = ChunkHeader {
            digest: chunk.digest,
            offset: chunk.offset,
        };
        // The tag, the header and the bytes' length in one write.
        let mut head = vec![TAG_CHUNK];
        header
            .encode_length_delimited(&mut head)
            .map_err(io::Error::other)?;
        prost::encoding::encode_varint(len, &mut head);
        progress::write_all(io, &head, self.write_timeout, None).await?;
        let mut written = head.len() as u64;
        let range = chunk.offset..chunk.offset + len;
        let pieces: Vec<_> = segments(payloads.lengths(), range).collect();
        for (fill, range) in pieces {
            let bytes = &payloads.0[fill][range];
            progress::write_all(io, bytes, self.write_timeout, Some(&progress)).await?;
            written += bytes.len() as u64;
        }
        Ok(written)
    }
}

fn malformed(what: &str, e: prost::DecodeError) -> Rejection {
    Rejection::new(RejectKind::Malformed, format!("{what}: {e}"))
}

impl libp2p::request_response::Codec for Framing {
    type Protocol = StreamProtocol;
    type Request = Message;
    type Response = Answer;

    async fn read_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Message>
    where
        T: AsyncRead + Unpin + Send,
    {
        if *protocol == TRANSFER_PROTOCOL {
            self.read_transfer(io).await
        } else {
            self.wire
                .read_request(protocol, io)
                .await
                .map(Message::Wire)
        }
    }

    async fn read_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Answer>
    where
        T: AsyncRead + Unpin + Send,
    {
        if !self.wrote_transfer {
            return self.wire.read_response(protocol, io).await.map(Answer::Ack);
        }
        let body = read_answer(io, MAX_REPLY_BYTES, self.write_timeout, self.written).await?;
        Reply::decode(body.as_slice())
            .map(Answer::Reply)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("transfer reply: {e}")))
    }

    async fn write_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        message: Message,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let transfer = *protocol == TRANSFER_PROTOCOL;
        self.wrote_transfer = !matches!(message, Message::Wire(_));
        if self.wrote_transfer && !transfer {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                PEER_LACKS_TRANSFERS,
            ));
        }
        // Each request is its tag and its frames in as few writes as they
        // allow: one for an envelope or a `Start`.
        self.written = match message {
            Message::Wire(request) => {
                let tag: &[u8] = if transfer { &[TAG_ENVELOPE] } else { &[] };
                return self.wire.write_envelope(io, tag, request).await;
            }
            Message::Start(start) => {
                write_frame(io, &[TAG_START], &start, self.write_timeout, None).await?
            }
            Message::Chunk(chunk) => self.write_chunk(io, chunk).await?,
            Message::Refused(rejection) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a refused inbound request is never sent: {rejection}"),
                ))
            }
        };
        Ok(())
    }

    async fn write_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        answer: Answer,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match answer {
            Answer::Ack(ack) => self.wire.write_response(protocol, io, ack).await,
            Answer::Reply(reply) => write_frame(io, &[], &reply, self.read_timeout, None)
                .await
                .map(drop),
        }
    }
}

/// Whether `error` says the peer speaks only [`PROTOCOL_NAME`].
pub(crate) fn lacks_transfers(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::Unsupported && error.to_string() == PEER_LACKS_TRANSFERS
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn framing() -> Framing {
        Framing::new(Codec::new(Default::default(), 1 << 20), 4 << 20)
    }

    #[test]
    fn a_start_round_trips() {
        let start = Start {
            digest: vec![1; 32],
            header: vec![1, 2, 3],
            fill_lengths: vec![5, 6],
            chunk_bytes: 1 << 20,
        };
        let mut buf = futures::io::Cursor::new(Vec::new());
        block_on(framing().write_request(
            &TRANSFER_PROTOCOL,
            &mut buf,
            Message::Start(start.clone()),
        ))
        .unwrap();
        let bytes = buf.into_inner();
        let got = block_on(
            framing().read_request(&TRANSFER_PROTOCOL, &mut futures::io::Cursor::new(bytes)),
        )
        .unwrap();
        match got {
            Message::Start(got) => assert_eq!(got, start),
            other => panic!("{other:?}"),
        }
    }
}
