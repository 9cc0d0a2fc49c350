//! Equal values from different envelopes are not duplicates.
//!
//! bb-runtime 0.3.8's receive dedup gate (`DedupGateRx`) keys on the payload
//! alone: a Node drops a value equal to any it took recently (its window
//! holds 8,192), from any sender, in any round. Two peers whose numbers
//! agree lose one; a coordinator that sends an unchanged model again loses
//! it.
//!
//! A dedup gate is meant to drop a second delivery of one envelope. Here,
//! that happens when a restarted sender sends again the envelopes its
//! snapshot carried, one of which had arrived before its acknowledgement was
//! lost: the same sender, the same engine request id, the same bytes.
//! [`per_envelope`] stands in for the gate and keys on exactly those three,
//! in the engine's own window: a value from another peer, or from another
//! Send of the same peer, passes.
//!
//! Its limit: a restored Node's request ids start again from 0, so after a
//! restart the same Send sending the same bytes under a reused id is still
//! taken for a duplicate while the old one is in the window.
//!
//! The engine's window is not in its snapshot (0.3.8 declares it there but
//! never fills it), so a receiver restarted from its snapshot would take
//! again an envelope it took before. [`Taken`] keeps the keys this gate
//! recorded, as many as the window holds, and carries them in the
//! snapshot's unused `wire_states` under [`SNAPSHOT_KEY`]; a restore puts
//! them back in the engine's window.
//!
//! `tests/equal_values.rs::upstream_dedup_still_keys_on_the_payload` fails
//! once upstream keys the gate on something else, so this can go.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use bb_ir::proto::onnx::NodeProto;
use bb_runtime::atomic::DispatchResult;
use bb_runtime::bus::{OpError, OpErrorKind};
use bb_runtime::engine::GraphSlot;
use bb_runtime::node::Node;
use bb_runtime::runtime::RuntimeResourceRef;
use bb_runtime::slot_value::SlotValue;
use bb_runtime::snapshot::NodeSnapshot;
use bb_runtime::syscall::values::BytesValue;

use super::{dispatch, SYSCALL_DOMAIN};

const WRAPPER: &str = "dedup";
const DEDUP_GATE_RX: &str = "DedupGateRx";

/// Routes every `DedupGateRx` of `graph` through [`per_envelope`].
pub(crate) fn key_on_envelopes(graph: &mut GraphSlot) {
    dispatch::wrap_where(graph, WRAPPER, per_envelope, |node| {
        node.domain == SYSCALL_DOMAIN && node.op_type == DEDUP_GATE_RX
    });
}

/// The gate, keyed on the sender, the engine request id and the value:
/// passes the value on, or fails as the engine's gate does on a duplicate.
fn per_envelope(
    _node: &NodeProto,
    inputs: &[(&str, &dyn SlotValue)],
    ctx: &mut RuntimeResourceRef<'_>,
) -> Result<DispatchResult, OpError> {
    let (_, value) = inputs.first().ok_or_else(|| OpError {
        detail: "DedupGateRx requires one input".into(),
        ..Default::default()
    })?;
    // BLAKE3: the same key for the same envelope on every build, since
    // keys outlive the process in snapshots (std's hasher may change).
    let mut hasher = KeyHasher(blake3::Hasher::new());
    ctx.current.inbound.src_peer.hash(&mut hasher);
    ctx.current.inbound.wire_req_id.hash(&mut hasher);
    match value.as_any().downcast_ref::<BytesValue>() {
        // The value's encoding, hashed without making it (`bulk.rs`).
        Some(bytes) => hash_encoding(&bytes.0, &mut hasher),
        None => {
            let bytes = value.to_wire_bytes().map_err(|e| OpError {
                kind: OpErrorKind::ExecutionFailed,
                reason: "wire_encode_failed",
                detail: format!("DedupGateRx: input wire encode failed: {e}"),
            })?;
            bytes.hash(&mut hasher);
        }
    }
    let key = hasher.finish();
    if ctx.net.dedup.record(key) {
        return Err(OpError {
            detail: "DedupGateRx dropped envelope: reason=duplicate".into(),
            ..Default::default()
        });
    }
    TAKEN.with(|taken| {
        if let Some(taken) = taken.borrow_mut().as_mut() {
            taken.push(key);
        }
    });
    Ok(DispatchResult::Immediate(vec![(
        "value".to_string(),
        value.clone_boxed(),
    )]))
}

/// A `Hasher` over BLAKE3, so that keys are the same from one build to
/// the next.
struct KeyHasher(blake3::Hasher);

