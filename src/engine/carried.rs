//! Envelopes a snapshot carried that may have reached their peers before.
//!
//! A snapshot puts every envelope its behaviour had not seen acknowledged
//! back in the engine's outbound queue, and a Node restored from it sends
//! them again. Some had been delivered already: their acknowledgement was
//! on its way when the process stopped. If such an envelope then fails for
//! a reason that says "not sent" (no address for the peer yet, a refused
//! dial), that would be a lie: it ends as
//! [`SendFailure::Unconfirmed`](crate::SendFailure::Unconfirmed) instead,
//! as an envelope an earlier attempt may have delivered does within one
//! process.
//!
//! The snapshot carries the envelopes' digests in `transient.wire_states`
//! (under [`SNAPSHOT_KEY`], which the engine neither fills nor reads); the
//! restore leaves them for the host built next on the engine thread, which
//! recognises each envelope as the restored engine hands it over.

use std::cell::RefCell;
use std::collections::HashSet;

use bb_runtime::envelope::WireEnvelope;
use bb_runtime::snapshot::NodeSnapshot;
use prost::Message;

/// Where a snapshot carries the digests ("bbcr").
pub(crate) const SNAPSHOT_KEY: u32 = 0x6262_6372;

/// BLAKE3 of an envelope's encoding.
type Digest = [u8; 32];

thread_local! {
    /// Digests a restore took out of its snapshot, for the host built next
    /// on this thread.
    static RESTORED: RefCell<Option<Carried>> = const { RefCell::new(None) };
}

/// The envelopes a restored Node has still to hand over that its snapshot
/// carried.
#[derive(Debug, Default)]
pub(crate) struct Carried(HashSet<Digest>);

fn digest(envelope: &WireEnvelope) -> Digest {
    *blake3::hash(&envelope.encode_to_vec()).as_bytes()
}

/// The digests [`Carried::digests`] wrote.
fn decode(bytes: &[u8]) -> Carried {
    let digests = bytes
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect();
    Carried(digests)
}

impl Carried {
    /// What [`Carried::save`] records of `envelopes`: their digests, one
    /// after the other.
    pub(crate) fn digests(envelopes: &[WireEnvelope]) -> Vec<u8> {
        envelopes.iter().flat_map(digest).collect()
    }

    /// Records envelopes, by their [`Carried::digests`], in `snapshot` as
    /// carried.
    pub(crate) fn save(digests: Vec<u8>, snapshot: &mut NodeSnapshot) {
        snapshot.transient.wire_states.insert(SNAPSHOT_KEY, digests);
    }

    /// Takes the digests out of `snapshot` (so the engine never sees them)
    /// and leaves them for the host built next on this thread.
    pub(crate) fn take_from(snapshot: &mut NodeSnapshot) {
        let bytes = snapshot
            .transient
            .wire_states
            .remove(&SNAPSHOT_KEY)
            .unwrap_or_default();
        RESTORED.with(|r| *r.borrow_mut() = Some(decode(&bytes)));
    }

    /// What a restore left on this thread, or nothing.
    pub(crate) fn restored() -> Self {
        RESTORED.with(|r| r.borrow_mut().take()).unwrap_or_default()
    }

    /// Drops what a restore left for a host that was never built.
    pub(crate) fn forget_restored() {
        RESTORED.with(|r| r.borrow_mut().take());
    }

    /// Whether `envelope`, as the engine hands it over, is one the
    /// snapshot carried; each is recognised once.
    pub(crate) fn was_carried(&mut self, envelope: &WireEnvelope) -> bool {
        !self.0.is_empty() && self.0.remove(&digest(envelope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bb_runtime::envelope::SlotFill;

    fn envelope(payload: &[u8]) -> WireEnvelope {
        WireEnvelope {
            fills: vec![SlotFill {
                payload: payload.to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn each_carried_envelope_is_recognised_once() {
        let mut carried = decode(&Carried::digests(&[envelope(b"a"), envelope(b"b")]));
        assert!(carried.was_carried(&envelope(b"a")));
        assert!(!carried.was_carried(&envelope(b"a")));
        assert!(!carried.was_carried(&envelope(b"c")));
        assert!(carried.was_carried(&envelope(b"b")));
        assert!(Carried::restored().0.is_empty());
    }
}
