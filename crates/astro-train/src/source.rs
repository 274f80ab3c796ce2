//! Where training batches come from — a tokenised corpus or a synthetic task — and how each kind
//! is scored: loss for training, loss and accuracy for evaluation.

use std::ops::Range;

use astro_data::tasks::{Example, IGNORE, TaskBatch, TaskConfig, TaskStream, test_seed, test_set};
use astro_data::{BatchSampler, Sampling, TokenFile, Tokenizer};
use astro_model::LanguageModel;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub use crate::batch::Batch;
use crate::config::RunConfig;
use crate::net::Net;

/// The data a run trains and evaluates on.
pub enum Source {
    /// A tokenised corpus, split into train and validation ranges.
    Corpus {
        /// The tokenizer (saved in the run).
        tokenizer: Box<dyn Tokenizer>,
        /// The memory-mapped tokens.
        tokens: TokenFile,
        /// Training range.
        train: Range<usize>,
        /// Validation range.
        val: Range<usize>,
    },
    /// A synthetic task: an endless training stream and a fixed test set.
    Task {
        /// The task.
        task: TaskConfig,
        /// The test set (from a seed disjoint from training's).
        test: Vec<Example>,
    },
}

/// The resumable position of the training stream (saved in checkpoints).
// Externally tagged: serde's internally tagged enums cannot carry the RNGs' u128 word positions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataState {
    /// Windows of a corpus.
    Corpus {
        /// The window sampler.
        sampler: BatchSampler,
    },
    /// Examples of a task.
    Task {
        /// The example stream.
        stream: TaskStream,
    },
}

/// Result of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Validation (corpus) or test (task) loss.
    pub loss: f64,
    /// Training-split loss in eval mode (corpus runs).
    pub train_loss: Option<f64>,
    /// Accuracy as the task defines it (task runs).
    pub accuracy: Option<f64>,
}

/// Loss and accuracy counts of one batch.
pub struct Scored {
    /// Mean loss over scored positions or sequences (a device scalar, differentiable).
    pub loss: Tensor<1>,
    /// Number of scored positions or sequences.
    pub count: usize,
    /// Correct argmax predictions (computed only when asked).
    pub correct: Option<usize>,
}

