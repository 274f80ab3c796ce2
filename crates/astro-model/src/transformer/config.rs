//! Serde configuration of the Transformers (the `[model]` table of a run config).

use serde::{Deserialize, Serialize};

use crate::attention::AttentionConfig;
use crate::error::ConfigError;

/// How token positions enter the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// Learned absolute position embeddings (GPT-2, nanoGPT); limits the context to `block_size`.
    #[default]
    Learned,
    /// Rotary embeddings (RoFormer) applied to queries and keys of every head.
    Rotary,
    /// No position information (the attention sums are order-free; only causality orders tokens).
    None,
}

/// Architecture of the Transformer body shared by the language model and the encoder classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    /// Vocabulary size; `None` takes it from the tokenizer when training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    /// Training context length (and the number of learned positions).
    #[serde(default = "defaults::block_size")]
    pub block_size: usize,
    /// Number of blocks.
    #[serde(default = "defaults::n_layer")]
    pub n_layer: usize,
    /// Number of attention heads per block.
    #[serde(default = "defaults::n_head")]
    pub n_head: usize,
    /// Model width d_model.
    #[serde(default = "defaults::n_embd")]
    pub n_embd: usize,
    /// Dropout on embeddings, attention output and MLP output.
    #[serde(default)]
    pub dropout: f64,
    /// Biases in Linear and LayerNorm layers.
    #[serde(default)]
    pub bias: bool,
    /// Position encoding.
    #[serde(default)]
    pub positions: Positions,
    /// MLP hidden width as a multiple of `n_embd`; 0 removes the MLP (attention-only blocks).
    #[serde(default = "defaults::mlp_ratio")]
    pub mlp_ratio: usize,
    /// The attention variant and its settings.
    #[serde(default)]
    pub attention: AttentionConfig,
    /// Kernel K of the causal depthwise convolutions on q, k and v after their projections (H3,
    /// Based); 0 = none. Helps fixed-state attention with associative recall.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub short_conv: usize,
    /// Where the LayerNorms sit: `pre` (GPT-2, nanoGPT) or `post` (BERT).
    #[serde(default)]
    pub norm: NormPlacement,
    /// Token-type (segment) embeddings, BERT's; every token is type 0. 0 = none.
    #[serde(default)]
    pub type_vocab_size: usize,
    /// A LayerNorm on the summed embeddings (BERT).
    #[serde(default)]
    pub embedding_norm: bool,
    /// Epsilon of every LayerNorm (BERT checkpoints use 1e-12).
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
}

/// Where a block's LayerNorms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormPlacement {
    /// x + f(LN(x)) in every block, and a final LayerNorm (GPT-2, nanoGPT).
    #[default]
    Pre,
    /// LN(x + f(x)) in every block, no final LayerNorm (the original Transformer, BERT).
    Post,
}

fn is_zero(k: &usize) -> bool {
    *k == 0
}

mod defaults {
    pub fn block_size() -> usize {
        256
    }
    pub fn n_layer() -> usize {
        4
    }
    pub fn n_head() -> usize {
        4
    }
    pub fn n_embd() -> usize {
        128
    }
    pub fn mlp_ratio() -> usize {
        4
    }
    pub fn layer_norm_eps() -> f64 {
        1e-5
    }
}

impl Default for TransformerConfig {
    fn default() -> Self {
        Self {
            vocab_size: None,
            block_size: defaults::block_size(),
            n_layer: defaults::n_layer(),
            n_head: defaults::n_head(),
            n_embd: defaults::n_embd(),
            dropout: 0.0,
            bias: false,
            positions: Positions::default(),
            mlp_ratio: defaults::mlp_ratio(),
            attention: AttentionConfig::default(),
            short_conv: 0,
            norm: NormPlacement::Pre,
            type_vocab_size: 0,
            embedding_norm: false,
            layer_norm_eps: defaults::layer_norm_eps(),
        }
    }
}

/// How the encoder classifier pools token states into one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over non-padding tokens.
    #[default]
    Mean,
    /// The first token's state (a `[CLS]` token).
    Cls,
}

/// Classification head of the encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// Number of classes.
    pub classes: usize,
    /// Pooling of token states.
    #[serde(default)]
    pub pooling: Pooling,
}

impl TransformerConfig {
    /// Parses a `[model]` table (or a whole file holding only model keys) from TOML; unknown keys,
    /// wrong types and unknown variants are errors naming the key.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }

    /// The vocabulary size, or an error saying how to set it.
    pub fn vocab(&self) -> Result<usize, ConfigError> {
        self.vocab_size.ok_or_else(|| {
            ConfigError::invalid(
                "model.vocab_size",
                "unset",
                "set it in the config (it is filled in from the tokenizer when training)",
            )
        })
    }

    /// Checks every field; the error names the first offending one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(0) = self.vocab_size {
            return Err(ConfigError::invalid("model.vocab_size", 0, "the vocabulary needs at least one token"));
        }
        if self.block_size == 0 {
            return Err(ConfigError::invalid("model.block_size", 0, "the context must hold at least one token"));
        }
        if self.n_layer == 0 {
            return Err(ConfigError::invalid("model.n_layer", 0, "the model needs at least one block"));
        }
        if self.n_head == 0 {
            return Err(ConfigError::invalid("model.n_head", 0, "at least one head is needed"));
        }
        if self.n_embd == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(ConfigError::invalid(
                "model.n_head",
                self.n_head,
                format!("the number of heads must divide the width n_embd = {}", self.n_embd),
            ));
        }
        if self.positions == Positions::Rotary && !self.head_dim().is_multiple_of(2) {
            return Err(ConfigError::invalid(
                "model.positions",
                "rotary",
                format!("rotary positions need an even head width, got {}", self.head_dim()),
            ));
        }
        if self.short_conv > 64 {
            return Err(ConfigError::invalid(
                "model.short_conv",
                self.short_conv,
                "a short convolution spans at most 64 tokens (Based and H3 use 3–4); 0 turns it off",
            ));
        }
        if self.short_conv > self.block_size {
            return Err(ConfigError::invalid(
                "model.short_conv",
                self.short_conv,
                format!(
                    "the convolution is longer than the block (model.block_size = {}): its oldest taps would never \
                     see a token; use at most the block size (Based and H3 use 3–4)",
                    self.block_size
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ConfigError::invalid("model.dropout", self.dropout, "dropout must lie in [0, 1)"));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            return Err(ConfigError::invalid("model.layer_norm_eps", self.layer_norm_eps, "must lie in (0, 1)"));
        }
        self.attention.validate()
    }

    /// One-line summary, e.g. `4 layers × 4 heads, width 128, block 64, vocab 65, softmax`.
    pub fn describe(&self) -> String {
        format!(
            "{} layers × {} heads, width {}, block {}, vocab {}, {}",
            self.n_layer,
            self.n_head,
            self.n_embd,
            self.block_size,
            self.vocab_size.map_or("unset".to_string(), |v| v.to_string()),
            self.attention.describe()
        ) + &if self.short_conv > 0 { format!(", short conv {}", self.short_conv) } else { String::new() }
            + if self.norm == NormPlacement::Post { ", post-LN" } else { "" }
    }
}

impl ClassifierConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.classes < 2 {
            return Err(ConfigError::invalid(
                "classifier.classes",
                self.classes,
                "a classifier needs at least 2 classes",
            ));
        }
        Ok(())
    }
}
