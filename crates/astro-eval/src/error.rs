//! Typed errors of the evaluation crate.

use std::path::PathBuf;

use thiserror::Error;

/// Why an evaluation, generation, ablation or report could not be made.
#[derive(Debug, Error)]
pub enum EvalError {
    /// The run directory is missing a file.
    #[error("{run} is not a usable run directory: {reason}")]
    Run {
        /// The directory.
        run: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// Bad arguments or configuration (names the key or option).
    #[error("{0}")]
    Invalid(String),
    /// Data problem.
    #[error(transparent)]
    Data(#[from] astro_data::DataError),
    /// Model problem.
    #[error(transparent)]
    Model(#[from] astro_model::ModelError),
    /// Training problem (ablation cells).
    #[error(transparent)]
    Train(#[from] astro_train::TrainError),
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {reason}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
}

impl EvalError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, e: impl ToString) -> Self {
        EvalError::Io { action, path: path.into(), reason: e.to_string() }
    }
}
