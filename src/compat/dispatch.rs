//! Runs a framework op through a function of this crate first.
//!
//! An installed graph resolves each op to a dispatch entry once, at install
//! (`GraphSlot::op_dispatch`); a framework op's entry is a plain `fn`
//! pointer (`OpDispatch::Stateless`), which cannot carry the function it
//! replaces. [`wrap`] therefore files the replaced function under the op's
//! `(domain, op_type)` and the wrapper's name, and the wrapper finds it again
//! with [`original`]. Framework ops are registered once per process under
//! that key, so one entry serves every Node on every thread.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use bb_ir::proto::onnx::NodeProto;
use bb_runtime::bus::{OpError, OpErrorKind};
use bb_runtime::engine::{OpDispatch, StatelessInvokeFn};

/// `(wrapper, domain, op_type)`.
type Key = (&'static str, String, String);

fn originals() -> &'static RwLock<HashMap<Key, StatelessInvokeFn>> {
    static ORIGINALS: OnceLock<RwLock<HashMap<Key, StatelessInvokeFn>>> = OnceLock::new();
    ORIGINALS.get_or_init(Default::default)
}

/// Makes `dispatch`, the entry of `node`, call `wrapper` instead, filing the
/// function it called under `wrapper_name`. Only a framework op
/// (`OpDispatch::Stateless`) can be wrapped; `false` for any other entry,
/// which is left alone.
pub(crate) fn wrap(
    wrapper_name: &'static str,
    node: &NodeProto,
    dispatch: &mut OpDispatch,
    wrapper: StatelessInvokeFn,
) -> bool {
    let OpDispatch::Stateless(function) = dispatch else {
        return false;
    };
    if std::ptr::fn_addr_eq(*function, wrapper) {
        return true;
    }
    let key = (wrapper_name, node.domain.clone(), node.op_type.clone());
    originals()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(key, *function);
    *dispatch = OpDispatch::Stateless(wrapper);
    true
}

/// The function [`wrap`] replaced for `node` under `wrapper_name`, or an
/// error naming the op (which only a Node wrapped in another process could
/// meet).
pub(crate) fn original(
    wrapper_name: &'static str,
    node: &NodeProto,
) -> Result<StatelessInvokeFn, OpError> {
    let key = (wrapper_name, node.domain.clone(), node.op_type.clone());
    originals()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&key)
        .copied()
        .ok_or_else(|| OpError {
            kind: OpErrorKind::NotRegistered,
            reason: "unwrapped_op",
            detail: format!(
                "{}::{} has no function filed under {wrapper_name}",
                node.domain, node.op_type
            ),
        })
}
