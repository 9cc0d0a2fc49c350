//! The engine caps a Node needs for the largest value this behaviour
//! carries ([`Config::with_max_value_bytes`](crate::Config::with_max_value_bytes)).

use bb_runtime::node::Node;

/// Room for what wraps a value in a fill (bincode's enum tag and length)
/// and for the rest of an envelope.
const WRAPPING: usize = 64 * 1024;

/// `node` with its envelope caps, ingress byte budget and invoke cap raised
/// to fit a value of `max_value` bytes; caps already higher stay.
///
/// bb-runtime 0.3.8 reads them from the Node's config (`with_config`
/// re-applies the engine's copies), and a Node fresh from `install` has not
/// run a cycle yet, so nothing was sized by the old ones.
pub(crate) fn raise(node: Node, max_value: usize) -> Node {
    let mut config = node.config().clone();
    let needed = max_value.saturating_add(WRAPPING);
    let caps = &mut config.envelope_caps;
    if caps.max_per_fill_bytes >= needed
        && caps.max_total_bytes >= needed
        && config.ingress_byte_budget >= needed
        && config.max_invoke_bytes >= needed
    {
        return node;
    }
    caps.max_per_fill_bytes = caps.max_per_fill_bytes.max(needed);
    caps.max_total_bytes = caps.max_total_bytes.max(needed);
    config.ingress_byte_budget = config.ingress_byte_budget.max(needed);
    config.max_invoke_bytes = config.max_invoke_bytes.max(needed);
    node.with_config(config)
}
