//! Memory a model needs before it is built, and memory the machine has: so that a run too large for
//! the machine stops with one message instead of an allocation abort.
//!
//! The estimate is analytic (parameters from the config; activations per token from coefficients
//! measured as peak RSS of `astro train` on flex, 2026-11-30, see `docs/reliability.md`), errs on the
//! large side by a few tens of percent, and is only used to refuse work that cannot fit.

use crate::attention::AttentionConfig;
use crate::transformer::{Positions, TransformerConfig};

/// Floats kept per token, layer and unit of width by a training step, besides 2 × `mlp_ratio` for
/// the MLP (saved activations of the LayerNorms, projections and residuals, plus backward's
/// transients); measured 13–19 in all with `mlp_ratio` = 4.
const TRAIN_FLOATS_PER_TOKEN_WIDTH: u64 = 12;
/// Floats kept per token, layer, head and hidden neuron by a training step of astrocytic attention
/// (the hidden activity of queries and keys, and its gradient); measured 1.8–2.6.
const TRAIN_FLOATS_PER_FEATURE: u64 = 3;
/// Inference keeps about one layer's worth of activations alive at a time.
const INFER_FLOATS_PER_TOKEN_WIDTH: u64 = 4;
/// Process, corpus and allocator overhead (bytes); measured 24 MiB for the smallest run.
const BASELINE: u64 = 32 << 20;

/// What is being sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Forward + backward + AdamW on `batch` sequences of `seq` tokens.
    Train {
        /// Sequences per step.
        batch: usize,
        /// Tokens per sequence.
        seq: usize,
    },
    /// Forward only on `batch` sequences of `seq` tokens.
    Infer {
        /// Sequences per forward.
        batch: usize,
        /// Tokens per sequence.
        seq: usize,
    },
}

/// Bytes a workload needs, by part (all f32).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The model's parameters (trainable and frozen).
    pub parameters: u64,
    /// Gradients and AdamW's two moments (training only).
    pub optimizer: u64,
    /// Saved activations of the blocks.
    pub activations: u64,
    /// The attention's own per-token state: hidden neurons (astrocytic) or scores (softmax).
    pub attention: u64,
    /// Logits over the vocabulary and their gradient.
    pub logits: u64,
    /// Which config keys drive the largest part, with their values (`model.n_embd = 128`).
    pub drivers: Vec<String>,
    /// The largest part's name.
    pub largest: &'static str,
}

/// Where the available-memory figure came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Available {
    /// Bytes that can be allocated.
    pub bytes: u64,
    /// `MemAvailable`, a cgroup limit, or `ASTRO_MEMORY`.
    pub source: String,
}

/// How the keys that size a workload are called where it was configured (`astro train` uses the
/// run config's keys; other commands name their flags).
#[derive(Debug, Clone)]
pub struct KeyNames {
    /// Prefix of the architecture's keys, e.g. `model.`.
    pub model: &'static str,
    /// The batch key, e.g. `optim.batch_size`.
    pub batch: &'static str,
    /// The sequence-length key, e.g. `model.block_size`.
    pub seq: &'static str,
    /// The hidden-neuron key, e.g. `model.attention.features` or `--features`.
    pub features: &'static str,
}

impl KeyNames {
    /// The run config's keys (`astro train`, `eval`, `generate`).
    pub fn run_config() -> Self {
        KeyNames {
            model: "model.",
            batch: "optim.batch_size",
            seq: "model.block_size",
            features: "model.attention.features",
        }
    }
}

