//! Typed errors of the training crate.

use std::path::PathBuf;

use thiserror::Error;

/// Why a training run could not start or had to stop.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The run configuration is invalid (names the key).
    #[error("invalid config: {0}")]
    Config(String),
    /// Corpus, tokenizer or sampling problem.
    #[error(transparent)]
    Data(#[from] astro_data::DataError),
    /// Model construction, weights or device problem.
    #[error(transparent)]
    Model(#[from] astro_model::ModelError),
    /// A file or directory could not be read or written.
    #[error("cannot {action} {path}: {reason}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "the loss became non-finite ({loss}) at step {step}; the run stopped. {checkpoint}\
         Lower optim.lr, raise optim.warmup_iters or enable optim.grad_clip."
    )]
    NonFinite {
        /// The step that went bad.
        step: usize,
        /// The loss value.
        loss: f64,
        /// Where the last good checkpoint is (a sentence).
        checkpoint: String,
    },
    /// Distillation of an astrocytic layer produced a NaN or infinite loss.
    #[error(
        "distilling layer {layer}: the attention KL became {loss} at step {step}; nothing was written. \
         Lower --lr or use fewer --steps"
    )]
    DistillNonFinite {
        /// Block index.
        layer: usize,
        /// The step that went bad.
        step: usize,
        /// The loss value.
        loss: f64,
    },
    /// A stop signal (SIGTERM, SIGINT, SIGUSR1) ended the run after its current step; the
    /// checkpoint of that step continues it exactly. Commands exit with
    /// [`crate::interrupt::EXIT_INTERRUPTED`].
    #[error("{}", interrupted_message(signal, *step, run_dir, checkpoint.as_deref()))]
    Interrupted {
        /// The signal's name.
        signal: String,
        /// Steps completed.
        step: usize,
        /// The run directory.
        run_dir: PathBuf,
        /// The checkpoint written for `step`; `None` when the signal came before the first step.
        checkpoint: Option<PathBuf>,
    },
    /// `--resume` cannot continue this run.
    #[error("cannot resume {run}: {reason}")]
    Resume {
        /// The run directory.
        run: PathBuf,
        /// Why.
        reason: String,
    },
}

fn interrupted_message(
    signal: &str,
    step: usize,
    run_dir: &std::path::Path,
    checkpoint: Option<&std::path::Path>,
) -> String {
    match checkpoint {
        Some(ckpt) => format!(
            "interrupted by {signal} at step {step}: checkpoint written to {}; continue with `astro train --resume {}`",
            ckpt.display(),
            run_dir.display()
        ),
        None => format!("interrupted by {signal} before its first step: nothing new was trained or written"),
    }
}

impl TrainError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, e: impl ToString) -> Self {
        TrainError::Io { action, path: path.into(), reason: e.to_string() }
    }
}
