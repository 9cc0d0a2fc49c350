//! Prunes the engine's per-execution inbound contexts.
//!
//! bb-runtime 0.3.8 records an `InboundContext` (sender, arrival time,
//! deadline) for the execution each inbound value starts, and never removes
//! it: a receiver's memory grows by about 160 bytes per value received, for
//! ever. The engine's own garbage collection frees the execution's slots but
//! not this table. [`Pruner`] drops the contexts of executions nothing refers
//! to any more, the same liveness the engine's collection uses plus any
//! execution still holding a slot.

use std::collections::HashSet;

use bb_runtime::engine::Engine;
use bb_runtime::ids::ExecId;

/// Contexts kept before the first pruning.
const FLOOR: usize = 1024;

/// Prunes when the table has doubled since the last pruning, so the work is
/// constant per value received.
pub(crate) struct Pruner {
    next_at: usize,
}

impl Default for Pruner {
    fn default() -> Self {
        Self { next_at: FLOOR }
    }
}

impl Pruner {
    /// Drops contexts of executions that are over, when enough have piled up.
    pub(crate) fn maybe_prune(&mut self, engine: &mut Engine) {
        let contexts = &engine.framework.inbound_contexts;
        if contexts.len() < self.next_at {
            return;
        }
        let exec = &engine.exec;
        let live: HashSet<ExecId> = exec
            .frontier
            .iter()
            .map(|(_, e)| *e)
            .chain(exec.pending_async.values().map(|p| p.exec_id))
            .chain(exec.pending_calls.keys().copied())
            .chain(exec.slot_table.keys().map(|(_, e)| *e))
            .collect();
        engine
            .framework
            .inbound_contexts
            .retain(|exec_id, _| live.contains(exec_id));
        let kept = engine.framework.inbound_contexts.len();
        engine.framework.inbound_contexts.shrink_to(kept * 2);
        self.next_at = (kept * 2).max(FLOOR);
    }
}
