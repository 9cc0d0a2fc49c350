//! The values of a federated round: what crosses the wire between the
//! coordinator and its clients, and what their graphs and hosts keep.
#![allow(dead_code)]

use bb_ir::types::TYPE_BYTES;
use serde::{Deserialize, Serialize};

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
    #[serde(with = "bb_libp2p::values::bulk_f32s")]
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
    #[serde(with = "bb_libp2p::values::bulk_f32s")]
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

// (L5) The engine charges a received fill's length against the Node's
// ingress byte budget and, once the value is done with, releases what the
// value's `charged_bytes` says: nothing, for a type without this binding.
// Without it every message received would hold its bytes for good, and a
// coordinator taking 128 MiB updates would answer busy to everything
// after eight of them.
bb_ir::register_charged_bytes!(GlobalMsg, GlobalMsg::encoded_len);
bb_ir::register_charged_bytes!(UpdateMsg, UpdateMsg::encoded_len);

impl GlobalMsg {
    /// Its encoded length: two `u64`s, and the parameters' byte length and
    /// bytes.
    pub fn encoded_len(&self) -> usize {
        8 + 8 + 8 + 4 * self.params.len()
    }
}

impl UpdateMsg {
    /// Its encoded length: `round`, `deadline_ns`, `client`'s length and
    /// bytes, `num_samples`, `loss`, and the parameters' byte length and
    /// bytes.
    pub fn encoded_len(&self) -> usize {
        8 + 8 + 8 + self.client.len() + 8 + 4 + 8 + 4 * self.params.len()
    }
}
