//! `astro bench`: training and inference throughput per attention variant, long-context forward
//! time and peak memory, generation latency, and achieved FLOP/s against the best matmul measured
//! on the same backend in the same run. `scripts/bench_torch.py` measures the same models in PyTorch
//! under the same names, and `scripts/bench_compare.sh` runs both interleaved.
//!
//! Every figure is the median of `repeats` timed runs after `warmup` untimed ones, with min and max.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use astro_model::transformer::DecodeState;
use astro_model::{LanguageModel, TransformerConfig};
use astro_train::Net;
use astro_train::optim::{clip_global_norm, optimizer};
use astro_train::source::{Batch, score};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::EvalError;

/// Vocabulary of the benchmark models (tiny-shakespeare's 65 characters).
pub const VOCAB: usize = 65;

/// Which measurements to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    /// Forward + backward + AdamW tokens/s at the recipe's shape and at 4×128, T = 256, batch 16.
    Train,
    /// Forward (inference) tokens/s at 4×128, T = 256, batch 16.
    Forward,
    /// Forward time and peak memory at long contexts (batch 1).
    Long,
    /// Milliseconds per generated token at short and long contexts.
    Generate,
    /// Forward + backward of one kernelised attention layer per chunk size (the measurements behind
    /// `astro_model::attention::auto_chunk`); not run unless asked for.
    Chunk,
    /// GFLOP/s of the matrix products the benchmark models run, at their exact shapes.
    Matmul,
    /// Training tokens/s and peak heap at long contexts (`lengths`), rotary positions, the tokens
    /// per step held constant (`long_tokens`: batch = tokens / T); not run unless asked for.
    TrainLong,
}

impl Section {
    /// Every section, in the order they run.
    pub const ALL: [Section; 7] = [
        Section::Train,
        Section::Forward,
        Section::Long,
        Section::Generate,
        Section::Matmul,
        Section::Chunk,
        Section::TrainLong,
    ];
    /// The sections run by default (those `scripts/bench_torch.py` measures too).
    pub const DEFAULT: [Section; 5] =
        [Section::Train, Section::Forward, Section::Long, Section::Generate, Section::Matmul];

    /// Parses a section name.
    pub fn parse(name: &str) -> Option<Section> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Section::Train => "train",
            Section::Forward => "forward",
            Section::Long => "long",
            Section::Generate => "generate",
            Section::Chunk => "chunk",
            Section::Matmul => "matmul",
            Section::TrainLong => "train-long",
        }
    }
}

/// The attention variants benchmarked, with their PyTorch counterparts in `bench_torch.py`.
pub const VARIANTS: [&str; 3] = ["softmax", "astrocytic", "linear"];

/// Variants benchmarked on request only: `taylor-conv`, the MQAR recall configuration (Taylor map
/// on a learned 16-dimensional projection, `short_conv = 4`; no PyTorch counterpart yet).
pub const EXTRA_VARIANTS: [&str; 1] = ["taylor-conv"];

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Sections to run.
    pub sections: Vec<Section>,
    /// Variants (names from [`VARIANTS`]).
    pub variants: Vec<String>,
    /// Timed repetitions per figure.
    pub repeats: usize,
    /// Untimed warm-up repetitions per figure.
    pub warmup: usize,
    /// Context lengths of the long-context section.
    pub lengths: Vec<usize>,
    /// Contexts of the generation section.
    pub contexts: Vec<usize>,
    /// Tokens generated (and timed one by one) per context.
    pub gen_tokens: usize,
    /// Hidden neurons m of the astrocytic variant.
    pub features: usize,
    /// Training tokens per step of the train-long section (batch = this / T, at least 1).
    pub long_tokens: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            sections: Section::DEFAULT.to_vec(),
            variants: VARIANTS.iter().map(|s| s.to_string()).collect(),
            repeats: 5,
            warmup: 2,
            lengths: vec![1024, 4096, 16384],
            contexts: vec![64, 4096],
            gen_tokens: 16,
            features: 256,
            long_tokens: 16384,
        }
    }
}

/// Median, min and max of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Median.
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

