//! Induction heads (Olsson et al. 2022; the synthetic of Fu et al., H3, 2023): a sequence of random
//! tokens contains a trigger token followed by a token x; the sequence ends with the trigger again,
//! and the model must predict x. Ids: 0 = padding, 1..V−1 ordinary tokens, V−1 the trigger
//! (ordinary tokens are drawn from 1..V−1, so the trigger appears exactly twice).
//!
//! Accuracy: the fraction of sequences whose last prediction is x.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Example, IGNORE, invalid};
use crate::error::DataError;

/// Parameters of the induction-heads task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InductionConfig {
    /// Vocabulary size (padding, ordinary tokens, trigger).
    #[serde(default = "defaults::vocab")]
    pub vocab_size: usize,
    /// Sequence length.
    #[serde(default = "defaults::seq_len")]
    pub seq_len: usize,
}

mod defaults {
    pub fn vocab() -> usize {
        20
    }
    pub fn seq_len() -> usize {
        64
    }
}

impl InductionConfig {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.vocab_size < 4 {
            return Err(invalid("vocab_size", "at least 4 (padding, two tokens, the trigger)"));
        }
        if self.seq_len < 4 {
            return Err(invalid("seq_len", "at least 4 tokens"));
        }
        Ok(())
    }

    /// One example.
    pub fn example(&self, rng: &mut ChaCha8Rng) -> Example {
        let (v, t) = (self.vocab_size as i64, self.seq_len);
        let trigger = v - 1;
        let mut inputs: Vec<i64> = (0..t).map(|_| rng.random_range(1..trigger)).collect();
        let at = rng.random_range(0..t - 2); // trigger at `at`, x at `at + 1`, before the last position
        inputs[at] = trigger;
        inputs[t - 1] = trigger;
        let mut targets = vec![IGNORE; t];
        // The last position predicts the token that followed the first trigger.
        targets[t - 1] = inputs[at + 1];
        Example { inputs, targets, label: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn target_follows_the_first_trigger() {
        let c = InductionConfig { vocab_size: 20, seq_len: 32 };
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..50 {
            let e = c.example(&mut rng);
            let triggers: Vec<usize> = (0..32).filter(|&i| e.inputs[i] == 19).collect();
            assert_eq!(triggers.len(), 2);
            assert_eq!(triggers[1], 31);
            assert_eq!(e.targets[31], e.inputs[triggers[0] + 1]);
            assert_eq!(e.targets.iter().filter(|&&x| x != IGNORE).count(), 1);
        }
    }
}
