//! Decoder-only language model (GPT-2 / nanoGPT layout) with a pluggable attention variant.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use super::block::Trunk;
use super::config::TransformerConfig;
use super::export;
use super::weights::{self, SavedArchitecture};
use crate::attention::layer::LayerState;
use crate::attention::{AttentionMask, NormaliserTrace};
use crate::error::ModelError;

/// Decoding memory of a language model: one [`LayerState`] per block and the position reached.
#[derive(Debug, Clone, Default)]
pub struct DecodeState {
    /// Per-block attention state (empty before the first call).
    pub layers: Vec<LayerState>,
    /// Tokens consumed so far.
    pub position: usize,
}

impl DecodeState {
    /// Floats held by all layers (for all batch rows).
    pub fn num_floats(&self) -> usize {
        self.layers.iter().map(|s| s.num_floats()).sum()
    }
}

/// Token embedding → blocks → final norm → LM head tied to the token embedding.
#[derive(Module, Debug)]
pub struct LanguageModel {
    /// Embeddings, blocks and final norm.
    pub trunk: Trunk,
    #[module(skip)]
    config: TransformerConfig,
}

impl LanguageModel {
    /// A freshly initialised model (GPT-2 init); `config.vocab_size` must be set.
    pub fn new(config: &TransformerConfig, device: &Device) -> Result<Self, ModelError> {
        config.validate()?;
        let vocab = config.vocab()?;
        Ok(Self { trunk: Trunk::init(config, vocab, device), config: config.clone() })
    }

    /// Builds the model stored in `path` (architecture from the file's metadata) with its weights.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        match weights::read_architecture(path)? {
            SavedArchitecture::LanguageModel { config } => Self::new(&config, device)?.load_weights(path),
            other => Err(ModelError::Mismatch {
                path: path.display().to_string(),
                saved: other.describe(),
                expected: "a language model".to_string(),
            }),
        }
    }

    /// Replaces the weights with those in `path`; fails, naming both, if the file holds another
    /// architecture or attention variant.
    pub fn load_weights(self, path: &Path) -> Result<Self, ModelError> {
        let arch = self.architecture();
        weights::load(self, &arch, path)
    }

    /// Loads the weights of a model that differs from this one only in its attention variant
    /// (e.g. a softmax-trained model into astrocytic attention: the paper's weight transfer).
    pub fn transfer_weights(self, path: &Path) -> Result<Self, ModelError> {
        let arch = self.architecture();
        weights::transfer(self, &arch, path)
    }

    /// Saves weights and architecture to `path` (burnpack, written atomically).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        weights::save(self, &self.architecture(), path)
    }

    /// Writes an export for other tools: `dir/model.safetensors` (PyTorch layout and names, see
    /// [`super::export`]) and `dir/config.json` (the architecture).
    /// With them, `dir/reference.safetensors`: logits of a fixed batch for parity checks.
    pub fn export(&self, dir: &Path) -> Result<(), ModelError> {
        export::write_export(self, self.architecture(), dir)?;
        let (ids, shape) = export::reference_tokens(self.config.vocab()?, self.config.block_size);
        let device = self.trunk.wte.weight.val().device();
        let tokens = Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(ids.clone(), shape), &device);
        export::write_reference(dir, &ids, shape, self.forward(tokens).into_data())
    }

    /// Builds the model of an export directory written by [`Self::export`] (or by another tool in
    /// the same layout) with its weights.
    pub fn from_export(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        match export::ExportConfig::read(dir)?.architecture {
            SavedArchitecture::LanguageModel { config } => Self::new(&config, device)?.load_export(dir),
            other => Err(ModelError::Mismatch {
                path: dir.join(export::CONFIG_FILE).display().to_string(),
                saved: other.describe(),
                expected: "a language model".to_string(),
            }),
        }
    }

    /// Replaces the weights with those of the export in `dir` (same architecture required).
    pub fn load_export(self, dir: &Path) -> Result<Self, ModelError> {
        let arch = self.architecture();
        export::load_export(self, &arch, dir)
    }

    /// The architecture.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    fn architecture(&self) -> SavedArchitecture {
        SavedArchitecture::LanguageModel { config: self.config.clone() }
    }

    /// Hidden states → logits over the vocabulary with the tied embedding: `[B,T,d]` → `[B,T,V]`.
    fn head(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let w = self.trunk.wte.weight.val(); //                 [V, d]
        let logits = x.reshape([b * t, d]).matmul(w.transpose()); // [B·T,d] @ [d,V] (one product, see linear_rows)
        let v = logits.dims()[1];
        logits.reshape([b, t, v]) //                            [B,T,V]
    }

    /// Logits of selected hidden states: `[N, d]` → `[N, V]` (tasks that score a few positions).
    pub fn project(&self, hidden: Tensor<2>) -> Tensor<2> {
        hidden.matmul(self.trunk.wte.weight.val().transpose()) // [N,d] @ [d,V]
    }

    /// Final hidden states `[batch, seq, d]` for `tokens` `[batch, seq]` (causal).
    pub fn hidden(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.trunk.forward(tokens, &AttentionMask::causal())
    }

    /// Logits `[batch, seq, vocab]` for `tokens` `[batch, seq]` (causal).
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.head(self.hidden(tokens))
    }

    /// Logits of the last position only, `[batch, 1, vocab]`, for `tokens` `[batch, seq]` (causal): one
    /// parallel forward without decoding state, whose last block computes the MLP and output projection
    /// of the last position only (generation past learned positions re-encodes its window this way).
    pub fn last_logits(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.head(self.trunk.forward_last(tokens, &AttentionMask::causal())) // [B,1,V]
    }

    /// Per-block traces of the astrocyte response and softmax normaliser for every head and query
    /// of `tokens` `[batch, seq]` (causal), for comparing the astrocyte with softmax.
    pub fn normalisers(&self, tokens: Tensor<2, Int>) -> Vec<NormaliserTrace> {
        self.trunk.normalisers(tokens, &AttentionMask::causal())
    }

    /// Fits calibrated astrocytic maps to `tokens` `[batch, seq]`; see
    /// [`super::block::Trunk::calibrate`]. Returns the model and the count of ψ = 1 fallbacks.
    pub fn calibrate(mut self, tokens: Tensor<2, Int>, fallback: bool) -> Result<(Self, usize), ModelError> {
        let (trunk, n) = self.trunk.calibrate(tokens, &AttentionMask::causal(), fallback)?;
        self.trunk = trunk;
        Ok((self, n))
    }

    /// Each block's queries and keys on this model's own forward pass over `tokens` (causal).
    pub fn attention_inputs(&self, tokens: Tensor<2, Int>) -> Vec<(Tensor<4>, Tensor<4>)> {
        self.trunk.attention_inputs(tokens, &AttentionMask::causal())
    }

    /// Logits for new `tokens` `[batch, seq_new]` continuing `state`; astrocytic and linear attention
    /// carry a constant-size memory, softmax a KV cache. Errors if learned positions run out.
    pub fn forward_incremental(
        &self,
        tokens: Tensor<2, Int>,
        state: DecodeState,
    ) -> Result<(Tensor<3>, DecodeState), ModelError> {
        let t = tokens.dims()[1];
        if let Some(max) = self.trunk.max_positions()
            && state.position + t > max
        {
            return Err(ModelError::ContextTooLong { requested: state.position + t, max });
        }
        let (x, layers) = self.trunk.forward_incremental(tokens, state.position, state.layers);
        Ok((self.head(x), DecodeState { layers, position: state.position + t }))
    }
}