impl Stat {
    /// From samples (at least one).
    pub fn of(samples: &[f64]) -> Stat {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 { s[n / 2] } else { 0.5 * (s[n / 2 - 1] + s[n / 2]) };
        Stat { median, min: s[0], max: s[n - 1] }
    }

    fn map(self, f: impl Fn(f64) -> f64) -> Stat {
        let (a, b) = (f(self.min), f(self.max));
        Stat { median: f(self.median), min: a.min(b), max: a.max(b) }
    }
}

/// One measured figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    /// `train`, `forward`, `long` or `generate`.
    pub section: String,
    /// The shape: `recipe`, `b16-t256`, `T=4096`, `ctx=64`.
    pub shape: String,
    /// Attention variant.
    pub variant: String,
    /// Unit of `value`: `tokens/s`, `ms` or `ms/token`.
    pub unit: String,
    /// The figure (median, min, max over repeats).
    pub value: Stat,
    /// Peak heap memory above the baseline during the measurement (MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_mib: Option<f64>,
    /// Achieved GFLOP/s (analytic FLOP count / median time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
    /// Achieved FLOP/s over the best matmul FLOP/s of this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of_matmul: Option<f64>,
}

impl BenchRow {
    /// A row with only the figure; the optional columns are filled by the section that has them.
    fn new(section: &str, shape: impl Into<String>, variant: &str, unit: &str, value: Stat) -> Self {
        Self {
            section: section.into(),
            shape: shape.into(),
            variant: variant.into(),
            unit: unit.into(),
            value,
            peak_mib: None,
            gflops: None,
            of_matmul: None,
        }
    }
}

/// Everything `astro bench` measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// `astro`.
    pub implementation: String,
    /// Compute backend.
    pub backend: String,
    /// Worker threads available (rayon).
    pub threads: usize,
    /// Best matmul GFLOP/s measured on this backend in this run.
    pub matmul_gflops: f64,
    /// The figures.
    pub rows: Vec<BenchRow>,
}

/// The benchmark models: the shakespeare-char recipe (4 layers, width 128, 4 heads, T = 64,
/// batch 12) and the (b) shape (same network, T = 256, batch 16).
pub fn model_config(variant: &str, block_size: usize, features: usize) -> Result<TransformerConfig, EvalError> {
    let attention = match variant {
        "softmax" => "{ kind = \"softmax\" }".to_string(),
        "astrocytic" => format!("{{ kind = \"astrocytic\", features = {features} }}"),
        "linear" => "{ kind = \"linear\" }".to_string(),
        "taylor-conv" => {
            "{ kind = \"astrocytic\", features = 16, feature_map = \"taylor\", learnable_omega = true }\nshort_conv = 4"
                .to_string()
        }
        other => {
            return Err(EvalError::Invalid(format!(
                "unknown variant `{other}` for `astro bench`; expected one of: {}, {}",
                VARIANTS.join(", "),
                EXTRA_VARIANTS.join(", ")
            )));
        }
    };
    let text = format!(
        "vocab_size = {VOCAB}\nblock_size = {block_size}\nn_layer = 4\nn_head = 4\nn_embd = 128\nbias = false\n\
         attention = {attention}\n"
    );
    toml::from_str(&text).map_err(|e| EvalError::Invalid(format!("benchmark model: {e}")))
}

/// Forward FLOPs per token of `config` at context `t` (matmuls only; elementwise work not counted).
///
/// Dense: 2·(4d² + 2·r·d²) per layer plus the 2·d·V head. Softmax attention: 2·t·d (QKᵀ and AV
/// over t/2 keys on average). Kernelised attention per head with m features, head width e and chunk
/// c: 2·2·m·e (Ωq, Ωk; random features only) + 2·c·m + 2·c·e (inside the chunk) + 2·2·m·e (write
/// and read the memory).
pub fn forward_flops_per_token(config: &TransformerConfig, t: usize) -> f64 {
    use astro_model::AttentionConfig;
    let d = config.n_embd as f64;
    let h = config.n_head as f64;
    let e = d / h;
    let dense = 2.0 * (4.0 * d * d + 2.0 * config.mlp_ratio as f64 * d * d);
    let attention = match &config.attention {
        AttentionConfig::Softmax(_) => 2.0 * t as f64 * d,
        AttentionConfig::Astrocytic(a) => {
            let chunk = a.chunk_size.unwrap_or_else(|| astro_model::attention::auto_chunk(t, e as usize));
            let (m, c) = (a.features as f64, chunk.min(t) as f64);
            h * (4.0 * m * e + 2.0 * c * m + 2.0 * c * e + 4.0 * m * e)
        }
        AttentionConfig::Linear(l) => {
            let chunk = l.chunk_size.unwrap_or_else(|| astro_model::attention::auto_chunk(t, e as usize));
            let c = chunk.min(t) as f64;
            h * (2.0 * c * e + 2.0 * c * e + 4.0 * e * e)
        }
    };
    config.n_layer as f64 * (dense + attention) + 2.0 * d * config.vocab_size.unwrap_or(VOCAB) as f64
}

