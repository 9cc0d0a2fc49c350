//! The compiler's deadline gates under a real clock.
//!
//! bb-runtime 0.3.8's `insert_async_deadlines` pass copies a node's
//! `deadline_ns` (a relative budget: `wire.Send` reads the same attribute as
//! its request's time to live) onto a `DeadlineCheck` gate, and the gate
//! compares it with the engine's clock as an absolute time. With a real
//! clock every gated Send fails with "deadline exceeded" once the Node has
//! run for the budget (100 ms by default).

use bb_runtime::engine::GraphSlot;

use super::SYSCALL_DOMAIN;

const DEADLINE_CHECK: &str = "DeadlineCheck";
const DEADLINE_NS: &str = "deadline_ns";

/// Lets every `DeadlineCheck` gate of `graph` pass, since each one holds a
/// relative budget that the op reads as an absolute time (see the module
/// docs). The budget still bounds the work it guards: `wire.Send` gives its
/// request that time to live, and the engine's `WireTimeout` ends it.
///
/// `tests/clock.rs::upstream_deadline_gates_still_read_budgets_as_absolute`
/// fails when upstream changes the gate, so this can be retired.
pub(crate) fn disarm_deadline_gates(graph: &mut GraphSlot) {
    let gates = graph
        .function
        .node
        .iter_mut()
        .filter(|n| n.domain == SYSCALL_DOMAIN && n.op_type == DEADLINE_CHECK);
    for gate in gates {
        for attr in gate.attribute.iter_mut().filter(|a| a.name == DEADLINE_NS) {
            attr.i = i64::MAX;
        }
    }
}
