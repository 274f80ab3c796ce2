//! The run configuration: one TOML file holding every hyper-parameter, `--set key=value`
//! overrides, validation that names the offending key, and the resolved copy written to the run.

use std::path::{Path, PathBuf};

use astro_data::tasks::TaskConfig;
use astro_data::{Sampling, TokenizerSpec};
use astro_model::TransformerConfig;
use astro_model::transformer::Pooling;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// The whole run configuration (`configs/*.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Naming, seed and device.
    #[serde(default)]
    pub run: RunSection,
    /// Corpus, tokenizer, split and sampling (text runs).
    #[serde(default)]
    pub data: DataSection,
    /// A synthetic sequence task instead of a corpus (`kind = "mqar" | "copy" | "induction" | "listops"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskConfig>,
    /// The classification head (classification tasks such as ListOps).
    #[serde(default)]
    pub classifier: ClassifierSection,
    /// The model architecture and attention variant.
    #[serde(default)]
    pub model: TransformerConfig,
    /// Optimiser and learning-rate schedule.
    #[serde(default)]
    pub optim: OptimSection,
    /// Loop lengths, evaluation, logging, checkpoints, sampling.
    #[serde(default)]
    pub train: TrainSection,
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Run name: the run directory is `<out_dir>/<name>` (a suffix is added if it exists).
    #[serde(default = "defaults::name")]
    pub name: String,
    /// Parent directory of runs.
    #[serde(default = "defaults::out_dir")]
    pub out_dir: PathBuf,
    /// Seed of initialisation, data order and dropout.
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Compute device (`flex`, `ndarray`, `wgpu`, `wgpu:1`, `cuda:0`, …), or a comma-separated list of
    /// devices of one backend for data-parallel training; default: the first compiled backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// `[classifier]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSection {
    /// How token states are pooled: `mean` (over non-padding tokens) or `cls` (the first token).
    #[serde(default)]
    pub pooling: Pooling,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// A named dataset (see `datasets/manifest.toml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// A file (text or JSON Lines, optionally .gz/.zst) or a directory of them, searched
    /// recursively (or the named dataset's explicit location).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Several files or directories, read in this order (instead of `path`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathBuf>,
    /// A file or directory that validates; then all of `path`/`paths` trains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_path: Option<PathBuf>,
    /// `auto` (JSON Lines for `.jsonl`/`.ndjson` files, text otherwise), `text` or `jsonl`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub format: astro_data::Format,
    /// JSON Lines: the string field that holds a document's text.
    #[serde(default = "defaults::text_field", skip_serializing_if = "is_default_text_field")]
    pub text_field: String,
    /// JSON Lines: `fail` on a line that is not a JSON object with that field, or `skip` it.
    #[serde(default, skip_serializing_if = "is_default")]
    pub bad_lines: astro_data::BadLines,
    /// Tokenizer: `{ kind = "char" }`, `{ kind = "bpe", vocab_size = N }`, `{ kind = "file", path = … }`.
    #[serde(default)]
    pub tokenizer: TokenizerSpec,
    /// Fraction held out for validation: of the tokens (at the end) of text, of the documents of
    /// JSON Lines (unused with `val_path`).
    #[serde(default = "defaults::val_fraction")]
    pub val_fraction: f64,
    /// Window sampling: `random` (with replacement, nanoGPT) or `epoch` (without replacement).
    #[serde(default)]
    pub sampling: Sampling,
}