/// A global allocator that counts live heap bytes and their high-water mark, for the peak-memory
/// column. The `astro` binary installs it (`#[global_allocator]`); without it the column is empty.
/// (Resident-set peaks cannot be used: the allocator reuses memory it already holds, so RSS does not
/// move when a forward pass allocates.)
pub struct PeakAlloc<A>(pub A);

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to the inner allocator unchanged; the counters are side effects.
unsafe impl<A: GlobalAlloc> GlobalAlloc for PeakAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size > layout.size() {
                let grow = new_size - layout.size();
                let live = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Resets the high-water mark to the live heap; returns the baseline (MiB), or `None` when
/// [`PeakAlloc`] is not the global allocator.
fn reset_peak() -> Option<f64> {
    let live = LIVE.load(Ordering::Relaxed);
    if live == 0 {
        return None;
    }
    PEAK.store(live, Ordering::Relaxed);
    Some(live as f64 / (1 << 20) as f64)
}

fn peak_above(baseline: Option<f64>) -> Option<f64> {
    Some(PEAK.load(Ordering::Relaxed) as f64 / (1 << 20) as f64 - baseline?)
}

/// Times `f` `warmup + repeats` times; returns the timed samples (seconds).
fn time(warmup: usize, repeats: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..warmup {
        f();
    }
    (0..repeats)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect()
}

fn tokens(batch: usize, t: usize, seed: u64, device: &Device) -> (Tensor<2, Int>, Vec<i64>) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % VOCAB as u64) as i64
    };
    let inputs: Vec<i64> = (0..batch * t).map(|_| next()).collect();
    let targets: Vec<i64> = (0..batch * t).map(|_| next()).collect();
    (Tensor::from_data(TensorData::new(inputs, [batch, t]), device), targets)
}

/// Best matmul GFLOP/s on `device`: square 512 and 1024 products and the benchmark model's
/// largest projection shape ([4096, 128] × [128, 512]).
pub fn matmul_gflops(device: &Device, repeats: usize) -> f64 {
    let shapes = [(512, 512, 512), (1024, 1024, 1024), (4096, 128, 512), (4096, 512, 128)];
    let mut best: f64 = 0.0;
    for (m, k, n) in shapes {
        let a = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), device);
        let b = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), device);
        let samples = time(2, repeats.max(3), || {
            let c = a.clone().matmul(b.clone());
            let _ = c.slice([0..1, 0..1]).into_scalar::<f32>();
        });
        let flops = 2.0 * (m * k * n) as f64;
        best = best.max(flops / Stat::of(&samples).min / 1e9);
    }
    best
}

