//! The coordinator's round loop around [`FedRound`](super::fed::FedRound):
//! start a round, take the behaviour's events, close the round when every
//! sampled client has answered (or cannot have got the parameters) or at
//! its deadline, and report. It needs only the coordinator's [`NodeHandle`]
//! and its behaviour's events: the example drives it over TCP or QUIC, the
//! test over the memory transport.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bb_libp2p::{to_libp2p_peer, Event, NodeHandle};
use bb_runtime::engine::EngineStep;
use bytesandbrains::aggregators::fedavg::FedAvgMeta;
use bytesandbrains::PeerId;

use super::fed::Federation;
use super::messages::{RoundCmd, UpdateInfo};
use super::ops::LATE_UPDATE;

/// How long the host waits for the aggregate after closing a round: it is
/// computed locally, in the next engine cycle.
const AGGREGATE_TIMEOUT: Duration = Duration::from_secs(5);

/// One client's accepted update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Update {
    /// Samples it trained on.
    pub num_samples: u64,
    /// Its training loss under the round's global parameters.
    pub loss: f32,
}

/// Why a sampled client contributed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Missing {
    /// The parameters cannot have reached it: the behaviour's failure
    /// label (or `unresolvable`, when the engine had no address for it).
    Unreachable(String),
    /// Nothing arrived before the deadline. The failure the behaviour
    /// reported for the parameters, if any, is one that does not rule out
    /// their delivery (`timeout`, `deadline`, `connection_closed`, `io`).
    Silent(Option<String>),
}

/// How a round ended.
#[derive(Clone, Debug)]
pub struct RoundReport {
    /// Round number.
    pub number: u64,
    /// The sampled clients.
    pub cohort: Vec<libp2p::PeerId>,
    /// The accepted updates, by client.
    pub updates: BTreeMap<libp2p::PeerId, Update>,
    /// Sampled clients without an accepted update, and why.
    pub missing: BTreeMap<libp2p::PeerId, Missing>,
    /// The new global parameters; `None` when no update was accepted and
    /// the global model is unchanged.
    pub params: Option<Vec<f32>>,
    /// The sample count FedAvg reports for the aggregate.
    pub aggregated_samples: u64,
    /// Updates refused for arriving after the deadline.
    pub late: Vec<String>,
    /// Other engine failures during the round.
    pub errors: Vec<String>,
    /// Whether the round closed before its deadline (every sampled client
    /// answered or cannot have got the parameters).
    pub closed_early: bool,
    /// From start to aggregate.
    pub duration: Duration,
}

impl RoundReport {
    /// Mean training loss of the round's global parameters over the
    /// contributors' shards, weighted by sample count.
    pub fn train_loss(&self) -> Option<f32> {
        let samples: u64 = self.updates.values().map(|u| u.num_samples).sum();
        let weighted: f32 = self
            .updates
            .values()
            .map(|u| u.loss * u.num_samples as f32)
            .sum();
        (samples > 0).then(|| weighted / samples as f32)
    }
}

/// The coordinator's side of one round, driven by its host.
///
/// [`Round::start`] invokes `round_cmd` on the coordinator's Node, through
/// its handle; the host then hands it every event of the coordinator's
/// behaviour ([`Round::on_event`]) and calls [`Round::step`] after each and
/// at [`Round::wake_at`]. `step` closes the
/// round once every sampled client has answered or cannot have got the
/// parameters, or at the deadline, and returns the report once the
/// aggregate is out.
pub struct Round {
    number: u64,
    started: Instant,
    deadline: Instant,
    cohort: Option<Vec<libp2p::PeerId>>,
    updates: BTreeMap<libp2p::PeerId, Update>,
    /// The last send failure per peer, and whether it rules out delivery.
    send_failures: BTreeMap<libp2p::PeerId, (String, bool)>,
    late: Vec<String>,
    errors: Vec<String>,
    closed: Option<(Instant, bool)>,
    aggregate: Option<Vec<f32>>,
    aggregated_samples: Option<u64>,
}

impl Round {
    /// Starts round `number` on the coordinator's Node behind `node`:
    /// `cohort` clients sampled from the registry, updates accepted for
    /// `budget`.
    pub async fn start(
        node: &NodeHandle,
        federation: &Federation,
        number: u64,
        cohort: u32,
        budget: Duration,
    ) -> Result<Self, String> {
        let started = Instant::now();
        let target = federation.round_target.clone();
        node.with_node(move |node| {
            // The behaviour moves the engine's clock before each engine
            // cycle, so the engine's deadline falls no later than the host's.
            let now_ns = node.engine_install_handle().framework.scheduler.now_ns();
            let cmd = RoundCmd {
                round: number,
                cohort,
                deadline_ns: now_ns.saturating_add(budget.as_nanos() as u64),
            };
            let cmd = bincode::serialize(&cmd).map_err(|e| e.to_string())?;
            node.invoke(&target, &[("round_cmd", &cmd)])
                .map_err(|e| format!("round {number}: invoke round_cmd: {e:?}"))
        })
        .await
        .map_err(|e| format!("round {number}: {e}"))??;
        Ok(Self {
            number,
            started,
            deadline: started + budget,
            cohort: None,
            updates: BTreeMap::new(),
            send_failures: BTreeMap::new(),
            late: Vec::new(),
            errors: Vec::new(),
            closed: None,
            aggregate: None,
            aggregated_samples: None,
        })
    }

    /// Round number.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The sampled clients, once the graph has sampled them.
    pub fn cohort(&self) -> Option<&[libp2p::PeerId]> {
        self.cohort.as_deref()
    }

