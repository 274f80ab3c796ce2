//! The training loop: AdamW (weight decay on matrices only) with warmup + cosine schedule, global
//! gradient-norm clipping, gradient accumulation, periodic evaluation in eval mode, atomic
//! checkpoints and exact resume.
//!
//! Written on `burn::optim` rather than `burn-train`'s `SupervisedTraining`: burn-train checkpoints
//! at epoch granularity and does not persist the data sampler's or the dropout RNG's state, so a
//! resumed run could not reproduce the uninterrupted run's metrics, which this project requires.
//! Data-parallel training over several devices follows burn-train's `MultiDevice` strategy with
//! the optimiser on the first device (see [`crate::parallel`]).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use astro_data::{TokenFile, Tokenizer, load_tokenizer, tokenize_cached, tokenizer_for};
use astro_model::LanguageModel;
use astro_model::device::{BackendKind, DeviceSpec, Ordinal};
use astro_model::transformer::{SamplingConfig, generate};
use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointState, MODEL_FILE, OPTIM_FILE};
use crate::config::RunConfig;
use crate::error::TrainError;
use crate::interrupt::Interrupt;
use crate::metrics::{MetricsLog, MetricsRow};
use crate::net::Net;
use crate::optim::{clip_global_norm, optimizer};
use crate::parallel;
use crate::progress::Progress;
use crate::schedule::learning_rate;
use crate::source::{DataState, Source};
use crate::status::{Interruption, RunState, RunStatus, now_unix};

/// The model with the best validation loss so far, in the run directory.
pub const BEST_FILE: &str = "best.bpk";

/// How to run (things that are not hyper-parameters).
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue the run in this directory from its newest valid checkpoint.
    pub resume: Option<PathBuf>,
    /// Device override (`--device`, or `--devices` a comma-separated list for data-parallel training).
    pub device: Option<String>,
    /// Print the final sample to stderr instead of stdout (for `--json`).
    pub sample_to_stderr: bool,
    /// Stop after this many steps of this invocation (tests of resume; `None` = run to the end).
    pub stop_after: Option<usize>,
    /// Read after every step: once a stop signal has arrived, the run checkpoints and returns
    /// [`TrainError::Interrupted`].
    pub interrupt: Interrupt,
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
    /// Test accuracy at the end (task runs).
    pub final_val_accuracy: Option<f64>,
    /// Mean training throughput (tokens per second, excluding evaluation).
    pub tokens_per_sec: f64,
    /// Wall-clock seconds of this invocation.
    pub wall_seconds: f64,
    /// Seconds from the start of this invocation to its first training step (finding the corpus,
    /// the vocabulary and the tokens, building the model).
    #[serde(default)]
    pub setup_seconds: f64,
    /// The text sampled at the end.
    pub sample: Option<String>,
    /// `--resume` found the run already at `train.max_iters`: nothing was trained, the numbers are
    /// the run's own.
    #[serde(default)]
    pub already_finished: bool,
}

/// Everything prepared before the first step.
struct Setup {
    config: RunConfig,
    /// The run directory: `None` for a fresh run until [`RunDir::create`] makes it.
    run_dir: Option<PathBuf>,
    source: Source,
    resume: Option<(PathBuf, CheckpointState)>,
}

/// A fresh run's directory, removed again if the run fails before its first checkpoint (nothing in
/// it could be resumed, and a left-over directory would push the next run to `<name>-2`).
struct RunDir {
    path: PathBuf,
    /// Remove the directory when dropped.
    provisional: bool,
}

impl RunDir {
    /// Makes `<out_dir>/<name>`, or `<name>-2`, `-3`… if taken (never reuses a run's directory,
    /// even when another process takes the same name at the same moment).
    fn create(out_dir: &Path, name: &str) -> Result<RunDir, TrainError> {
        std::fs::create_dir_all(out_dir).map_err(|e| TrainError::io("create run directory", out_dir, e))?;
        for i in 1.. {
            let path = if i == 1 { out_dir.join(name) } else { out_dir.join(format!("{name}-{i}")) };
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(RunDir { path, provisional: true }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(TrainError::io("create run directory", &path, e)),
            }
        }
        unreachable!("some suffix is free")
    }

