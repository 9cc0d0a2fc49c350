//! Discovery with the engine's GlobalRegistry protocol: clients announce
//! themselves to a registry (`GlobalRegistryClient` -> `Announce`), the
//! registry records them and answers with a `Handshake`
//! (`GlobalRegistryServer`), and the registry can then send a value to a
//! sample of the clients it knows.
//!
//! bytesandbrains 0.3.8 ships both halves of the protocol, but the way its
//! own examples wire them does nothing: the client's bootstrap ops fail and
//! nothing is ever announced. What follows is the wiring that works on
//! 0.3.8; each piece says which gap it covers.
//!
//! - Ops read their inputs by value name, so the values must carry exactly
//!   the names the engine's ops look up (`peer`, `addresses`,
//!   `server_peer`, `count`). The DSL's constants and `sample(g, n)` do not
//!   produce them; the helper ops `PeerConst`, `AddrsConst`, `U32Const`
//!   and `ToPeerVec` below do.
//! - The two halves address each other at fixed component refs: a client
//!   announces to the registry's component 0
//!   ([`GLOBAL_REGISTRY_SERVER_CREF`]); the registry answers at the
//!   client's component 1 ([`GLOBAL_REGISTRY_CLIENT_CREF`]). Component refs
//!   follow binding order, so the registry's first binding is its
//!   `GlobalRegistryServer`, and a client binds a placeholder first and its
//!   `GlobalRegistryClient` second ([`client_model`]).
//! - The compiler gives the client's `Announce` no slot to dispatch
//!   through; [`bind_registry_slot`] adds one after compiling.
//! - Install registers no protocol dispatcher for either half;
//!   [`enable_registry_dispatch`] does, before the Node's bootstrap runs
//!   (which `bb_libp2p::Behaviour::new` does).
//!
//! The federated example and the discovery tests both use this file.
#![allow(dead_code)]

use std::any::Any;
use std::collections::HashSet;

use bb_ir::proto::onnx::{AttributeProto, NodeProto, StringStringEntryProto};
use bb_ir::types::TypeNode;
use bytesandbrains::atomic::DispatchResult;
use bytesandbrains::bus::OpError;
use bytesandbrains::framework::Address;
use bytesandbrains::ids::ComponentRef;
use bytesandbrains::placeholders::PeerSelectorSlot;
use bytesandbrains::proto::onnx::ModelProto;
use bytesandbrains::protocols::global_registry::{
    GLOBAL_REGISTRY_CLIENT_CREF, GLOBAL_REGISTRY_DOMAIN, GLOBAL_REGISTRY_SERVER_CREF,
};
use bytesandbrains::protocols::{GlobalRegistryClient, GlobalRegistryServer};
use bytesandbrains::runtime::RuntimeResourceRef;
use bytesandbrains::slot_value::SlotValue;
use bytesandbrains::syscall::values::{AddressVecValue, PeerIdValue, PeerIdVecValue};
use bytesandbrains::{Compiler, Graph, Module, Node, Output, PeerId};
use libp2p::identity::Keypair;

/// Domain of the helper ops. Custom ops live under `ai.bytesandbrains.`
/// like every op the engine dispatches.
pub const REGISTRY_DOMAIN: &str = "ai.bytesandbrains.bb_libp2p_example.registry";

/// Slot id stamped on the client's GlobalRegistry ops and bound to its
/// `GlobalRegistryClient` by [`bind_registry_slot`]; far from the ids the
/// DSL allocates (0, 1, ...).
pub const REGISTRY_SLOT_ID: u32 = 4242;

/// Name of the client's protocol binding.
const DISCOVERY: &str = "discovery";

/// An `OpError` with `detail`, the only field an op's caller reads here.
pub fn op_error(detail: impl Into<String>) -> OpError {
    OpError {
        detail: detail.into(),
        ..Default::default()
    }
}

fn string_attribute(name: &str, bytes: Vec<u8>) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: bb_ir::proto::onnx::attribute_proto::AttributeType::String as i32,
        s: bytes,
        ..Default::default()
    }
}

fn attribute<'a>(node: &'a NodeProto, name: &str) -> Result<&'a [u8], OpError> {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.s.as_slice())
        .ok_or_else(|| op_error(format!("{}: no `{name}` attribute", node.op_type)))
}

/// A node metadata entry.
pub fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.into(),
        value: value.into(),
    }
}

fn single(name: &str, value: Box<dyn SlotValue>) -> DispatchResult {
    DispatchResult::Immediate(vec![(name.to_string(), value)])
}

