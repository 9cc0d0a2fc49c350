//! Counters of what crossed the wire.

/// Envelopes this behaviour put on the wire and took off it, with their
/// encoded sizes (the `WireEnvelope` bytes, without the length prefix, the
/// acknowledgement or the transport's own framing and encryption).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Envelopes sent as requests to other peers.
    pub envelopes_sent: u64,
    /// Their encoded bytes.
    pub bytes_sent: u64,
    /// Envelopes received from other peers that decoded within the caps
    /// (taken in or refused by policy alike).
    pub envelopes_received: u64,
    /// Their encoded bytes.
    pub bytes_received: u64,
    /// Bytes of transfer chunks ([`crate::transfer`]) put on the wire,
    /// each time one went (a chunk cut off with its connection goes again).
    pub chunk_bytes_sent: u64,
    /// Bytes of transfer chunks read that fit their transfer, each time one
    /// arrived (an envelope's encoded size counts in `bytes_received` once
    /// it is whole).
    pub chunk_bytes_received: u64,
}
