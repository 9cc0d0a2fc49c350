//! The big model: logistic regression over hashed feature crosses, the way
//! click-through models are built (the hashing trick), with a parameter
//! vector of `--buckets` weights (2^25 by default: 128 MiB of `f32`s).
//!
//! Each sample has [`FIELDS`] categorical fields of [`CATEGORIES`] values.
//! Its features are the fields themselves and every pair of them crossed,
//! [`FEATURES_PER_SAMPLE`] in all, each hashed to one of the buckets; a
//! weight per bucket, and a bias, make the model. The hidden rule that
//! labels the data scores each field's category and a few field pairs'
//! crosses, so the crosses carry signal the fields alone miss.
//!
//! A sample travels to the Model as [`WIDTH`] `f32`s: each feature's bucket
//! split in two exact halves (`bucket >> 12`, `bucket & 0xfff`), since an
//! `f32` holds integers exactly only up to 2^24: exact below 2^36 buckets.

#![allow(dead_code)]

use super::ml::{Dataset, Rng};

/// Categorical fields per sample.
pub const FIELDS: usize = 12;
/// Values each field takes.
pub const CATEGORIES: u64 = 32;
/// Features per sample: the fields, then each pair of fields crossed.
pub const FEATURES_PER_SAMPLE: usize = FIELDS + FIELDS * (FIELDS - 1) / 2;
/// `f32`s per sample: two per feature.
pub const WIDTH: usize = 2 * FEATURES_PER_SAMPLE;
/// Buckets by default: 2^25 weights, a parameter vector of 128 MiB.
pub const DEFAULT_BUCKETS: usize = 1 << 25;
/// Learning rate of every gradient step: each feature is in a small share
/// of the samples, so its full-batch gradient is small.
pub const LEARNING_RATE: f32 = 6.0;

/// Weight of the crossed pairs' share of the hidden rule, against 1 for
/// each field.
const CROSS_SIGNAL: f32 = 0.7;
/// Fraction of labels flipped after labelling.
const LABEL_NOISE: f32 = 0.03;
/// Samples closer than this to the hidden boundary (in units of the
/// score's standard deviation) are redrawn.
const MARGIN: f32 = 0.1;

/// A 64-bit mix (SplitMix64's finalizer): the hash of a feature.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The feature of field `field` at category `category`.
fn field_feature(field: usize, category: u64) -> u64 {
    field as u64 * CATEGORIES + category
}

/// The feature of fields `a < b` crossed, at categories `ca` and `cb`.
fn cross_feature(a: usize, b: usize, ca: u64, cb: u64) -> u64 {
    let pair = (a * FIELDS + b) as u64;
    (1 << 40) + (pair * CATEGORIES + ca) * CATEGORIES + cb
}

/// The buckets of a sample with categories `cats`, one per feature.
fn buckets_of(cats: &[u64; FIELDS], buckets: usize) -> impl Iterator<Item = usize> + '_ {
    let fields = (0..FIELDS).map(|f| field_feature(f, cats[f]));
    let crosses = (0..FIELDS)
        .flat_map(move |a| (a + 1..FIELDS).map(move |b| cross_feature(a, b, cats[a], cats[b])));
    fields
        .chain(crosses)
        .map(move |feature| (mix(feature) % buckets as u64) as usize)
}

/// The buckets a sample's row holds.
fn row_buckets(row: &[f32]) -> impl Iterator<Item = usize> + '_ {
    row.chunks_exact(2)
        .map(|half| ((half[0] as usize) << 12) | half[1] as usize)
}

/// A seeded task of `n_train` training and `n_test` held-out samples over
/// `buckets` buckets.
pub fn synthetic_task(
    seed: u64,
    n_train: usize,
    n_test: usize,
    buckets: usize,
) -> (Dataset, Dataset) {
    let mut rng = Rng::new(seed ^ 0xB16_0DE1);
    let categories = CATEGORIES as usize;
    let fields: Vec<f32> = (0..FIELDS * categories).map(|_| rng.normal()).collect();
    // The hidden rule crosses fields 0 and 1, 2 and 3, ...
    let crosses: Vec<f32> = (0..FIELDS / 2 * categories * categories)
        .map(|_| rng.normal() * CROSS_SIGNAL)
        .collect();
    let spread = (FIELDS as f32 + (FIELDS / 2) as f32 * CROSS_SIGNAL * CROSS_SIGNAL).sqrt();
    let draw = |n: usize, rng: &mut Rng| {
        let mut data = Dataset::new(WIDTH);
        let mut cats = [0u64; FIELDS];
        let mut row = Vec::with_capacity(WIDTH);
        while data.len() < n {
            for c in cats.iter_mut() {
                *c = rng.below(categories) as u64;
            }
            let mut score: f32 = (0..FIELDS)
                .map(|f| fields[f * categories + cats[f] as usize])
                .sum();
            for pair in 0..FIELDS / 2 {
                let (a, b) = (cats[2 * pair] as usize, cats[2 * pair + 1] as usize);
                score += crosses[(pair * categories + a) * categories + b];
            }
            if (score / spread).abs() < MARGIN {
                continue;
            }
            let label = (score > 0.0) != (rng.uniform() < LABEL_NOISE);
            row.clear();
            for bucket in buckets_of(&cats, buckets) {
                row.extend([(bucket >> 12) as f32, (bucket & 0xfff) as f32]);
            }
            data.push(&row, if label { 1.0 } else { 0.0 });
        }
        data
    };
    let train = draw(n_train, &mut rng);
    let test = draw(n_test, &mut rng);
    (train, test)
}

/// Each sample's logit: its buckets' weights and the bias (the last
/// parameter).
pub fn logits(params: &[f32], x: &[f32]) -> Vec<f32> {
    let bias = params[params.len() - 1];
    x.chunks(WIDTH)
        .map(|row| bias + row_buckets(row).map(|b| params[b]).sum::<f32>())
        .collect()
}

/// One gradient step on `params`, from the samples `x` and their logit
/// gradients `dz`: each sample moves only its own buckets' weights.
pub fn gradient_step(params: &mut [f32], x: &[f32], dz: &[f32], lr: f32) {
    let scale = lr / dz.len() as f32;
    let bias = params.len() - 1;
    for (row, d) in x.chunks(WIDTH).zip(dz) {
        for b in row_buckets(row) {
            params[b] -= scale * d;
        }
        params[bias] -= scale * d;
    }
}

/// Whether every bucket of `x` is within `buckets`.
pub fn fits(x: &[f32], buckets: usize) -> bool {
    x.len() % WIDTH == 0 && row_buckets(x).all(|b| b < buckets)
}
