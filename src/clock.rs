//! The engine's clock, moved by the host.
//!
//! In bb-runtime 0.3.8 the engine's `now_ns` starts at 0 and only the host
//! moves it; timers, op deadlines, wire-request TTLs and RTT estimates all
//! read it. The engine has no "next deadline" accessor either, so the
//! behaviour works one out from what the engine does expose (the timer
//! heap's `has_matured`, the parked ops' deadlines, the in-flight request
//! table) and arms a single timer for it. An idle engine arms nothing.
//!
//! Moving the clock exposes a second 0.3.8 limitation, covered by
//! [`crate::compat::deadline_gates`].

use std::collections::HashMap;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bb_runtime::engine::Engine;
use bb_runtime::framework::Scheduler;
use futures::FutureExt;
use futures_timer::Delay;

/// How often the clock ticks while the engine tracks wire requests this
/// clock did not see go out (none do today: every originating `wire.Send`
/// ships an envelope). A bound, not a poll interval for the common case.
const UNKNOWN_DEADLINE_TICK: Duration = Duration::from_millis(100);

/// Wake-ups closer together than this are merged, so a deadline that the
/// engine has not yet acted on cannot turn into a spin.
const MIN_WAKE: Duration = Duration::from_millis(1);

pub(crate) struct Clock {
    origin: Instant,
    /// Engine time at `origin`: a restored Node's clock continues.
    base_ns: u64,
    /// wire_req_id -> expiry of requests this Node originated.
    wire_expiries: HashMap<u64, u64>,
    timer: Option<Delay>,
}

impl Clock {
    pub(crate) fn new(engine: &Engine) -> Self {
        Self {
            origin: Instant::now(),
            base_ns: engine.framework.scheduler.now_ns(),
            wire_expiries: HashMap::new(),
            timer: None,
        }
    }

    /// Engine time now.
    pub(crate) fn now_ns(&self) -> u64 {
        let elapsed = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.base_ns.saturating_add(elapsed)
    }

    /// Moves the engine's clock to now. Never backwards.
    pub(crate) fn advance(&self, engine: &mut Engine) {
        let scheduler = &mut engine.framework.scheduler;
        let now = self.now_ns().max(scheduler.now_ns());
        scheduler.set_now(now);
    }

    /// Notes the expiry of an outbound request the engine registered.
    pub(crate) fn track_wire_request(&mut self, engine: &Engine, wire_req_id: u64) {
        if let Some(entry) = engine.framework.request_tracker.peek(wire_req_id) {
            if entry.expires_at_ns > 0 {
                self.wire_expiries.insert(wire_req_id, entry.expires_at_ns);
            }
        }
    }

    /// Arms the timer for the engine's next due moment, or disarms it.
    pub(crate) fn rearm(&mut self, engine: &Engine) {
        let tracker = &engine.framework.request_tracker;
        self.wire_expiries.retain(|id, expiry| {
            tracker
                .peek(*id)
                .is_some_and(|e| e.expires_at_ns == *expiry)
        });
        let mut due = [
            next_timer(&engine.framework.scheduler),
            engine
                .exec
                .pending_async
                .values()
                .filter_map(|p| p.deadline_ns)
                .min(),
            self.wire_expiries.values().copied().min(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| Duration::from_nanos(at.saturating_sub(self.now_ns())));
        if tracker.in_flight_count() > self.wire_expiries.len() {
            due = Some(due.map_or(UNKNOWN_DEADLINE_TICK, |d| d.min(UNKNOWN_DEADLINE_TICK)));
        }
        self.timer = due.map(|d| Delay::new(d.max(MIN_WAKE)));
    }

    /// Ready once when the armed moment has come.
    pub(crate) fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.timer.as_mut().map(|t| t.poll_unpin(cx)) {
            Some(Poll::Ready(())) => {
                self.timer = None;
                Poll::Ready(())
            }
            _ => Poll::Pending,
        }
    }

    #[cfg(test)]
    pub(crate) fn is_armed(&self) -> bool {
        self.timer.is_some()
    }
}

/// The earliest timer maturity in the heap. The heap is private; its
/// `has_matured(t)` is monotone in `t` and O(1), so a binary search over
/// u64 finds the exact maturity in 64 steps.
fn next_timer(scheduler: &Scheduler) -> Option<u64> {
    if scheduler.is_empty() {
        return None;
    }
    if scheduler.has_matured(0) {
        return Some(0);
    }
    let (mut lo, mut hi) = (0u64, u64::MAX);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if scheduler.has_matured(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bb_runtime::framework::TimerKind;
    use bb_runtime::ids::CommandId;

    #[test]
    fn next_timer_is_the_exact_earliest_maturity() {
        let mut s = Scheduler::new();
        assert_eq!(next_timer(&s), None);
        s.schedule(1_234_567_891, TimerKind::Sleep(CommandId::from(1)));
        s.schedule(987_654_321_000, TimerKind::Sleep(CommandId::from(2)));
        assert_eq!(next_timer(&s), Some(1_234_567_891));
        s.schedule(0, TimerKind::Sleep(CommandId::from(3)));
        assert_eq!(next_timer(&s), Some(0));
        s.schedule(u64::MAX, TimerKind::Sleep(CommandId::from(4)));
        let _ = s.poll_matured(987_654_321_000);
        assert_eq!(next_timer(&s), Some(u64::MAX));
    }

    #[test]
    fn idle_engine_arms_nothing() {
        let engine = Engine::new();
        let mut clock = Clock::new(&engine);
        clock.rearm(&engine);
        assert!(!clock.is_armed());
    }
}
