//! Typed errors of the model crate.

use thiserror::Error;

/// A model or attention configuration that cannot be built; names the offending field.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ConfigError {
    /// A field holds a value outside its valid range.
    #[error("invalid `{field}` = {value}: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `attention.features`.
        field: String,
        /// The rejected value, as written.
        value: String,
        /// Why it is rejected and what would be accepted.
        reason: String,
    },
    /// The configuration text itself could not be parsed (unknown key, wrong type, unknown variant).
    #[error("cannot parse model config: {0}")]
    Parse(String),
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(field: impl Into<String>, value: impl ToString, reason: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), value: value.to_string(), reason: reason.into() }
    }
}

/// Errors raised while building, loading or saving a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The work would not fit in this machine's memory (checked before allocating).
    #[error(transparent)]
    Memory(#[from] Box<crate::memory::MemoryError>),
    /// Saved weights belong to a model with another architecture or attention variant.
    #[error(
        "weights in {path} were saved from a model with {saved}, but the model being loaded has {expected}; \
         load them with the config they were trained with"
    )]
    Mismatch {
        /// File the weights came from.
        path: String,
        /// Summary of the saved model's architecture.
        saved: String,
        /// Summary of the requested model's architecture.
        expected: String,
    },
    /// Reading or writing a weights file failed.
    #[error("cannot {action} {path}: {reason}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file involved.
        path: String,
        /// The underlying error.
        reason: String,
    },
    /// Decoding ran past the positions the model knows.
    #[error(
        "context of {requested} tokens exceeds the model's {max} learned positions; \
         use rotary positions (model.positions = \"rotary\") or a larger block_size"
    )]
    ContextTooLong {
        /// Tokens the call would reach.
        requested: usize,
        /// Positions available.
        max: usize,
    },
    /// The requested compute backend is unknown or was not compiled in.
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// A calibrated hidden-neuron map could not be fitted to the data.
    #[error(transparent)]
    Calibration(#[from] CalibrationError),
}

/// Why a calibrated hidden-neuron map (`saderf`, `shifted_saderf`, `full_saderf`) could not get its parameters.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CalibrationError {
    /// Ψ = (spread of keys / spread of queries)^{1/4} needs both spreads positive.
    #[error(
        "layer {layer}, head {head}: the {side}' {statistic} along dimension {dim} is 0, so the {map} map's \
         ψ = (keys' {statistic} / queries' {statistic})^(1/4) is undefined there; calibrate on more varied text, \
         or pass --fallback (train.calibration_fallback = true when training) to use ψ = 1 on such dimensions"
    )]
    Undefined {
        /// The map.
        map: &'static str,
        /// Block index.
        layer: usize,
        /// Head index.
        head: usize,
        /// Dimension of the head.
        dim: usize,
        /// `queries` or `keys`.
        side: &'static str,
        /// `variance` or `mean square`.
        statistic: &'static str,
    },
    /// The full map's P needs both covariance matrices non-singular.
    #[error(
        "layer {layer}, head {head}: the {side}' covariance is singular (eigenvalue {index} is 0), so the {map} \
         map's transform P (P Σ_q P = Σ_k) is undefined; calibrate on more varied text, or pass --fallback \
         (train.calibration_fallback = true when training) to floor that spectrum"
    )]
    Singular {
        /// The map.
        map: &'static str,
        /// Block index.
        layer: usize,
        /// Head index.
        head: usize,
        /// Index of the vanishing eigenvalue (ascending order).
        index: usize,
        /// `queries` or `keys`.
        side: &'static str,
    },
    /// No token reached the statistics (all padding, or no data).
    #[error("layer {layer}, head {head}: no (non-padding) tokens to calibrate on; give more text")]
    NoData {
        /// Block index.
        layer: usize,
        /// Head index.
        head: usize,
    },
    /// The map has no data-dependent parameters.
    #[error("the {map} map has no parameters to calibrate; use saderf, shifted_saderf or full_saderf")]
    NotCalibrated {
        /// The map.
        map: &'static str,
    },
    /// Statistics or fitted parameters were not finite (NaN or infinite queries/keys).
    #[error("layer {layer}: {what} is not finite (NaN or infinity in the model's queries or keys)")]
    NotFinite {
        /// Block index.
        layer: usize,
        /// Which quantity.
        what: &'static str,
    },
}
