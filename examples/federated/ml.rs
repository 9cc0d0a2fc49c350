//! The learning side of the federation: a seeded synthetic classification
//! task, logistic regression behind the engine's `Model` contract, a
//! client's data shard behind its `DataSource` contract, and the host-side
//! math the evaluation and the centralized baseline share with them.
//!
//! The model reads its samples one of two ways ([`Features`]): 32 dense
//! features (33 parameters), or hashed feature crosses over millions of
//! buckets (`hashed.rs`), the big model.
#![allow(dead_code)]

use bytesandbrains::bus::OpError;
use bytesandbrains::completion::{CompletionHandle, ContractResponse};
use bytesandbrains::contracts::{DataSource, Model};
use bytesandbrains::runtime::RuntimeResourceRef;
use serde::{Deserialize, Serialize};

use super::hashed;
use super::registry::op_error;

/// Features per sample.
pub const FEATURES: usize = 32;
/// Model parameters: one weight per feature, then the bias.
pub const PARAMS: usize = FEATURES + 1;
/// Learning rate of every gradient step, federated or centralized.
pub const LEARNING_RATE: f32 = 1.0;
/// Gradient steps a client takes on its shard per round, each over the
/// whole shard (one epoch per step).
pub const LOCAL_STEPS: usize = 5;

/// SplitMix64: a small seeded generator, so every process derives the same
/// data from the same seed.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Samples, row-major (`width` values each), with 0/1 labels.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// Features, `width` per sample.
    pub x: Vec<f32>,
    /// Labels, 0.0 or 1.0.
    pub y: Vec<f32>,
    /// Values per sample.
    pub width: usize,
}

