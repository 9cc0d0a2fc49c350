//! The engine caps a Node needs for the largest value this behaviour
//! carries ([`Config::with_max_value_bytes`](crate::Config::with_max_value_bytes)).

use bb_runtime::node::{Node, NodeConfig};

/// `node` with the caps an envelope carrying `needed` payload bytes (the
/// largest value and its wrapping) needs: the per-fill and total envelope
/// caps, the ingress byte budget and `max_invoke_bytes`.
/// Only caps still at bytesandbrains' defaults are raised: one the Node's
/// maker set stands, higher or lower.
///
/// bb-runtime 0.3.8 reads them from the Node's config (`with_config`
/// re-applies the engine's copies), and a Node fresh from `install` has not
/// run a cycle yet, so nothing was sized by the old ones.
pub(crate) fn raise(node: Node, needed: usize) -> Node {
    let defaults = NodeConfig::new(node.peer_id());
    let mut config = node.config().clone();
    let mut changed = false;
    let mut raise = |cap: &mut usize, default: usize| {
        if *cap == default && *cap < needed {
            *cap = needed;
            changed = true;
        }
    };
    raise(
        &mut config.envelope_caps.max_per_fill_bytes,
        defaults.envelope_caps.max_per_fill_bytes,
    );
    raise(
        &mut config.envelope_caps.max_total_bytes,
        defaults.envelope_caps.max_total_bytes,
    );
    raise(
        &mut config.ingress_byte_budget,
        defaults.ingress_byte_budget,
    );
    raise(&mut config.max_invoke_bytes, defaults.max_invoke_bytes);
    if changed {
        node.with_config(config)
    } else {
        node
    }
}
