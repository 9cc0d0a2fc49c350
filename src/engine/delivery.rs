//! Counting envelopes from the engine to their outcomes, for
//! [`NodeHandle::delivered`](crate::NodeHandle::delivered).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

/// Envelopes the engine handed over, and those that have ended
/// (acknowledged or failed), with the tasks waiting for the second to
/// reach a number.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    handed: AtomicU64,
    ended: AtomicU64,
    waiters: Mutex<Vec<Waker>>,
    /// The behaviour is gone: nothing will end any more.
    closed: AtomicBool,
}

impl Delivery {
    /// The engine handed one more envelope over (engine thread).
    pub(crate) fn handed_over(&self) {
        self.handed.fetch_add(1, Ordering::AcqRel);
    }

    /// Envelopes handed over so far.
    pub(crate) fn handed(&self) -> u64 {
        self.handed.load(Ordering::Acquire)
    }

    /// One more envelope has its outcome (swarm's task).
    pub(crate) fn ended(&self) {
        self.ended.fetch_add(1, Ordering::AcqRel);
        self.wake_all();
    }

    /// The behaviour was dropped.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Ready(`true`) once `target` envelopes have ended, Ready(`false`) if
    /// the behaviour is gone first.
    pub(crate) fn poll_reached(&self, target: u64, cx: &mut Context<'_>) -> Poll<bool> {
        if self.ended.load(Ordering::Acquire) >= target {
            return Poll::Ready(true);
        }
        if self.closed.load(Ordering::Acquire) {
            return Poll::Ready(false);
        }
        self.lock().push(cx.waker().clone());
        // An outcome may have come between the check and the registration.
        if self.ended.load(Ordering::Acquire) >= target {
            return Poll::Ready(true);
        }
        Poll::Pending
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.lock());
        waiters.into_iter().for_each(Waker::wake);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waker>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}