impl Dataset {
    /// No samples yet, of `width` values each.
    pub fn new(width: usize) -> Self {
        Self {
            width,
            ..Self::default()
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether it holds no sample.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Adds a sample.
    pub fn push(&mut self, x: &[f32], y: f32) {
        self.x.extend_from_slice(x);
        self.y.push(y);
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.width..(i + 1) * self.width]
    }

    /// The samples at `indices`, in that order.
    fn pick(&self, indices: &[usize]) -> Dataset {
        let mut out = Dataset::new(self.width);
        for &i in indices {
            out.push(self.row(i), self.y[i]);
        }
        out
    }

    /// All of `parts`, concatenated.
    pub fn union(parts: &[Dataset]) -> Dataset {
        let mut out = Dataset::new(parts.first().map_or(0, |p| p.width));
        for part in parts {
            out.x.extend_from_slice(&part.x);
            out.y.extend_from_slice(&part.y);
        }
        out
    }
}

/// Fraction of labels flipped after labelling: no model reaches 100%.
const LABEL_NOISE: f32 = 0.03;

/// Samples closer than this to the true boundary (in units of the score's
/// standard deviation) are redrawn, leaving a margin around it.
const MARGIN: f32 = 0.1;

/// A seeded binary task: `n_train` training and `n_test` held-out samples
/// labelled by a hidden hyperplane, with a margin and [`LABEL_NOISE`].
///
/// Feature scales span 0.5 to 2, so plain gradient descent needs a few
/// rounds to weight the small-scale features properly: the accuracy curve
/// climbs instead of jumping to its ceiling after one step.
pub fn synthetic_task(seed: u64, n_train: usize, n_test: usize) -> (Dataset, Dataset) {
    let mut rng = Rng::new(seed);
    let scale: Vec<f32> = (0..FEATURES)
        .map(|j| 0.5 * 4f32.powf(j as f32 / (FEATURES - 1) as f32))
        .collect();
    // Each feature carries about the same share of the signal once scaled.
    let w_true: Vec<f32> = scale.iter().map(|s| rng.normal() / s).collect();
    let spread = (FEATURES as f32).sqrt();
    let draw = |n: usize, rng: &mut Rng| {
        let mut data = Dataset::new(FEATURES);
        let mut x = vec![0f32; FEATURES];
        while data.len() < n {
            for (v, s) in x.iter_mut().zip(&scale) {
                *v = rng.normal() * s;
            }
            let score = dot(&x, &w_true) / spread;
            if score.abs() < MARGIN {
                continue;
            }
            let label = (score > 0.0) != (rng.uniform() < LABEL_NOISE);
            data.push(&x, if label { 1.0 } else { 0.0 });
        }
        data
    };
    let train = draw(n_train, &mut rng);
    let test = draw(n_test, &mut rng);
    (train, test)
}

/// Splits `train` into `clients` shards of different sizes (client `k` of
/// `n` holds a share proportional to `k + 1`), so FedAvg's weighting by
/// sample count matters.
///
/// IID: each shard is a uniform random draw. Non-IID: the samples are
/// sorted by label first, so most clients see mostly one class.
pub fn shards(train: &Dataset, clients: usize, non_iid: bool, seed: u64) -> Vec<Dataset> {
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = Rng::new(seed ^ 0x5EED_5EED);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    if non_iid {
        order.sort_by(|&a, &b| train.y[a].total_cmp(&train.y[b]));
    }
    let total_weight = clients * (clients + 1) / 2;
    let mut start = 0;
    (0..clients)
        .map(|k| {
            let end = if k + 1 == clients {
                order.len()
            } else {
                start + train.len() * (k + 1) / total_weight
            };
            let shard = train.pick(&order[start..end]);
            start = end;
            shard
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// How the model reads a sample, and so how many parameters it has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Features {
    /// [`FEATURES`] dense features: [`PARAMS`] parameters.
    #[default]
    Dense,
    /// Hashed feature crosses (`hashed.rs`): a weight per bucket, and the
    /// bias.
    Hashed {
        /// Buckets the features hash to.
        buckets: usize,
    },
}

impl Features {
    /// Parameters of the model.
    pub fn params(self) -> usize {
        match self {
            Features::Dense => PARAMS,
            Features::Hashed { buckets } => buckets + 1,
        }
    }

    /// Values per sample.
    pub fn width(self) -> usize {
        match self {
            Features::Dense => FEATURES,
            Features::Hashed { .. } => hashed::WIDTH,
        }
    }

    /// Step size of every gradient step.
    pub fn learning_rate(self) -> f32 {
        match self {
            Features::Dense => LEARNING_RATE,
            Features::Hashed { .. } => hashed::LEARNING_RATE,
        }
    }

    /// The seeded task: `n_train` training and `n_test` held-out samples.
    pub fn synthetic_task(self, seed: u64, n_train: usize, n_test: usize) -> (Dataset, Dataset) {
        match self {
            Features::Dense => synthetic_task(seed, n_train, n_test),
            Features::Hashed { buckets } => hashed::synthetic_task(seed, n_train, n_test, buckets),
        }
    }

    /// Whether `x` is whole samples this model can read.
    pub fn reads(self, x: &[f32]) -> bool {
        match self {
            Features::Dense => x.len() % FEATURES == 0,
            Features::Hashed { buckets } => hashed::fits(x, buckets),
        }
    }

    /// The model's probability of label 1 for each sample of `x`.
    pub fn predict(self, params: &[f32], x: &[f32]) -> Vec<f32> {
        let logits = match self {
            Features::Dense => x
                .chunks(FEATURES)
                .map(|row| dot(row, &params[..FEATURES]) + params[FEATURES])
                .collect(),
            Features::Hashed { .. } => hashed::logits(params, x),
        };
        logits.into_iter().map(sigmoid).collect()
    }

    /// One gradient step on `params`, from the inputs `x` and the logit
    /// gradients `dz` of the same samples.
    pub fn gradient_step(self, params: &mut [f32], x: &[f32], dz: &[f32]) {
        let lr = self.learning_rate();
        match self {
            Features::Dense => dense_gradient_step(params, x, dz, lr),
            Features::Hashed { .. } => hashed::gradient_step(params, x, dz, lr),
        }
    }

    /// `steps` full-batch gradient steps on `data` from `params`: what the
    /// client graph does with its shard each round, here on the host.
    pub fn train(self, params: &mut [f32], data: &Dataset, steps: usize) {
        for _ in 0..steps {
            let p = self.predict(params, &data.x);
            self.gradient_step(params, &data.x, &logit_gradient(&p, &data.y));
        }
    }

    /// Test loss and accuracy of `params` on `data`.
    pub fn evaluate(self, params: &[f32], data: &Dataset) -> (f32, f32) {
        let p = self.predict(params, &data.x);
        (log_loss(&p, &data.y), accuracy(&p, &data.y))
    }

    /// The centralized baseline: the same model trained in one process on
    /// the union of the shards, with the steps a client takes over
    /// `rounds` rounds.
    pub fn centralized(self, shards: &[Dataset], rounds: usize) -> Vec<f32> {
        let mut params = vec![0f32; self.params()];
        self.train(&mut params, &Dataset::union(shards), rounds * LOCAL_STEPS);
        params
    }
}

/// Mean binary cross-entropy of predictions `p` against labels `y`.
pub fn log_loss(p: &[f32], y: &[f32]) -> f32 {
    const EPS: f32 = 1e-7;
    let total: f32 = p
        .iter()
        .zip(y)
        .map(|(p, y)| -(y * (p + EPS).ln() + (1.0 - y) * (1.0 - p + EPS).ln()))
        .sum();
    total / y.len() as f32
}

/// Fraction of predictions on the right side of 0.5.
pub fn accuracy(p: &[f32], y: &[f32]) -> f32 {
    let right = p
        .iter()
        .zip(y)
        .filter(|(p, y)| (**p >= 0.5) == (**y >= 0.5));
    right.count() as f32 / y.len() as f32
}

/// The loss's gradient with respect to each sample's logit: `p - y`.
pub fn logit_gradient(p: &[f32], y: &[f32]) -> Vec<f32> {
    p.iter().zip(y).map(|(p, y)| p - y).collect()
}

/// One gradient step of the dense model.
fn dense_gradient_step(params: &mut [f32], x: &[f32], dz: &[f32], lr: f32) {
    let mut grad = vec![0f32; PARAMS];
    for (row, d) in x.chunks(FEATURES).zip(dz) {
        for (g, v) in grad.iter_mut().zip(row) {
            *g += v * d;
        }
        grad[FEATURES] += d;
    }
    let n = dz.len() as f32;
    for (p, g) in params.iter_mut().zip(&grad) {
        *p -= lr * g / n;
    }
}

/// Logistic regression behind the engine's `Model` contract.
///
/// `forward` keeps its input; `backward` takes the logit gradients of the
/// same samples and applies a gradient step itself, because the contract
/// has no separate optimizer step or gradient accessor.
///
/// Its derived component is the dense model; for the hashed one the host
/// sets [`LogReg::for_features`] after install (see
/// `fed::Federation::client_node`).
#[derive(Clone, Debug, Serialize, Deserialize, bytesandbrains::Concrete, bytesandbrains::Model)]
pub struct LogReg {
    /// Weights, then the bias.
    pub params: Vec<f32>,
    /// How it reads a sample.
    pub features: Features,
    /// The last `forward` input, for the next `backward`.
    #[serde(skip)]
    pub last_input: Vec<f32>,
}

impl Default for LogReg {
    fn default() -> Self {
        Self::for_features(Features::Dense)
    }
}

impl LogReg {
    /// The model for `features`, its parameters all zero.
    pub fn for_features(features: Features) -> Self {
        Self {
            params: vec![0.0; features.params()],
            features,
            last_input: Vec::new(),
        }
    }
}

impl Model for LogReg {
    type Tensor = [f32];
    type Error = OpError;

    fn forward(
        &mut self,
        _ctx: &mut RuntimeResourceRef<'_>,
        input: &[f32],
        _done: CompletionHandle<Box<[f32]>, OpError>,
    ) -> ContractResponse<Box<[f32]>, OpError> {
        if !self.features.reads(input) {
            return ContractResponse::Now(Err(op_error(format!(
                "LogReg::forward: {} values are not samples of {:?}",
                input.len(),
                self.features
            ))));
        }
        self.last_input = input.to_vec();
        let p = self.features.predict(&self.params, input);
        ContractResponse::Now(Ok(p.into_boxed_slice()))
    }

    fn load_parameters(
        &mut self,
        _ctx: &mut RuntimeResourceRef<'_>,
        params: &[f32],
        _done: CompletionHandle<(), OpError>,
    ) -> ContractResponse<(), OpError> {
        if params.len() != self.params.len() {
            return ContractResponse::Now(Err(op_error(format!(
                "LogReg::load_parameters: {} values, expected {}",
                params.len(),
                self.params.len()
            ))));
        }
        self.params = params.to_vec();
        ContractResponse::Now(Ok(()))
    }

    fn backward(
        &mut self,
        _ctx: &mut RuntimeResourceRef<'_>,
        dz: &[f32],
        _done: CompletionHandle<(), OpError>,
    ) -> ContractResponse<(), OpError> {
        if dz.len() * self.features.width() != self.last_input.len() {
            return ContractResponse::Now(Err(op_error(
                "LogReg::backward: gradients do not match the last forward",
            )));
        }
        let x = std::mem::take(&mut self.last_input);
        self.features.gradient_step(&mut self.params, &x, dz);
        ContractResponse::Now(Ok(()))
    }

    fn apply_delta(
        &mut self,
        _ctx: &mut RuntimeResourceRef<'_>,
        delta: &[f32],
        _done: CompletionHandle<(), OpError>,
    ) -> ContractResponse<(), OpError> {
        for (p, d) in self.params.iter_mut().zip(delta) {
            *p += d;
        }
        ContractResponse::Now(Ok(()))
    }

    fn compute_loss(
        &mut self,
        _ctx: &mut RuntimeResourceRef<'_>,
        p: &[f32],
        y: &[f32],
        _done: CompletionHandle<f32, OpError>,
    ) -> ContractResponse<f32, OpError> {
        ContractResponse::Now(Ok(log_loss(p, y)))
    }

    fn params(
        &self,
        _ctx: &mut RuntimeResourceRef<'_>,
        _done: CompletionHandle<Box<[f32]>, OpError>,
    ) -> ContractResponse<Box<[f32]>, OpError> {
        ContractResponse::Now(Ok(self.params.clone().into_boxed_slice()))
    }
}

/// A client's local data behind the engine's `DataSource` contract. Each
/// batch is the whole shard (full-batch steps), so a batch's label count
/// is the sample count FedAvg weights the client's update by.
///
/// Its derived component takes no configuration: the host puts the data in
/// after install (see `fed::Federation::client_node`).
#[derive(
    Clone,
    Debug,
    Default,
    Serialize,
    Deserialize,
    bytesandbrains::Concrete,
    bytesandbrains::DataSource,
)]
pub struct Shard {
    /// The client's samples.
    pub data: Dataset,
}

impl DataSource for Shard {
    type Sample = [f32];
    type Error = OpError;

    fn next_batch(
        &mut self,
        _ctx: &mut RuntimeResourceRef<'_>,
        _done: CompletionHandle<(Box<[f32]>, Box<[f32]>), OpError>,
    ) -> ContractResponse<(Box<[f32]>, Box<[f32]>), OpError> {
        if self.data.is_empty() {
            return ContractResponse::Now(Err(op_error("Shard::next_batch: no data")));
        }
        ContractResponse::Now(Ok((
            self.data.x.clone().into_boxed_slice(),
            self.data.y.clone().into_boxed_slice(),
        )))
    }

    fn reset(
        &mut self,
        _ctx: &mut RuntimeResourceRef<'_>,
        _done: CompletionHandle<(), OpError>,
    ) -> ContractResponse<(), OpError> {
        ContractResponse::Now(Ok(()))
    }

    fn on_data_loaded(
        &mut self,
        _ctx: &mut RuntimeResourceRef<'_>,
        _done: CompletionHandle<(), OpError>,
    ) -> ContractResponse<(), OpError> {
        ContractResponse::Now(Ok(()))
    }
}
