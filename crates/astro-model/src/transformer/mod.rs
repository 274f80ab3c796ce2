//! The Transformers: a decoder-only language model and an encoder classifier, sharing one trunk of
//! pre-LayerNorm blocks whose attention variant is set by the config.

pub mod block;
pub mod config;
pub mod encoder;
pub mod export;
pub mod generate;
pub mod lm;
pub mod sentence;
mod weights;

pub use block::{Block, Mlp, Trunk};
pub use config::{ClassifierConfig, NormPlacement, Pooling, Positions, TransformerConfig};
pub use encoder::EncoderClassifier;
pub use export::{ExportConfig, is_export};
pub use generate::{SamplingConfig, generate};
pub use lm::{DecodeState, LanguageModel};
pub use sentence::{
    ASTRO_CONFIG_FILE, ASTROCYTES_FILE, AstroEncoderFile, SentenceEncoder, bert_config, bert_tensors, saved_attention,
};
pub use weights::{SavedArchitecture, read_architecture};
