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
//! Its limit: a restored Node's request ids start again from 1, so after a
//! restart the same Send sending the same bytes under a reused id is still
//! taken for a duplicate while the old one is in the window.
//!
//! `tests/equal_values.rs::upstream_dedup_still_keys_on_the_payload` fails
//! once upstream keys the gate on something else, so this can go.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use bb_ir::proto::onnx::NodeProto;
use bb_runtime::atomic::DispatchResult;
use bb_runtime::bus::{OpError, OpErrorKind};
use bb_runtime::engine::GraphSlot;
use bb_runtime::runtime::RuntimeResourceRef;
use bb_runtime::slot_value::SlotValue;

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
    let bytes = value.to_wire_bytes().map_err(|e| OpError {
        kind: OpErrorKind::ExecutionFailed,
        reason: "wire_encode_failed",
        detail: format!("DedupGateRx: input wire encode failed: {e}"),
    })?;
    // SipHash with fixed keys: the same key for the same envelope, always.
    let mut hasher = DefaultHasher::new();
    ctx.current.inbound.src_peer.hash(&mut hasher);
    ctx.current.inbound.wire_req_id.hash(&mut hasher);
    bytes.hash(&mut hasher);
    if ctx.net.dedup.record(hasher.finish()) {
        return Err(OpError {
            detail: "DedupGateRx dropped envelope: reason=duplicate".into(),
            ..Default::default()
        });
    }
    Ok(DispatchResult::Immediate(vec![(
        "value".to_string(),
        value.clone_boxed(),
    )]))
}