/// `[optim]`: AdamW with linear warmup and cosine decay (nanoGPT's `get_lr`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// Peak learning rate.
    #[serde(default = "defaults::lr")]
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    #[serde(default = "defaults::min_lr")]
    pub min_lr: f64,
    /// Steps of linear warmup.
    #[serde(default = "defaults::warmup")]
    pub warmup_iters: usize,
    /// Step at which the cosine reaches `min_lr` (default: `train.max_iters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_decay_iters: Option<usize>,
    /// Decoupled weight decay, applied to matrices and embeddings only (not biases or norms).
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    /// Adam β₁.
    #[serde(default = "defaults::beta1")]
    pub beta1: f64,
    /// Adam β₂.
    #[serde(default = "defaults::beta2")]
    pub beta2: f64,
    /// Adam ε.
    #[serde(default = "defaults::eps")]
    pub eps: f64,
    /// Clip the global gradient norm to this value (0 disables).
    #[serde(default = "defaults::grad_clip")]
    pub grad_clip: f64,
    /// Sequences per micro-batch.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Micro-batches accumulated per optimiser step.
    #[serde(default = "defaults::grad_accum")]
    pub grad_accum: usize,
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimiser steps.
    #[serde(default = "defaults::max_iters")]
    pub max_iters: usize,
    /// Evaluate every this many steps (and at the end).
    #[serde(default = "defaults::eval_interval")]
    pub eval_interval: usize,
    /// Batches per evaluation (each split).
    #[serde(default = "defaults::eval_iters")]
    pub eval_iters: usize,
    /// Write a metrics row every this many steps.
    #[serde(default = "defaults::log_interval")]
    pub log_interval: usize,
    /// Checkpoint every this many steps (and at the end).
    #[serde(default = "defaults::checkpoint_interval")]
    pub checkpoint_interval: usize,
    /// Checkpoints kept (the newest).
    #[serde(default = "defaults::keep_checkpoints")]
    pub keep_checkpoints: usize,
    /// Tokens sampled from the model at the end (0: none; text runs only).
    #[serde(default = "defaults::sample_tokens")]
    pub sample_tokens: usize,
    /// Size of the fixed test set of a task (drawn from a seed disjoint from training's).
    #[serde(default = "defaults::test_examples")]
    pub test_examples: usize,
    /// Start from the weights of this export directory (`astro export`) instead of a fresh
    /// initialisation; its architecture must be the run's `[model]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Calibrated hidden-neuron maps (saderf, shifted_saderf) are refitted in closed form to the
    /// current batch's queries and keys at step 0 and every this many steps (0: at step 0 only).
    #[serde(default = "defaults::calibrate_every")]
    pub calibrate_every: usize,
    /// Use ψ = 1 where a calibrated map's closed form is undefined, instead of stopping the run.
    #[serde(default)]
    pub calibration_fallback: bool,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_default_text_field(v: &String) -> bool {
    *v == defaults::text_field()
}

mod defaults {
    use std::path::PathBuf;
    pub fn name() -> String {
        "run".into()
    }
    pub fn out_dir() -> PathBuf {
        "runs".into()
    }
    pub fn seed() -> u64 {
        1337
    }
    pub fn val_fraction() -> f64 {
        0.1
    }
    pub fn text_field() -> String {
        "text".into()
    }
    pub fn lr() -> f64 {
        1e-3
    }
    pub fn min_lr() -> f64 {
        1e-4
    }
    pub fn warmup() -> usize {
        100
    }
    pub fn weight_decay() -> f64 {
        0.1
    }
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.99
    }
    pub fn eps() -> f64 {
        1e-8
    }
    pub fn grad_clip() -> f64 {
        1.0
    }
    pub fn batch_size() -> usize {
        12
    }
    pub fn grad_accum() -> usize {
        1
    }
    pub fn max_iters() -> usize {
        2000
    }
    pub fn eval_interval() -> usize {
        250
    }
    pub fn eval_iters() -> usize {
        100
    }
    pub fn log_interval() -> usize {
        10
    }
    pub fn checkpoint_interval() -> usize {
        250
    }
    pub fn keep_checkpoints() -> usize {
        3
    }
    pub fn sample_tokens() -> usize {
        200
    }
    pub fn test_examples() -> usize {
        1000
    }
    pub fn calibrate_every() -> usize {
        100
    }
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                toml::from_str("").expect("every field has a default")
            }
        }
    )*};
}
default_from_serde!(RunSection, DataSection, OptimSection, TrainSection);

fn invalid(field: &str, reason: impl std::fmt::Display) -> TrainError {
    TrainError::Config(format!("`{field}`: {reason}"))
}

