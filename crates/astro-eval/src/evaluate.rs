//! `astro eval`: loss, perplexity and bits per character/byte of a language model on its own
//! validation split or any corpus; accuracy of a task model on its test set.

use std::path::{Path, PathBuf};
use std::time::Instant;

use astro_data::tasks::{test_seed, test_set};
use astro_data::{CorpusSpec, tokenize_cached};
use astro_train::source::{Batch, evaluate_examples, score};
use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;

use crate::error::EvalError;
use crate::run::Run;

/// What `astro eval` reports (`--json` prints it as one object).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// The run directory.
    pub run: PathBuf,
    /// The weight file evaluated.
    pub weights: PathBuf,
    /// What was evaluated on.
    pub on: String,
    /// Mean cross-entropy per scored token (nats) or per sequence (classification).
    pub loss: f64,
    /// exp(loss), for language models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// Bits per character (character-level tokenizers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits_per_char: Option<f64>,
    /// Bits per UTF-8 byte of the evaluated text (other tokenizers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits_per_byte: Option<f64>,
    /// Accuracy as the task defines it (task runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Tokens (positions) scored.
    pub tokens: usize,
    /// Forward throughput, input tokens per second.
    pub tokens_per_sec: f64,
    /// Wall seconds of the evaluation.
    pub seconds: f64,
}

/// Evaluates a language-model run on its validation split (`data = None`) or on the text file or
/// directory `data`, over every non-overlapping window of `block_size + 1` tokens (at most
/// `max_tokens` tokens when given).
pub fn evaluate_text(run: &Run, data: Option<&Path>, max_tokens: Option<usize>) -> Result<EvalReport, EvalError> {
    let tokenizer = run
        .tokenizer
        .as_ref()
        .ok_or_else(|| EvalError::Invalid(format!("{} has no tokenizer: it trained on a task (evaluate it without --data), or it is an export without tokenizer.json", run.dir.display())))?;
    let vf = run.config.data.val_fraction;
    let (corpus, on) = match data {
        Some(path) => (CorpusSpec::file(path).files(vf)?, path.display().to_string()),
        None if !run.config.has_corpus() => {
            return Err(EvalError::Invalid(format!(
                "{} does not say which corpus it was trained on; pass --data FILE",
                run.dir.display()
            )));
        }
        None => {
            let corpus = run.config.corpus().files(vf)?;
            let on = format!("{} (validation split)", corpus.name);
            (corpus, on)
        }
    };
    let file = tokenize_cached(&corpus, tokenizer.as_ref(), &|| false)?;
    let range = match data {
        Some(_) => 0..file.len(),
        None => file.split(vf).1,
    };
    let range = match max_tokens {
        Some(n) => range.start..range.end.min(range.start + n.max(2)),
        None => range,
    };
    let block = run.config.model.block_size;
    if range.len() < 2 {
        return Err(EvalError::Invalid(format!("{on} has fewer than 2 tokens to evaluate")));
    }
    let lm =
        run.net.lm().ok_or_else(|| EvalError::Invalid("this run holds a classifier, not a language model".into()))?;
    let net = astro_train::Net::Lm(lm.valid());
    let device = lm.trunk.wte.weight.val().device();
    // Windows of block + 1 tokens: the first `block` are inputs, the last `block` targets.
    let starts: Vec<usize> = (range.start..range.end - 1).step_by(block).collect();
    let rows = run.config.optim.batch_size.max(1) * 4;
    let started = Instant::now();
    let (mut nats, mut scored, mut seen) = (0.0, 0usize, 0usize);
    let mut scored_ids: Vec<u32> = Vec::new();
    let full: Vec<usize> = starts.iter().copied().filter(|&s| s + block < range.end).collect();
    let last: Vec<usize> = starts.iter().copied().filter(|&s| s + block >= range.end).collect();
    for (group, len) in [(full, block), (last.clone(), last.first().map_or(0, |&s| range.end - 1 - s))] {
        if len == 0 {
            continue;
        }
        for chunk in group.chunks(rows) {
            let mut inputs = Vec::with_capacity(chunk.len() * len);
            let mut targets = Vec::with_capacity(chunk.len() * len);
            for &s in chunk {
                file.extend_into(s..s + len, &mut inputs);
                file.extend_into(s + 1..s + 1 + len, &mut targets);
            }
            scored_ids.extend(targets.iter().map(|&t| t as u32));
            let x = Tensor::<2, Int>::from_data(TensorData::new(inputs, [chunk.len(), len]), &device);
            let s = score(&net, Batch::Lm { inputs: x, targets }, false);
            nats += s.loss.into_scalar::<f64>() * s.count as f64;
            scored += s.count;
            seen += chunk.len() * len;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let loss = nats / scored as f64;
    let is_char = tokenizer.describe().starts_with("char");
    let bits = nats / std::f64::consts::LN_2;
    let (bits_per_char, bits_per_byte) = if is_char {
        (Some(bits / scored as f64), None)
    } else {
        let bytes = tokenizer.decode(&scored_ids)?.len().max(1);
        (None, Some(bits / bytes as f64))
    };
    Ok(EvalReport {
        run: run.dir.clone(),
        weights: run.weights.clone(),
        on,
        loss,
        perplexity: Some(loss.exp()),
        bits_per_char,
        bits_per_byte,
        accuracy: None,
        tokens: scored,
        tokens_per_sec: seen as f64 / seconds.max(1e-9),
        seconds,
    })
}

/// Evaluates a task run on `examples` test examples drawn from the run's test seed.
pub fn evaluate_task(run: &Run, examples: usize) -> Result<EvalReport, EvalError> {
    let task = run
        .config
        .task
        .as_ref()
        .ok_or_else(|| EvalError::Invalid("this run trained on text; use --data or no option".into()))?;
    let test = test_set(task, examples, test_seed(run.config.run.seed));
    let started = Instant::now();
    let net = run.net.valid();
    let e = evaluate_examples(&net, task, &test, run.config.optim.batch_size);
    let seconds = started.elapsed().as_secs_f64();
    let tokens: usize = test.iter().map(|x| x.inputs.len()).sum();
    Ok(EvalReport {
        run: run.dir.clone(),
        weights: run.weights.clone(),
        on: format!("task {} ({} test examples)", task.name(), examples),
        loss: e.loss,
        perplexity: task.classes().is_none().then(|| e.loss.exp()),
        bits_per_char: None,
        bits_per_byte: None,
        accuracy: e.accuracy,
        tokens,
        tokens_per_sec: tokens as f64 / seconds.max(1e-9),
        seconds,
    })
}
