//! # astro-model
//!
//! The neuron–astrocyte network of Kozachkov, Kastanenka & Krotov ("Building transformers from
//! neurons and astrocytes", PNAS 2023) as a trainable Burn attention layer, the softmax and elu+1
//! baselines behind the same contract, and the small Transformers that host them.
//!
//! - [`attention`]: the inner-attention contract, the variants and their execution forms.
//! - [`transformer`]: the decoder-only language model and the encoder classifier.
//! - [`info`]: parameter and decoding-state accounting (`astro info`).
//! - [`kernels`]: fused CPU kernels (Burn backend extensions) for the flex backend.
//! - [`device`]: which compute backends are compiled in and how to pick one.
//! - [`memory`]: the memory a model will need, checked before it is built.

pub mod attention;
pub mod device;
pub mod error;
pub mod info;
pub mod kernels;
pub mod memory;
pub mod transformer;

pub use attention::{AttentionConfig, AttentionMask, InnerAttention};
pub use error::{CalibrationError, ConfigError, ModelError};
pub use transformer::{EncoderClassifier, LanguageModel, SentenceEncoder, TransformerConfig};
