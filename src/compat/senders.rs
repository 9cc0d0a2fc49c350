//! Who sent the value behind each `AppEvent`.
//!
//! bb-runtime 0.3.8 reports a Module output as `EngineStep::AppEvent` with
//! the output's name and bytes only (its `module_name` is always empty).
//! While the op that writes the output runs, though, the engine knows which
//! inbound envelope started the execution: `ctx.current.inbound.src_peer`,
//! the peer the transport authenticated. So [`stamp_outputs`] routes every
//! framework op that writes a top-level output of an entry graph through
//! [`noting_sender`], which runs the op and notes its output names with that
//! sender. The engine turns the written output into an `AppEvent` within the
//! same poll; [`Notes::sender_of`] pairs each `AppEvent` with the oldest note
//! of its topic, and the host clears the notes after every poll.
//!
//! An output whose op completes later (`DispatchResult::Async`), or that is
//! written by a component or a function call rather than a framework op, has
//! no note, and its sender is `None`, as for a local `invoke`.
//!
//! `tests/senders.rs::upstream_app_events_still_carry_no_sender` fails once
//! the engine reports a sender itself, so this can go.

use std::cell::RefCell;
use std::collections::VecDeque;

use bb_ir::proto::onnx::NodeProto;
use bb_runtime::atomic::DispatchResult;
use bb_runtime::bus::OpError;
use bb_runtime::engine::GraphSlot;
use bb_runtime::ids::PeerId as EnginePeerId;
use bb_runtime::runtime::RuntimeResourceRef;
use bb_runtime::slot_value::SlotValue;
use libp2p::PeerId;

use super::{dispatch, WIRE_DOMAIN};
use crate::peer::to_libp2p_peer;

const WRAPPER: &str = "senders";

/// Notes kept per poll before the oldest goes: a poll surfaces at most a few
/// thousand outputs, and a note nobody claims must not pile up.
const MAX_NOTES: usize = 4096;

struct Note {
    outputs: Vec<String>,
    sender: Option<EnginePeerId>,
}

thread_local! {
    /// Ops run on the thread that polls their Node, and a host takes the
    /// notes right after each poll, so a thread's notes are one Node's.
    static NOTES: RefCell<VecDeque<Note>> = const { RefCell::new(VecDeque::new()) };
}

/// Routes the ops of `graph` that write its top-level outputs through
/// [`noting_sender`]. Graphs that are not entry points have no top-level
/// outputs and are left alone.
pub(crate) fn stamp_outputs(graph: &mut GraphSlot) {
    if !graph.is_entry_point {
        return;
    }
    let outputs: Vec<String> = graph.top_level_outputs.values().cloned().collect();
    // A wire op's outputs are sentinels, never values the application reads
    // (and `wire.Send` has a wrapper of its own).
    dispatch::wrap_where(graph, WRAPPER, noting_sender, |node| {
        node.domain != WIRE_DOMAIN && node.output.iter().any(|o| outputs.contains(o))
    });
}

/// Runs the op, then notes its outputs with the sender of the envelope that
/// started this execution.
fn noting_sender(
    node: &NodeProto,
    inputs: &[(&str, &dyn SlotValue)],
    ctx: &mut RuntimeResourceRef<'_>,
) -> Result<DispatchResult, OpError> {
    let result = dispatch::original(WRAPPER, node)?(node, inputs, ctx)?;
    if matches!(result, DispatchResult::Immediate(_)) {
        let note = Note {
            outputs: node.output.clone(),
            sender: ctx.current.inbound.src_peer,
        };
        NOTES.with_borrow_mut(|notes| {
            if notes.len() == MAX_NOTES {
                notes.pop_front();
            }
            notes.push_back(note);
        });
    }
    Ok(result)
}

/// The notes of the poll a host is handling.
pub(crate) struct Notes;

impl Notes {
    /// Forgets every note: call before and after each poll of a Node.
    pub(crate) fn clear() {
        NOTES.with_borrow_mut(VecDeque::clear);
    }

    /// The sender noted for the oldest unclaimed output named `topic`, and
    /// claims that output (an op's other outputs keep their note). `None`
    /// when the value did not come from another peer (or its op left no
    /// note).
    pub(crate) fn sender_of(topic: &str) -> Option<PeerId> {
        NOTES.with_borrow_mut(|notes| {
            let at = notes
                .iter()
                .position(|n| n.outputs.iter().any(|o| o == topic))?;
            let note = &mut notes[at];
            let sender = note.sender;
            note.outputs.retain(|o| o != topic);
            if note.outputs.is_empty() {
                notes.remove(at);
            }
            sender.and_then(|p| to_libp2p_peer(&p).ok())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::to_engine_peer;

    fn note(outputs: &[&str], sender: PeerId) {
        NOTES.with_borrow_mut(|notes| {
            notes.push_back(Note {
                outputs: outputs.iter().map(|o| o.to_string()).collect(),
                sender: Some(to_engine_peer(&sender)),
            })
        });
    }

    #[test]
    fn each_output_of_an_op_keeps_the_sender_and_later_ones_keep_theirs() {
        Notes::clear();
        let (first, second) = (PeerId::random(), PeerId::random());
        // One op wrote `a` and `b` for the first envelope, then again for
        // the second.
        note(&["a", "b"], first);
        note(&["a", "b"], second);
        assert_eq!(Notes::sender_of("b"), Some(first));
        assert_eq!(Notes::sender_of("a"), Some(first));
        assert_eq!(Notes::sender_of("a"), Some(second));
        assert_eq!(Notes::sender_of("b"), Some(second));
        assert_eq!(Notes::sender_of("a"), None);
        Notes::clear();
    }
}
