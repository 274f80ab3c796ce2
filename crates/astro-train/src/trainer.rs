//! The training loop: AdamW (weight decay on matrices only) with warmup + cosine schedule, global
//! gradient-norm clipping, gradient accumulation, periodic evaluation in eval mode, atomic
//! checkpoints and exact resume.
//!
//! Written on `burn::optim` rather than `burn-train`'s `SupervisedTraining`: burn-train checkpoints
//! at epoch granularity and does not persist the data sampler's or the dropout RNG's state, so a
//! resumed run could not reproduce the uninterrupted run's metrics, which this project requires.
//! Multi-device training is therefore not offered yet; when added it must use Burn's own
//! `ExecutionStrategy`, not a home-made one.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use astro_data::{
    BatchSampler, Sampling, TokenFile, Tokenizer, build_tokenizer, load_tokenizer, split, tokenize_cached,
};
use astro_model::LanguageModel;
use astro_model::transformer::{SamplingConfig, generate};
use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointState, MODEL_FILE, OPTIM_FILE};
use crate::config::RunConfig;
use crate::error::TrainError;
use crate::metrics::{MetricsLog, MetricsRow};
use crate::progress::Progress;
use crate::schedule::learning_rate;

/// The model with the best validation loss so far, in the run directory.
pub const BEST_FILE: &str = "best.bpk";

/// How to run (things that are not hyper-parameters).
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue the run in this directory from its newest valid checkpoint.
    pub resume: Option<PathBuf>,
    /// Compute backend override (`--device`).
    pub device: Option<String>,
    /// Print the final sample to stderr instead of stdout (for `--json`).
    pub sample_to_stderr: bool,
    /// Stop after this many steps of this invocation (tests of resume; `None` = run to the end).
    pub stop_after: Option<usize>,
}

/// What a finished run reports (`--json` prints it as one line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Optimiser steps completed.
    pub steps: usize,
    /// Loss of the last step's batch.
    pub final_train_loss: f64,
    /// Validation loss at the end.
    pub final_val_loss: Option<f64>,
    /// Best validation loss seen.
    pub best_val_loss: Option<f64>,
    /// Mean training throughput (tokens per second, excluding evaluation).
    pub tokens_per_sec: f64,
    /// Wall-clock seconds of this invocation.
    pub wall_seconds: f64,
    /// The text sampled at the end.
    pub sample: Option<String>,
}

/// Everything prepared before the first step.
struct Setup {
    config: RunConfig,
    run_dir: PathBuf,
    tokenizer: Box<dyn Tokenizer>,
    tokens: TokenFile,
    train: std::ops::Range<usize>,
    val: std::ops::Range<usize>,
    resume: Option<(PathBuf, CheckpointState)>,
}

/// Chooses `<out_dir>/<name>`, or `<name>-2`, `-3`… if taken (never overwrites a run).
fn fresh_run_dir(out_dir: &Path, name: &str) -> PathBuf {
    let first = out_dir.join(name);
    if !first.exists() {
        return first;
    }
    (2..).map(|i| out_dir.join(format!("{name}-{i}"))).find(|p| !p.exists()).expect("some suffix is free")
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    astro_data::fsutil::write_atomic(path, bytes).map_err(|e| TrainError::io("write", path, e))
}