impl RunConfig {
    /// Parses a config file's text; unknown keys and wrong types are errors naming the key.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, TrainError> {
        toml::from_str(text).map_err(|e| TrainError::Config(format!("{origin}: {e}")))
    }

    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io("read config", path, e))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Applies `key=value` overrides (dotted keys; values in TOML syntax, bare words as strings).
    /// Setting a variant's `kind` (e.g. `model.attention.kind=softmax`) resets that table's other keys.
    /// Each override is checked as it is applied, so an error names the override the user typed
    /// (`--set model.attention.kind=flash: unknown variant …`), not a line of the merged TOML.
    pub fn with_overrides(self, sets: &[String]) -> Result<Self, TrainError> {
        let mut table = toml::Table::try_from(&self).map_err(|e| TrainError::Config(e.to_string()))?;
        let mut config = self;
        for set in sets {
            let (key, raw) = set
                .split_once('=')
                .ok_or_else(|| TrainError::Config(format!("--set {set:?}: expected key=value, e.g. optim.lr=3e-4")))?;
            let key = key.trim();
            let value = parse_value(raw.trim());
            set_dotted(&mut table, key, value).map_err(|reason| invalid(key, reason))?;
            config = table
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| TrainError::Config(format!("--set {set}: {}", e.message())))?;
        }
        Ok(config)
    }

    /// Checks every value; errors name the key.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.model.validate().map_err(|e| TrainError::Config(e.to_string()))?;
        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return Err(invalid("optim.lr", format!("{} must be a positive number", o.lr)));
        }
        if !(o.min_lr >= 0.0 && o.min_lr <= o.lr) {
            return Err(invalid("optim.min_lr", format!("{} must lie in [0, optim.lr = {}]", o.min_lr, o.lr)));
        }
        for (field, beta) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(invalid(field, format!("{beta} must lie in [0, 1)")));
            }
        }
        if o.eps.is_nan() || o.eps <= 0.0 {
            return Err(invalid("optim.eps", "must be positive"));
        }
        if o.weight_decay.is_nan() || o.weight_decay < 0.0 {
            return Err(invalid("optim.weight_decay", "must be ≥ 0"));
        }
        if o.grad_clip.is_nan() || o.grad_clip < 0.0 {
            return Err(invalid("optim.grad_clip", "must be ≥ 0 (0 disables clipping)"));
        }
        if o.batch_size == 0 {
            return Err(invalid("optim.batch_size", "must be at least 1"));
        }
        if o.grad_accum == 0 {
            return Err(invalid("optim.grad_accum", "must be at least 1"));
        }
        let t = &self.train;
        for (field, v) in [
            ("train.max_iters", t.max_iters),
            ("train.eval_interval", t.eval_interval),
            ("train.eval_iters", t.eval_iters),
            ("train.log_interval", t.log_interval),
            ("train.checkpoint_interval", t.checkpoint_interval),
            ("train.keep_checkpoints", t.keep_checkpoints),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if self.data.path.is_some() && !self.data.paths.is_empty() {
            return Err(invalid(
                "data.paths",
                "give data.path (one file or directory) or data.paths (a list), not both",
            ));
        }
        if self.data.text_field.is_empty() {
            return Err(invalid("data.text_field", "must name a field (default \"text\")"));
        }
        if let astro_data::TokenizerSpec::Bpe { sample_bytes: 0, .. } = self.data.tokenizer {
            return Err(invalid("data.tokenizer.sample_bytes", "must be at least 1 (default 100000000)"));
        }
        if !(self.data.val_fraction > 0.0 && self.data.val_fraction < 1.0) {
            return Err(invalid("data.val_fraction", format!("{} must lie in (0, 1)", self.data.val_fraction)));
        }
        match &self.task {
            None if !self.has_corpus() => {
                return Err(invalid(
                    "data.dataset",
                    "set a named dataset, data.path (a file or directory), data.paths (a list), or a [task]",
                ));
            }
            None => {}
            Some(task) => {
                task.validate().map_err(|e| TrainError::Config(e.to_string()))?;
                if self.has_corpus() {
                    return Err(invalid("task", "a run trains on a [task] or on a corpus ([data]), not both"));
                }
                if self.model.positions == astro_model::transformer::Positions::Learned
                    && self.model.block_size < task.max_len()
                {
                    return Err(invalid(
                        "model.block_size",
                        format!(
                            "{} is shorter than the task's sequences ({} tokens)",
                            self.model.block_size,
                            task.max_len()
                        ),
                    ));
                }
                if let Some(v) = self.model.vocab_size.filter(|&v| v != task.vocab_size()) {
                    return Err(invalid(
                        "model.vocab_size",
                        format!("{v}, but the task uses {} token ids", task.vocab_size()),
                    ));
                }
                if self.train.test_examples == 0 {
                    return Err(invalid("train.test_examples", "must be at least 1"));
                }
            }
        }
        if self.run.name.is_empty() || self.run.name.contains(['/', '\\']) || self.run.name == ".." {
            return Err(invalid("run.name", format!("{:?} must be a plain directory name", self.run.name)));
        }
        Ok(())
    }

    /// A run config for `task` with default architecture and optimiser, the context sized to the task.
    pub fn for_task(task: TaskConfig) -> Self {
        let mut config = RunConfig::default();
        config.run.name = task.name().to_string();
        config.model.block_size = task.max_len();
        config.task = Some(task);
        config
    }

    /// Where the corpus comes from and how it is read.
    pub fn corpus(&self) -> astro_data::CorpusSpec {
        let d = &self.data;
        astro_data::CorpusSpec {
            dataset: d.dataset.clone(),
            path: d.path.clone(),
            paths: d.paths.clone(),
            val_path: d.val_path.clone(),
            format: d.format,
            text_field: d.text_field.clone(),
            bad_lines: d.bad_lines,
        }
    }

    /// Whether `[data]` names a corpus (a dataset, a path or a list of paths).
    pub fn has_corpus(&self) -> bool {
        self.data.dataset.is_some() || self.data.path.is_some() || !self.data.paths.is_empty()
    }

    /// The step at which the cosine decay ends.
    pub fn lr_decay_iters(&self) -> usize {
        self.optim.lr_decay_iters.unwrap_or(self.train.max_iters)
    }

    /// TOML text of the resolved configuration (what the run directory stores).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises")
    }
}

