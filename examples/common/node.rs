//! The behaviour whose Node runs one target of a compiled model: what every
//! example's process builds.
#![allow(dead_code)]

use std::error::Error;

use bb_libp2p::{to_engine_peer, Address, Behaviour, Config};
use bytesandbrains::proto::onnx::ModelProto;
use libp2p::identity::Keypair;

/// The behaviour, configured by `config`, whose Node runs `target` of
/// `model` with the identity of `key`.
pub fn behaviour(
    key: &Keypair,
    model: ModelProto,
    target: &str,
    config: Config,
) -> Result<Behaviour, Box<dyn Error>> {
    let me = to_engine_peer(&key.public().to_peer_id());
    let target = target.to_string();
    // The Node is `!Send`: the behaviour builds it with this closure on
    // its engine thread, with the engine PeerId of the swarm's key.
    Ok(Behaviour::new(
        move || {
            bytesandbrains::install(
                me,
                vec![Address::empty().p2p(me)],
                model,
                &[&target],
                bytesandbrains::Config::new(),
            )
        },
        config,
    )?)
}
