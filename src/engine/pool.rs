//! Engine threads: each runs a single-threaded executor that hosts many
//! Nodes, so a process with a thousand Nodes needs a handful of threads, not
//! a thousand. A Node stays on the thread it was created on for its whole
//! life (it is `!Send`); an idle thread sleeps until a Node on it is woken.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::channel::mpsc;
use futures::executor::{block_on, LocalPool};
use futures::future::LocalBoxFuture;
use futures::task::LocalSpawnExt;
use futures::{SinkExt, StreamExt};

/// Builds a Node's host on its engine thread.
pub(crate) type Start = Box<dyn FnOnce() -> LocalBoxFuture<'static, ()> + Send>;

/// Hosts waiting to be started on one thread; starting is quick, so a
/// short queue suffices.
const START_QUEUE: usize = 16;

struct Worker {
    start: mpsc::Sender<Start>,
    /// Nodes on this thread.
    nodes: Arc<AtomicUsize>,
}

/// A pool of engine threads shared by many [`Behaviour`](crate::Behaviour)s.
///
/// Each Node is pinned to the thread with the fewest Nodes when its
/// behaviour is built with [`Behaviour::with_pool`](crate::Behaviour::with_pool),
/// and runs there until its behaviour is dropped. A thread exits once the
/// pool and every behaviour on it are gone. Cloning shares the threads.
///
/// A Node's engine work (a training step, an aggregation) runs on its
/// thread, so Nodes that share a thread take turns: size the pool by the
/// cores the engines should use, not by the number of Nodes.
#[derive(Clone)]
pub struct EnginePool {
    workers: Arc<Vec<Worker>>,
}

impl std::fmt::Debug for EnginePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnginePool")
            .field("threads", &self.workers.len())
            .field("nodes", &self.nodes())
            .finish()
    }
}

impl EnginePool {
    /// Starts `threads` engine threads (at least one), named
    /// `bb-engine-<n>`.
    pub fn new(threads: usize) -> io::Result<Self> {
        Self::named(threads, "bb-engine")
    }

    /// [`EnginePool::new`] with threads named `<name>-<n>`, to tell pools
    /// apart in a debugger or `top` (Linux shows the first 15 bytes).
    pub fn named(threads: usize, name: &str) -> io::Result<Self> {
        let workers = (0..threads.max(1))
            .map(|i| spawn_worker(format!("{name}-{i}")))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            workers: Arc::new(workers),
        })
    }

    /// How many engine threads the pool has.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// How many Nodes run on the pool now.
    pub fn nodes(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.nodes.load(Ordering::Relaxed))
            .sum()
    }

    /// Starts a host on the least loaded thread. `Err` when that thread is
    /// gone (it panicked).
    pub(crate) fn start(&self, start: Start) -> Result<(), ()> {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.nodes.load(Ordering::Relaxed))
            .expect("at least one thread");
        let nodes = Arc::clone(&worker.nodes);
        nodes.fetch_add(1, Ordering::Relaxed);
        let counted: Start = Box::new(move || {
            let host = start();
            Box::pin(async move {
                let _count = Count(nodes);
                host.await;
            })
        });
        block_on(worker.start.clone().send(counted)).map_err(|_| ())
    }
}

/// Counts a Node off its thread when its host ends, however it ends.
struct Count(Arc<AtomicUsize>);

impl Drop for Count {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn spawn_worker(name: String) -> io::Result<Worker> {
    let (start, mut starts) = mpsc::channel::<Start>(START_QUEUE);
    std::thread::Builder::new().name(name).spawn(move || {
        let mut pool = LocalPool::new();
        let spawner = pool.spawner();
        pool.run_until(async {
            while let Some(start) = starts.next().await {
                if let Err(e) = spawner.spawn_local(start()) {
                    tracing::warn!("engine thread could not start a Node: {e}");
                }
            }
        });
        // The pool is gone: run the Nodes still here until their
        // behaviours are dropped.
        pool.run();
    })?;
    Ok(Worker {
        start,
        nodes: Arc::new(AtomicUsize::new(0)),
    })
}
