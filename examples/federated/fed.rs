//! Federated averaging as one engine Module, the Nodes that run it, and the
//! coordinator's round loop around it.
//!
//! [`FedRound`] compiles to three targets:
//!
//! - `FedRound#…`, the coordinator's round: invoked with `round_cmd`, it
//!   samples a cohort from the registry's view (`Sample` on the
//!   `GlobalRegistryServer` the clients announced to), reads its Model's
//!   parameters and sends them to the cohort as a [`GlobalMsg`]; invoked
//!   with `close`, it has `FedAvg` aggregate the updates it took, loads the
//!   result into its Model and outputs it as `new_global`.
//! - `FedRound_client#…`, each client: it loads the parameters into its
//!   Model, takes [`LOCAL_STEPS`] gradient steps on its shard and sends the
//!   result back to the sender as an [`UpdateMsg`].
//! - `FedRound_coord#…`, the coordinator again, once per update: it drops
//!   an update that arrives after the round's deadline and hands the rest
//!   to `FedAvg`'s `Contribute`, which keys each contribution on the
//!   envelope's sender (so it must run in a chain an inbound envelope
//!   started, as this one does).
//!
//! The host drives rounds with `round::Round`.
//!
//! bytesandbrains 0.3.8 shapes the graph in four places, each marked where
//! it applies:
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
//!   file's own message types instead.
#![allow(dead_code)]

use std::any::Any;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bb_ir::proto::onnx::NodeProto;
use bb_ir::types::{
    TypeNode, TYPE_BYTES, TYPE_PEER_ID_VEC, TYPE_SCALAR_F32, TYPE_SCALAR_I32, TYPE_TENSOR_F32,
    TYPE_TRIGGER,
};
use bytesandbrains::aggregators::fedavg::FedAvgMeta;
use bytesandbrains::aggregators::FedAvg;
use bytesandbrains::atomic::DispatchResult;
use bytesandbrains::backends::cpu::{CpuBackend, CpuTensor};
use bytesandbrains::bus::OpError;
use bytesandbrains::ids::ComponentRef;
use bytesandbrains::placeholders::{AggregatorSlot, DataLoaderSlot, ModelSlot};
use bytesandbrains::proto::onnx::ModelProto;
use bytesandbrains::protocols::global_registry::GLOBAL_REGISTRY_SERVER_CREF;
use bytesandbrains::protocols::GlobalRegistryServer;
use bytesandbrains::runtime::RuntimeResourceRef;
use bytesandbrains::slot_value::SlotValue;
use bytesandbrains::syscall::values::{BytesValue, PeerIdVecValue};
use bytesandbrains::{Compiler, Graph, Module, Node, Output, PeerId};
use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};

use super::ml::{self, Dataset, LogReg, Shard, LOCAL_STEPS, PARAMS};
use super::registry::{self, entry, op_error};

/// Domain of this file's ops.
pub const FED_DOMAIN: &str = "ai.bytesandbrains.bb_libp2p_example.fed";

/// How long the registry keeps a client. Clients announce once, in their
/// bootstrap, and the engine's default (90 s) would drop them from the view
/// in the middle of a longer run.
const REGISTRY_TTL: Duration = Duration::from_secs(24 * 3600);

/// What the host gives the coordinator's `round_cmd` input (bincode).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoundCmd {
    /// Round number, from 1.
    pub round: u64,
    /// How many clients to sample from the registry's view.
    pub cohort: u32,
    /// Coordinator engine time after which an update is refused.
    pub deadline_ns: u64,
}

/// Coordinator to clients: the global parameters.
///
/// The round and deadline let a client answer the round it was asked for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GlobalMsg {
    /// Round number.
    pub round: u64,
    /// The round's deadline, echoed in the update.
    pub deadline_ns: u64,
    /// Weights, then bias.
    pub params: Vec<f32>,
}

