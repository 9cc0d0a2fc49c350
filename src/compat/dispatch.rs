//! Runs a framework op through a function of this crate first.
//!
//! An installed graph resolves each op to a dispatch entry once, at install
//! (`GraphSlot::op_dispatch`); a framework op's entry is a plain `fn`
//! pointer (`OpDispatch::Stateless`), which cannot carry the function it
//! replaces. [`wrap`] therefore files the replaced function under the op's
//! `(domain, op_type)` and the wrapper's name, and the wrapper finds it again
//! with [`original`]. Framework ops are registered once per process under
//! that key, so one entry serves every Node on every thread.

use std::sync::{OnceLock, RwLock};

use bb_ir::proto::onnx::NodeProto;
use bb_runtime::bus::{OpError, OpErrorKind};
use bb_runtime::engine::{GraphSlot, OpDispatch, StatelessInvokeFn};

/// A replaced function, filed under `(wrapper, domain, op_type)`.
struct Filed {
    wrapper: &'static str,
    domain: String,
    op_type: String,
    function: StatelessInvokeFn,
}

impl Filed {
    fn is(&self, wrapper: &str, node: &NodeProto) -> bool {
        self.wrapper == wrapper && self.domain == node.domain && self.op_type == node.op_type
    }
}

/// A handful of entries (one per op type wrapped), read on every call of a
/// wrapped op: a list scanned without allocating beats a map keyed by owned
/// strings.
fn originals() -> &'static RwLock<Vec<Filed>> {
    static ORIGINALS: OnceLock<RwLock<Vec<Filed>>> = OnceLock::new();
    ORIGINALS.get_or_init(Default::default)
}

/// Makes every op of `graph` that `select` picks call `wrapper` instead,
/// filing the function it called under `wrapper_name` (see [`wrap`]).
pub(crate) fn wrap_where(
    graph: &mut GraphSlot,
    wrapper_name: &'static str,
    wrapper: StatelessInvokeFn,
    mut select: impl FnMut(&NodeProto) -> bool,
) {
    for (node, dispatch) in graph.function.node.iter().zip(&mut graph.op_dispatch) {
        if select(node) {
            wrap(wrapper_name, node, dispatch, wrapper);
        }
    }
}

/// Makes `dispatch`, the entry of `node`, call `wrapper` instead, filing the
/// function it called under `wrapper_name`. Only a framework op
/// (`OpDispatch::Stateless`) whose function is the one filed for its kind
/// (if any) can be wrapped; any other entry is left alone.
fn wrap(
    wrapper_name: &'static str,
    node: &NodeProto,
    dispatch: &mut OpDispatch,
    wrapper: StatelessInvokeFn,
) {
    let OpDispatch::Stateless(function) = dispatch else {
        return;
    };
    if std::ptr::fn_addr_eq(*function, wrapper) {
        return;
    }
    let mut filed = originals()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match filed.iter().find(|f| f.is(wrapper_name, node)) {
        // Another Node runs its own function for this op (its host replaced
        // the entry): the wrapper could not tell the two apart.
        Some(f) if !std::ptr::fn_addr_eq(f.function, *function) => {
            tracing::warn!(
                domain = %node.domain,
                op_type = %node.op_type,
                wrapper = wrapper_name,
                "the op's dispatch was replaced by the application; not wrapping it"
            );
            return;
        }
        Some(_) => {}
        None => filed.push(Filed {
            wrapper: wrapper_name,
            domain: node.domain.clone(),
            op_type: node.op_type.clone(),
            function: *function,
        }),
    }
    *dispatch = OpDispatch::Stateless(wrapper);
}

/// The function [`wrap`] replaced for `node` under `wrapper_name`, or an
/// error naming the op (which only a Node wrapped in another process could
/// meet).
pub(crate) fn original(
    wrapper_name: &'static str,
    node: &NodeProto,
) -> Result<StatelessInvokeFn, OpError> {
    originals()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .find(|f| f.is(wrapper_name, node))
        .map(|f| f.function)
        .ok_or_else(|| OpError {
            kind: OpErrorKind::NotRegistered,
            reason: "unwrapped_op",
            detail: format!(
                "{}::{} has no function filed under {wrapper_name}",
                node.domain, node.op_type
            ),
        })
}
