//! A bounded, batching channel between the swarm's task and an engine
//! thread.
//!
//! Each side drains everything waiting in one lock, and a producer wakes
//! the consumer only when the lane goes from empty to non-empty (and the
//! consumer wakes a blocked producer only when it goes from full to not
//! full): under load a burst of envelopes costs one wake-up, not one per
//! envelope. Neither side ever blocks; a full lane is reported to the
//! producer, which holds the item and waits for [`LaneTx::poll_room`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

struct State<T> {
    queue: VecDeque<T>,
    /// The consumer, waiting for an item.
    consumer: Option<Waker>,
    /// The producer, waiting for room.
    producer: Option<Waker>,
    /// One side was dropped.
    closed: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    cap: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while the lock is held leaves only a queue of owned
        // items behind, which is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The producing half.
pub(crate) struct LaneTx<T>(Arc<Shared<T>>);

/// The consuming half.
pub(crate) struct LaneRx<T>(Arc<Shared<T>>);

/// A lane holding at most `cap` items.
pub(crate) fn lane<T>(cap: usize) -> (LaneTx<T>, LaneRx<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            consumer: None,
            producer: None,
            closed: false,
        }),
        cap: cap.max(1),
    });
    (LaneTx(Arc::clone(&shared)), LaneRx(shared))
}

/// The lane was full: the item comes back.
#[derive(Debug)]
pub(crate) struct Full<T>(pub(crate) T);

impl<T> LaneTx<T> {
    /// Moves items from the front of `items` into the lane while there is
    /// room. Returns whether the consumer is gone (the items stay).
    pub(crate) fn push_from(&self, items: &mut VecDeque<T>) -> Result<(), Closed> {
        if items.is_empty() {
            return Ok(());
        }
        let waker = {
            let mut state = self.0.lock();
            if state.closed {
                return Err(Closed);
            }
            let was_empty = state.queue.is_empty();
            let room = self.0.cap.saturating_sub(state.queue.len());
            let n = room.min(items.len());
            state.queue.extend(items.drain(..n));
            (was_empty && n > 0)
                .then(|| state.consumer.take())
                .flatten()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Sends one item, or hands it back when the lane is full or closed.
    pub(crate) fn try_push(&self, item: T) -> Result<(), Full<T>> {
        let waker = {
            let mut state = self.0.lock();
            if state.closed || state.queue.len() >= self.0.cap {
                return Err(Full(item));
            }
            let was_empty = state.queue.is_empty();
            state.queue.push_back(item);
            was_empty.then(|| state.consumer.take()).flatten()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Ready when the lane has room (or is closed); otherwise registers
    /// to be woken when the consumer makes room.
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.0.lock();
        if state.closed || state.queue.len() < self.0.cap {
            return Poll::Ready(());
        }
        state.producer = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether the consumer is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.lock().closed
    }
}

/// The other side was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

impl<T> LaneRx<T> {
    /// Moves everything waiting into `out`. `Pending` when there was
    /// nothing (the consumer is then woken by the next push), `Ready(Err)`
    /// once the producer is gone and the lane is empty.
    pub(crate) fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<T>,
    ) -> Poll<Result<(), Closed>> {
        let waker = {
            let mut state = self.0.lock();
            if state.queue.is_empty() {
                if state.closed {
                    return Poll::Ready(Err(Closed));
                }
                state.consumer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let was_full = state.queue.len() >= self.0.cap;
            out.extend(state.queue.drain(..));
            was_full.then(|| state.producer.take()).flatten()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Poll::Ready(Ok(()))
    }

    /// Calls `f` on each waiting item, oldest first, leaving them there.
    pub(crate) fn inspect(&self, f: impl FnMut(&T)) {
        self.0.lock().queue.iter().for_each(f);
    }

    /// How many items wait.
    pub(crate) fn len(&self) -> usize {
        self.0.lock().queue.len()
    }
}

fn close<T>(shared: &Shared<T>) {
    let (consumer, producer) = {
        let mut state = shared.lock();
        state.closed = true;
        (state.consumer.take(), state.producer.take())
    };
    for waker in [consumer, producer].into_iter().flatten() {
        waker.wake();
    }
}

impl<T> Drop for LaneTx<T> {
    fn drop(&mut self) {
        close(&self.0);
    }
}

impl<T> Drop for LaneRx<T> {
    fn drop(&mut self) {
        close(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::{noop_waker, ArcWake};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(AtomicUsize);
    impl ArcWake for Count {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn bounded_and_woken_once_per_batch() {
        let (tx, rx) = lane::<u32>(3);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = futures::task::waker(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mut out = VecDeque::new();
        assert!(rx.poll_drain(&mut cx, &mut out).is_pending());
        let mut items: VecDeque<u32> = (0..5).collect();
        tx.push_from(&mut items).unwrap();
        // Three fit; one wake for the batch.
        assert_eq!(items, [3, 4]);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(matches!(tx.try_push(9), Err(Full(9))));
        assert!(tx.poll_room(&mut cx).is_pending());
        assert!(rx.poll_drain(&mut cx, &mut out).is_ready());
        assert_eq!(out, [0, 1, 2]);
        // Draining a full lane wakes the waiting producer.
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(tx.poll_room(&mut cx).is_ready());
    }

    #[test]
    fn a_dropped_side_closes_the_lane() {
        let (tx, rx) = lane::<u32>(2);
        tx.try_push(1).unwrap();
        drop(tx);
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = VecDeque::new();
        assert_eq!(rx.poll_drain(&mut cx, &mut out), Poll::Ready(Ok(())));
        assert_eq!(rx.poll_drain(&mut cx, &mut out), Poll::Ready(Err(Closed)));
        let (tx, rx) = lane::<u32>(2);
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.push_from(&mut VecDeque::from([1])), Err(Closed));
    }
}