fn prepare(config: RunConfig, options: &TrainOptions) -> Result<Setup, TrainError> {
    let (config, run_dir, tokenizer, resume) = match &options.resume {
        Some(dir) => {
            let saved = RunConfig::load(&dir.join("config.toml"))
                .map_err(|e| TrainError::Resume { run: dir.clone(), reason: e.to_string() })?;
            let mut given = config.clone();
            if given.model.vocab_size.is_none() {
                given.model.vocab_size = saved.model.vocab_size;
            }
            if given.model != saved.model {
                return Err(TrainError::Resume {
                    run: dir.clone(),
                    reason: format!(
                        "it was made with model [{}], but the given config has [{}]; resume without --config, or start a new run",
                        saved.model.describe(),
                        given.model.describe()
                    ),
                });
            }
            if given.data != saved.data {
                return Err(TrainError::Resume {
                    run: dir.clone(),
                    reason: "the given [data] section differs from the run's; resume without --config".into(),
                });
            }
            // Optimiser and loop settings may change on resume (e.g. more steps); the rest is the run's.
            given.validate()?;
            let tokenizer = load_tokenizer(&dir.join("tokenizer.json"))?;
            let ckpt = checkpoint::latest_valid(&dir.join("checkpoints"))
                .ok_or_else(|| TrainError::Resume { run: dir.clone(), reason: "it has no valid checkpoint".into() })?;
            (given, dir.clone(), Some(tokenizer), Some(ckpt))
        }
        None => {
            config.validate()?;
            let run_dir = fresh_run_dir(&config.run.out_dir, &config.run.name);
            (config, run_dir, None, None)
        }
    };
    let corpus =
        astro_data::CorpusSpec { dataset: config.data.dataset.clone(), path: config.data.path.clone() }.load()?;
    let mut config = config;
    // A resumed run keeps the tokenizer it was trained with; a new one builds it from the corpus.
    let tokenizer = match tokenizer {
        Some(t) => t,
        None => build_tokenizer(&config.data.tokenizer, &corpus.text)?,
    };
    match config.model.vocab_size {
        None => config.model.vocab_size = Some(tokenizer.vocab_size()),
        Some(v) if v != tokenizer.vocab_size() => {
            return Err(TrainError::Config(format!(
                "`model.vocab_size` = {v}, but the tokenizer ({}) on {} has {} tokens; remove the key to use the tokenizer's",
                tokenizer.describe(),
                corpus.name,
                tokenizer.vocab_size()
            )));
        }
        Some(_) => {}
    }
    let tokens = tokenize_cached(&corpus, tokenizer.as_ref())?;
    let (train, val) = split(tokens.len(), config.data.val_fraction);
    let needed = config.model.block_size + 1;
    for (name, range) in [("train", &train), ("validation", &val)] {
        if range.len() < needed {
            return Err(astro_data::DataError::TooShort {
                split: name,
                corpus: corpus.name.clone(),
                tokens: range.len(),
                needed,
            }
            .into());
        }
    }
    if resume.is_none() {
        std::fs::create_dir_all(&run_dir).map_err(|e| TrainError::io("create run directory", &run_dir, e))?;
        tokenizer.save(&run_dir.join("tokenizer.json"))?;
        write_file(&run_dir.join("config.toml"), config.to_toml().as_bytes())?;
    }
    Ok(Setup { config, run_dir, tokenizer, tokens, train, val, resume })
}

/// Ids of parameters with fewer than two dimensions (biases, norms): no weight decay (nanoGPT).
#[derive(Default)]
struct NoDecay(Vec<ParamId>);

impl ModuleVisitor for NoDecay {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if D < 2 {
            self.0.push(param.id);
        }
    }
}

/// Σ‖g‖² over all gradients (one device scalar).
struct GradNormSq<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for GradNormSq<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

/// Multiplies every gradient by `scale`.
struct GradScale<'a> {
    grads: &'a mut GradientsParams,
    scale: f64,
}

impl ModuleVisitor for GradScale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.scale));
        }
    }
}

/// Clips the global gradient norm to `max_norm` like `torch.nn.utils.clip_grad_norm_`; returns the norm.
fn clip_global_norm(model: &LanguageModel, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut norm = GradNormSq { grads, sum: None };
    model.visit(&mut norm);
    let total = norm.sum.map_or(0.0, |s| s.into_scalar::<f64>().sqrt());
    let scale = max_norm / (total + 1e-6);
    if max_norm > 0.0 && scale < 1.0 {
        model.visit(&mut GradScale { grads, scale });
    }
    total
}

fn optimizer(config: &RunConfig, model: &LanguageModel) -> ModuleOptimizer {
    let o = &config.optim;
    let adamw = |wd: f64| {
        AdamWConfig::new()
            .with_beta_1(o.beta1 as f32)
            .with_beta_2(o.beta2 as f32)
            .with_epsilon(o.eps as f32)
            .with_weight_decay(wd as f32)
    };
    let mut no_decay = NoDecay::default();
    model.visit(&mut no_decay);
    let optim = adamw(o.weight_decay).init();
    if no_decay.0.is_empty() {
        optim
    } else {
        optim.with_group(ParamGroup::from_ids(no_decay.0), adamw(0.0).build(), None)
    }
}

/// `[batch, block]` inputs and flattened targets on `device`.
fn batch_tensors(batch: &astro_data::Batch, device: &Device) -> (Tensor<2, Int>, Tensor<1, Int>) {
    let x = Tensor::<2, Int>::from_data(TensorData::new(batch.inputs.clone(), [batch.batch, batch.block]), device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(batch.targets.clone(), [batch.batch * batch.block]), device);
    (x, y)
}

/// Mean cross-entropy of next-token prediction: logits `[B,T,V]`, targets `[B·T]`.
fn lm_loss(model: &LanguageModel, x: Tensor<2, Int>, y: Tensor<1, Int>) -> Tensor<1> {
    let logits = model.forward(x);
    let [b, t, v] = logits.dims();
    CrossEntropyLossConfig::new().init(&logits.device()).forward(logits.reshape([b * t, v]), y)
}

