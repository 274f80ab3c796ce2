//! Synthetic sequence tasks: seeded generators, each following a published definition, with the
//! accuracy that definition uses.
//!
//! - [`mqar`]: multi-query associative recall, exactly Zoology's `multiquery_ar`.
//! - [`copy`]: the copy task of Katharopoulos et al. (2020).
//! - [`induction`]: induction heads (a trigger token, the token after it recalled at the end).
//! - [`listops`]: Long Range Arena's ListOps generator, a classification task.
//!
//! Language-modelling tasks give inputs and per-position targets ([`IGNORE`] where unlabelled);
//! classification tasks give inputs and one label. Training draws examples on the fly from a seeded
//! stream; the test set is a fixed draw from a different seed.

pub mod copy;
pub mod induction;
pub mod listops;
pub mod mqar;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// Target of positions that carry no label (excluded from loss and accuracy).
pub const IGNORE: i64 = -100;

/// Padding token of every task (id 0), masked as a key and ignored by pooling.
pub const PAD: i64 = 0;

/// One example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Input token ids.
    pub inputs: Vec<i64>,
    /// Next-token targets per position ([`IGNORE`] where unlabelled); empty for classification.
    pub targets: Vec<i64>,
    /// Class label (classification tasks).
    pub label: Option<i64>,
}

/// A task and its parameters, as written under `[task]` (`kind = "mqar"`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskConfig {
    /// Multi-query associative recall.
    Mqar(mqar::MqarConfig),
    /// Copy a random symbol sequence after a separator.
    Copy(copy::CopyConfig),
    /// Induction heads.
    Induction(induction::InductionConfig),
    /// ListOps (classification of nested list operations).
    Listops(listops::ListopsConfig),
}

impl TaskConfig {
    /// The task's name as written in configs.
    pub fn name(&self) -> &'static str {
        match self {
            TaskConfig::Mqar(_) => "mqar",
            TaskConfig::Copy(_) => "copy",
            TaskConfig::Induction(_) => "induction",
            TaskConfig::Listops(_) => "listops",
        }
    }

    /// A task of this kind with default parameters (`astro train --task NAME`).
    pub fn by_name(name: &str) -> Result<Self, DataError> {
        let table = format!("kind = {name:?}");
        toml::from_str(&table).map_err(|_| DataError::Config {
            field: "task.kind".into(),
            reason: format!("unknown task `{name}`; known tasks: mqar, copy, induction, listops"),
        })
    }

    /// Number of token ids the inputs use.
    pub fn vocab_size(&self) -> usize {
        match self {
            TaskConfig::Mqar(c) => c.vocab_size,
            TaskConfig::Copy(c) => c.vocab_size(),
            TaskConfig::Induction(c) => c.vocab_size,
            TaskConfig::Listops(_) => listops::VOCAB.len(),
        }
    }

    /// Longest input the task produces.
    pub fn max_len(&self) -> usize {
        match self {
            TaskConfig::Mqar(c) => c.seq_len,
            TaskConfig::Copy(c) => c.max_len,
            TaskConfig::Induction(c) => c.seq_len,
            TaskConfig::Listops(c) => c.max_length,
        }
    }

    /// Number of classes for classification tasks (`None`: next-token prediction).
    pub fn classes(&self) -> Option<usize> {
        match self {
            TaskConfig::Listops(_) => Some(10),
            _ => None,
        }
    }

    /// Checks the parameters; errors name the key (`task.<field>`).
    pub fn validate(&self) -> Result<(), DataError> {
        match self {
            TaskConfig::Mqar(c) => c.validate(),
            TaskConfig::Copy(c) => c.validate(),
            TaskConfig::Induction(c) => c.validate(),
            TaskConfig::Listops(c) => c.validate(),
        }
    }

    /// One example drawn from `rng`.
    pub fn example(&self, rng: &mut ChaCha8Rng) -> Example {
        match self {
            TaskConfig::Mqar(c) => c.example(rng),
            TaskConfig::Copy(c) => c.example(rng),
            TaskConfig::Induction(c) => c.example(rng),
            TaskConfig::Listops(c) => c.example(rng),
        }
    }
}

pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> DataError {
    DataError::Config { field: format!("task.{field}"), reason: reason.into() }
}

/// A batch of examples padded to a common length.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskBatch {
    /// Input ids, row-major `[batch, len]`, padded with [`PAD`].
    pub inputs: Vec<i64>,
    /// Targets `[batch, len]` ([`IGNORE`] on padding), for next-token tasks.
    pub targets: Vec<i64>,
    /// Labels `[batch]`, for classification tasks.
    pub labels: Vec<i64>,
    /// `[batch, len]`, true where the input is padding.
    pub padding: Vec<bool>,
    /// Rows.
    pub batch: usize,
    /// Columns.
    pub len: usize,
}

impl TaskBatch {
    /// Pads `examples` to the longest one.
    pub fn from_examples(examples: &[Example]) -> Self {
        let len = examples.iter().map(|e| e.inputs.len()).max().unwrap_or(0);
        let mut b =
            TaskBatch { inputs: vec![], targets: vec![], labels: vec![], padding: vec![], batch: examples.len(), len };
        for e in examples {
            let pad = len - e.inputs.len();
            b.inputs.extend(e.inputs.iter().copied().chain(std::iter::repeat_n(PAD, pad)));
            b.padding.extend(std::iter::repeat_n(false, e.inputs.len()).chain(std::iter::repeat_n(true, pad)));
            if !e.targets.is_empty() {
                b.targets.extend(e.targets.iter().copied().chain(std::iter::repeat_n(IGNORE, pad)));
            }
            if let Some(l) = e.label {
                b.labels.push(l);
            }
        }
        b
    }

    /// Whether any input is padding.
    pub fn has_padding(&self) -> bool {
        self.padding.iter().any(|&p| p)
    }
}

/// An endless, seeded, serialisable stream of training batches of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStream {
    rng: ChaCha8Rng,
    batch: usize,
}

impl TaskStream {
    /// A stream of batches of `batch` examples from `seed`.
    pub fn new(seed: u64, batch: usize) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed), batch }
    }

    /// The next batch.
    pub fn next_batch(&mut self, task: &TaskConfig) -> TaskBatch {
        let examples: Vec<Example> = (0..self.batch).map(|_| task.example(&mut self.rng)).collect();
        TaskBatch::from_examples(&examples)
    }
}

/// The fixed test set: `count` examples from `seed` (disjoint from the training stream's seed).
pub fn test_set(task: &TaskConfig, count: usize, seed: u64) -> Vec<Example> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count).map(|_| task.example(&mut rng)).collect()
}

/// Seed of the test set for run seed `seed` (never equal to it).
pub fn test_seed(seed: u64) -> u64 {
    seed ^ 0x7e57_0000_0000_0001
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_by_name_and_unknown() {
        for name in ["mqar", "copy", "induction", "listops"] {
            let t = TaskConfig::by_name(name).unwrap();
            assert_eq!(t.name(), name);
            t.validate().unwrap();
        }
        let err = TaskConfig::by_name("sorting").unwrap_err().to_string();
        assert!(err.contains("sorting") && err.contains("mqar"), "{err}");
    }

    #[test]
    fn streams_resume_identically_and_pad_batches() {
        let task = TaskConfig::by_name("copy").unwrap();
        let mut a = TaskStream::new(3, 4);
        a.next_batch(&task);
        let mut b: TaskStream = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let (x, y) = (a.next_batch(&task), b.next_batch(&task));
        assert_eq!(x, y);
        assert_eq!(x.inputs.len(), x.batch * x.len);
        assert_eq!(x.targets.len(), x.inputs.len());
        for (i, &p) in x.padding.iter().enumerate() {
            if p {
                assert_eq!((x.inputs[i], x.targets[i]), (PAD, IGNORE));
            }
        }
    }

    #[test]
    fn train_and_test_seeds_differ() {
        let task = TaskConfig::by_name("mqar").unwrap();
        let train = test_set(&task, 20, 5);
        let test = test_set(&task, 20, test_seed(5));
        assert_ne!(train, test);
    }
}
