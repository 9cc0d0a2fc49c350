//! Federated averaging as one engine Module, and the Nodes that run it. Its
//! values are in `messages.rs`, its ops in `ops.rs`.
//!
//! [`FedRound`] compiles to three targets:
//!
//! - `FedRound#…`, the coordinator's round: invoked with `round_cmd`, it
//!   samples a cohort from the registry's view (`Sample` on the
//!   `GlobalRegistryServer` the clients announced to), reads its Model's
//!   parameters and sends them to the cohort as a `GlobalMsg`; invoked
//!   with `close`, it has `FedAvg` aggregate the updates it took, loads the
//!   result into its Model and outputs it as `new_global`.
//! - `FedRound_client#…`, each client: it loads the parameters into its
//!   Model, takes [`LOCAL_STEPS`] gradient steps on its shard and sends the
//!   result back to the sender as an `UpdateMsg`.
//! - `FedRound_coord#…`, the coordinator again, once per update: it drops
//!   an update that arrives after the round's deadline and hands the rest
//!   to `FedAvg`'s `Contribute`, which keys each contribution on the
//!   envelope's sender (so it must run in a chain an inbound envelope
//!   started, as this one does).
//!
//! The host drives rounds with `round::Round`.
//!
//! bytesandbrains 0.3.8 shapes the federation in five places, each marked
//! where it applies:
//!
//! - (L1) An op that reads two outputs of the same producer fires twice.
//! - (L2) A role op whose contract returns nothing (`LoadParameters`,
//!   `Backward`, `Contribute`) never fires its outputs, so nothing can
//!   consume them. Ops are ordered instead by the engine's first-in,
//!   first-out ready queue: of two consumers of one value, the one pushed
//!   first runs first.
//! - (L3) A body op without inputs never fires: ops that need no data read
//!   a value of the step they follow as a trigger (role ops take their
//!   inputs by position and ignore extra ones).
//! - (L4) The Model's and `FedAvg`'s value types (`Box<[f32]>`,
//!   `Box<CpuTensor>`) have no wire decoder, so a receiver drops them
//!   (`WireReceiveFailed(UnknownTypeHash)`); parameters travel inside this
//!   example's own message types instead (`messages.rs`). Those encode
//!   their parameters in bulk (`bb_libp2p::values::bulk_f32s`), and the
//!   behaviour keeps one encoding of each message however many clients it
//!   goes to: with the big model (`--model hashed`, 128 MiB of parameters)
//!   the coordinator holds the round's parameters once, not once per
//!   client.
//! - (L5) A received value whose type registers no `charged_bytes` holds
//!   its bytes against the Node's ingress budget for good
//!   (`messages.rs`).
#![allow(dead_code)]

use std::any::Any;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bb_ir::proto::onnx::{AttributeProto, NodeProto};
use bb_ir::types::{
    TypeNode, TYPE_BYTES, TYPE_PEER_ID_VEC, TYPE_SCALAR_F32, TYPE_SCALAR_I32, TYPE_TENSOR_F32,
    TYPE_TRIGGER,
};
use bytesandbrains::aggregators::FedAvg;
use bytesandbrains::backends::cpu::CpuBackend;
use bytesandbrains::ids::ComponentRef;
use bytesandbrains::placeholders::{AggregatorSlot, DataLoaderSlot, ModelSlot};
use bytesandbrains::proto::onnx::ModelProto;
use bytesandbrains::protocols::global_registry::GLOBAL_REGISTRY_SERVER_CREF;
use bytesandbrains::protocols::GlobalRegistryServer;
use bytesandbrains::{Compiler, Graph, Module, Node, Output};
use libp2p::identity::Keypair;

use super::ml::{Dataset, Features, LogReg, Shard, LOCAL_STEPS};
use super::ops::PARAMS_ATTRIBUTE;
use super::registry::{self, entry};

/// Domain of this file's ops.
pub const FED_DOMAIN: &str = "ai.bytesandbrains.bb_libp2p_example.fed";

