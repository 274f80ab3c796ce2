//! Encoder classifier: bidirectional blocks, pooling, and a linear classification head.

use std::path::Path;

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Bool, Device, Int, Tensor};

use super::block::{INIT_STD, Trunk, gpt_linear};
use super::config::{ClassifierConfig, Pooling, TransformerConfig};
use super::export;
use super::weights::{self, SavedArchitecture};
use crate::attention::AttentionMask;
use crate::error::ModelError;

/// Bidirectional Transformer encoder with a classification head.
#[derive(Module, Debug)]
pub struct EncoderClassifier {
    /// Embeddings, blocks and final norm.
    pub trunk: Trunk,
    /// Pooled state → class logits.
    pub head: Linear,
    #[module(skip)]
    config: TransformerConfig,
    #[module(skip)]
    classifier: ClassifierConfig,
}

impl EncoderClassifier {
    /// A freshly initialised classifier; `config.vocab_size` must be set.
    pub fn new(config: &TransformerConfig, classifier: &ClassifierConfig, device: &Device) -> Result<Self, ModelError> {
        config.validate()?;
        classifier.validate()?;
        let vocab = config.vocab()?;
        Ok(Self {
            trunk: Trunk::init(config, vocab, device),
            head: gpt_linear(config.n_embd, classifier.classes, true, INIT_STD, device),
            config: config.clone(),
            classifier: classifier.clone(),
        })
    }

    /// Builds the classifier stored in `path` with its weights.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        match weights::read_architecture(path)? {
            SavedArchitecture::EncoderClassifier { config, classifier } => {
                Self::new(&config, &classifier, device)?.load_weights(path)
            }
            other => Err(ModelError::Mismatch {
                path: path.display().to_string(),
                saved: other.describe(),
                expected: "an encoder classifier".to_string(),
            }),
        }
    }

    /// Replaces the weights with those in `path` (same architecture required).
    pub fn load_weights(self, path: &Path) -> Result<Self, ModelError> {
        let arch = self.architecture();
        weights::load(self, &arch, path)
    }

    /// Saves weights and architecture to `path`.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        weights::save(self, &self.architecture(), path)
    }

    /// Writes an export: `dir/model.safetensors` (PyTorch layout) and `dir/config.json`.
    /// With them, `dir/reference.safetensors`: logits of a fixed batch for parity checks.
    pub fn export(&self, dir: &Path) -> Result<(), ModelError> {
        export::write_export(self, self.architecture(), dir)?;
        let (ids, shape) = export::reference_tokens(self.config.vocab()?, self.config.block_size);
        let device = self.trunk.wte.weight.val().device();
        let tokens = Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(ids.clone(), shape), &device);
        export::write_reference(dir, &ids, shape, self.forward(tokens, None).into_data())
    }

    /// Builds the classifier of an export directory with its weights.
    pub fn from_export(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        match export::ExportConfig::read(dir)?.architecture {
            SavedArchitecture::EncoderClassifier { config, classifier } => {
                Self::new(&config, &classifier, device)?.load_export(dir)
            }
            other => Err(ModelError::Mismatch {
                path: dir.join(export::CONFIG_FILE).display().to_string(),
                saved: other.describe(),
                expected: "an encoder classifier".to_string(),
            }),
        }
    }

    /// Replaces the weights with those of the export in `dir` (same architecture required).
    pub fn load_export(self, dir: &Path) -> Result<Self, ModelError> {
        let arch = self.architecture();
        export::load_export(self, &arch, dir)
    }

    /// The trunk's architecture.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// The head's settings.
    pub fn classifier(&self) -> &ClassifierConfig {
        &self.classifier
    }

    fn architecture(&self) -> SavedArchitecture {
        SavedArchitecture::EncoderClassifier { config: self.config.clone(), classifier: self.classifier.clone() }
    }

    /// Fits calibrated astrocytic maps to `tokens` `[batch, seq]` (padding skipped); see
    /// [`super::block::Trunk::calibrate`]. Returns the model and the count of ψ = 1 fallbacks.
    pub fn calibrate(
        mut self,
        tokens: Tensor<2, Int>,
        padding: Option<Tensor<2, Bool>>,
        fallback: bool,
    ) -> Result<(Self, usize), ModelError> {
        let mut mask = AttentionMask::bidirectional();
        if let Some(p) = padding {
            mask = mask.with_padding(p);
        }
        let (trunk, n) = self.trunk.calibrate(tokens, &mask, fallback)?;
        self.trunk = trunk;
        Ok((self, n))
    }

    /// Class logits `[batch, classes]` for `tokens` `[batch, seq]`; `padding` `[batch, seq]` marks
    /// padding tokens (ignored as keys and in mean pooling).
    pub fn forward(&self, tokens: Tensor<2, Int>, padding: Option<Tensor<2, Bool>>) -> Tensor<2> {
        let mut mask = AttentionMask::bidirectional();
        if let Some(p) = padding.clone() {
            mask = mask.with_padding(p);
        }
        let h = self.trunk.forward(tokens, &mask); // [B,T,d]
        let pooled = match (self.classifier.pooling, padding) {
            (Pooling::Cls, _) => h.narrow(1, 0, 1).squeeze_dim::<2>(1), // [B,d]
            (Pooling::Mean, None) => h.mean_dim(1).squeeze_dim::<2>(1),
            (Pooling::Mean, Some(p)) => {
                let keep = p.bool_not().float().unsqueeze_dim::<3>(2); // [B,T,1]
                let count = keep.clone().sum_dim(1).clamp_min(1.0); //  [B,1,1]
                ((h * keep).sum_dim(1) / count).squeeze_dim::<2>(1) //  [B,d]
            }
        };
        self.head.forward(pooled)
    }
}