/// Client to coordinator: the locally trained parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdateMsg {
    /// Round number, from the [`GlobalMsg`].
    pub round: u64,
    /// The round's deadline, from the [`GlobalMsg`].
    pub deadline_ns: u64,
    /// The client's engine PeerId bytes, which the client's own graph
    /// stamps. The coordinator attributes the update to the authenticated
    /// sender, not to this.
    pub client: Vec<u8>,
    /// Samples the client trained on: FedAvg's weight.
    pub num_samples: u64,
    /// The client's training loss under the global parameters, before its
    /// local steps.
    pub loss: f32,
    /// Weights, then bias.
    pub params: Vec<f32>,
}

/// What a client keeps of the [`GlobalMsg`] for its reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ticket {
    /// Round number.
    pub round: u64,
    /// The round's deadline.
    pub deadline_ns: u64,
    /// The coordinator's engine PeerId bytes: the envelope's sender.
    pub coordinator: Vec<u8>,
}

/// Coordinator to its host, per accepted update (output `update_info`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdateInfo {
    /// Round number.
    pub round: u64,
    /// The sender's engine PeerId bytes.
    pub client: Vec<u8>,
    /// Samples the client trained on.
    pub num_samples: u64,
    /// The client's training loss before its local steps.
    pub loss: f32,
}

// (L4) The two messages that cross the wire; without a decoder the
// receiver drops the fill.
bb_ir::register_type_node!(GlobalMsg, &TYPE_BYTES);
bb_ir::register_type_node!(UpdateMsg, &TYPE_BYTES);

type OpResult = Result<DispatchResult, OpError>;

fn outputs(values: Vec<(&str, Box<dyn SlotValue>)>) -> OpResult {
    Ok(DispatchResult::Immediate(
        values
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect(),
    ))
}

/// Input `i` of `op`, as a `T`.
fn input<'a, T: 'static>(
    inputs: &'a [(&str, &dyn SlotValue)],
    i: usize,
    op: &str,
) -> Result<&'a T, OpError> {
    inputs
        .get(i)
        .and_then(|(_, v)| v.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            op_error(format!(
                "{op}: input {i} is not a {}",
                std::any::type_name::<T>()
            ))
        })
}

fn round_cmd(inputs: &[(&str, &dyn SlotValue)], i: usize, op: &str) -> Result<RoundCmd, OpError> {
    let BytesValue(bytes) = input::<BytesValue>(inputs, i, op)?;
    bincode::deserialize(bytes).map_err(|e| op_error(format!("{op}: round_cmd: {e}")))
}

/// `CohortSize`: `round_cmd` -> `count`, the `u32` that `Sample` reads by
/// that name.
fn cohort_size(
    _: &NodeProto,
    inputs: &[(&str, &dyn SlotValue)],
    _: &mut RuntimeResourceRef<'_>,
) -> OpResult {
    let cmd = round_cmd(inputs, 0, "CohortSize")?;
    outputs(vec![("count", Box::new(cmd.cohort))])
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_example.fed",
    op_type: "CohortSize",
    invoke: cohort_size,
}

/// `MakeGlobal`: (the Model's parameters, `round_cmd`) -> [`GlobalMsg`].
fn make_global(
    _: &NodeProto,
    inputs: &[(&str, &dyn SlotValue)],
    _: &mut RuntimeResourceRef<'_>,
) -> OpResult {
    let params = input::<Box<[f32]>>(inputs, 0, "MakeGlobal")?;
    let cmd = round_cmd(inputs, 1, "MakeGlobal")?;
    let msg = GlobalMsg {
        round: cmd.round,
        deadline_ns: cmd.deadline_ns,
        params: params.to_vec(),
    };
    outputs(vec![("msg", Box::new(msg))])
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_example.fed",
    op_type: "MakeGlobal",
    invoke: make_global,
}

/// `OpenGlobal`: [`GlobalMsg`] -> (parameters for `LoadParameters`,
/// [`Ticket`]). The ticket names the envelope's sender, to reply to.
fn open_global(
    _: &NodeProto,
    inputs: &[(&str, &dyn SlotValue)],
    ctx: &mut RuntimeResourceRef<'_>,
) -> OpResult {
    let msg = input::<GlobalMsg>(inputs, 0, "OpenGlobal")?;
    let coordinator = ctx
        .current
        .inbound
        .src_peer
        .ok_or_else(|| op_error("OpenGlobal: outside an inbound delivery"))?;
    let ticket = Ticket {
        round: msg.round,
        deadline_ns: msg.deadline_ns,
        coordinator: coordinator.to_bytes(),
    };
    outputs(vec![
        ("params", Box::new(msg.params.clone().into_boxed_slice())),
        ("ticket", Box::new(ticket)),
    ])
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_example.fed",
    op_type: "OpenGlobal",
    invoke: open_global,
}

