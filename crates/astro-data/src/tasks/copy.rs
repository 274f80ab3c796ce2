//! The copy task of Katharopoulos et al. (2020, "Transformers are RNNs", §4.1): a sequence of
//! random symbols (10 by default), a dedicated separator, then the same sequence again; sequences
//! are at most `max_len` (128) tokens long. Token ids: 0 = padding, 1..=symbols the symbols,
//! symbols + 1 the separator. The symbol count L is uniform in [1, (max_len − 1) / 2].
//!
//! The model is trained to predict the copied half (the positions from the separator on predict the
//! next symbol of the copy). Accuracy: the fraction of copied symbols predicted correctly.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Example, IGNORE, invalid};
use crate::error::DataError;

/// Parameters of the copy task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyConfig {
    /// Number of distinct symbols.
    #[serde(default = "defaults::symbols")]
    pub symbols: usize,
    /// Longest sequence (symbols, separator, copy).
    #[serde(default = "defaults::max_len")]
    pub max_len: usize,
}

mod defaults {
    pub fn symbols() -> usize {
        10
    }
    pub fn max_len() -> usize {
        128
    }
}

impl CopyConfig {
    /// Padding, the symbols and the separator.
    pub fn vocab_size(&self) -> usize {
        self.symbols + 2
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.symbols < 2 {
            return Err(invalid("symbols", "at least 2 symbols are needed"));
        }
        if self.max_len < 3 {
            return Err(invalid("max_len", "at least 3 tokens (a symbol, the separator, its copy)"));
        }
        Ok(())
    }

    /// One example.
    pub fn example(&self, rng: &mut ChaCha8Rng) -> Example {
        let len = rng.random_range(1..=(self.max_len - 1) / 2);
        let symbols: Vec<i64> = (0..len).map(|_| rng.random_range(1..=self.symbols as i64)).collect();
        let separator = self.symbols as i64 + 1;
        let mut inputs = symbols.clone();
        inputs.push(separator);
        inputs.extend(&symbols);
        // Position i predicts token i + 1; the copy starts after the separator (position len).
        let mut targets = vec![IGNORE; inputs.len()];
        for (j, &s) in symbols.iter().enumerate() {
            targets[len + j] = s;
        }
        Example { inputs, targets, label: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn second_half_copies_the_first() {
        let c = CopyConfig { symbols: 10, max_len: 128 };
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..50 {
            let e = c.example(&mut rng);
            let len = (e.inputs.len() - 1) / 2;
            assert!(e.inputs.len() <= 128);
            assert_eq!(e.inputs[len], 11);
            assert_eq!(&e.inputs[..len], &e.inputs[len + 1..]);
            for i in 0..e.inputs.len() {
                let expected = if i >= len && i < 2 * len { e.inputs[i + 1] } else { IGNORE };
                assert_eq!(e.targets[i], expected);
            }
        }
    }
}