/// `PeerConst`: the engine PeerId in attribute `peer` as a `PeerIdValue`.
/// The DSL's `constant` yields a value named after the constant node, not
/// the `peer`/`server_peer` that `InsertMany` and `Announce` look up, and
/// those ops then fail with a missing input.
fn peer_const(
    node: &NodeProto,
    _inputs: &[(&str, &dyn SlotValue)],
    _ctx: &mut RuntimeResourceRef<'_>,
) -> Result<DispatchResult, OpError> {
    let peer = PeerId::from_bytes(attribute(node, "peer")?)
        .map_err(|e| op_error(format!("PeerConst: {e}")))?;
    Ok(single("out", Box::new(PeerIdValue(peer))))
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_example.registry",
    op_type: "PeerConst",
    invoke: peer_const,
}

/// `AddrsConst`: the addresses in attribute `addrs` (bincode of each
/// `Address`'s bytes) as an `AddressVecValue`, for `InsertMany`'s
/// `addresses`.
fn addrs_const(
    node: &NodeProto,
    _inputs: &[(&str, &dyn SlotValue)],
    _ctx: &mut RuntimeResourceRef<'_>,
) -> Result<DispatchResult, OpError> {
    let raw: Vec<Vec<u8>> = bytesandbrains::bincode::deserialize(attribute(node, "addrs")?)
        .map_err(|e| op_error(format!("AddrsConst: {e}")))?;
    let addresses = raw
        .iter()
        .map(|bytes| Address::from_bytes(bytes))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| op_error(format!("AddrsConst: {e:?}")))?;
    Ok(single("out", Box::new(AddressVecValue(addresses))))
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_example.registry",
    op_type: "AddrsConst",
    invoke: addrs_const,
}

/// `U32Const`: the little-endian `u32` in attribute `n`. The registry's
/// `Sample` reads its sample size from a `u32` input named `count`; the
/// DSL's `PeerSelectorSlot::sample(g, n)` puts `n` in an attribute nothing
/// reads.
fn u32_const(
    node: &NodeProto,
    _inputs: &[(&str, &dyn SlotValue)],
    _ctx: &mut RuntimeResourceRef<'_>,
) -> Result<DispatchResult, OpError> {
    let bytes: [u8; 4] = attribute(node, "n")?
        .try_into()
        .map_err(|_| op_error("U32Const: `n` is not 4 bytes"))?;
    Ok(single("out", Box::new(u32::from_le_bytes(bytes))))
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_example.registry",
    op_type: "U32Const",
    invoke: u32_const,
}

/// `ToPeerVec`: the bare `Vec<PeerId>` that `Sample` outputs as the
/// `PeerIdVecValue` that `wire.Send` reads its destinations from.
fn to_peer_vec(
    _node: &NodeProto,
    inputs: &[(&str, &dyn SlotValue)],
    _ctx: &mut RuntimeResourceRef<'_>,
) -> Result<DispatchResult, OpError> {
    let peers = inputs
        .first()
        .and_then(|(_, v)| v.as_any().downcast_ref::<Vec<PeerId>>())
        .cloned()
        .ok_or_else(|| op_error("ToPeerVec: input is not a Vec<PeerId>"))?;
    Ok(single("out", Box::new(PeerIdVecValue(peers))))
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_example.registry",
    op_type: "ToPeerVec",
    invoke: to_peer_vec,
}

/// Pushes a helper op whose single output is the value `out`, run by the
/// peers of `class`.
fn push_helper(
    g: &mut Graph,
    op_type: &str,
    inputs: Vec<String>,
    out: &str,
    attributes: Vec<AttributeProto>,
    ty: &'static TypeNode,
    class: &str,
) {
    g.push_node(NodeProto {
        op_type: op_type.into(),
        domain: REGISTRY_DOMAIN.into(),
        input: inputs,
        output: vec![out.into()],
        attribute: attributes,
        metadata_props: vec![entry(bb_ir::peer_class::PEER_CLASS_KEY, class)],
        ..Default::default()
    });
    g.declare_value_info(out, ty);
}