/// `LogitGradient`: (predictions, labels) -> the loss's gradient per
/// logit, which the Model's `backward` takes.
fn logit_gradient(
    _: &NodeProto,
    inputs: &[(&str, &dyn SlotValue)],
    _: &mut RuntimeResourceRef<'_>,
) -> OpResult {
    let p = input::<Box<[f32]>>(inputs, 0, "LogitGradient")?;
    let y = input::<Box<[f32]>>(inputs, 1, "LogitGradient")?;
    outputs(vec![(
        "dz",
        Box::new(ml::logit_gradient(p, y).into_boxed_slice()),
    )])
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_example.fed",
    op_type: "LogitGradient",
    invoke: logit_gradient,
}

/// `ReplyPeers`: [`Ticket`] -> the coordinator as a one-peer list for
/// `wire.Send`.
fn reply_peers(
    _: &NodeProto,
    inputs: &[(&str, &dyn SlotValue)],
    _: &mut RuntimeResourceRef<'_>,
) -> OpResult {
    let ticket = input::<Ticket>(inputs, 0, "ReplyPeers")?;
    let coordinator = PeerId::from_bytes(&ticket.coordinator)
        .map_err(|e| op_error(format!("ReplyPeers: {e}")))?;
    outputs(vec![("peers", Box::new(PeerIdVecValue(vec![coordinator])))])
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_example.fed",
    op_type: "ReplyPeers",
    invoke: reply_peers,
}

/// `MakeUpdate`: (trained parameters, [`Ticket`], labels, loss) ->
/// [`UpdateMsg`]. The labels' count is the sample count: a batch is the
/// whole shard.
fn make_update(
    _: &NodeProto,
    inputs: &[(&str, &dyn SlotValue)],
    ctx: &mut RuntimeResourceRef<'_>,
) -> OpResult {
    let params = input::<Box<[f32]>>(inputs, 0, "MakeUpdate")?;
    let ticket = input::<Ticket>(inputs, 1, "MakeUpdate")?;
    let labels = input::<Box<[f32]>>(inputs, 2, "MakeUpdate")?;
    let loss = *input::<f32>(inputs, 3, "MakeUpdate")?;
    let msg = UpdateMsg {
        round: ticket.round,
        deadline_ns: ticket.deadline_ns,
        client: ctx.current.self_peer.to_bytes(),
        num_samples: labels.len() as u64,
        loss,
        params: params.to_vec(),
    };
    outputs(vec![("msg", Box::new(msg))])
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_example.fed",
    op_type: "MakeUpdate",
    invoke: make_update,
}

/// Prefix of the error with which [`open_update`] refuses a late update.
pub const LATE_UPDATE: &str = "OpenUpdate: late update";

/// `OpenUpdate`: [`UpdateMsg`] -> (the tensor `FedAvg<CpuBackend>`'s
/// `Contribute` takes, [`UpdateInfo`]).
///
/// The round's deadline is enforced here, against the coordinator's engine
/// clock (which the behaviour moves in real time): a late update fails this
/// op and never reaches FedAvg's buffer, so it cannot leak into the round
/// after.
fn open_update(
    _: &NodeProto,
    inputs: &[(&str, &dyn SlotValue)],
    ctx: &mut RuntimeResourceRef<'_>,
) -> OpResult {
    let msg = input::<UpdateMsg>(inputs, 0, "OpenUpdate")?;
    let sender = ctx
        .current
        .inbound
        .src_peer
        .ok_or_else(|| op_error("OpenUpdate: outside an inbound delivery"))?;
    let now = ctx.time.scheduler.now_ns();
    if now >= msg.deadline_ns {
        return Err(op_error(format!(
            "{LATE_UPDATE} for round {} from {sender} ({} ms after the deadline)",
            msg.round,
            (now - msg.deadline_ns) / 1_000_000
        )));
    }
    if msg.params.len() != PARAMS {
        return Err(op_error(format!(
            "OpenUpdate: {} parameters from {sender}, expected {PARAMS}",
            msg.params.len()
        )));
    }
    let tensor = Box::new(CpuTensor::from_vec(vec![PARAMS as i64], msg.params.clone()));
    let info = UpdateInfo {
        round: msg.round,
        client: sender.to_bytes(),
        num_samples: msg.num_samples,
        loss: msg.loss,
    };
    outputs(vec![("tensor", Box::new(tensor)), ("info", Box::new(info))])
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_example.fed",
    op_type: "OpenUpdate",
    invoke: open_update,
}

