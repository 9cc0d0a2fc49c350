//! The ops of a federated round: what [`FedRound`](super::fed::FedRound)'s
//! graph does beyond the engine's own roles and `wire.Send`.
#![allow(dead_code)]

use bb_ir::proto::onnx::NodeProto;
use bytesandbrains::aggregators::fedavg::FedAvgMeta;
use bytesandbrains::atomic::DispatchResult;
use bytesandbrains::backends::cpu::CpuTensor;
use bytesandbrains::bus::OpError;
use bytesandbrains::runtime::RuntimeResourceRef;
use bytesandbrains::slot_value::SlotValue;
use bytesandbrains::syscall::values::{BytesValue, PeerIdVecValue};
use bytesandbrains::PeerId;

use super::messages::{GlobalMsg, RoundCmd, Ticket, UpdateInfo, UpdateMsg};
use super::ml;
use super::registry::op_error;

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

/// Attribute of `OpenUpdate`: the model's parameter count.
pub const PARAMS_ATTRIBUTE: &str = "params";

/// `OpenUpdate`: [`UpdateMsg`] -> (the tensor `FedAvg<CpuBackend>`'s
/// `Contribute` takes, [`UpdateInfo`]).
///
/// The round's deadline is enforced here, against the coordinator's engine
/// clock (which the behaviour moves in real time): a late update fails this
/// op and never reaches FedAvg's buffer, so it cannot leak into the round
/// after.
fn open_update(
    node: &NodeProto,
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
    let params = node
        .attribute
        .iter()
        .find(|a| a.name == PARAMS_ATTRIBUTE)
        .map(|a| a.i as usize)
        .ok_or_else(|| op_error("OpenUpdate: no parameter count"))?;
    if msg.params.len() != params {
        return Err(op_error(format!(
            "OpenUpdate: {} parameters from {sender}, expected {params}",
            msg.params.len()
        )));
    }
    let tensor = Box::new(CpuTensor::from_vec(vec![params as i64], msg.params.clone()));
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