/// Runs the benchmarks; `progress` receives one line per figure as it is measured.
pub fn run(
    options: &BenchOptions,
    device: &Device,
    mut progress: impl FnMut(&BenchRow),
) -> Result<BenchReport, EvalError> {
    for v in &options.variants {
        model_config(v, 8, options.features)?;
    }
    if options.repeats == 0 {
        return Err(EvalError::Invalid("`--repeats` must be at least 1".into()));
    }
    let matmul = matmul_gflops(device, options.repeats);
    let mut rows = Vec::new();
    let mut push = |row: BenchRow, rows: &mut Vec<BenchRow>| {
        progress(&row);
        rows.push(row);
    };
    let (w, r) = (options.warmup, options.repeats);
    let flop_row = |mut row: BenchRow, flops_per_token: f64| {
        let tps = row.value.median;
        let gflops = flops_per_token * tps / 1e9;
        row.gflops = Some(gflops);
        row.of_matmul = Some(gflops / matmul);
        row
    };
    for section in &options.sections {
        for variant in &options.variants {
            match section {
                Section::Train => {
                    for (shape, t, batch) in [("recipe", 64, 12), ("b16-t256", 256, 16)] {
                        let config = model_config(variant, t, options.features)?;
                        let value = train_throughput(&config, batch, device, w, r)?;
                        let row = BenchRow::new("train", shape, variant, "tokens/s", value);
                        push(flop_row(row, 3.0 * forward_flops_per_token(&config, t)), &mut rows);
                    }
                }
                Section::Forward => {
                    let (t, batch) = (256, 16);
                    let config = model_config(variant, t, options.features)?;
                    let model = LanguageModel::new(&config, device)?;
                    let (x, _) = tokens(batch, t, 1, device);
                    let samples = time(w, r, || {
                        let _ = model.forward(x.clone()).sum().into_scalar::<f32>();
                    });
                    let value = Stat::of(&samples).map(|s| (batch * t) as f64 / s);
                    let row = BenchRow::new("forward", "b16-t256", variant, "tokens/s", value);
                    push(flop_row(row, forward_flops_per_token(&config, t)), &mut rows);
                }
                Section::Long => {
                    for &t in &options.lengths {
                        let config = model_config(variant, t, options.features)?;
                        let model = LanguageModel::new(&config, device)?;
                        let (x, _) = tokens(1, t, 2, device);
                        let (warm, reps) = long_repeats(t, w, r);
                        let _ = model.forward(x.clone().slice([0..1, 0..t.min(64)])).sum().into_scalar::<f32>();
                        let baseline = reset_peak();
                        let samples = time(warm, reps, || {
                            let _ = model.forward(x.clone()).sum().into_scalar::<f32>();
                        });
                        let peak = peak_above(baseline);
                        let value = Stat::of(&samples).map(|s| s * 1e3);
                        let gflops = forward_flops_per_token(&config, t) * t as f64 / (value.median / 1e3) / 1e9;
                        let mut row = BenchRow::new("long", format!("T={t}"), variant, "ms", value);
                        row.peak_mib = peak;
                        row.gflops = Some(gflops);
                        row.of_matmul = Some(gflops / matmul);
                        push(row, &mut rows);
                    }
                }
                Section::TrainLong => {
                    for &t in &options.lengths {
                        let mut config = model_config(variant, t, options.features)?;
                        config.positions = astro_model::transformer::Positions::Rotary;
                        let batch = (options.long_tokens / t).max(1);
                        let (warm, reps) = long_repeats(t, w, r);
                        let baseline = reset_peak();
                        let value = train_throughput(&config, batch, device, warm, reps)?;
                        let peak = peak_above(baseline);
                        let mut row =
                            BenchRow::new("train-long", format!("T={t} b={batch}"), variant, "tokens/s", value);
                        row.peak_mib = peak;
                        push(flop_row(row, 3.0 * forward_flops_per_token(&config, t)), &mut rows);
                    }
                }
                Section::Matmul => {
                    // Shapes, not variants: measured once, under the first variant.
                    if Some(variant) == options.variants.first() {
                        for (name, batch, m, k, n) in MATMUL_SHAPES {
                            let a = Tensor::<3>::random([batch, m, k], Distribution::Normal(0.0, 1.0), device);
                            let b = Tensor::<3>::random([batch, k, n], Distribution::Normal(0.0, 1.0), device);
                            let samples = time(w, r.max(3), || {
                                let c = a.clone().matmul(b.clone());
                                let _ = c.slice([0..1, 0..1, 0..1]).into_scalar::<f32>();
                            });
                            let flops = 2.0 * (batch * m * k * n) as f64;
                            let value = Stat::of(&samples).map(|s| flops / s / 1e9);
                            let shape = format!("{batch}x{m}x{k}x{n}");
                            let mut row = BenchRow::new("matmul", shape, name, "GFLOP/s", value);
                            row.of_matmul = Some(value.median / matmul);
                            push(row, &mut rows);
                        }
                    }
                }
                Section::Chunk if variant == "softmax" => {} // no chunks
                Section::Chunk => {
                    let mut shapes: Vec<(usize, usize, usize)> = CHUNK_SHAPES.to_vec();
                    if variant == "linear" {
                        // elu+1 has m = d features: one row per (T, d).
                        shapes = shapes.into_iter().map(|(t, _, d)| (t, d, d)).collect();
                        shapes.dedup();
                    }
                    for (t, m, d) in shapes {
                        for chunk in CHUNKS.into_iter().filter(|&c| c <= t) {
                            let value = chunk_probe(variant, [t, m, d, chunk], device, w, r)?;
                            let shape = format!("T={t} m={m} d={d} c={chunk}");
                            push(BenchRow::new("chunk", shape, variant, "ms", value), &mut rows);
                        }
                    }
                }
                Section::Generate => {
                    let longest = options.contexts.iter().copied().max().unwrap_or(64);
                    let config = model_config(variant, longest + options.gen_tokens + w + 1, options.features)?;
                    let model = LanguageModel::new(&config, device)?;
                    for &ctx in &options.contexts {
                        let value = generation_latency(&model, ctx, options.gen_tokens, w, device)?;
                        push(BenchRow::new("generate", format!("ctx={ctx}"), variant, "ms/token", value), &mut rows);
                    }
                    // Past learned positions (the recipe's block): a token inside the block against one
                    // past it, where the window is re-encoded by one forward scoring the last position.
                    let config = model_config(variant, PAST_BLOCK, options.features)?;
                    let model = LanguageModel::new(&config, device)?;
                    // Prompt, warm-up and timed tokens all inside the block.
                    let ctx = PAST_BLOCK / 2;
                    let warmup = w.min(PAST_BLOCK - ctx - 2);
                    let steps = options.gen_tokens.min(PAST_BLOCK - ctx - warmup - 1).max(1);
                    let inside = generation_latency(&model, ctx, steps, warmup, device)?;
                    let shape = format!("block={PAST_BLOCK} inside");
                    push(BenchRow::new("generate", shape, variant, "ms/token", inside), &mut rows);
                    let past = reencode_latency(&model, PAST_BLOCK, options.gen_tokens, w, device);
                    let mut row =
                        BenchRow::new("generate", format!("block={PAST_BLOCK} past"), variant, "ms/token", past);
                    let gflops = reencode_flops(&config, PAST_BLOCK) / (past.median / 1e3) / 1e9;
                    row.gflops = Some(gflops);
                    row.of_matmul = Some(gflops / matmul);
                    push(row, &mut rows);
                }
            }
        }
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Ok(BenchReport {
        implementation: "astro".into(),
        backend: astro_model::device::BackendKind::default_kind().map(|k| k.to_string()).unwrap_or_default(),
        threads,
        matmul_gflops: matmul,
        rows,
    })
}

/// The products of a training step of the benchmark models (b16-t256: 4096 rows; recipe: 768),
/// as (role, batch, m, k, n) for `[batch, m, k] × [batch, k, n]`; `scripts/bench_torch.py` times the
/// same list.
pub const MATMUL_SHAPES: [(&str, usize, usize, usize, usize); 9] = [
    ("projection", 1, 4096, 128, 128),
    ("mlp-up", 1, 4096, 128, 512),
    ("mlp-down", 1, 4096, 512, 128),
    ("weight-grad", 1, 128, 4096, 512),
    ("lm-head", 1, 4096, 128, 65),
    ("scores", 64, 256, 32, 256),
    ("probs-values", 64, 256, 256, 32),
    ("recipe-projection", 1, 768, 128, 128),
    ("recipe-mlp-up", 1, 768, 128, 512),
];

/// (warm-ups, repeats) at context `t`: at most 1 and 3 from T = 8192 on, where a softmax forward or
/// training step takes seconds; `warmup` and `repeats` below.
fn long_repeats(t: usize, warmup: usize, repeats: usize) -> (usize, usize) {
    if t >= 8192 { (warmup.min(1), repeats.min(3)) } else { (warmup, repeats) }
}

/// (T, m, head width) of the `chunk` section; batch × T = 4096 tokens (T beyond: batch 1) and 4
/// heads each.
pub const CHUNK_SHAPES: [(usize, usize, usize); 8] = [
    (64, 256, 32),
    (256, 256, 32),
    (256, 64, 32),
    (256, 1024, 32),
    (1024, 256, 32),
    (4096, 256, 32),
    (16384, 256, 32),
    (256, 256, 64),
];
/// Chunk sizes the `chunk` section tries.
pub const CHUNKS: [usize; 5] = [16, 32, 64, 128, 256];

/// Milliseconds for forward + backward of one attention layer's inner attention (astrocytic with
/// m hidden neurons, or linear) over `[4096 / T, 4, T, d]` inputs with chunks of `chunk` tokens;
/// `shape` = [T, m, d, chunk].
fn chunk_probe(
    variant: &str,
    shape: [usize; 4],
    device: &Device,
    warmup: usize,
    repeats: usize,
) -> Result<Stat, EvalError> {
    use astro_model::AttentionConfig;
    use astro_model::attention::{AstrocyticConfig, AttentionMask, InnerAttention, LinearConfig};
    let [t, m, d, chunk] = shape;
    let config = match variant {
        "linear" => AttentionConfig::Linear(LinearConfig { chunk_size: Some(chunk) }),
        "astrocytic" => AttentionConfig::Astrocytic(AstrocyticConfig {
            features: m,
            chunk_size: Some(chunk),
            ..AstrocyticConfig::default()
        }),
        other => {
            return Err(EvalError::Invalid(format!("the chunk section has no `{other}` variant (astrocytic, linear)")));
        }
    };
    let ad = device.clone().autodiff();
    let attn = config.init(4, d, 0, &ad);
    let dims = [(4096 / t).max(1), 4, t, d];
    let input = |seed| Tensor::<4>::random(dims, Distribution::Normal(0.0, 0.5), &ad).add_scalar(0.01 * seed as f64);
    let (q, k, v) = (input(1).require_grad(), input(2).require_grad(), input(3).require_grad());
    let mask = AttentionMask::causal();
    let samples = time(warmup, repeats, || {
        let grads = attn.forward(q.clone(), k.clone(), v.clone(), &mask).sum().backward();
        let _ = q.grad(&grads).map(|g| g.sum().into_scalar::<f32>());
    });
    Ok(Stat::of(&samples).map(|s| s * 1e3))
}

/// Training tokens/s: forward, backward, global-norm clipping at 1.0 and AdamW, as `astro train`
/// does (and nanoGPT's recipe).
fn train_throughput(
    config: &TransformerConfig,
    batch: usize,
    device: &Device,
    warmup: usize,
    repeats: usize,
) -> Result<Stat, EvalError> {
    let ad = device.clone().autodiff();
    let run = astro_train::RunConfig { model: config.clone(), ..Default::default() };
    let mut net = Net::Lm(LanguageModel::new(config, &ad)?);
    let mut optim = optimizer(&run, &net);
    let t = config.block_size;
    let (x, y) = tokens(batch, t, 3, &ad);
    let mut samples = Vec::with_capacity(repeats);
    for i in 0..warmup + repeats {
        let t0 = Instant::now();
        let loss = score(&net, Batch::Lm { inputs: x.clone(), targets: y.clone() }, false).loss;
        let _ = loss.clone().into_scalar::<f64>();
        let mut grads = GradientsParams::from_grads(loss.backward(), &net);
        clip_global_norm(&net, &mut grads, 1.0);
        net = optim.step(1e-3, net, grads);
        if i >= warmup {
            samples.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(Stat::of(&samples).map(|s| (batch * t) as f64 / s))
}

/// Milliseconds per generated token after a prompt of `ctx` tokens (batch 1): each step feeds one
/// token through the decoding state and reads the logits back.
fn generation_latency(
    model: &LanguageModel,
    ctx: usize,
    steps: usize,
    warmup: usize,
    device: &Device,
) -> Result<Stat, EvalError> {
    let (prompt, _) = tokens(1, ctx, 4, device);
    let (_, mut state) = model.forward_incremental(prompt, DecodeState::default())?;
    let mut samples = Vec::with_capacity(steps);
    for i in 0..warmup + steps.max(1) {
        let token = Tensor::<2, Int>::from_data(TensorData::new(vec![(i % VOCAB) as i64], [1, 1]), device);
        let t0 = Instant::now();
        let (logits, next) = model.forward_incremental(token, state)?;
        let _ = logits.into_data();
        state = next;
        if i >= warmup {
            samples.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(Stat::of(&samples))
}

/// Learned positions of the generate section's past-the-block rows (the recipe's block).
const PAST_BLOCK: usize = 64;

/// Milliseconds per generated token past learned positions (batch 1): each token re-encodes the
/// last `window` tokens by one forward that scores the last position
/// ([`LanguageModel::last_logits`], as `generate` does) and reads the logits back.
fn reencode_latency(model: &LanguageModel, window: usize, steps: usize, warmup: usize, device: &Device) -> Stat {
    let mut samples = Vec::with_capacity(steps);
    for i in 0..warmup + steps.max(1) {
        let ids: Vec<i64> = (0..window).map(|j| ((i + j * 7) % VOCAB) as i64).collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, window]), device);
        let t0 = Instant::now();
        let _ = model.last_logits(tokens).into_data();
        if i >= warmup {
            samples.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Stat::of(&samples)
}

/// Matmul FLOPs of [`reencode_latency`]'s forward over `t` tokens: every block on every position,
/// except that the last block's output projection, MLP and the head run on the last position only.
pub fn reencode_flops(config: &TransformerConfig, t: usize) -> f64 {
    let d = config.n_embd as f64;
    let rows_skipped = (t - 1) as f64;
    let per_row_skipped =
        2.0 * (d * d + 2.0 * config.mlp_ratio as f64 * d * d) + 2.0 * d * config.vocab_size.unwrap_or(VOCAB) as f64;
    forward_flops_per_token(config, t) * t as f64 - rows_skipped * per_row_skipped
}

/// A markdown table of the report.
pub fn markdown(report: &BenchReport) -> String {
    let mut out = format!(
        "astro bench — backend {}, {} threads, best matmul {:.1} GFLOP/s\n\n\
         | section | shape | variant | median | min – max | unit | peak MiB | GFLOP/s | of matmul |\n\
         |---|---|---|---:|---:|---|---:|---:|---:|\n",
        report.backend, report.threads, report.matmul_gflops
    );
    for r in &report.rows {
        let opt = |x: Option<f64>, p: usize| x.map_or("".to_string(), |x| format!("{x:.p$}"));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} – {} | {} | {} | {} | {} |\n",
            r.section,
            r.shape,
            r.variant,
            fmt(r.value.median),
            fmt(r.value.min),
            fmt(r.value.max),
            r.unit,
            opt(r.peak_mib, 1),
            opt(r.gflops, 2),
            opt(r.of_matmul.map(|x| x * 100.0), 1).to_string() + if r.of_matmul.is_some() { " %" } else { "" },
        ));
    }
    out
}

fn fmt(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_median_min_max() {
        let s = Stat::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        let inv = Stat::of(&[1.0, 2.0, 4.0]).map(|x| 8.0 / x);
        assert_eq!((inv.median, inv.min, inv.max), (4.0, 2.0, 8.0));
    }

    #[test]
    fn flop_counts_grow_as_the_forms_promise() {
        let soft = model_config("softmax", 4096, 256).unwrap();
        let astro = model_config("astrocytic", 4096, 256).unwrap();
        // Softmax per-token cost grows linearly with context; the astrocyte's does not.
        let ratio = |c: &TransformerConfig| forward_flops_per_token(c, 4096) / forward_flops_per_token(c, 1024);
        assert!(ratio(&soft) > 2.0);
        assert!((ratio(&astro) - 1.0).abs() < 1e-12);
        // Dense part alone: 4 layers × 24·128² + head.
        let dense = 4.0 * 24.0 * 128.0 * 128.0 + 2.0 * 128.0 * 65.0;
        assert!(forward_flops_per_token(&soft, 1) > dense);
    }

    #[test]
    fn unknown_variants_are_named() {
        let err = model_config("quantum", 8, 16).unwrap_err().to_string();
        assert!(err.contains("quantum") && err.contains("softmax"), "{err}");
    }
}