/// `MetaOf`: [`UpdateInfo`] -> the `FedAvgMeta` that `Contribute` weights
/// by. (L1) Not an output of `OpenUpdate`: `Contribute` would then read two
/// outputs of one producer and contribute twice.
fn meta_of(
    _: &NodeProto,
    inputs: &[(&str, &dyn SlotValue)],
    _: &mut RuntimeResourceRef<'_>,
) -> OpResult {
    let info = input::<UpdateInfo>(inputs, 0, "MetaOf")?;
    let meta = FedAvgMeta {
        num_samples: info.num_samples,
    };
    outputs(vec![("meta", Box::new(meta))])
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_example.fed",
    op_type: "MetaOf",
    invoke: meta_of,
}

/// `ToFlat`: `Aggregate`'s tensor -> the values `LoadParameters` takes.
fn to_flat(
    _: &NodeProto,
    inputs: &[(&str, &dyn SlotValue)],
    _: &mut RuntimeResourceRef<'_>,
) -> OpResult {
    let tensor = input::<Box<CpuTensor>>(inputs, 0, "ToFlat")?;
    outputs(vec![(
        "flat",
        Box::new(tensor.flat_data().into_boxed_slice()),
    )])
}

bytesandbrains::register_op! {
    domain: "ai.bytesandbrains.bb_libp2p_example.fed",
    op_type: "ToFlat",
    invoke: to_flat,
}

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
    g.push_node(NodeProto {
        op_type: op_type.into(),
        domain: FED_DOMAIN.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|(n, _)| n.to_string()).collect(),
        metadata_props: class
            .map(|c| vec![entry(bb_ir::peer_class::PEER_CLASS_KEY, c)])
            .unwrap_or_default(),
        ..Default::default()
    });
    declare(g, outs)
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

/// One federated-averaging round; see the module docs for its targets.
///
/// Outputs on the coordinator: `cohort` (the sampled clients, when the
/// round starts), `update_info` (an [`UpdateInfo`] per accepted update),
/// `new_global` and `agg_meta` (the aggregate and its total sample count,
/// after `close`).
pub struct FedRound;

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
        let opened = push_op(
            g,
            "OpenUpdate",
            &[&got.name],
            &[("u_tensor", &TYPE_TENSOR_F32), ("u_info", &TYPE_BYTES)],
            None,
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
    /// after it.
    pub fn new(coordinator: &libp2p::PeerId) -> Self {
        bytesandbrains::ops::link_force();
        let model = Compiler::new()
            .bind_peer_selector::<GlobalRegistryServer>("view")
            .bind_model::<LogReg>("model")
            .bind_data_source::<Shard>("data")
            .bind_aggregator::<FedAvg<CpuBackend>>("aggregator")
            .bind_backend::<CpuBackend>("backend")
            .compile(FedRound.build().expect("FedRound builds"))
            .expect("FedRound compiles");
        let round_target = registry::target(&model, "FedRound#");
        let update_target = registry::target(&model, "FedRound_coord#");
        let client_target = registry::target(&model, "FedRound_client#");
        let announce = registry::client_model(coordinator);
        let client_targets = vec![announce.functions[0].name.clone(), client_target];
        Self {
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
        node
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
        node
    }
}
