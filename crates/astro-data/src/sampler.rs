//! Batches of random windows, drawn by a seeded, serialisable RNG so that a resumed run sees
//! exactly the batches the uninterrupted one would have.

use std::ops::Range;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::tokens::TokenFile;

/// How training windows are drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// Uniform random start positions, with replacement (nanoGPT's `get_batch`).
    #[default]
    Random,
    /// Non-overlapping windows in a shuffled order, each once per epoch (random offset per epoch).
    Epoch,
}

/// `batch` windows of `block` tokens: inputs and next-token targets, row-major `[batch, block]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Input ids.
    pub inputs: Vec<i64>,
    /// Target ids (inputs shifted by one).
    pub targets: Vec<i64>,
    /// Rows.
    pub batch: usize,
    /// Columns.
    pub block: usize,
}

/// Draws batches from a token range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchSampler {
    range: Range<usize>,
    block: usize,
    batch: usize,
    mode: Sampling,
    rng: ChaCha8Rng,
    epoch: u64,
    cursor: usize,
    #[serde(skip)]
    order: Vec<usize>,
}

impl BatchSampler {
    /// A sampler over `range` (needs at least `block + 1` tokens), seeded by `seed`.
    pub fn new(range: Range<usize>, block: usize, batch: usize, mode: Sampling, seed: u64) -> Self {
        assert!(range.len() > block, "range must hold one window plus its target");
        let mut s = Self {
            range,
            block,
            batch,
            mode,
            rng: ChaCha8Rng::seed_from_u64(seed),
            epoch: 0,
            cursor: 0,
            order: Vec::new(),
        };
        s.refresh_order();
        s
    }

    /// Rebuilds the epoch order after deserialisation (it is derived from the RNG state).
    pub fn restored(mut self) -> Self {
        self.refresh_order();
        self
    }

    fn refresh_order(&mut self) {
        if self.mode != Sampling::Epoch {
            return;
        }
        // Order of epoch e is a pure function of (rng state at its start): replayable on resume.
        let mut rng = ChaCha8Rng::seed_from_u64(self.epoch ^ self.rng.get_seed()[0] as u64);
        let offset = rng.random_range(0..self.block);
        let count = (self.range.len() - 1 - offset) / self.block;
        self.order = (0..count).map(|k| self.range.start + offset + k * self.block).collect();
        self.order.shuffle(&mut rng);
    }

    /// Epochs completed (epoch mode).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn next_start(&mut self) -> usize {
        match self.mode {
            Sampling::Random => self.range.start + self.rng.random_range(0..self.range.len() - self.block),
            Sampling::Epoch => {
                if self.cursor >= self.order.len() {
                    self.epoch += 1;
                    self.cursor = 0;
                    self.refresh_order();
                }
                self.cursor += 1;
                self.order[self.cursor - 1]
            }
        }
    }

    /// The next batch.
    pub fn next_batch(&mut self, tokens: &TokenFile) -> Batch {
        let mut inputs = Vec::with_capacity(self.batch * self.block);
        let mut targets = Vec::with_capacity(self.batch * self.block);
        for _ in 0..self.batch {
            let start = self.next_start();
            tokens.extend_into(start..start + self.block, &mut inputs);
            tokens.extend_into(start + 1..start + 1 + self.block, &mut targets);
        }
        Batch { inputs, targets, batch: self.batch, block: self.block }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialised_sampler_continues_identically() {
        for mode in [Sampling::Random, Sampling::Epoch] {
            let mut a = BatchSampler::new(0..1000, 8, 4, mode, 7);
            let mut starts = Vec::new();
            for _ in 0..50 {
                starts.push(a.next_start());
            }
            let saved = serde_json::to_string(&a).unwrap();
            let mut b: BatchSampler = serde_json::from_str::<BatchSampler>(&saved).unwrap().restored();
            for _ in 0..300 {
                assert_eq!(a.next_start(), b.next_start(), "{mode:?}");
            }
            assert!(starts.iter().all(|&s| s + 8 < 1000));
        }
    }

    #[test]
    fn epoch_mode_visits_each_window_once() {
        let mut s = BatchSampler::new(0..101, 10, 1, Sampling::Epoch, 3);
        let n = s.order.len();
        let mut seen: Vec<usize> = (0..n).map(|_| s.next_start()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), n);
        assert_eq!(s.epoch(), 0);
        s.next_start();
        assert_eq!(s.epoch(), 1);
    }
}