/// Samples as many peers as the value `count` (a `u32`) says from the
/// registry's view, the PeerSelector of the Node that runs it: the bare
/// list as `sampled`, and as the `PeerIdVecValue` that `wire.Send` reads
/// its destinations from as `peers`, which it returns.
///
/// `Sample` is pushed by hand so that it reads `count` as an input (see
/// `U32Const`), and both values are of peer class `client`: peers other
/// than `@self`, so a `net_out` to `peers` splits sender and receiver into
/// two targets.
pub fn sample_clients(g: &mut Graph, sampled: &str, peers: &str) -> Output {
    let view = PeerSelectorSlot::default();
    let slot_id = g.register_generic(&view, "PeerSelectorRuntime");
    g.push_node(NodeProto {
        op_type: "Sample".into(),
        domain: "ai.bytesandbrains.role.peer_selector".into(),
        input: vec!["count".into()],
        output: vec![sampled.into()],
        metadata_props: vec![
            entry(bb_ir::keys::REQUIRED_TRAIT_KEY, "PeerSelectorRuntime"),
            entry(bb_ir::keys::SLOT_ID_KEY, &slot_id.to_string()),
            entry(bb_ir::peer_class::PEER_CLASS_KEY, "client"),
        ],
        ..Default::default()
    });
    g.declare_value_info(sampled, &bb_ir::types::TYPE_PEER_ID_VEC);
    push_helper(
        g,
        "ToPeerVec",
        vec![sampled.into()],
        peers,
        vec![],
        &bb_ir::types::TYPE_PEER_ID_VEC,
        "client",
    );
    Output::new(peers.into(), &bb_ir::types::TYPE_PEER_ID_VEC)
}

/// A registry client. Its bootstrap adds the registry to the Node's
/// AddressBook (`InsertMany`) and announces the Node to it (`Announce`).
/// Its body is a pass-through: discovery happens in the bootstrap.
///
/// The engine seeds every bootstrap op and then fires each again as the
/// consumer of its inputs, so `InsertMany` and `Announce` run twice: a
/// client announces twice and gets two Handshakes. The registry's
/// registration is idempotent, so this is harmless.
pub struct RegistryClient {
    /// The registry's engine PeerId.
    pub registry: PeerId,
    /// The registry's engine addresses (`/p2p/<registry>`).
    pub registry_addresses: Vec<Address>,
}

impl Module for RegistryClient {
    fn name(&self) -> &str {
        "RegistryClient"
    }

    fn body(&self, g: &mut Graph) {
        let x = g.input("rc_x");
        g.output("rc_y", x);
    }

    fn bootstrap(&self, g: &mut Graph) {
        let me = bb_ir::peer_class::SELF_CLASS;
        push_helper(
            g,
            "PeerConst",
            vec![],
            "peer",
            vec![string_attribute("peer", self.registry.to_bytes())],
            &bb_ir::types::TYPE_PEER_ID,
            me,
        );
        let raw: Vec<Vec<u8>> = self
            .registry_addresses
            .iter()
            .map(Address::to_bytes)
            .collect();
        push_helper(
            g,
            "AddrsConst",
            vec![],
            "addresses",
            vec![string_attribute(
                "addrs",
                bytesandbrains::bincode::serialize(&raw).expect("addresses encode"),
            )],
            &bb_ir::types::TYPE_ADDRESS_VEC,
            me,
        );
        g.push_node(NodeProto {
            op_type: "InsertMany".into(),
            domain: "ai.bytesandbrains.address_book".into(),
            input: vec!["peer".into(), "addresses".into()],
            output: vec!["inserted".into()],
            ..Default::default()
        });
        g.declare_value_info("inserted", &bb_ir::types::TYPE_TRIGGER);
        push_helper(
            g,
            "PeerConst",
            vec![],
            "server_peer",
            vec![string_attribute("peer", self.registry.to_bytes())],
            &bb_ir::types::TYPE_PEER_ID,
            me,
        );
        // Pushed by hand: the DSL's `announce` is the same node, and the
        // slot that routes it to the GlobalRegistryClient is added after
        // compiling (`bind_registry_slot`).
        g.push_node(NodeProto {
            op_type: "Announce".into(),
            domain: GLOBAL_REGISTRY_DOMAIN.into(),
            input: vec!["server_peer".into()],
            output: vec!["announced".into()],
            ..Default::default()
        });
        g.declare_value_info("announced", &bb_ir::types::TYPE_TRIGGER);
    }
}

/// The registry sends `x` to `n` clients sampled from its view; each
/// sampled client outputs it as `got`.
///
/// The sender target runs on the registry: `U32Const` makes `count`,
/// `Sample` draws from the registry's PeerSelector (its
/// `GlobalRegistryServer`), `ToPeerVec` makes the destinations
/// `wire.Send` reads. The receiver target (`Broadcast_client#…`) runs on
/// clients; `bb_libp2p::sites` routes the value to it.
///
/// A client sampled twice gets the value twice: the receiving Node drops
/// only a second delivery of one envelope, not an equal value.
pub struct Broadcast {
    /// How many clients to sample.
    pub n: u32,
}