/// Feeds `hasher` what hashing the encoding of `BytesValue(bytes)` (a
/// `Vec<u8>`: its length, then its bytes) would.
fn hash_encoding(bytes: &[u8], hasher: &mut KeyHasher) {
    hasher.write_usize(8 + bytes.len());
    hasher.write(&(bytes.len() as u64).to_le_bytes());
    hasher.write(bytes);
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let hash = self.0.finalize();
        u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("eight bytes"))
    }
}

/// Where a snapshot carries [`Taken`]'s keys in `transient.wire_states`
/// ("bbdd"), which the engine 0.3.8 neither fills nor reads.
pub(crate) const SNAPSHOT_KEY: u32 = 0x6262_6464;

thread_local! {
    /// The keys of the Node whose engine runs on this thread now.
    static TAKEN: RefCell<Option<Taken>> = const { RefCell::new(None) };
    /// Keys a restore put back, for the host built next on this thread.
    static RESTORED: RefCell<Option<Taken>> = const { RefCell::new(None) };
}

/// The keys one Node's gate recorded, oldest first, as many as the
/// engine's window holds: what a snapshot carries.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    keys: VecDeque<u64>,
    capacity: usize,
}

impl Taken {
    /// The keys of `node`: those its restore put back, or none.
    pub(crate) fn of(node: &mut Node) -> Self {
        let capacity = node
            .engine_install_handle()
            .framework
            .inbound_dedup
            .capacity();
        let mut taken = RESTORED.with(|r| r.borrow_mut().take()).unwrap_or_default();
        taken.capacity = capacity;
        while taken.keys.len() > capacity {
            taken.keys.pop_front();
        }
        taken
    }

    fn push(&mut self, key: u64) {
        if self.keys.len() >= self.capacity.max(1) {
            self.keys.pop_front();
        }
        self.keys.push_back(key);
    }

    /// Runs `f` (an engine cycle) with the keys the gate records going
    /// here.
    pub(crate) fn during<R>(&mut self, f: impl FnOnce() -> R) -> R {
        TAKEN.with(|t| *t.borrow_mut() = Some(std::mem::take(self)));
        let result = f();
        if let Some(taken) = TAKEN.with(|t| t.borrow_mut().take()) {
            *self = taken;
        }
        result
    }

    /// Carries the keys in `snapshot`.
    pub(crate) fn save(&self, snapshot: &mut NodeSnapshot) {
        snapshot
            .transient
            .wire_states
            .insert(SNAPSHOT_KEY, self.encode());
    }

    fn encode(&self) -> Vec<u8> {
        self.keys.iter().flat_map(|k| k.to_le_bytes()).collect()
    }

    fn decode(bytes: &[u8]) -> Self {
        let keys = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("eight bytes")))
            .collect();
        Self { keys, capacity: 0 }
    }

    /// Takes the keys out of `snapshot`, to [`Taken::put_back`] once it is
    /// restored.
    pub(crate) fn take_from(snapshot: &mut NodeSnapshot) -> Self {
        let bytes = snapshot
            .transient
            .wire_states
            .remove(&SNAPSHOT_KEY)
            .unwrap_or_default();
        Self::decode(&bytes)
    }

    /// Drops keys a restore left for a host that was never built (the
    /// closure building the Node failed after restoring it).
    pub(crate) fn forget_restored() {
        RESTORED.with(|r| r.borrow_mut().take());
    }

    /// Records the keys in `node`'s window, oldest first, and keeps them for
    /// the host that runs it.
    pub(crate) fn put_back(self, node: &mut Node) {
        let dedup = &mut node.engine_install_handle().framework.inbound_dedup;
        for key in &self.keys {
            dedup.record(*key);
        }
        RESTORED.with(|r| *r.borrow_mut() = Some(self));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bytes_values_key_is_the_key_of_its_encoding() {
        for len in [0usize, 3, 100_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut made = KeyHasher(blake3::Hasher::new());
            BytesValue(bytes.clone())
                .to_wire_bytes()
                .unwrap()
                .hash(&mut made);
            let mut bulk = KeyHasher(blake3::Hasher::new());
            hash_encoding(&bytes, &mut bulk);
            assert_eq!(made.finish(), bulk.finish());
        }
    }

    #[test]
    fn keys_are_bounded_and_round_trip_through_their_encoding() {
        let mut taken = Taken {
            keys: VecDeque::new(),
            capacity: 3,
        };
        for key in 1..=5 {
            taken.push(key);
        }
        assert_eq!(taken.keys, [3, 4, 5]);
        assert_eq!(Taken::decode(&taken.encode()).keys, [3, 4, 5]);
    }
}
