//! The swarm's ends of the lanes to the Node's engine thread.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use bb_runtime::envelope::WireEnvelope;

use super::lane::{Closed, LaneRx, LaneTx};
use super::message::{FromEngine, ToEngine};

pub(crate) struct EngineLink {
    control: LaneTx<ToEngine>,
    /// Control messages that found the lane full. While any wait, no new
    /// steps are taken from the engine, so at most one per envelope in
    /// flight or queued and per peer change waits here.
    waiting: VecDeque<ToEngine>,
    steps: LaneRx<FromEngine>,
    /// Steps taken from the lane in one batch, handed out one by one.
    received: VecDeque<FromEngine>,
    stopped: bool,
}

impl EngineLink {
    pub(crate) fn new(control: LaneTx<ToEngine>, steps: LaneRx<FromEngine>) -> Self {
        Self {
            control,
            waiting: VecDeque::new(),
            steps,
            received: VecDeque::new(),
            stopped: false,
        }
    }

    /// Sends `message` to the engine thread, or holds it until
    /// [`EngineLink::poll`] finds room.
    pub(crate) fn tell(&mut self, message: ToEngine) {
        if !self.waiting.is_empty() {
            return self.waiting.push_back(message);
        }
        if let Err(full) = self.control.try_push(message) {
            if !self.stopped {
                self.waiting.push_back(full.0);
            }
        }
    }

    /// The engine's next step. Hands on held control messages first.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<FromEngine> {
        // Until they are all handed on, or the lane is full and this task is
        // registered to be woken when the engine makes room.
        while !self.waiting.is_empty() {
            if self.control.push_from(&mut self.waiting).is_err() {
                self.waiting.clear();
            } else if self.waiting.is_empty() || self.control.poll_room(cx).is_pending() {
                break;
            }
        }
        if let Some(step) = self.received.pop_front() {
            return Poll::Ready(step);
        }
        if !self.waiting.is_empty() {
            return Poll::Pending;
        }
        match self.steps.poll_drain(cx, &mut self.received) {
            Poll::Ready(Ok(())) => Poll::Ready(self.received.pop_front().expect("drained some")),
            Poll::Ready(Err(Closed)) => {
                if !self.stopped {
                    self.stopped = true;
                    tracing::warn!("the Node's engine thread stopped; no more envelopes will go");
                }
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The envelopes the engine handed over that the swarm has not taken
    /// yet, oldest first.
    pub(crate) fn waiting_envelopes(&self) -> Vec<WireEnvelope> {
        let mut envelopes = Vec::new();
        let mut take = |step: &FromEngine| match step {
            FromEngine::Send(envelope, None, _) => envelopes.push(envelope.clone()),
            FromEngine::Send(hollow, Some(plan), _) => envelopes.push(plan.rehydrate(hollow)),
            _ => {}
        };
        self.received.iter().for_each(&mut take);
        self.steps.inspect(take);
        envelopes
    }

    /// Steps waiting on the lane and here.
    pub(crate) fn backlog(&self) -> usize {
        self.steps.len() + self.received.len()
    }
}
