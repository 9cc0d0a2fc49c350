//! Envelopes the transport acknowledged are processed, whatever the
//! sender's back-off.
//!
//! bb-runtime 0.3.8's receive chain has a back-off gate (`BackoffGateRx`)
//! that drops an inbound value when its sender is cooling down in this
//! Node's `BackoffTable`: a peer this Node failed to reach a moment ago
//! (its connection closed under an envelope, say) has the value it sent
//! dropped after the transport acknowledged it, with only an `OpFailed`
//! step ("reason=cooldown") to say so. Acknowledged means taken; the peer
//! reached this Node, so the link is not what the back-off guards. Who may
//! send is the transport's to decide (the PeerGovernor's lists, at
//! admission).
//!
//! [`forward`] stands in for the gate and passes every value on.
//! `tests/cooldown.rs::upstream_backoff_gate_still_drops_inbound_values`
//! fails once upstream stops dropping them, so this can go.

use bb_ir::proto::onnx::NodeProto;
use bb_runtime::atomic::DispatchResult;
use bb_runtime::bus::OpError;
use bb_runtime::engine::GraphSlot;
use bb_runtime::runtime::RuntimeResourceRef;
use bb_runtime::slot_value::SlotValue;

use super::{dispatch, SYSCALL_DOMAIN};

const WRAPPER: &str = "backoff_rx";
const BACKOFF_GATE_RX: &str = "BackoffGateRx";

/// Routes every `BackoffGateRx` of `graph` through [`forward`].
pub(crate) fn pass_acknowledged(graph: &mut GraphSlot) {
    dispatch::wrap_where(graph, WRAPPER, forward, |node| {
        node.domain == SYSCALL_DOMAIN && node.op_type == BACKOFF_GATE_RX
    });
}

/// The gate, letting every value through.
fn forward(
    _node: &NodeProto,
    inputs: &[(&str, &dyn SlotValue)],
    _ctx: &mut RuntimeResourceRef<'_>,
) -> Result<DispatchResult, OpError> {
    let (_, value) = inputs.first().ok_or_else(|| OpError {
        detail: "BackoffGateRx requires one input".into(),
        ..Default::default()
    })?;
    Ok(DispatchResult::Immediate(vec![(
        "value".to_string(),
        value.clone_boxed(),
    )]))
}