/// Parameter count of the Transformer `config` describes with a vocabulary of `vocab` tokens and
/// `classes` classifier outputs (0 for the language model, whose head is tied to the embedding).
pub fn parameter_count(config: &TransformerConfig, vocab: usize, classes: usize) -> u64 {
    let (d, l, r) = (config.n_embd as u64, config.n_layer as u64, config.mlp_ratio as u64);
    let bias = config.bias as u64;
    let ln = d * (1 + bias);
    let mut embed = vocab as u64 * d + config.type_vocab_size as u64 * d;
    if config.positions == Positions::Learned {
        embed += config.block_size as u64 * d;
    }
    if config.embedding_norm {
        embed += ln;
    }
    let attn = 4 * d * d + 4 * d * bias;
    let mlp = if r == 0 { 0 } else { 2 * r * d * d + (r * d + d) * bias };
    let norms = if r == 0 { ln } else { 2 * ln };
    let conv = 3 * d * config.short_conv as u64;
    let per_layer = attn + mlp + norms + conv + attention_parameters(config);
    // Pre-LN models end with a LayerNorm; post-LN blocks end normalised.
    let final_ln = if config.norm == crate::transformer::NormPlacement::Pre { ln } else { 0 };
    let head = if classes > 0 { classes as u64 * (d + 1) } else { 0 };
    embed + l * per_layer + final_ln + head
}

/// Parameters of one layer's inner attention (Ω, phases, calibration), all heads.
fn attention_parameters(config: &TransformerConfig) -> u64 {
    match &config.attention {
        AttentionConfig::Astrocytic(a) => {
            let (h, m) = (config.n_head as u64, a.features as u64);
            let head_dim = (config.n_embd / config.n_head.max(1)) as u64;
            // Ω [heads, m, head_dim]; phases [heads, m]; calibration ψ, c [heads, head_dim], A [heads].
            let phase = if a.feature_map.uses_phase() { h * m } else { 0 };
            let calibration = if a.feature_map.is_calibrated() { 2 * h * head_dim + h } else { 0 };
            h * m * head_dim + phase + calibration
        }
        _ => 0,
    }
}