fn int2(values: Vec<i64>, rows: usize, cols: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

impl Source {
    /// The training stream at its start.
    pub fn initial_state(&self, config: &RunConfig) -> DataState {
        let seed = config.run.seed;
        match self {
            Source::Corpus { train, .. } => DataState::Corpus {
                sampler: BatchSampler::new(
                    train.clone(),
                    config.model.block_size,
                    config.optim.batch_size,
                    config.data.sampling,
                    seed,
                ),
            },
            Source::Task { .. } => DataState::Task { stream: TaskStream::new(seed, config.optim.batch_size) },
        }
    }

    /// The next training batch.
    pub fn next_batch(&self, state: &mut DataState, device: &Device) -> Batch {
        match (self, state) {
            (Source::Corpus { tokens, .. }, DataState::Corpus { sampler }) => {
                let b = sampler.next_batch(tokens);
                Batch::Lm { inputs: int2(b.inputs, b.batch, b.block, device), targets: b.targets }
            }
            (Source::Task { task, .. }, DataState::Task { stream }) => {
                task_batch(task, stream.next_batch(task), device)
            }
            _ => unreachable!("the data state always matches its source"),
        }
    }

    /// Validation/test loss (and accuracy for tasks) in eval mode; `step` varies the training-split
    /// batches of corpus runs (validation batches are fixed, so evaluations are comparable).
    pub fn evaluate(&self, net: &Net, config: &RunConfig, step: usize) -> Evaluation {
        let device = net_device(net);
        match self {
            Source::Corpus { tokens, train, val, .. } => {
                let seed = config.run.seed;
                let mean = |range: Range<usize>, seed: u64| {
                    let mut sampler = BatchSampler::new(
                        range,
                        config.model.block_size,
                        config.optim.batch_size,
                        Sampling::Random,
                        seed,
                    );
                    let mut total = 0.0;
                    for _ in 0..config.train.eval_iters {
                        let b = sampler.next_batch(tokens);
                        let batch = Batch::Lm { inputs: int2(b.inputs, b.batch, b.block, &device), targets: b.targets };
                        total += score(net, batch, false).loss.into_scalar::<f64>();
                    }
                    total / config.train.eval_iters as f64
                };
                Evaluation {
                    loss: mean(val.clone(), seed ^ 0x5eed_0001),
                    train_loss: Some(mean(train.clone(), seed ^ 0x5eed_0002 ^ step as u64)),
                    accuracy: None,
                }
            }
            Source::Task { task, test } => evaluate_examples(net, task, test, config.optim.batch_size),
        }
    }

    /// Builds the source of a task run.
    pub fn task(task: &TaskConfig, config: &RunConfig) -> Self {
        let test = test_set(task, config.train.test_examples, test_seed(config.run.seed));
        Source::Task { task: task.clone(), test }
    }
}

/// Loss and accuracy of `net` on `examples` (batched).
pub fn evaluate_examples(net: &Net, task: &TaskConfig, examples: &[Example], batch_size: usize) -> Evaluation {
    let device = net_device(net);
    let (mut loss_sum, mut count, mut correct) = (0.0, 0usize, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let s = score(net, task_batch(task, TaskBatch::from_examples(chunk), &device), true);
        loss_sum += s.loss.into_scalar::<f64>() * s.count as f64;
        count += s.count;
        correct += s.correct.unwrap_or(0);
    }
    let count = count.max(1);
    Evaluation { loss: loss_sum / count as f64, train_loss: None, accuracy: Some(correct as f64 / count as f64) }
}

fn task_batch(task: &TaskConfig, b: TaskBatch, device: &Device) -> Batch {
    let inputs = int2(b.inputs.clone(), b.batch, b.len, device);
    match task.classes() {
        Some(_) => {
            let padding = b
                .has_padding()
                .then(|| Tensor::<2, Bool>::from_data(TensorData::new(b.padding.clone(), [b.batch, b.len]), device));
            Batch::Class { inputs, padding, labels: b.labels }
        }
        None => Batch::Lm { inputs, targets: b.targets },
    }
}

fn net_device(net: &Net) -> Device {
    match net {
        Net::Lm(m) => m.trunk.wte.weight.val().device(),
        Net::Classifier(m) => m.trunk.wte.weight.val().device(),
    }
}

/// Mean cross-entropy (and optionally the number of correct argmax predictions) of a batch.
///
/// Language-model batches whose targets are all labelled use every position; batches with
/// [`IGNORE`]d positions score only the labelled ones, projecting just those hidden states onto
/// the vocabulary.
pub fn score(net: &Net, batch: Batch, count_correct: bool) -> Scored {
    match (net, batch) {
        (Net::Lm(model), Batch::Lm { inputs, targets }) => score_lm(model, inputs, targets, count_correct),
        (Net::Classifier(model), Batch::Class { inputs, padding, labels }) => {
            let logits = model.forward(inputs, padding); // [B, classes]
            let device = logits.device();
            let n = labels.len();
            let correct = count_correct.then(|| correct_argmax(&logits, &labels));
            let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), &device);
            Scored { loss: CrossEntropyLossConfig::new().init(&device).forward(logits, y), count: n, correct }
        }
        _ => unreachable!("batches always match the network"),
    }
}

fn score_lm(model: &LanguageModel, inputs: Tensor<2, Int>, targets: Vec<i64>, count_correct: bool) -> Scored {
    let device = inputs.device();
    let labelled: Vec<usize> = (0..targets.len()).filter(|&i| targets[i] != IGNORE).collect();
    let hidden = model.hidden(inputs); // [B,T,d]
    let [b, t, d] = hidden.dims();
    let (logits, y) = if labelled.len() == targets.len() {
        (model.project(hidden.reshape([b * t, d])), targets) //          [B·T, V]
    } else {
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(labelled.iter().map(|&i| i as i64).collect::<Vec<_>>(), [labelled.len()]),
            &device,
        );
        let picked = hidden.reshape([b * t, d]).select(0, idx); //       [K, d]
        (model.project(picked), labelled.iter().map(|&i| targets[i]).collect()) // [K, V]
    };
    let n = y.len();
    let correct = count_correct.then(|| correct_argmax(&logits, &y));
    let y = Tensor::<1, Int>::from_data(TensorData::new(y, [n]), &device);
    // Cross-entropy as −mean log p(target): log_softmax then gather.
    let logp = log_softmax(logits, 1); //                                [N, V]
    let picked = logp.gather(1, y.unsqueeze_dim(1)); //                  [N, 1]
    Scored { loss: picked.mean().neg().reshape([1]), count: n, correct }
}

/// Number of rows of `logits` `[N, C]` whose argmax equals `labels[row]`.
fn correct_argmax(logits: &Tensor<2>, labels: &[i64]) -> usize {
    let pred: Vec<i64> = logits.clone().argmax(1).into_data().try_into_vec_as::<i64>().unwrap_or_default();
    pred.iter().zip(labels).filter(|(p, l)| p == l).count()
}