impl Module for Broadcast {
    fn name(&self) -> &str {
        "Broadcast"
    }

    fn body(&self, g: &mut Graph) {
        let x = g.input("x");
        // Reads `x` so that it fires when the target is invoked: a body op
        // without inputs never fires.
        push_helper(
            g,
            "U32Const",
            vec![x.name.clone()],
            "count",
            vec![string_attribute("n", self.n.to_le_bytes().to_vec())],
            &bb_ir::types::TYPE_SCALAR_I32,
            bb_ir::peer_class::SELF_CLASS,
        );
        let peers = sample_clients(g, "sampled", "peers");
        g.net_out("bcast", peers, x);
        let got = g.lookup_output("bcast").expect("bcast");
        g.output("got", got);
    }
}

/// Routes the client's GlobalRegistry ops to its `GlobalRegistryClient`.
///
/// Install binds a component to a slot id named in the binding
/// (`Protocol|GlobalRegistryClient|<slot id>`) and `resolve_dispatch`
/// routes an op to the component whose slot id the op carries. The
/// compiler leaves a protocol binding unreferenced (`|-1`) and rejects
/// the ways of referencing it from a graph (a bare slot id, or
/// `required_trait = ProtocolRuntime`), so `Announce` would resolve to
/// nothing. After compiling, this stamps [`REGISTRY_SLOT_ID`] on every
/// GlobalRegistry op and on the binding named `slot`.
pub fn bind_registry_slot(model: &mut ModelProto, slot: &str) {
    for function in &mut model.functions {
        for node in &mut function.node {
            if node.domain == GLOBAL_REGISTRY_DOMAIN
                && !node
                    .metadata_props
                    .iter()
                    .any(|p| p.key == bb_ir::keys::SLOT_ID_KEY)
            {
                node.metadata_props.push(entry(
                    bb_ir::keys::SLOT_ID_KEY,
                    &REGISTRY_SLOT_ID.to_string(),
                ));
            }
        }
    }
    let name = format!(".{slot}");
    for prop in &mut model.metadata_props {
        if prop.key.starts_with(bb_ir::keys::BINDING_KEY_PREFIX)
            && prop.key.ends_with(&name)
            && prop.value.ends_with("|-1")
        {
            prop.value = format!("{}|{REGISTRY_SLOT_ID}", prop.value.trim_end_matches("|-1"));
        }
    }
}

/// Registers the GlobalRegistry protocol dispatchers on an installed Node
/// and resolves its ops again.
///
/// Install registers none: the client's component derives no role, and
/// the server's registers only its PeerSelector bridge, which knows
/// `Sample` but not `Announce`. The engine keeps one dispatcher per
/// component type, so the protocol dispatcher replaces the bridge; it
/// also serves `Sample` (reading `count` by name). Must run before the
/// bootstrap, that is before `bb_libp2p::Behaviour::new`.
pub fn enable_registry_dispatch(node: &mut Node) {
    let engine = node.engine_install_handle();
    engine.register_protocol_dispatcher::<GlobalRegistryClient>();
    engine.register_protocol_dispatcher::<GlobalRegistryServer>();
    engine.resolve_dispatch();
}

/// The name of `model`'s target that starts with `prefix` (a compiled
/// target is named `<Module>[_<peer class>]#<hash>`).
pub fn target(model: &ModelProto, prefix: &str) -> String {
    model
        .functions
        .iter()
        .map(|f| f.name.clone())
        .find(|n| n.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}… target"))
}

/// Installs `targets` of `model` on a Node with the engine PeerId of `key`.
pub fn install(key: &Keypair, model: &ModelProto, targets: &[&str]) -> Node {
    let me = bb_libp2p::to_engine_peer(&key.public().to_peer_id());
    bytesandbrains::install(
        me,
        vec![Address::empty().p2p(me)],
        model.clone(),
        targets,
        bytesandbrains::Config::new(),
    )
    .expect("install")
}

/// Both models' functions in one model, for Nodes that install both.
pub fn merge(mut a: ModelProto, b: &ModelProto) -> ModelProto {
    a.functions.extend(b.functions.iter().cloned());
    for prop in &b.metadata_props {
        if !a.metadata_props.iter().any(|p| p.key == prop.key) {
            a.metadata_props.push(prop.clone());
        }
    }
    a
}