    /// A directory an earlier invocation made: never removed.
    fn existing(path: PathBuf) -> RunDir {
        RunDir { path, provisional: false }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.provisional {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    astro_data::fsutil::write_atomic(path, bytes).map_err(|e| TrainError::io("write", path, e))
}

/// Checks a resumed run's config against the one given: architecture, data and task must match.
fn check_resume(dir: &Path, mut given: RunConfig) -> Result<RunConfig, TrainError> {
    let saved = RunConfig::load(&dir.join("config.toml"))
        .map_err(|e| TrainError::Resume { run: dir.to_path_buf(), reason: e.to_string() })?;
    if given.model.vocab_size.is_none() {
        given.model.vocab_size = saved.model.vocab_size;
    }
    let refuse = |reason: String| TrainError::Resume { run: dir.to_path_buf(), reason };
    if given.model != saved.model {
        return Err(refuse(format!(
            "it was made with model [{}], but the given config has [{}]; resume without --config, or start a new run",
            saved.model.describe(),
            given.model.describe()
        )));
    }
    let changed = resume_conflicts(&saved, &given);
    if !changed.is_empty() {
        return Err(refuse(format!(
            "{} cannot change on resume: {}; only {} may (start a new run, or `--init` from an export, for the others)",
            if changed.len() == 1 { "this key" } else { "these keys" },
            changed.join(", "),
            RESUMABLE_KEYS.join(", ")
        )));
    }
    given.validate()?;
    Ok(given)
}

/// Keys a resumed run may change: how long it runs, how often it reports and checkpoints, where it
/// computes. Everything else (model, data, optimiser, seed) is the run's own, so that a resumed run
/// stays the run it was.
pub const RESUMABLE_KEYS: &[&str] = &[
    "train.max_iters",
    "optim.lr_decay_iters",
    "train.eval_interval",
    "train.eval_iters",
    "train.log_interval",
    "train.checkpoint_interval",
    "train.keep_checkpoints",
    "train.sample_tokens",
    "train.test_examples",
    "run.device",
    "run.name",
    "run.out_dir",
];

/// The keys outside [`RESUMABLE_KEYS`] in which `given` differs from a run's `saved` config, as
/// `key (was → now)`: empty when `given` may continue that run. An unset `model.vocab_size` takes the
/// run's (the tokenizer fixed it).
pub fn resume_conflicts(saved: &RunConfig, given: &RunConfig) -> Vec<String> {
    let mut given = given.clone();
    if given.model.vocab_size.is_none() {
        given.model.vocab_size = saved.model.vocab_size;
    }
    changed_keys(saved, &given)
        .into_iter()
        .filter(|(key, _, _)| !RESUMABLE_KEYS.contains(&key.as_str()))
        .map(|(key, was, now)| format!("{key} ({was} → {now})"))
        .collect()
}

/// Dotted keys whose values differ between two configs, with both values (`—` where absent).
fn changed_keys(a: &RunConfig, b: &RunConfig) -> Vec<(String, String, String)> {
    fn flatten(prefix: &str, value: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    flatten(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let table = |c: &RunConfig| {
        let mut out = std::collections::BTreeMap::new();
        flatten("", &toml::Value::try_from(c).expect("config serialises"), &mut out);
        out
    };
    let (ta, tb) = (table(a), table(b));
    let keys: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
    keys.into_iter()
        .filter(|k| ta.get(*k) != tb.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "—".into());
            (k.clone(), show(ta.get(k)), show(tb.get(k)))
        })
        .collect()
}

/// Refuses a run that would not fit in memory, before anything is allocated.
fn check_memory(config: &RunConfig) -> Result<(), TrainError> {
    use astro_model::memory::{KeyNames, MemoryEstimate, Workload, available};
    let classes = config.task.as_ref().and_then(|t| t.classes()).unwrap_or(0);
    let workload = Workload::Train { batch: config.optim.batch_size, seq: config.model.block_size };
    let vocab = config.model.vocab_size.unwrap_or(0);
    let estimate = MemoryEstimate::new(&config.model, vocab, classes, workload, &KeyNames::run_config());
    estimate.check("this training run", &available()).map_err(|e| astro_model::ModelError::from(e).into())
}

/// What [`prepare`] found: a run to train, or one that already reached `train.max_iters`.
enum Prepared {
    Ready(Box<Setup>),
    Finished(TrainSummary),
}

fn prepare(config: RunConfig, options: &TrainOptions) -> Result<Prepared, TrainError> {
    // `run_dir`: made by an earlier invocation (resume); its tokenizer is reused.
    let (mut config, run_dir, resume) = match &options.resume {
        Some(dir) => {
            let config = check_resume(dir, config)?;
            let ckpt_root = dir.join("checkpoints");
            checkpoint::remove_stale(&ckpt_root);
            checkpoint::remove_stale_weights(dir);
            let ckpt = checkpoint::latest_valid(&ckpt_root);
            match &ckpt {
                // Nothing to train: answer before loading the corpus or building anything.
                Some((_, state)) if state.step >= config.train.max_iters => {
                    return Ok(Prepared::Finished(finished_summary(dir, state)));
                }
                // Killed before its first checkpoint: nothing to continue from, so start it again.
                None => eprintln!("warning: {} has no valid checkpoint; starting it again from step 0", dir.display()),
                Some(_) => {}
            }
            (config, Some(dir.clone()), ckpt)
        }
        None => {
            config.validate()?;
            (config, None, None)
        }
    };
    let source = match config.task.clone() {
        Some(task) => {
            config.model.vocab_size = Some(task.vocab_size());
            Source::task(&task, &config)
        }
        None => {
            let cancel = || options.interrupt.received().is_some();
            corpus_source(&mut config, run_dir.as_deref(), &cancel).map_err(|e| match e {
                // Stopped while preparing the corpus: nothing was trained, nothing kept.
                TrainError::Data(astro_data::DataError::Cancelled) => TrainError::Interrupted {
                    signal: options.interrupt.received().map_or("a signal", |s| s.name()).into(),
                    step: 0,
                    run_dir: run_dir.clone().unwrap_or_default(),
                    checkpoint: None,
                },
                other => other,
            })?
        }
    };
    if resume.is_none() {
        check_memory(&config)?;
    }
    Ok(Prepared::Ready(Box::new(Setup { config, run_dir, source, resume })))
}

/// Makes the directory of a fresh run (with the tokenizer), or takes the one an earlier invocation
/// made; writes the resolved config where it differs from the one there (a resumed run's changed
/// keys become its own). Called once the model and optimiser exist.
fn open_run_dir(config: &RunConfig, source: &Source, existing: Option<PathBuf>) -> Result<RunDir, TrainError> {
    let dir = match existing {
        Some(path) => RunDir::existing(path),
        None => {
            let dir = RunDir::create(&config.run.out_dir, &config.run.name)?;
            if let Source::Corpus { tokenizer, .. } = source {
                tokenizer.save(&dir.path.join("tokenizer.json"))?;
            }
            dir
        }
    };
    let path = dir.path.join("config.toml");
    let text = config.to_toml();
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        write_file(&path, text.as_bytes())?;
    }
    Ok(dir)
}

/// The summary of a run that already reached `train.max_iters`: its `summary.json` if that
/// describes this step, else rebuilt from the checkpoint and `metrics.jsonl`.
fn finished_summary(run_dir: &Path, state: &CheckpointState) -> TrainSummary {
    let saved = std::fs::read(run_dir.join("summary.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<TrainSummary>(&b).ok())
        .filter(|s| s.steps == state.step && s.final_train_loss.is_finite());
    let mut summary = saved.unwrap_or_else(|| {
        let rows = crate::metrics::read(&run_dir.join("metrics.jsonl")).unwrap_or_default();
        let last = rows.iter().rev().find(|r| r.step <= state.step);
        TrainSummary {
            run_dir: run_dir.to_path_buf(),
            steps: state.step,
            final_train_loss: last.map_or(f64::NAN, |r| r.train_loss),
            final_val_loss: state.last_val,
            best_val_loss: state.best_val,
            final_val_accuracy: state.last_accuracy,
            tokens_per_sec: if state.elapsed > 0.0 { state.tokens as f64 / state.elapsed } else { 0.0 },
            wall_seconds: 0.0,
            setup_seconds: 0.0,
            sample: None,
            already_finished: true,
        }
    });
    // What summary.json says of its own invocation does not apply to this one.
    summary.run_dir = run_dir.to_path_buf();
    summary.sample = None;
    summary.already_finished = true;
    summary
}

/// Finds the corpus, its tokenizer (a resumed run keeps its saved one; a fresh one builds it, or
/// takes it from the cache) and its tokens (streamed into the cache once), and checks that both
/// splits hold a window. `cancel` stops the passes over a large corpus on a stop signal.
fn corpus_source(
    config: &mut RunConfig,
    resumed_from: Option<&Path>,
    cancel: &astro_data::prepare::Cancel<'_>,
) -> Result<Source, TrainError> {
    let files = config.corpus().files(config.data.val_fraction)?;
    let tokenizer = match resumed_from {
        Some(dir) => load_tokenizer(&dir.join("tokenizer.json"))?,
        None => tokenizer_for(&config.data.tokenizer, &files, cancel)?,
    };
    match config.model.vocab_size {
        None => config.model.vocab_size = Some(tokenizer.vocab_size()),
        Some(v) if v != tokenizer.vocab_size() => {
            return Err(TrainError::Config(format!(
                "`model.vocab_size` = {v}, but the tokenizer ({}) on {} has {} tokens; remove the key to use the tokenizer's",
                tokenizer.describe(),
                files.name,
                tokenizer.vocab_size()
            )));
        }
        Some(_) => {}
    }
    let tokens = tokenize_cached(&files, tokenizer.as_ref(), cancel)?;
    let (train, val) = tokens.split(config.data.val_fraction);
    let needed = config.model.block_size + 1;
    for (name, range) in [("train", &train), ("validation", &val)] {
        if range.len() < needed {
            return Err(astro_data::DataError::TooShort {
                split: name,
                corpus: files.name.clone(),
                tokens: range.len(),
                needed,
            }
            .into());
        }
    }
    Ok(Source::Corpus { tokenizer, tokens, train, val })
}

/// Trains (or resumes) the network `config` describes on its corpus or task.
pub fn train(config: RunConfig, options: TrainOptions) -> Result<TrainSummary, TrainError> {
    let wall = Instant::now();
    let Setup { config, run_dir, source, resume } = match prepare(config, &options)? {
        Prepared::Ready(setup) => *setup,
        Prepared::Finished(summary) => return Ok(summary),
    };
    let (kind, devices) = open_devices(&config, &options)?;
    let ad = devices[0].clone();
    let mut net = initial_net(&config, kind, &ad)?;
    if let (None, Some(init)) = (&resume, &config.train.init) {
        // A resumed run takes its weights from its checkpoint; a fresh one may start from an export.
        net = net.load_export(init)?;
        eprintln!("initial weights from {}", init.display());
    }
    let seed = config.run.seed;
    let mut optim;
    let (mut step, mut tokens_seen, mut data, mut best_val, mut last_val, mut last_acc, elapsed_before) = match &resume
    {
        Some((dir, state)) => {
            // Weights first: they bring back the parameter ids the optimiser state and groups are keyed by.
            net = net.load_weights(&dir.join(MODEL_FILE))?;
            optim = optimizer(&config, &net)
                .load(dir.join(OPTIM_FILE))
                .map_err(|e| TrainError::io("load optimiser state", dir.join(OPTIM_FILE), e))?;
            eprintln!("resuming from step {} ({})", state.step, dir.display());
            let data = match state.data.clone() {
                DataState::Corpus { sampler } => DataState::Corpus { sampler: sampler.restored() },
                other => other,
            };
            (state.step, state.tokens, data, state.best_val, state.last_val, state.last_accuracy, state.elapsed)
        }
        None => {
            optim = optimizer(&config, &net);
            (0, 0, source.initial_state(&config), None, None, None, 0.0)
        }
    };
    // The directory of a fresh run appears only now that the model and optimiser exist.
    let mut run = open_run_dir(&config, &source, run_dir)?;
    let run_dir = run.path.clone();
    let earlier = RunStatus::read(&run_dir);
    RunStatus::new(RunState::Running, step, earlier.as_ref()).write(&run_dir)?;
    // Everything from here on runs in a closure so that an error can be recorded in status.json.
    let result = (|| -> Result<TrainSummary, TrainError> {
        let ckpt_root = run_dir.join("checkpoints");
        let mut metrics = MetricsLog::open(&run_dir.join("metrics.jsonl"), step)?;
        let mut last_checkpoint = resume.as_ref().map(|(d, _)| d.clone());
        let max_iters = config.train.max_iters;

        let mut progress = Progress::new(max_iters, step, std::io::stderr().is_terminal());
        let what = match &source {
            Source::Corpus { tokenizer, .. } => format!("{} with {}", config.corpus().describe(), tokenizer.describe()),
            Source::Task { task, test } => format!("task {} ({} test examples)", task.name(), test.len()),
        };
        progress.note(&format!("training {} on {what} → {}", config.model.describe(), run_dir.display()));

        let mut train_time = elapsed_before;
        let mut window_tokens = 0u64;
        let mut window_time = 0.0;
        let mut last_loss = f64::NAN;
        let stop_at = options.stop_after.map_or(max_iters, |n| (step + n).min(max_iters));

        let setup_seconds = wall.elapsed().as_secs_f64();

        let mut last_checkpoint_step = resume.as_ref().map(|(_, state)| state.step);
        let mut stopped_by = None;
        while step < stop_at {
            if let Some(signal) = options.interrupt.received() {
                stopped_by = Some(signal);
                break;
            }
            let t0 = Instant::now();
            let lr = learning_rate(
                step,
                config.optim.lr,
                config.optim.min_lr,
                config.optim.warmup_iters,
                config.lr_decay_iters(),
            );
            // Dropout masks are a function of (seed, step): identical after a resume.
            ad.seed(step_seed(seed, step));
            for (i, device) in devices.iter().enumerate().skip(1) {
                device.seed(step_seed(seed, step) ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            }
            let mut accum = GradientsAccumulator::<Net>::new();
            let mut loss_sum = 0.0;
            let mut step_tokens = 0u64;
            for micro in 0..config.optim.grad_accum {
                let batch = source.next_batch(&mut data, &ad);
                // Calibrated maps: closed-form refit on this batch (deterministic, so resumes agree).
                let every = config.train.calibrate_every;
                if micro == 0 && net.is_calibrated() && (step == 0 || (every > 0 && step % every == 0)) {
                    let (calibrated, fallbacks) = net.calibrate(&batch, config.train.calibration_fallback)?;
                    net = calibrated;
                    if fallbacks > 0 {
                        tracing::warn!(step, fallbacks, "calibration used ψ = 1 on dimensions where it is undefined");
                    }
                }
                step_tokens += batch.tokens() as u64;
                let (loss, grads) = parallel::backward(&net, batch, &devices, config.optim.grad_accum);
                loss_sum += loss;
                accum.accumulate(&net, grads);
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
                clip_global_norm(&net, &mut grads, config.optim.grad_clip);
            }
            net = optim.step(lr, net, grads);
            step += 1;
            tokens_seen += step_tokens;
            last_loss = loss;
            let dt = t0.elapsed().as_secs_f64();
            train_time += dt;
            window_time += dt;
            window_tokens += step_tokens;

            let eval_now = step % config.train.eval_interval == 0 || step == max_iters;
            let evaluation = eval_now.then(|| source.evaluate(&net.valid(), &config, step));
            if let Some(e) = &evaluation {
                if best_val.is_none_or(|b| e.loss < b) {
                    net.save(&run_dir.join(BEST_FILE))?;
                }
                best_val = Some(best_val.map_or(e.loss, |b: f64| b.min(e.loss)));
                last_val = Some(e.loss);
                last_acc = e.accuracy.or(last_acc);
            }
            let tps = if window_time > 0.0 { window_tokens as f64 / window_time } else { 0.0 };
            if step % config.train.log_interval == 0 || eval_now || step == stop_at {
                metrics.append(&MetricsRow {
                    step,
                    tokens: tokens_seen,
                    train_loss: loss,
                    val_loss: evaluation.map(|e| e.loss),
                    eval_train_loss: evaluation.and_then(|e| e.train_loss),
                    val_accuracy: evaluation.and_then(|e| e.accuracy),
                    lr,
                    tokens_per_sec: tps,
                    elapsed: train_time,
                })?;
                progress.update(step, loss, last_val, last_acc, tps, lr);
                window_tokens = 0;
                window_time = 0.0;
            }
            // A signal that arrived during this step is answered with this step's checkpoint.
            let stopping = options.interrupt.received().is_some();
            if step % config.train.checkpoint_interval == 0 || step == max_iters || step == stop_at || stopping {
                let state = CheckpointState {
                    step,
                    tokens: tokens_seen,
                    data: data.clone(),
                    best_val,
                    last_val,
                    last_accuracy: last_acc,
                    elapsed: train_time,
                    files: Default::default(),
                };
                let dir = checkpoint::write(&ckpt_root, state, config.train.keep_checkpoints, |dir| {
                    net.save(&dir.join(MODEL_FILE))?;
                    optim
                        .save(dir.join(OPTIM_FILE))
                        .map_err(|e| TrainError::io("write optimiser state", dir.join(OPTIM_FILE), e))
                })?;
                last_checkpoint = Some(dir);
                last_checkpoint_step = Some(step);
                // From its first checkpoint on, the run can be resumed: its directory stays.
                run.provisional = false;
            }
        }
        progress.finish();
        if let Some(signal) = stopped_by {
            // Every step ends with a checkpoint once a signal has arrived, so the newest one is this step's
            // (none when the signal came before the first step: nothing was trained, nothing is kept).
            let saved = last_checkpoint.clone().filter(|_| last_checkpoint_step == Some(step));
            if saved.is_some() {
                let mut status = RunStatus::new(RunState::Interrupted, step, earlier.as_ref());
                status.interruptions.push(Interruption { signal: signal.name().into(), step, at_unix: now_unix() });
                status.write(&run_dir)?;
            }
            return Err(TrainError::Interrupted {
                signal: signal.name().into(),
                step,
                run_dir: run_dir.clone(),
                checkpoint: saved,
            });
        }

        let finished = step >= max_iters;
        if finished {
            net.save(&run_dir.join(MODEL_FILE))?;
        }
        let valid = net.valid();
        let sample = match (&source, valid.lm()) {
            (Source::Corpus { tokenizer, tokens, val, .. }, Some(lm)) if finished && config.train.sample_tokens > 0 => {
                Some(sample_text(lm, tokenizer.as_ref(), tokens, val.start, &config, options.sample_to_stderr)?)
            }
            _ => None,
        };
        let summary = TrainSummary {
            run_dir: run_dir.clone(),
            steps: step,
            final_train_loss: last_loss,
            final_val_loss: last_val,
            best_val_loss: best_val,
            final_val_accuracy: last_acc,
            tokens_per_sec: if train_time > 0.0 { tokens_seen as f64 / train_time } else { 0.0 },
            wall_seconds: wall.elapsed().as_secs_f64(),
            setup_seconds,
            sample,
            already_finished: false,
        };
        let json = serde_json::to_vec_pretty(&summary).expect("summary serialises");
        write_file(&run_dir.join("summary.json"), &json)?;
        run.provisional = false;
        // A run stopped early by `stop_after` has a checkpoint to continue from, like an interrupted one.
        let state = if finished { RunState::Finished } else { RunState::Interrupted };
        RunStatus::new(state, step, earlier.as_ref()).write(&run_dir)?;
        Ok(summary)
    })();
    if let Err(e) = &result
        && !matches!(e, TrainError::Interrupted { .. })
        && !run.provisional
    {
        let mut status = RunStatus::new(RunState::Failed, step, earlier.as_ref());
        status.error = Some(e.to_string());
        // The error itself is what the caller must see; a status that cannot be written adds nothing.
        let _ = status.write(&run_dir);
    }
    result
}

/// The device generator's seed at `step` (dropout masks are a function of (seed, step)).
fn step_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step as u64
}

/// The network a fresh run starts from, on the autodiff device `ad` of backend `kind`, with every
/// parameter drawn now (Burn draws most of them lazily, at first use), so that a model too large
/// for memory fails before the run directory exists.
///
/// Parameters are drawn on the host — the CPU backend [`BackendKind::host`] names, flex where it is
/// compiled — and moved to `ad`, so the same seed starts the same model on every backend (each
/// device has its own generator). The host's generator is seeded with the run seed while the model
/// is built (biases are zeroed there, which draws them), then with the first step's seed for the
/// remaining draws: the order in which runs drew them lazily before, so flex runs start from the
/// weights they always had.
pub fn initial_net(config: &RunConfig, kind: BackendKind, ad: &burn::tensor::Device) -> Result<Net, TrainError> {
    let draw = |on: &burn::tensor::Device| -> Result<Net, TrainError> {
        on.seed(config.run.seed);
        let net = Net::new(config, on)?;
        on.seed(step_seed(config.run.seed, 0));
        Ok(net.materialise())
    };
    match kind.host() {
        Some(host) if host != kind => {
            let on = host.device().map_err(astro_model::ModelError::from)?.autodiff();
            // `fork`: the values move, each parameter a fresh leaf on `ad` that requires gradients.
            Ok(draw(&on)?.fork(ad))
        }
        _ => draw(ad),
    }
}

/// The backend and the devices (autodiff) a run trains on: `--device`/`--devices`, else the
/// config's `run.device`, else the default; one device, or several for data-parallel training
/// (the batch must split evenly over them).
fn open_devices(config: &RunConfig, options: &TrainOptions) -> Result<(BackendKind, Vec<Device>), TrainError> {
    let name = options.device.clone().or_else(|| config.run.device.clone());
    let specs = match name {
        Some(name) => DeviceSpec::parse_list(&name),
        None => BackendKind::default_kind().map(|kind| vec![DeviceSpec { kind, ordinal: Ordinal::Default }]),
    }
    .map_err(astro_model::ModelError::from)?;
    let n = specs.len();
    if n > 1 && !config.optim.batch_size.is_multiple_of(n) {
        return Err(TrainError::Config(format!(
            "`optim.batch_size` = {} does not split evenly over {n} devices; set it to a multiple of {n}",
            config.optim.batch_size
        )));
    }
    let devices = specs
        .iter()
        .map(|s| s.open().map(Device::autodiff))
        .collect::<Result<Vec<_>, _>>()
        .map_err(astro_model::ModelError::from)?;
    if n > 1 {
        let list: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        eprintln!("data-parallel over {n} devices ({}): {} rows each", list.join(", "), config.optim.batch_size / n);
    }
    Ok((specs[0].kind, devices))
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
    let mut stream = astro_data::DecodeStream::new(tokenizer, &prompt)?;
    let mut out: Box<dyn Write> = if to_stderr { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    let _ = writeln!(out, "\n--- sample ({} tokens) ---", config.train.sample_tokens);
    let _ = write!(out, "{}", stream.text());
    generate(model, &prompt, config.train.sample_tokens, &sampling, |t| {
        if let Some(new) = stream.push(t) {
            let _ = write!(out, "{new}");
            let _ = out.flush();
        }
    })?;
    let _ = writeln!(out, "\n---");
    Ok(stream.text().to_string())
}