/// A TOML value from `--set` text: TOML syntax if it parses (numbers, booleans, inline tables,
/// quoted strings), else the bare text as a string.
fn parse_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("empty key segment".into());
    }
    let mut cur = table;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = cur.entry(part.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        cur = entry.as_table_mut().ok_or_else(|| format!("`{}` is not a table", parts[..=i].join(".")))?;
    }
    let last = parts[parts.len() - 1];
    if last == "kind" && cur.get("kind") != Some(&value) {
        cur.clear();
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RunConfig {
        RunConfig::from_toml("[data]\ndataset = \"tinyshakespeare\"\n", "test").unwrap()
    }

    #[test]
    fn defaults_are_nanogpt_shakespeare_char_optimiser() {
        let c = base();
        assert_eq!((c.optim.lr, c.optim.min_lr, c.optim.beta2, c.optim.weight_decay), (1e-3, 1e-4, 0.99, 0.1));
        assert_eq!((c.optim.batch_size, c.optim.warmup_iters, c.train.max_iters), (12, 100, 2000));
        c.validate().unwrap();
    }

    #[test]
    fn overrides_set_nested_keys_and_reject_unknown_ones() {
        let c = base()
            .with_overrides(&["optim.lr=3e-4".into(), "model.attention.kind=softmax".into(), "run.name=x".into()])
            .unwrap();
        assert_eq!(c.optim.lr, 3e-4);
        assert_eq!(c.model.attention.kind(), "softmax");
        assert_eq!(c.run.name, "x");
        let c = c.with_overrides(&["model.attention={ kind = \"astrocytic\", features = 64 }".into()]).unwrap();
        assert!(matches!(&c.model.attention, astro_model::AttentionConfig::Astrocytic(a) if a.features == 64));
        let err = base().with_overrides(&["optim.learning_rate=1".into()]).unwrap_err().to_string();
        assert!(err.contains("learning_rate"), "{err}");
        let err = base().with_overrides(&["optim.batch_size=big".into()]).unwrap_err().to_string();
        assert!(err.contains("batch_size"), "{err}");
        let err = base().with_overrides(&["noequals".into()]).unwrap_err().to_string();
        assert!(err.contains("key=value"), "{err}");
    }

    /// An override's error quotes the override, and never a position in TOML text the user did not write.
    #[test]
    fn override_errors_name_the_override_typed() {
        let err = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            base().with_overrides(&sets).unwrap_err().to_string()
        };
        let e = err(&["optim.lr=3e-4", "model.attention.kind=flash", "train.max_iters=10"]);
        assert!(e.contains("--set model.attention.kind=flash") && e.contains("unknown variant `flash`"), "{e}");
        assert!(e.contains("softmax") && !e.contains("TOML parse error") && !e.contains("column"), "{e}");
        let e = err(&["optim.batch_size=big"]);
        assert!(e.contains("--set optim.batch_size=big") && !e.contains("column"), "{e}");
        let e = err(&["train.max_iter=10"]);
        assert!(e.contains("--set train.max_iter=10") && e.contains("max_iter"), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        let bad = |set: &str| base().with_overrides(&[set.into()]).unwrap().validate().unwrap_err().to_string();
        assert!(bad("optim.lr=0").contains("optim.lr"));
        assert!(bad("optim.beta2=1.0").contains("optim.beta2"));
        assert!(bad("train.eval_iters=0").contains("train.eval_iters"));
        assert!(bad("data.val_fraction=0").contains("data.val_fraction"));
        assert!(bad("model.n_head=3").contains("model.n_head"));
        assert!(bad("run.name=a/b").contains("run.name"));
    }

    #[test]
    fn config_write_then_parse_is_identity() {
        let c =
            base().with_overrides(&["model.attention.kind=linear".into(), "optim.lr_decay_iters=500".into()]).unwrap();
        assert_eq!(RunConfig::from_toml(&c.to_toml(), "roundtrip").unwrap(), c);
    }
}