/// Mean loss over `iters` fixed batches of `range` (eval mode, no autodiff).
fn estimate_loss(
    model: &LanguageModel,
    tokens: &TokenFile,
    range: std::ops::Range<usize>,
    config: &RunConfig,
    seed: u64,
) -> f64 {
    let mut sampler =
        BatchSampler::new(range, config.model.block_size, config.optim.batch_size, Sampling::Random, seed);
    let device = model.trunk.wte.weight.val().device();
    let mut total = 0.0;
    for _ in 0..config.train.eval_iters {
        let (x, y) = batch_tensors(&sampler.next_batch(tokens), &device);
        total += lm_loss(model, x, y).into_scalar::<f64>();
    }
    total / config.train.eval_iters as f64
}

/// Trains (or resumes) a language model as `config` says.
pub fn train(config: RunConfig, options: TrainOptions) -> Result<TrainSummary, TrainError> {
    let wall = Instant::now();
    let setup = prepare(config, &options)?;
    let Setup { config, run_dir, tokenizer, tokens, train, val, resume } = setup;
    let device_name = options.device.clone().or_else(|| config.run.device.clone());
    let device = match device_name {
        Some(name) => name.parse::<astro_model::device::BackendKind>().map_err(astro_model::ModelError::from)?.device(),
        None => astro_model::device::default_device(),
    }
    .map_err(astro_model::ModelError::from)?;
    let ad = device.clone().autodiff();
    ad.seed(config.run.seed);

    let mut model = LanguageModel::new(&config.model, &ad)?;
    let ckpt_root = run_dir.join("checkpoints");
    let seed = config.run.seed;
    let mut optim;
    let (mut step, mut tokens_seen, mut sampler, mut best_val, mut last_val, elapsed_before) = match &resume {
        Some((dir, state)) => {
            // Weights first: they bring back the parameter ids the optimiser state and groups are keyed by.
            model = model.load_weights(&dir.join(MODEL_FILE))?;
            optim = optimizer(&config, &model)
                .load(dir.join(OPTIM_FILE))
                .map_err(|e| TrainError::io("load optimiser state", dir.join(OPTIM_FILE), e))?;
            eprintln!("resuming {} from step {} ({})", run_dir.display(), state.step, dir.display());
            (state.step, state.tokens, state.sampler.clone().restored(), state.best_val, state.last_val, state.elapsed)
        }
        None => {
            optim = optimizer(&config, &model);
            let sampler = BatchSampler::new(
                train.clone(),
                config.model.block_size,
                config.optim.batch_size,
                config.data.sampling,
                seed,
            );
            (0, 0, sampler, None, None, 0.0)
        }
    };
    let mut metrics = MetricsLog::open(&run_dir.join("metrics.jsonl"), step)?;
    let mut last_checkpoint = resume.as_ref().map(|(d, _)| d.clone());
    let max_iters = config.train.max_iters;
    let tokens_per_step = (config.optim.batch_size * config.optim.grad_accum * config.model.block_size) as u64;

    let mut progress = Progress::new(max_iters, step, std::io::stderr().is_terminal());
    progress.note(&format!(
        "training {} on {} with {} → {}",
        config.model.describe(),
        config.data.dataset.clone().unwrap_or_else(|| config
            .data
            .path
            .clone()
            .unwrap_or_default()
            .display()
            .to_string()),
        tokenizer.describe(),
        run_dir.display()
    ));

    let mut train_time = elapsed_before;
    let mut window_tokens = 0u64;
    let mut window_time = 0.0;
    let mut last_loss = f64::NAN;
    let stop_at = options.stop_after.map_or(max_iters, |n| (step + n).min(max_iters));
    let eval = |model: &LanguageModel, step: usize| {
        let valid = model.valid();
        let v = estimate_loss(&valid, &tokens, val.clone(), &config, seed ^ 0x5eed_0001);
        let t = estimate_loss(&valid, &tokens, train.clone(), &config, seed ^ 0x5eed_0002 ^ step as u64);
        (v, t)
    };

    while step < stop_at {
        let t0 = Instant::now();
        let lr = learning_rate(
            step,
            config.optim.lr,
            config.optim.min_lr,
            config.optim.warmup_iters,
            config.lr_decay_iters(),
        );
        // Dropout masks are a function of (seed, step): identical after a resume.
        ad.seed(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step as u64);
        let mut accum = GradientsAccumulator::<LanguageModel>::new();
        let mut loss_sum = 0.0;
        for _ in 0..config.optim.grad_accum {
            let (x, y) = batch_tensors(&sampler.next_batch(&tokens), &ad);
            let loss = lm_loss(&model, x, y);
            loss_sum += loss.clone().into_scalar::<f64>();
            let loss = loss.div_scalar(config.optim.grad_accum as f64);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            accum.accumulate(&model, grads);
        }
        let loss = loss_sum / config.optim.grad_accum as f64;
        if !loss.is_finite() {
            let where_ = match &last_checkpoint {
                Some(dir) => format!("The last good checkpoint is {}. ", dir.display()),
                None => "No checkpoint was written yet. ".to_string(),
            };
            return Err(TrainError::NonFinite { step: step + 1, loss, checkpoint: where_ });
        }
        let mut grads = accum.grads();
        if config.optim.grad_clip > 0.0 {
            clip_global_norm(&model, &mut grads, config.optim.grad_clip);
        }
        model = optim.step(lr, model, grads);
        step += 1;
        tokens_seen += tokens_per_step;
        last_loss = loss;
        let dt = t0.elapsed().as_secs_f64();
        train_time += dt;
        window_time += dt;
        window_tokens += tokens_per_step;

        let eval_now = step % config.train.eval_interval == 0 || step == max_iters;
        let (val_loss, eval_train_loss) = if eval_now {
            let (v, t) = eval(&model, step);
            if best_val.is_none_or(|b| v < b) {
                model.save(&run_dir.join(BEST_FILE))?;
            }
            best_val = Some(best_val.map_or(v, |b: f64| b.min(v)));
            last_val = Some(v);
            (Some(v), Some(t))
        } else {
            (None, None)
        };
        let tps = if window_time > 0.0 { window_tokens as f64 / window_time } else { 0.0 };
        if step % config.train.log_interval == 0 || eval_now || step == stop_at {
            metrics.append(&MetricsRow {
                step,
                tokens: tokens_seen,
                train_loss: loss,
                val_loss,
                eval_train_loss,
                lr,
                tokens_per_sec: tps,
                elapsed: train_time,
            })?;
            progress.update(step, loss, last_val, tps, lr);
            window_tokens = 0;
            window_time = 0.0;
        }
        if step % config.train.checkpoint_interval == 0 || step == max_iters || step == stop_at {
            let state = CheckpointState {
                step,
                tokens: tokens_seen,
                sampler: sampler.clone(),
                best_val,
                last_val,
                elapsed: train_time,
                files: Default::default(),
            };
            let dir = checkpoint::write(&ckpt_root, state, config.train.keep_checkpoints, |dir| {
                model.save(&dir.join(MODEL_FILE))?;
                optim
                    .save(dir.join(OPTIM_FILE))
                    .map_err(|e| TrainError::io("write optimiser state", dir.join(OPTIM_FILE), e))
            })?;
            last_checkpoint = Some(dir);
        }
    }
    progress.finish();

    let finished = step >= max_iters;
    if finished {
        model.save(&run_dir.join(MODEL_FILE))?;
    }
    let sample = if finished && config.train.sample_tokens > 0 {
        Some(sample_text(&model.valid(), tokenizer.as_ref(), &tokens, val.start, &config, options.sample_to_stderr)?)
    } else {
        None
    };
    let summary = TrainSummary {
        run_dir: run_dir.clone(),
        steps: step,
        final_train_loss: last_loss,
        final_val_loss: last_val,
        best_val_loss: best_val,
        tokens_per_sec: if train_time > 0.0 { tokens_seen as f64 / train_time } else { 0.0 },
        wall_seconds: wall.elapsed().as_secs_f64(),
        sample,
    };
    let json = serde_json::to_vec_pretty(&summary).expect("summary serialises");
    write_file(&run_dir.join("summary.json"), &json)?;
    Ok(summary)
}

