//! [`NodeHandle`]: the Node, reached from any task or thread.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bb_runtime::ingress::{IngressEvent, IngressQueueRef};
use bb_runtime::node::Node;
use futures::channel::{mpsc, oneshot};
use futures::Stream;
use libp2p::PeerId;

use super::host::{send_job, HostStats, Job};
use crate::error::EngineStopped;
use crate::event::AppEvent;

/// `AppEvent`s a stream buffers before the engine waits for the reader.
const APP_EVENT_BUFFER: usize = 256;

/// A `Send + Clone` handle on a [`Behaviour`](crate::Behaviour)'s Node,
/// which lives on an engine thread.
///
/// Every call is a message to that thread: [`NodeHandle::with_node`] runs a
/// closure on `&mut Node` there and brings its result back, so anything the
/// Node offers (invoke a Module, block a peer, read state) is one call away
/// from any task. Calls fail with [`EngineStopped`] once the behaviour is
/// dropped.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) jobs: mpsc::Sender<Job>,
    pub(crate) ingress: IngressQueueRef,
    pub(crate) peer: Option<PeerId>,
    pub(crate) stats: Arc<HostStats>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl NodeHandle {
    /// Runs `f` on the Node on its engine thread and returns what it
    /// returns. Work it pushes (an invoke) runs once `f` returns; a peer it
    /// blocks, or leaves off the allowlist, is disconnected by the swarm
    /// soon after. A panic in `f` is resumed here.
    ///
    /// Never call a blocking method of a handle from inside `f`: the
    /// engine thread would wait for itself.
    pub async fn with_node<R, F>(&self, f: F) -> Result<R, EngineStopped>
    where
        F: FnOnce(&mut Node) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |host| {
            let _ = tx.send(host.with_node(f));
        });
        send_job(&self.jobs, job).await.map_err(|_| EngineStopped)?;
        match rx.await.map_err(|_| EngineStopped)? {
            Ok(r) => Ok(r),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// [`NodeHandle::with_node`] for code that is not async: blocks the
    /// calling thread until the engine thread has run `f`. Fine in `main`,
    /// a test or a thread of its own; in an async task prefer
    /// [`NodeHandle::with_node`].
    pub fn with_node_blocking<R, F>(&self, f: F) -> Result<R, EngineStopped>
    where
        F: FnOnce(&mut Node) -> R + Send + 'static,
        R: Send + 'static,
    {
        futures::executor::block_on(self.with_node(f))
    }

    /// Pushes `event` into the Node's ingress queue, which wakes its engine
    /// thread. The event comes back when the queue is full.
    #[allow(clippy::result_large_err)]
    pub fn deliver(&self, event: IngressEvent) -> Result<(), IngressEvent> {
        self.ingress.push(event)
    }

    /// The Node's ingress queue, shared with the engine thread.
    pub fn ingress(&self) -> &IngressQueueRef {
        &self.ingress
    }

    /// The swarm's `PeerId` the Node was installed with, if the Node's id
    /// is one libp2p can express.
    pub fn local_peer_id(&self) -> Option<PeerId> {
        self.peer
    }

    /// Sends the Node's `AppEvent`s to the returned stream from now on,
    /// instead of as [`crate::Event::AppEvent`]s of the swarm, so a part of
    /// the application that does not own the swarm can consume them. The
    /// stream is bounded: while it is full the engine waits for its reader.
    /// Dropping it sends them to the swarm again.
    pub async fn app_events(&self) -> Result<AppEvents, EngineStopped> {
        let (tx, rx) = mpsc::channel(APP_EVENT_BUFFER);
        let (done, ready) = oneshot::channel();
        let job: Job = Box::new(move |host| {
            host.divert_app_events(tx);
            let _ = done.send(());
        });
        send_job(&self.jobs, job).await.map_err(|_| EngineStopped)?;
        ready.await.map_err(|_| EngineStopped)?;
        Ok(AppEvents { rx })
    }

    /// Resolves once every envelope the Node has sent so far has its
    /// outcome ([`crate::Event::EnvelopeAcknowledged`] or
    /// [`crate::Event::SendFailed`]), work already given to it included: an
    /// invoke that returned before this call counts. `Err` if the behaviour
    /// is dropped first. The swarm must be polled meanwhile: it is what
    /// carries the envelopes.
    pub async fn delivered(&self) -> Result<(), EngineStopped> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |host| {
            let _ = tx.send(host.handed_after_idle());
        });
        send_job(&self.jobs, job).await.map_err(|_| EngineStopped)?;
        let target = rx.await.map_err(|_| EngineStopped)?;
        let stats = Arc::clone(&self.stats);
        match futures::future::poll_fn(|cx| stats.delivery.poll_reached(target, cx)).await {
            true => Ok(()),
            false => Err(EngineStopped),
        }
    }

    /// Times the Node's task on its engine thread has been woken: with
    /// nothing to do it should stay still.
    pub fn engine_wakeups(&self) -> u64 {
        self.stats.wakeups.load(Ordering::Relaxed)
    }

    /// Whether the Node is gone (its behaviour was dropped).
    pub fn is_stopped(&self) -> bool {
        self.jobs.is_closed()
    }
}

/// The Node's `AppEvent`s, from [`NodeHandle::app_events`]. Ends when the
/// Node stops.
#[derive(Debug)]
pub struct AppEvents {
    rx: mpsc::Receiver<AppEvent>,
}

impl Stream for AppEvents {
    type Item = AppEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<AppEvent>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}