impl MemoryEstimate {
    /// Sizes `workload` on the model `config` describes (vocabulary `vocab`, `classes` outputs of a
    /// classifier head or 0). Saturating arithmetic: absurd configs give huge numbers, not overflow.
    pub fn new(config: &TransformerConfig, vocab: usize, classes: usize, workload: Workload, keys: &KeyNames) -> Self {
        let params = parameter_count(config, vocab, classes);
        let frozen = match &config.attention {
            AttentionConfig::Astrocytic(a) if !a.omega_trained() => {
                config.n_layer as u64
                    * config.n_head as u64
                    * a.features as u64
                    * (config.n_embd / config.n_head.max(1)) as u64
            }
            _ => 0,
        };
        let trainable = params.saturating_sub(frozen);
        let (batch, seq, train) = match workload {
            Workload::Train { batch, seq } => (batch as u64, seq as u64, true),
            Workload::Infer { batch, seq } => (batch as u64, seq as u64, false),
        };
        let (d, l, h) = (config.n_embd as u64, config.n_layer as u64, config.n_head as u64);
        let layers_alive = if train { l } else { 1 };
        let tokens = batch.saturating_mul(seq);
        let per_width = if train { TRAIN_FLOATS_PER_TOKEN_WIDTH } else { INFER_FLOATS_PER_TOKEN_WIDTH };
        let floats = |n: u64| n.saturating_mul(4);
        let activations = floats(
            tokens
                .saturating_mul(d)
                .saturating_mul(per_width + 2 * config.mlp_ratio as u64)
                .saturating_mul(layers_alive),
        );
        let attention = match &config.attention {
            AttentionConfig::Astrocytic(a) => floats(
                tokens
                    .saturating_mul(h)
                    .saturating_mul(a.feature_map.width(a.features) as u64)
                    .saturating_mul(TRAIN_FLOATS_PER_FEATURE)
                    .saturating_mul(layers_alive),
            ),
            // One [batch, heads, seq, seq] score tensor per layer (the composed form; the fused
            // flex kernel keeps tiles only, so this errs on the large side there).
            AttentionConfig::Softmax(_) => {
                floats(tokens.saturating_mul(seq).saturating_mul(h).saturating_mul(layers_alive))
            }
            AttentionConfig::Linear(_) => 0,
        };
        let logit_copies = if train { 3 } else { 2 };
        let outputs = if classes > 0 { batch * classes as u64 } else { tokens.saturating_mul(vocab as u64) };
        let logits = floats(outputs.saturating_mul(logit_copies));
        let optimizer = if train { floats(trainable.saturating_mul(3)) } else { 0 };
        let parameters = floats(params);

        let model = keys.model;
        let m = match &config.attention {
            AttentionConfig::Astrocytic(a) => a.features,
            _ => 0,
        };
        let parts = [
            ("parameters and optimiser state", parameters.saturating_add(optimizer)),
            ("activations", activations),
            ("attention", attention),
            ("logits", logits),
        ];
        let (largest, _) = parts.iter().copied().max_by_key(|&(_, b)| b).expect("four parts");
        let arch = |names: &[&str]| -> Vec<String> {
            names
                .iter()
                .map(|n| match *n {
                    "n_layer" => format!("{model}n_layer = {}", config.n_layer),
                    "n_embd" => format!("{model}n_embd = {}", config.n_embd),
                    "n_head" => format!("{model}n_head = {}", config.n_head),
                    "mlp_ratio" => format!("{model}mlp_ratio = {}", config.mlp_ratio),
                    "vocab" => format!("vocabulary {vocab}"),
                    "features" => format!("{} = {m}", keys.features),
                    "batch" => format!("{} = {batch}", keys.batch),
                    "seq" => format!("{} = {seq}", keys.seq),
                    other => other.to_string(),
                })
                .collect()
        };
        let drivers = match largest {
            "parameters and optimiser state" => {
                let blocks = l.saturating_mul(d).saturating_mul(d);
                let embedding = (vocab as u64).saturating_mul(d);
                let omega = l.saturating_mul(m as u64).saturating_mul(d);
                if omega >= blocks && omega >= embedding {
                    arch(&["n_layer", "features", "n_embd"])
                } else if embedding > blocks {
                    arch(&["vocab", "n_embd"])
                } else {
                    arch(&["n_layer", "n_embd", "mlp_ratio"])
                }
            }
            "activations" => arch(&["batch", "seq", "n_layer", "n_embd"]),
            "attention" if m > 0 => arch(&["batch", "seq", "n_layer", "n_head", "features"]),
            "attention" => arch(&["batch", "seq", "n_layer", "n_head"]),
            _ => arch(&["batch", "seq", "vocab"]),
        };
        MemoryEstimate { parameters, optimizer, activations, attention, logits, drivers, largest }
    }

    /// Total bytes, with the process's own overhead.
    pub fn total(&self) -> u64 {
        [self.parameters, self.optimizer, self.activations, self.attention, self.logits]
            .iter()
            .fold(BASELINE, |a, &b| a.saturating_add(b))
    }

    /// `Ok` if the estimate fits in `available`; otherwise the error that says both numbers and
    /// the keys to lower. `what` names the work (`this training run`).
    pub fn check(&self, what: &str, available: &Available) -> Result<(), Box<MemoryError>> {
        let needed = self.total();
        if needed <= available.bytes {
            return Ok(());
        }
        Err(Box::new(MemoryError {
            what: what.to_string(),
            needed,
            available: available.clone(),
            parts: format!(
                "parameters {}, optimiser state {}, activations {}, attention {}, logits {}",
                bytes(self.parameters),
                bytes(self.optimizer),
                bytes(self.activations),
                bytes(self.attention),
                bytes(self.logits)
            ),
            largest: self.largest,
            drivers: self.drivers.join(", "),
        }))
    }
}