/// Samples `train.sample_tokens` tokens after the first validation token, streaming them.
fn sample_text(
    model: &LanguageModel,
    tokenizer: &dyn Tokenizer,
    tokens: &TokenFile,
    prompt_at: usize,
    config: &RunConfig,
    to_stderr: bool,
) -> Result<String, TrainError> {
    use std::io::Write;
    let prompt = vec![tokens.get(prompt_at)];
    let sampling = SamplingConfig { seed: config.run.seed, ..SamplingConfig::default() };
    let mut ids = prompt.clone();
    let mut shown = tokenizer.decode(&ids)?;
    let mut out: Box<dyn Write> = if to_stderr { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    let _ = writeln!(out, "\n--- sample ({} tokens) ---", config.train.sample_tokens);
    let _ = write!(out, "{shown}");
    generate(model, &prompt, config.train.sample_tokens, &sampling, |t| {
        ids.push(t);
        // Decode the whole text and print what is new (byte-level tokens may split characters).
        if let Ok(text) = tokenizer.decode(&ids)
            && text.len() >= shown.len()
            && text.starts_with(&shown)
        {
            let _ = write!(out, "{}", &text[shown.len()..]);
            let _ = out.flush();
            shown = text;
        }
    })?;
    let _ = writeln!(out, "\n---");
    Ok(shown)
}
