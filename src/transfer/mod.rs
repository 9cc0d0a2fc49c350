//! Values too large for one frame: transfers in chunks over
//! [`TRANSFER_PROTOCOL`].
//!
//! An envelope whose encoding passes 4 MiB (or the frame cap, if lower)
//! crosses as a transfer. The sender opens it with a `Start`: the envelope
//! with its fills' payloads left empty (the header), each payload's length,
//! the chunk size and a digest: BLAKE3 of the header followed by the BLAKE3
//! digest of each payload. The payloads then go, laid end to end, in chunks of
//! [`CHUNK_BYTES`], several at once, each its own request and stream, so a
//! small envelope to the same peer is never queued behind them. Each answer
//! says which chunks the receiver holds. The answer to the chunk that
//! completes the value carries the receiving engine's verdict, as an
//! envelope's acknowledgement does.
//!
//! - **Progress, not a flat timeout.** Each chunk is one frame under the
//!   stall rule of [`progress`](crate::progress): a transfer takes as long
//!   as its bytes keep moving.
//! - **Bounded memory.** The sender reads chunks straight from the
//!   envelope the engine handed over: no copy per peer or per chunk. The
//!   receiver writes each chunk into the payload it belongs to, allocated
//!   once at its declared length, within a budget shared by all transfers
//!   ([`Config::with_transfer_budget`](crate::Config::with_transfer_budget));
//!   past it a `Start` is answered busy, and the sender waits and asks
//!   again.
//! - **Resumption.** A transfer cut by a closed connection is sent again
//!   like any envelope (see [`Config::with_delivery_window`](crate::Config::with_delivery_window));
//!   its `Start` names the same digest, the receiver answers with the
//!   chunks it kept, and only the others go.
//! - **Integrity.** The receiver hashes the value as it arrives and checks
//!   the digest before the value reaches the engine; a mismatch is refused
//!   as [`RejectKind::Integrity`](crate::RejectKind::Integrity).
//! - **Rolling upgrades.** [`PROTOCOL_NAME`](crate::PROTOCOL_NAME) is
//!   unchanged. Both protocols are offered, this one first: two peers of
//!   this version speak it for every envelope, and a peer that speaks only
//!   the old one still exchanges every envelope that fits one frame.

pub(crate) mod framing;
pub(crate) mod plan;
pub(crate) mod receiver;
pub(crate) mod sender;

pub use framing::{Answer, Chunk, ChunkBytes, Framing, Message, Payloads, TRANSFER_PROTOCOL};

/// The generated messages of `proto/transfer.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::enum_variant_names)]
    include!(concat!(env!("OUT_DIR"), "/bb_libp2p.transfer.v1.rs"));
}

/// Size of every chunk but a transfer's last.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Envelopes encoded larger than this cross as transfers (when the frame
/// cap is not lower).
pub const TRANSFER_ABOVE: usize = 4 << 20;

/// Chunks of one transfer on the wire at once.
pub(crate) const WINDOW: usize = 8;
