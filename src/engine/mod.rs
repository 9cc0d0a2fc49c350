//! Where the Node lives: on an engine thread, off the swarm's task.
//!
//! `bb_runtime::node::Node` is `!Send`, and its engine work (a training step,
//! an aggregation) can take seconds. So the Node is created on an engine
//! thread ([`EnginePool`]) and never leaves it; the behaviour on the swarm's
//! task trades with it over two bounded lanes, and the application reaches
//! it through a [`NodeHandle`].
//!
//! - Swarm → engine: inbound envelopes go straight into the Node's own
//!   ingress queue (bounded, thread-safe); a full queue is answered busy.
//!   Peer changes, health records and send failures go on a control lane.
//! - Engine → swarm: envelopes to send and events. While that lane is full
//!   the Node is not polled, and its own bounded outbound queue takes the
//!   backpressure.
//!
//! Neither side ever waits for the other, so no pair of full lanes can
//! deadlock: the engine always drains the control lane, and the swarm takes
//! no new envelopes from the engine while its own control messages wait.

pub(crate) mod caps;
pub(crate) mod carried;
pub(crate) mod delivery;
pub(crate) mod handle;
pub(crate) mod host;
pub(crate) mod lane;
pub(crate) mod link;
pub(crate) mod message;
pub(crate) mod pool;
pub(crate) mod start;

pub use handle::{AppEvents, NodeHandle};
pub use pool::EnginePool;
