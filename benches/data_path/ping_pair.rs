//! Two connected bb-libp2p swarms running `Ping`, which the one-way and
//! pipelined groups both send through.

use super::*;
use common::models::Ping;

/// A sends with `Ping`, B receives.
pub(crate) struct PingPair {
    pub(crate) a: Swarm<Behaviour>,
    pub(crate) b: Swarm<Behaviour>,
    /// A's Node.
    pub(crate) node_a: NodeHandle,
    /// A's sending target.
    pub(crate) sender: String,
    /// B, as the `peers` input.
    pub(crate) peers: Vec<u8>,
}

impl PingPair {
    /// Compiles `Ping`, builds both swarms and connects them.
    pub(crate) async fn new() -> Self {
        let (model, targets) = compile(Ping);
        let (mut a, mut b) = (
            bb_swarm(&model, &[&targets[0]]),
            bb_swarm(&model, &[&targets[1]]),
        );
        connect(&mut a, &mut b).await;
        Self {
            peers: bb_libp2p::values::peers(&[*b.local_peer_id()]),
            sender: targets[0].clone(),
            node_a: a.behaviour().handle(),
            a,
            b,
        }
    }
}
