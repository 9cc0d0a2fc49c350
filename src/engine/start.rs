//! Starting a Node on an engine thread: the lanes and channels between
//! the swarm's side and the host, the closure that builds the Node there,
//! and what the host reports back once it runs.

use std::error::Error;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bb_runtime::node::Node;
use futures::channel::{mpsc, oneshot};
use futures::executor::block_on;

use super::carried::Carried;
use super::host::{Host, HostStats, Init, Job, Links, Sizes};
use super::lane::lane;
use super::link::EngineLink;
use super::pool::{EnginePool, Start};
use crate::compat::dedup::Taken;
use crate::error::StartError;
use crate::metrics::Metrics;

/// Steps the engine may hand the swarm before it waits for the swarm.
const STEP_LANE: usize = 1024;

/// Control messages to the engine thread before the swarm holds them.
const CONTROL_LANE: usize = 1024;

/// Handle calls waiting for the engine thread before callers wait.
const JOB_QUEUE: usize = 64;

/// A Node running on an engine thread, and the swarm's ends of its lanes.
pub(crate) struct Started {
    pub(crate) init: Init,
    pub(crate) jobs: mpsc::Sender<Job>,
    pub(crate) stats: Arc<HostStats>,
    pub(crate) link: EngineLink,
}

/// Builds the Node with `make_node` on a thread of `pool` and waits (a
/// moment: the closure installs and the host reads a few fields) until it
/// runs.
pub(crate) fn start<F, E>(
    pool: &EnginePool,
    make_node: F,
    emit_op_steps: bool,
    metrics: Option<Metrics>,
    sizes: Sizes,
) -> Result<Started, StartError>
where
    F: FnOnce() -> Result<Node, E> + Send + 'static,
    E: Into<Box<dyn Error + Send + Sync>>,
{
    let (control, control_rx) = lane(CONTROL_LANE);
    let (steps_tx, steps) = lane(STEP_LANE);
    let (jobs, jobs_rx) = mpsc::channel(JOB_QUEUE);
    let stats = Arc::new(HostStats::default());
    let links = Links {
        control: control_rx,
        out: steps_tx,
        jobs: jobs_rx,
        stats: Arc::clone(&stats),
        emit_op_steps,
        metrics,
        sizes,
    };
    let (init_tx, init_rx) = oneshot::channel::<Result<Init, StartError>>();
    let start: Start = Box::new(move || {
        Box::pin(async move {
            // Keys a restore leaves are for this Node's host alone.
            Taken::forget_restored();
            Carried::forget_restored();
            let node = match catch_unwind(AssertUnwindSafe(make_node)) {
                Ok(Ok(node)) => node,
                Ok(Err(e)) => {
                    Taken::forget_restored();
                    Carried::forget_restored();
                    let _ = init_tx.send(Err(StartError::Install(e.into())));
                    return;
                }
                Err(panic) => {
                    Taken::forget_restored();
                    Carried::forget_restored();
                    let why = panic_message(&panic);
                    let _ = init_tx.send(Err(StartError::Install(why.into())));
                    return;
                }
            };
            let (host, init) = Host::new(node, links);
            if init_tx.send(Ok(init)).is_ok() {
                host.await;
            }
        })
    });
    pool.start(start).map_err(|_| StartError::EngineStopped)?;
    let init = block_on(init_rx).map_err(|_| StartError::EngineStopped)??;
    Ok(Started {
        init,
        jobs,
        stats,
        link: EngineLink::new(control, steps),
    })
}

/// What a panic said, if it said it in words.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the closure panicked".to_string())
}
