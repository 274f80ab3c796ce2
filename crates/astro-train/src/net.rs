//! The network a run trains: a language model (text, next-token tasks) or an encoder classifier
//! (classification tasks), as one enum module so the loop, optimiser and checkpoints are shared.

use std::path::Path;

use astro_model::transformer::ClassifierConfig;
use astro_model::{EncoderClassifier, LanguageModel, ModelError};
use burn::module::Module;
use burn::tensor::Device;

use crate::config::RunConfig;

/// What a run trains.
#[derive(Module, Debug)]
pub enum Net {
    /// Decoder-only language model.
    Lm(LanguageModel),
    /// Bidirectional encoder with a classification head.
    Classifier(EncoderClassifier),
}

impl Net {
    /// Refits calibrated astrocytic maps (saderf, shifted_saderf) to `batch`'s queries and keys;
    /// other networks are returned unchanged. Returns the ψ = 1 fallback count.
    pub fn calibrate(self, batch: &crate::batch::Batch, fallback: bool) -> Result<(Self, usize), ModelError> {
        use crate::batch::Batch;
        match (self, batch) {
            (Net::Lm(m), Batch::Lm { inputs, .. }) | (Net::Lm(m), Batch::Class { inputs, .. }) => {
                let (m, n) = m.calibrate(inputs.clone(), fallback)?;
                Ok((Net::Lm(m), n))
            }
            (Net::Classifier(m), Batch::Class { inputs, padding, .. }) => {
                let (m, n) = m.calibrate(inputs.clone(), padding.clone(), fallback)?;
                Ok((Net::Classifier(m), n))
            }
            (Net::Classifier(m), Batch::Lm { inputs, .. }) => {
                let (m, n) = m.calibrate(inputs.clone(), None, fallback)?;
                Ok((Net::Classifier(m), n))
            }
        }
    }

    /// Whether any layer uses a calibrated hidden-neuron map.
    pub fn is_calibrated(&self) -> bool {
        let config = match self {
            Net::Lm(m) => m.config(),
            Net::Classifier(m) => m.config(),
        };
        matches!(&config.attention, astro_model::AttentionConfig::Astrocytic(c) if c.feature_map.is_calibrated())
    }

    /// A freshly initialised network for `config` (`model.vocab_size` must be set).
    pub fn new(config: &RunConfig, device: &Device) -> Result<Self, ModelError> {
        match config.task.as_ref().and_then(|t| t.classes()) {
            Some(classes) => {
                let head = ClassifierConfig { classes, pooling: config.classifier.pooling };
                Ok(Net::Classifier(EncoderClassifier::new(&config.model, &head, device)?))
            }
            None => Ok(Net::Lm(LanguageModel::new(&config.model, device)?)),
        }
    }

    /// Saves weights and architecture.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        match self {
            Net::Lm(m) => m.save(path),
            Net::Classifier(m) => m.save(path),
        }
    }

    /// Replaces the weights with those in `path` (same architecture required).
    pub fn load_weights(self, path: &Path) -> Result<Self, ModelError> {
        Ok(match self {
            Net::Lm(m) => Net::Lm(m.load_weights(path)?),
            Net::Classifier(m) => Net::Classifier(m.load_weights(path)?),
        })
    }

    /// Writes an export (`model.safetensors` in PyTorch's layout + `config.json`) to `dir`.
    pub fn export(&self, dir: &Path) -> Result<(), ModelError> {
        match self {
            Net::Lm(m) => m.export(dir),
            Net::Classifier(m) => m.export(dir),
        }
    }

    /// Replaces the weights with those of the export in `dir` (same architecture required).
    pub fn load_export(self, dir: &Path) -> Result<Self, ModelError> {
        Ok(match self {
            Net::Lm(m) => Net::Lm(m.load_export(dir)?),
            Net::Classifier(m) => Net::Classifier(m.load_export(dir)?),
        })
    }

    /// Builds whichever network the export in `dir` holds, with its weights.
    pub fn from_export(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        match astro_model::transformer::ExportConfig::read(dir)?.architecture {
            astro_model::transformer::SavedArchitecture::LanguageModel { .. } => {
                Ok(Net::Lm(LanguageModel::from_export(dir, device)?))
            }
            astro_model::transformer::SavedArchitecture::EncoderClassifier { .. } => {
                Ok(Net::Classifier(EncoderClassifier::from_export(dir, device)?))
            }
        }
    }

    /// Loads whichever network `path` holds.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        match astro_model::transformer::read_architecture(path)? {
            astro_model::transformer::SavedArchitecture::LanguageModel { .. } => {
                Ok(Net::Lm(LanguageModel::load(path, device)?))
            }
            astro_model::transformer::SavedArchitecture::EncoderClassifier { .. } => {
                Ok(Net::Classifier(EncoderClassifier::load(path, device)?))
            }
        }
    }

    /// Initialises every parameter now (Burn draws them lazily, at first use): a model too large
    /// for memory then fails here, before the run directory exists, not in the first step.
    pub fn materialise(self) -> Self {
        struct Touch;
        impl burn::module::ModuleVisitor for Touch {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::tensor::Tensor<D>>) {
                let _ = param.val();
            }
        }
        self.visit(&mut Touch);
        self
    }

    /// The language model, if this is one.
    pub fn lm(&self) -> Option<&LanguageModel> {
        match self {
            Net::Lm(m) => Some(m),
            Net::Classifier(_) => None,
        }
    }
}
