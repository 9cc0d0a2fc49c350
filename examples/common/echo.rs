//! The `Echo` Module the mesh examples run: the dialer sends `x` to a peer,
//! which outputs it as `seen` and sends it back; the dialer outputs the
//! reply as `y`. Shared by `mesh` and `relayed`, with the behaviour that
//! runs one of its targets.
#![allow(dead_code)]

use std::error::Error;

use bb_ir::proto::onnx::{NodeProto, StringStringEntryProto};
use bb_libp2p::values;
use bytesandbrains::atomic::DispatchResult;
use bytesandbrains::bus::OpError;
use bytesandbrains::proto::onnx::ModelProto;
use bytesandbrains::runtime::RuntimeResourceRef;
use bytesandbrains::slot_value::SlotValue;
use bytesandbrains::syscall::values::PeerIdVecValue;
use bytesandbrains::{Compiler, Graph, Module, Output};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const OP_DOMAIN: &str = "ai.bytesandbrains.mesh_example";

/// Replies to whoever sent the envelope being processed: the inbound
/// envelope's sender as a one-peer list, so `wire.Send` can address it.
fn sender_as_peers(
    _node: &NodeProto,
    _inputs: &[(&str, &dyn SlotValue)],
    ctx: &mut RuntimeResourceRef<'_>,
) -> std::result::Result<DispatchResult, OpError> {
    let peer = ctx.current.inbound.src_peer.ok_or_else(|| OpError {
        detail: "SenderAsPeers outside an inbound delivery".into(),
        ..Default::default()
    })?;
    Ok(DispatchResult::Immediate(vec![(
        "peers".to_string(),
        Box::new(PeerIdVecValue(vec![peer])) as Box<dyn SlotValue>,
    )]))
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.mesh_example",
    op_type: "SenderAsPeers",
    invoke: sender_as_peers,
}

/// The dialer sends `x` to `peers` as `req`; the listener outputs it as
/// `seen` and sends it back as `reply`; the dialer outputs the reply as `y`.
pub struct Echo;
impl Module for Echo {
    fn name(&self) -> &str {
        "Echo"
    }
    fn body(&self, g: &mut Graph) {
        let peers = g.input("peers");
        let x = g.input("x");
        g.net_out("req", peers, x);
        let req = g.lookup_output("req").expect("req");
        g.output("seen", req.clone());
        g.push_node(NodeProto {
            op_type: "SenderAsPeers".into(),
            domain: OP_DOMAIN.into(),
            // Reading `req` homes the op on the receiver and fires it on arrival.
            input: vec![req.name.clone()],
            // Named `dest` so wire.Send does not ship it as a fill.
            output: vec!["dest".into()],
            metadata_props: vec![StringStringEntryProto {
                key: bb_ir::peer_class::PEER_CLASS_KEY.into(),
                value: bb_ir::peer_class::SELF_CLASS.into(),
            }],
            ..Default::default()
        });
        g.declare_value_info("dest", &bb_ir::types::TYPE_PEER_ID_VEC);
        let dest = Output::new("dest".into(), &bb_ir::types::TYPE_PEER_ID_VEC);
        g.net_out("reply", dest, req);
        let reply = g.lookup_output("reply").expect("reply");
        g.output("y", reply);
    }
}

/// Compiles [`Echo`]; returns the model and the targets at the ends of its
/// `req` port. Each process compiles it to get the same target names.
pub fn compile() -> Result<(ModelProto, bb_libp2p::ports::Port)> {
    // bytesandbrains' framework ops register themselves from static
    // initializers in `bb-ops`; a binary that names nothing of `bb-ops`
    // would have the linker drop them, and installing would fail with
    // unresolved ops. This call keeps them.
    bytesandbrains::ops::link_force();
    let model = Compiler::new().compile(Echo.build().map_err(|e| format!("{e:?}"))?)?;
    let req = bb_libp2p::ports::port(&model, "req")?;
    Ok((model, req))
}

/// A value as the Nodes emit it, as text.
pub fn text(value_bytes: &[u8]) -> Result<String> {
    let bytes = values::decode_bytes(value_bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[path = "node.rs"]
mod node;
pub use node::behaviour;