/// Everything compiled for one registry and its clients.
pub struct Deployment {
    /// The registry's model: [`Broadcast`].
    pub registry_model: ModelProto,
    /// The registry's target: [`Broadcast`]'s sender.
    pub broadcast: String,
    /// The clients' model: [`RegistryClient`] and [`Broadcast`].
    pub client_model: ModelProto,
    /// The clients' targets, in install order: [`RegistryClient`], then
    /// [`Broadcast`]'s receiver.
    pub client_targets: Vec<String>,
}

/// The client side of a registry at `registry`: [`RegistryClient`]
/// compiled so that its `GlobalRegistryClient` is component 1.
///
/// The registry answers at the client's component
/// [`GLOBAL_REGISTRY_CLIENT_CREF`] (1). Components are numbered in
/// binding order from 0, so a placeholder PeerSelector is bound first; it
/// is never used.
pub fn client_model(registry: &libp2p::PeerId) -> ModelProto {
    let registry = bb_libp2p::to_engine_peer(registry);
    let module = RegistryClient {
        registry,
        registry_addresses: vec![Address::empty().p2p(registry)],
    };
    let mut model = Compiler::new()
        .bind_peer_selector::<GlobalRegistryServer>("pad")
        .bind_protocol::<GlobalRegistryClient>(DISCOVERY)
        .compile(module.build().expect("RegistryClient builds"))
        .expect("RegistryClient compiles");
    bind_registry_slot(&mut model, DISCOVERY);
    model
}

/// Compiles the registry at `registry` and its clients. The registry
/// samples `sample` clients per [`Broadcast`].
///
/// Clients announce to the registry's component
/// [`GLOBAL_REGISTRY_SERVER_CREF`] (0): the registry's first (and only)
/// binding is its `GlobalRegistryServer`, as the PeerSelector that
/// `Broadcast` samples.
pub fn deployment(registry: &libp2p::PeerId, sample: u32) -> Deployment {
    bytesandbrains::ops::link_force();
    let registry_model = Compiler::new()
        .bind_peer_selector::<GlobalRegistryServer>("view")
        .compile(Broadcast { n: sample }.build().expect("Broadcast builds"))
        .expect("Broadcast compiles");
    let broadcast = target(&registry_model, "Broadcast#");
    let receiver = target(&registry_model, "Broadcast_client#");
    let client = client_model(registry);
    let client_targets = vec![client.functions[0].name.clone(), receiver];
    Deployment {
        client_model: merge(client, &registry_model),
        registry_model,
        broadcast,
        client_targets,
    }
}

/// The registry's Node, ready for `bb_libp2p::Behaviour::new`.
pub fn registry_node(key: &Keypair, deployment: &Deployment) -> Node {
    let mut node = install(key, &deployment.registry_model, &[&deployment.broadcast]);
    enable_registry_dispatch(&mut node);
    node
}

/// A client's Node, ready for `bb_libp2p::Behaviour::new` (which runs the
/// bootstrap that announces it).
pub fn client_node(key: &Keypair, deployment: &Deployment) -> Node {
    let targets: Vec<&str> = deployment
        .client_targets
        .iter()
        .map(String::as_str)
        .collect();
    let mut node = install(key, &deployment.client_model, &targets);
    enable_registry_dispatch(&mut node);
    node
}

/// The clients the registry on `node` holds, as libp2p PeerIds.
pub fn registry_view(node: &mut Node) -> HashSet<libp2p::PeerId> {
    let engine = node.engine_install_handle();
    let component = engine
        .component(ComponentRef::from(GLOBAL_REGISTRY_SERVER_CREF))
        .expect("the registry has a component 0");
    let any: &dyn Any = component;
    let server = any
        .downcast_ref::<GlobalRegistryServer>()
        .expect("component 0 is the GlobalRegistryServer");
    server
        .entries
        .keys()
        .map(|p| bb_libp2p::to_libp2p_peer(p).expect("a libp2p PeerId"))
        .collect()
}

/// The state of the client on `node`, as its last Handshake left it.
pub fn client_state(node: &mut Node) -> GlobalRegistryClient {
    let engine = node.engine_install_handle();
    let component = engine
        .component(ComponentRef::from(GLOBAL_REGISTRY_CLIENT_CREF))
        .expect("the client has a component 1");
    let any: &dyn Any = component;
    any.downcast_ref::<GlobalRegistryClient>()
        .expect("component 1 is the GlobalRegistryClient")
        .clone()
}