    /// Updates accepted so far.
    pub fn updates(&self) -> usize {
        self.updates.len()
    }

    /// When [`Round::step`] has something to do even if no event comes.
    pub fn wake_at(&self) -> Instant {
        match self.closed {
            None => self.deadline,
            Some((at, _)) => at + AGGREGATE_TIMEOUT,
        }
    }

    /// Takes one event of the coordinator's behaviour.
    pub fn on_event(&mut self, event: &Event) {
        match event {
            Event::AppEvent {
                topic, value_bytes, ..
            } => {
                if let Err(e) = self.on_output(topic, value_bytes) {
                    self.errors.push(format!("output {topic}: {e}"));
                }
            }
            Event::SendFailed {
                peer: Some(peer),
                reason,
                ..
            } => {
                let failure = (
                    reason.label().to_string(),
                    !reason.may_have_been_delivered(),
                );
                self.send_failures.insert(*peer, failure);
            }
            Event::Engine(EngineStep::OpFailed { error, .. }) => {
                if error.detail.contains(LATE_UPDATE) {
                    self.late.push(error.detail.clone());
                } else {
                    self.errors.push(error.detail.clone());
                }
            }
            Event::Engine(
                step @ (EngineStep::WireReceiveFailed { .. } | EngineStep::WireDecodeFailed { .. }),
            ) => self.errors.push(format!("a value was dropped: {step:?}")),
            _ => {}
        }
    }

    fn on_output(&mut self, topic: &str, bytes: &[u8]) -> Result<(), String> {
        let engine_peer = |bytes: &[u8]| -> Result<libp2p::PeerId, String> {
            let peer = PeerId::from_bytes(bytes).map_err(|e| e.to_string())?;
            to_libp2p_peer(&peer).map_err(|e| e.to_string())
        };
        match topic {
            "cohort" => {
                let peers = bb_libp2p::values::decode_peers(bytes).map_err(|e| e.to_string())?;
                self.cohort = Some(peers);
            }
            "update_info" => {
                let info: UpdateInfo = bincode::deserialize(bytes).map_err(|e| e.to_string())?;
                if info.round == self.number {
                    let update = Update {
                        num_samples: info.num_samples,
                        loss: info.loss,
                    };
                    self.updates.insert(engine_peer(&info.client)?, update);
                }
            }
            "new_global" => {
                self.aggregate = Some(bincode::deserialize(bytes).map_err(|e| e.to_string())?);
            }
            "agg_meta" => {
                let meta: FedAvgMeta = bincode::deserialize(bytes).map_err(|e| e.to_string())?;
                self.aggregated_samples = Some(meta.num_samples);
            }
            other => return Err(format!("unexpected output {other:?}")),
        }
        Ok(())
    }

    /// Whether every sampled client has answered or cannot have got the
    /// parameters.
    fn all_accounted_for(&self) -> bool {
        self.cohort.as_ref().is_some_and(|cohort| {
            cohort.iter().all(|p| {
                self.updates.contains_key(p)
                    || self.send_failures.get(p).is_some_and(|(_, sure)| *sure)
            })
        })
    }

    /// Closes the round when it is time (invoking `close` on the Node
    /// behind `node`), and returns its report once the aggregate is out.
    /// `now` is the host's clock.
    pub async fn step(
        &mut self,
        node: &NodeHandle,
        federation: &Federation,
        now: Instant,
    ) -> Result<Option<RoundReport>, String> {
        match self.closed {
            None => {
                let early = self.all_accounted_for();
                if !early && now < self.deadline {
                    return Ok(None);
                }
                self.closed = Some((now, early));
                if self.updates.is_empty() {
                    // FedAvg refuses to aggregate nothing; the global model
                    // stays as it was.
                    return Ok(Some(self.report(now)));
                }
                let (number, target) = (self.number, federation.round_target.clone());
                node.with_node(move |node| {
                    let close = number.to_le_bytes();
                    node.invoke(&target, &[("close", &close)])
                        .map_err(|e| format!("round {number}: invoke close: {e:?}"))
                })
                .await
                .map_err(|e| format!("round {number}: {e}"))??;
                Ok(None)
            }
            Some(_) if self.aggregate.is_some() && self.aggregated_samples.is_some() => {
                Ok(Some(self.report(now)))
            }
            Some((closed, _)) if now >= closed + AGGREGATE_TIMEOUT => Err(format!(
                "round {}: no aggregate {AGGREGATE_TIMEOUT:?} after closing ({})",
                self.number,
                self.errors.join("; ")
            )),
            Some(_) => Ok(None),
        }
    }

    fn report(&mut self, now: Instant) -> RoundReport {
        let cohort = self.cohort.clone().unwrap_or_default();
        let answered: BTreeSet<_> = self.updates.keys().collect();
        let missing = cohort
            .iter()
            .filter(|p| !answered.contains(p))
            .map(|p| {
                let why = match self.send_failures.get(p) {
                    Some((label, true)) => Missing::Unreachable(label.clone()),
                    failure => Missing::Silent(failure.map(|(label, _)| label.clone())),
                };
                (*p, why)
            })
            .collect();
        RoundReport {
            number: self.number,
            cohort,
            updates: self.updates.clone(),
            missing,
            params: self.aggregate.take(),
            aggregated_samples: self.aggregated_samples.unwrap_or(0),
            late: std::mem::take(&mut self.late),
            errors: std::mem::take(&mut self.errors),
            closed_early: self.closed.is_some_and(|(_, early)| early),
            duration: now - self.started,
        }
    }
}
