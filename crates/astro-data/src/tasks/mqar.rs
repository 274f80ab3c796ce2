//! Multi-query associative recall, exactly as Zoology's `multiquery_ar` (Arora, Eyuboglu et al.
//! 2024, `zoology/data/multiquery_ar.py`, one pass):
//!
//! - keys drawn without replacement from [1, V/2), values without replacement from [V/2, V);
//! - the context `k₁ v₁ k₂ v₂ …` (2·pairs tokens);
//! - each key queried once, at an even offset 2g after the context, the gaps g drawn without
//!   replacement from [0, (T − context)/2) with probability ∝ (g + 1)^(a − 1) (a = `power_a`);
//! - the target (the value) sits on the query key's position; every other label is ignored;
//! - with `random_non_queries`, every remaining 0 is replaced by a uniform token in [0, V).
//!
//! Accuracy (Zoology's): the fraction of labelled positions whose argmax prediction is the value.

use rand::Rng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Example, IGNORE, invalid};
use crate::error::DataError;

/// Parameters of MQAR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqarConfig {
    /// Vocabulary size V (Zoology's default 8192).
    #[serde(default = "defaults::vocab")]
    pub vocab_size: usize,
    /// Sequence length T (even).
    #[serde(default = "defaults::seq_len")]
    pub seq_len: usize,
    /// Key–value pairs per example.
    #[serde(default = "defaults::pairs")]
    pub num_kv_pairs: usize,
    /// Power-law exponent a of the query gaps (0.01 in Zoology).
    #[serde(default = "defaults::power_a")]
    pub power_a: f64,
    /// Replace non-query zeros with random tokens.
    #[serde(default = "defaults::random_non_queries")]
    pub random_non_queries: bool,
}

mod defaults {
    pub fn vocab() -> usize {
        8192
    }
    pub fn seq_len() -> usize {
        64
    }
    pub fn pairs() -> usize {
        4
    }
    pub fn power_a() -> f64 {
        0.01
    }
    pub fn random_non_queries() -> bool {
        true
    }
}

impl MqarConfig {
    /// Zoology's assertions, as errors naming the key.
    pub fn validate(&self) -> Result<(), DataError> {
        if !self.seq_len.is_multiple_of(2) {
            return Err(invalid("seq_len", format!("{} must be even", self.seq_len)));
        }
        if self.vocab_size <= self.seq_len {
            return Err(invalid("vocab_size", format!("{} must exceed seq_len = {}", self.vocab_size, self.seq_len)));
        }
        if self.num_kv_pairs == 0 || 4 * self.num_kv_pairs > self.seq_len {
            return Err(invalid(
                "num_kv_pairs",
                format!("{} pairs need 1 ≤ 4·pairs ≤ seq_len = {}", self.num_kv_pairs, self.seq_len),
            ));
        }
        if self.num_kv_pairs >= self.vocab_size / 2 {
            return Err(invalid("num_kv_pairs", "more pairs than distinct keys"));
        }
        if !(self.power_a > 0.0 && self.power_a.is_finite()) {
            return Err(invalid("power_a", "must be positive"));
        }
        Ok(())
    }

    /// One example.
    pub fn example(&self, rng: &mut ChaCha8Rng) -> Example {
        let (v, t, n) = (self.vocab_size, self.seq_len, self.num_kv_pairs);
        let context = 2 * n;
        let half = v / 2;
        let keys: Vec<i64> = sample(rng, half - 1, n).into_iter().map(|i| (i + 1) as i64).collect();
        let values: Vec<i64> = sample(rng, v - half, n).into_iter().map(|i| (i + half) as i64).collect();
        let space = (t - context) / 2;
        let gaps = weighted_without_replacement(rng, space, n, self.power_a);
        // examples (length T + 1) and labels (length T + 1), then shift by one like Zoology.
        let mut seq = vec![0i64; t + 1];
        let mut labels = vec![IGNORE; t + 1];
        for i in 0..n {
            seq[2 * i] = keys[i];
            seq[2 * i + 1] = values[i];
            seq[context + 2 * gaps[i]] = keys[i];
            labels[context + 2 * gaps[i] + 1] = values[i];
        }
        let mut inputs: Vec<i64> = seq[..t].to_vec();
        let targets: Vec<i64> = labels[1..].to_vec();
        if self.random_non_queries {
            for x in inputs.iter_mut().filter(|x| **x == 0) {
                *x = rng.random_range(0..v as i64);
            }
        }
        Example { inputs, targets, label: None }
    }
}

/// `k` distinct indices from 0..`space` drawn with probability ∝ (i + 1)^(a − 1), sequentially
/// renormalising like `numpy.random.choice(replace=False, p=…)`.
fn weighted_without_replacement(rng: &mut ChaCha8Rng, space: usize, k: usize, a: f64) -> Vec<usize> {
    let mut weights: Vec<f64> = (1..=space).map(|g| a * (g as f64).powf(a - 1.0)).collect();
    let mut chosen = Vec::with_capacity(k);
    for _ in 0..k {
        let total: f64 = weights.iter().sum();
        let mut u = rng.random::<f64>() * total;
        let mut pick = weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 && u < w {
                pick = i;
                break;
            }
            u -= w;
        }
        chosen.push(pick);
        weights[pick] = 0.0;
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn follows_zoology_layout() {
        let c = MqarConfig { vocab_size: 20, seq_len: 16, num_kv_pairs: 2, power_a: 0.01, random_non_queries: false };
        c.validate().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..100 {
            let e = c.example(&mut rng);
            assert_eq!((e.inputs.len(), e.targets.len()), (16, 16));
            let (k, v) = ((e.inputs[0], e.inputs[2]), (e.inputs[1], e.inputs[3]));
            assert!(k.0 >= 1 && k.0 < 10 && k.1 >= 1 && k.1 < 10 && k.0 != k.1, "keys in [1, V/2)");
            assert!(v.0 >= 10 && v.0 < 20 && v.1 >= 10 && v.1 < 20 && v.0 != v.1, "values in [V/2, V)");
            let labelled: Vec<usize> = (0..16).filter(|&i| e.targets[i] != IGNORE).collect();
            assert_eq!(labelled.len(), 2);
            for &i in &labelled {
                assert!(i >= 4 && (i - 4) % 2 == 0, "queries at even offsets after the context");
                let key = e.inputs[i];
                let value = if key == k.0 { v.0 } else { v.1 };
                assert_eq!(e.targets[i], value, "target is the queried key's value, on the key's position");
            }
            assert!(e.inputs[4..].iter().enumerate().all(|(j, &x)| x == 0 || labelled.contains(&(j + 4))));
        }
    }

    #[test]
    fn gaps_favour_short_distances() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut counts = vec![0usize; 28];
        for _ in 0..4000 {
            for g in weighted_without_replacement(&mut rng, 28, 1, 0.01) {
                counts[g] += 1;
            }
        }
        assert!(counts[0] > counts[10] && counts[1] > counts[20], "{counts:?}");
    }
}