/// How long the registry keeps a client. Clients announce once, in their
/// bootstrap, and the engine's default (90 s) would drop them from the view
/// in the middle of a longer run.
const REGISTRY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Declares `outs` and returns them as values of the graph.
fn declare(g: &mut Graph, outs: &[(&str, &'static TypeNode)]) -> Vec<Output> {
    outs.iter()
        .map(|(name, ty)| {
            g.declare_value_info(name, ty);
            Output::new(name.to_string(), ty)
        })
        .collect()
}

/// Pushes one of this file's ops. Ops read their inputs by value name, so
/// inputs and outputs are named explicitly; `class` is the peer class a
/// peer-list output denotes.
fn push_op(
    g: &mut Graph,
    op_type: &str,
    inputs: &[&str],
    outs: &[(&str, &'static TypeNode)],
    class: Option<&str>,
) -> Vec<Output> {
    let metadata_props = class
        .map(|c| vec![entry(bb_ir::peer_class::PEER_CLASS_KEY, c)])
        .unwrap_or_default();
    g.push_node(NodeProto {
        metadata_props,
        ..op_node(op_type, inputs, outs)
    });
    declare(g, outs)
}

/// [`push_op`] for an op that reads `attribute`s and no peer class.
fn push_op_with(
    g: &mut Graph,
    op_type: &str,
    inputs: &[&str],
    outs: &[(&str, &'static TypeNode)],
    attribute: Vec<AttributeProto>,
) -> Vec<Output> {
    g.push_node(NodeProto {
        attribute,
        ..op_node(op_type, inputs, outs)
    });
    declare(g, outs)
}

/// One of this file's ops, reading `inputs` and writing `outs`.
fn op_node(op_type: &str, inputs: &[&str], outs: &[(&str, &'static TypeNode)]) -> NodeProto {
    NodeProto {
        op_type: op_type.into(),
        domain: FED_DOMAIN.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|(n, _)| n.to_string()).collect(),
        ..Default::default()
    }
}

/// Pushes a role op of a bound component: like the DSL's `ModelSlot::params`
/// and friends, but with named values and room for trigger inputs (L2,
/// L3).
fn push_role<S: 'static>(
    g: &mut Graph,
    slot: &'static S,
    role: (&'static str, &str),
    op_type: &str,
    inputs: &[&str],
    outs: &[(&str, &'static TypeNode)],
) -> Vec<Output> {
    let (required_trait, domain) = role;
    let slot_id = g.register_generic(slot, required_trait);
    g.push_node(NodeProto {
        op_type: op_type.into(),
        domain: domain.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|(n, _)| n.to_string()).collect(),
        metadata_props: vec![
            entry(bb_ir::keys::REQUIRED_TRAIT_KEY, required_trait),
            entry(bb_ir::keys::SLOT_ID_KEY, &slot_id.to_string()),
        ],
        ..Default::default()
    });
    declare(g, outs)
}

static MODEL: ModelSlot = ModelSlot;
static DATA: DataLoaderSlot = DataLoaderSlot;
static AGGREGATOR: AggregatorSlot = AggregatorSlot;
const MODEL_ROLE: (&str, &str) = ("ModelRuntime", "ai.bytesandbrains.role.model");
const DATA_ROLE: (&str, &str) = ("DataSourceRuntime", "ai.bytesandbrains.role.data_source");
const AGGREGATOR_ROLE: (&str, &str) = ("AggregatorRuntime", "ai.bytesandbrains.role.aggregator");

/// One federated-averaging round of a model with `params` parameters; see
/// the module docs for its targets.
///
/// Outputs on the coordinator: `cohort` (the sampled clients, when the
/// round starts), `update_info` (an [`UpdateInfo`] per accepted update),
/// `new_global` and `agg_meta` (the aggregate and its total sample count,
/// after `close`).
pub struct FedRound {
    /// The model's parameter count, which an update must have.
    pub params: usize,
}

impl Module for FedRound {
    fn name(&self) -> &str {
        "FedRound"
    }

    fn body(&self, g: &mut Graph) {
        // Coordinator: start a round.
        g.input("round_cmd");
        push_op(
            g,
            "CohortSize",
            &["round_cmd"],
            &[("count", &TYPE_SCALAR_I32)],
            None,
        );
        let peers = registry::sample_clients(g, "sampled", "client_peers");
        g.output("cohort", peers.clone());
        // (L3) `Params` takes no input; `round_cmd` triggers it.
        push_role(
            g,
            &MODEL,
            MODEL_ROLE,
            "Params",
            &["round_cmd"],
            &[("g_params", &TYPE_TENSOR_F32)],
        );
        let global = push_op(
            g,
            "MakeGlobal",
            &["g_params", "round_cmd"],
            &[("global_msg", &TYPE_BYTES)],
            None,
        );
        g.net_out("global", peers, global[0].clone());

        // Client: train on the shard from the global parameters.
        let got = g.lookup_output("global").expect("global port");
        push_op(
            g,
            "OpenGlobal",
            &[&got.name],
            &[("c_params", &TYPE_TENSOR_F32), ("ticket", &TYPE_BYTES)],
            None,
        );
        // (L2) `c_params`' consumer is queued before `ticket`'s, so the load
        // lands before `NextBatch` starts the first forward pass.
        push_role(
            g,
            &MODEL,
            MODEL_ROLE,
            "LoadParameters",
            &["c_params"],
            &[("c_loaded", &TYPE_TRIGGER)],
        );
        push_role(
            g,
            &DATA,
            DATA_ROLE,
            "NextBatch",
            &["ticket"],
            &[("c_x", &TYPE_TENSOR_F32), ("c_y", &TYPE_TENSOR_F32)],
        );
        let mut previous = String::new();
        for step in 0..LOCAL_STEPS {
            let (p, dz, done) = (
                format!("c_p{step}"),
                format!("c_dz{step}"),
                format!("c_bw{step}"),
            );
            // (L1) The first forward pass reads `c_x` alone: `c_x` and `c_y`
            // come from one `NextBatch`. (L2) Each later one also reads the
            // previous step's gradient, which queues it after that step's
            // `Backward`.
            let forward_inputs: Vec<&str> = match step {
                0 => vec!["c_x"],
                _ => vec!["c_x", &previous],
            };
            push_role(
                g,
                &MODEL,
                MODEL_ROLE,
                "Forward",
                &forward_inputs,
                &[(&p, &TYPE_TENSOR_F32)],
            );
            if step == 0 {
                push_role(
                    g,
                    &MODEL,
                    MODEL_ROLE,
                    "ComputeLoss",
                    &[&p, "c_y"],
                    &[("c_loss", &TYPE_SCALAR_F32)],
                );
            }
            push_op(
                g,
                "LogitGradient",
                &[&p, "c_y"],
                &[(&dz, &TYPE_TENSOR_F32)],
                None,
            );
            push_role(
                g,
                &MODEL,
                MODEL_ROLE,
                "Backward",
                &[&dz],
                &[(&done, &TYPE_TRIGGER)],
            );
            previous = dz;
        }
        // (L2) Queued after the last `Backward`: the same value triggers both.
        push_role(
            g,
            &MODEL,
            MODEL_ROLE,
            "Params",
            &[&previous],
            &[("c_trained", &TYPE_TENSOR_F32)],
        );
        let update = push_op(
            g,
            "MakeUpdate",
            &["c_trained", "ticket", "c_y", "c_loss"],
            &[("update_msg", &TYPE_BYTES)],
            None,
        );
        let reply = push_op(
            g,
            "ReplyPeers",
            &["ticket"],
            &[("coord_peers", &TYPE_PEER_ID_VEC)],
            Some("coord"),
        );
        g.net_out("update", reply[0].clone(), update[0].clone());

        // Coordinator, per update: gate it on the deadline, contribute it.
        let got = g.lookup_output("update").expect("update port");
        let params = AttributeProto {
            name: PARAMS_ATTRIBUTE.into(),
            r#type: bb_ir::proto::onnx::attribute_proto::AttributeType::Int as i32,
            i: self.params as i64,
            ..Default::default()
        };
        let opened = push_op_with(
            g,
            "OpenUpdate",
            &[&got.name],
            &[("u_tensor", &TYPE_TENSOR_F32), ("u_info", &TYPE_BYTES)],
            vec![params],
        );
        push_op(g, "MetaOf", &["u_info"], &[("u_meta", &TYPE_BYTES)], None);
        push_role(
            g,
            &AGGREGATOR,
            AGGREGATOR_ROLE,
            "Contribute",
            &["u_tensor", "u_meta"],
            &[("u_contributed", &TYPE_TRIGGER)],
        );
        g.output("update_info", opened[1].clone());

        // Coordinator: close the round.
        g.input("close");
        let aggregate = push_role(
            g,
            &AGGREGATOR,
            AGGREGATOR_ROLE,
            "Aggregate",
            &["close"],
            &[
                ("agg_tensor", &TYPE_TENSOR_F32),
                ("agg_meta_v", &TYPE_BYTES),
            ],
        );
        let flat = push_op(
            g,
            "ToFlat",
            &["agg_tensor"],
            &[("new_params", &TYPE_TENSOR_F32)],
            None,
        );
        push_role(
            g,
            &MODEL,
            MODEL_ROLE,
            "LoadParameters",
            &["new_params"],
            &[("g_loaded", &TYPE_TRIGGER)],
        );
        g.output("new_global", flat[0].clone());
        g.output("agg_meta", aggregate[1].clone());
    }
}

/// [`FedRound`] compiled for a coordinator and its clients.
pub struct Federation {
    /// How the model reads a sample.
    pub features: Features,
    model: ModelProto,
    /// The coordinator's round target, `FedRound#…` (inputs `round_cmd`,
    /// `close`).
    pub round_target: String,
    update_target: String,
    client_model: ModelProto,
    client_targets: Vec<String>,
}

impl Federation {
    /// Compiles the federation around the coordinator `coordinator`: every
    /// process compiles it the same way and so agrees on target names.
    ///
    /// Binding order is component order. The coordinator's first binding
    /// is the `GlobalRegistryServer` (component 0, where clients announce)
    /// that `Sample` draws the cohort from. A client installs the registry
    /// client's model first (see `registry::client_model`) and this one
    /// after it. `features` says which model the federation trains.
    pub fn new(coordinator: &libp2p::PeerId, features: Features) -> Self {
        bytesandbrains::ops::link_force();
        let round = FedRound {
            params: features.params(),
        };
        let model = Compiler::new()
            .bind_peer_selector::<GlobalRegistryServer>("view")
            .bind_model::<LogReg>("model")
            .bind_data_source::<Shard>("data")
            .bind_aggregator::<FedAvg<CpuBackend>>("aggregator")
            .bind_backend::<CpuBackend>("backend")
            .compile(round.build().expect("FedRound builds"))
            .expect("FedRound compiles");
        let round_target = registry::target(&model, "FedRound#");
        let update_target = registry::target(&model, "FedRound_coord#");
        let client_target = registry::target(&model, "FedRound_client#");
        let announce = registry::client_model(coordinator);
        let client_targets = vec![announce.functions[0].name.clone(), client_target];
        Self {
            features,
            client_model: registry::merge(announce, &model),
            model,
            round_target,
            update_target,
            client_targets,
        }
    }

    /// Builds the coordinator's Node on its engine thread: the `make_node`
    /// closure to give `bb_libp2p::Behaviour::new`, with the identity of
    /// `key`.
    pub fn make_coordinator(
        self: &Arc<Self>,
        key: &Keypair,
    ) -> impl FnOnce() -> Result<Node, Infallible> + Send + 'static {
        let (federation, key) = (Arc::clone(self), key.clone());
        move || Ok(federation.coordinator_node(&key))
    }

    /// Builds a client's Node holding `shard` on its engine thread: the
    /// `make_node` closure to give `bb_libp2p::Behaviour::new`, whose
    /// bootstrap then announces the client to the coordinator.
    pub fn make_client(
        self: &Arc<Self>,
        key: &Keypair,
        shard: Dataset,
    ) -> impl FnOnce() -> Result<Node, Infallible> + Send + 'static {
        let (federation, key) = (Arc::clone(self), key.clone());
        move || Ok(federation.client_node(&key, shard))
    }

    /// The coordinator's Node. Call it where the Node is to live: in the
    /// closure that builds it on its engine thread ([`Self::make_coordinator`]).
    pub fn coordinator_node(&self, key: &Keypair) -> Node {
        let mut node =
            registry::install(key, &self.model, &[&self.round_target, &self.update_target]);
        registry::enable_registry_dispatch(&mut node);
        let engine = node.engine_install_handle();
        let server = engine
            .component_mut(ComponentRef::from(GLOBAL_REGISTRY_SERVER_CREF))
            .expect("the coordinator has a component 0");
        let server: &mut dyn Any = server.as_mut();
        let server = server
            .downcast_mut::<GlobalRegistryServer>()
            .expect("component 0 is the GlobalRegistryServer");
        server.config.default_ttl_ns = REGISTRY_TTL.as_nanos() as u64;
        self.set_model(&mut node);
        node
    }

    /// Puts the federation's model in `node`'s Model slot: the derived
    /// `LogReg` component is the dense one.
    fn set_model(&self, node: &mut Node) {
        let slot = node.slot("model").expect("a model slot");
        let engine = node.engine_install_handle();
        let component = engine.component_mut(slot).expect("the model component");
        let component: &mut dyn Any = component.as_mut();
        *component
            .downcast_mut::<LogReg>()
            .expect("the model component is a LogReg") = LogReg::for_features(self.features);
    }

    /// A client's Node holding `shard`. Call it where the Node is to live:
    /// in the closure that builds it on its engine thread
    /// ([`Self::make_client`]).
    pub fn client_node(&self, key: &Keypair, shard: Dataset) -> Node {
        let targets: Vec<&str> = self.client_targets.iter().map(String::as_str).collect();
        let mut node = registry::install(key, &self.client_model, &targets);
        registry::enable_registry_dispatch(&mut node);
        // The derived `Shard` component takes no configuration: the data
        // goes into the installed component.
        let slot = node.slot("data").expect("a data slot");
        let engine = node.engine_install_handle();
        let component = engine.component_mut(slot).expect("the data component");
        let component: &mut dyn Any = component.as_mut();
        component
            .downcast_mut::<Shard>()
            .expect("the data component is a Shard")
            .data = shard;
        self.set_model(&mut node);
        node
    }
}