/// Checks `workload` on `config` with every layer's attention swapped for astrocytic attention of
/// `features` hidden neurons (distillation's student, a swapped pretrained encoder) against the
/// memory available; the error names the work as `what`.
pub fn check_swapped(
    config: &TransformerConfig,
    features: usize,
    workload: Workload,
    keys: &KeyNames,
    what: &str,
) -> Result<(), Box<MemoryError>> {
    use crate::attention::AstrocyticConfig;
    let mut swapped = config.clone();
    swapped.attention = AttentionConfig::Astrocytic(AstrocyticConfig { features, ..AstrocyticConfig::default() });
    let vocab = swapped.vocab_size.unwrap_or(0);
    MemoryEstimate::new(&swapped, vocab, 0, workload, keys).check(what, &available())
}

/// A workload that cannot fit in the memory this machine has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} needs about {} of memory ({parts}), but only {} is available ({}); the largest part, {largest}, \
     grows with {drivers}: lower them (or set ASTRO_MEMORY to the bytes astro may use if this estimate is wrong). \
     Nothing was written",
    bytes(*needed), bytes(available.bytes), available.source
)]
pub struct MemoryError {
    /// The work refused.
    pub what: String,
    /// Estimated bytes.
    pub needed: u64,
    /// What the machine has.
    pub available: Available,
    /// The estimate by part, as text.
    pub parts: String,
    /// The largest part.
    pub largest: &'static str,
    /// The keys that drive it, with values.
    pub drivers: String,
}

/// Memory astro may allocate: `ASTRO_MEMORY` (bytes, or with a KiB/MiB/GiB/TiB suffix) if set,
/// else the smaller of the system's available memory and the cgroup's free memory.
pub fn available() -> Available {
    if let Ok(text) = std::env::var("ASTRO_MEMORY")
        && let Some(bytes) = parse_bytes(&text)
    {
        return Available { bytes, source: format!("ASTRO_MEMORY = {text}") };
    }
    use sysinfo::{MemoryRefreshKind, RefreshKind, System};
    let system =
        System::new_with_specifics(RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()));
    let mut best = Available { bytes: system.available_memory(), source: "available memory of this machine".into() };
    if let Some(limits) = system.cgroup_limits()
        && limits.free_memory < best.bytes
    {
        best = Available { bytes: limits.free_memory, source: "free memory of this process's cgroup".into() };
    }
    if best.bytes == 0 {
        // sysinfo could not read the figure (an unsupported platform): do not refuse on a guess.
        best = Available { bytes: u64::MAX, source: "unknown".into() };
    }
    best
}

/// `"8GiB"`, `"512 MiB"`, `"1000000"` → bytes.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().ok()?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "t" | "tib" | "tb" => 1 << 40,
        "p" | "pib" | "pb" => 1 << 50,
        _ => return None,
    };
    Some((value * scale as f64) as u64)
}

/// Bytes for people: `4.0 TiB`, `92 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 100.0 || unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("8GiB"), Some(8 << 30));
        assert_eq!(parse_bytes("512 MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(bytes(4 << 40), "4.0 TiB");
        assert_eq!(bytes(92 << 20), "92.0 MiB");
    }

    #[test]
    fn an_absurd_width_is_refused_and_blames_the_width() {
        let config = TransformerConfig { n_embd: 1 << 20, ..TransformerConfig::default() };
        let est = MemoryEstimate::new(&config, 65, 0, Workload::Train { batch: 12, seq: 64 }, &KeyNames::run_config());
        assert!(est.total() > 1 << 40, "{}", bytes(est.total()));
        let err = est.check("this run", &Available { bytes: 16 << 30, source: "test".into() }).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("model.n_embd = 1048576") && text.contains("16.0 GiB"), "{text}");
    }

    #[test]
    fn the_default_recipe_fits_in_a_small_machine() {
        let config = TransformerConfig { block_size: 64, ..TransformerConfig::default() };
        let est = MemoryEstimate::new(&config, 65, 0, Workload::Train { batch: 12, seq: 64 }, &KeyNames::run_config());
        // Measured peak RSS: 92 MiB.
        assert!(est.total() > 80 << 20 && est.total() < 200 << 20, "{}", bytes(est.total()));
    }
}
