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

    /// The language model, if this is one.
    pub fn lm(&self) -> Option<&LanguageModel> {
        match self {
            Net::Lm(m) => Some(m),
            Net::Classifier(_) => None,
        }
    }
}
