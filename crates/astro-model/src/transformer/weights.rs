//! Weight files: burnpack (`.bpk`, written atomically by burn-store) with the architecture stored
//! in the file's metadata, so that a file is self-describing and loading it into a model of
//! another variant or size fails with an error naming both.

use std::path::Path;

use burn::module::Module;
use burn::store::{BurnpackStore, ModuleSnapshot};
use serde::{Deserialize, Serialize};

use super::config::{ClassifierConfig, TransformerConfig};
use crate::error::ModelError;

/// Metadata key holding the JSON [`SavedArchitecture`].
const ARCH_KEY: &str = "astro.architecture";

/// What a weight file was saved from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum SavedArchitecture {
    /// A [`super::LanguageModel`].
    LanguageModel {
        /// Its architecture.
        config: TransformerConfig,
    },
    /// An [`super::EncoderClassifier`].
    EncoderClassifier {
        /// Its trunk.
        config: TransformerConfig,
        /// Its head.
        classifier: ClassifierConfig,
    },
}

impl SavedArchitecture {
    /// One-line summary for error messages.
    pub fn describe(&self) -> String {
        match self {
            SavedArchitecture::LanguageModel { config } => format!("language model: {}", config.describe()),
            SavedArchitecture::EncoderClassifier { config, classifier } => {
                format!("encoder classifier ({} classes): {}", classifier.classes, config.describe())
            }
        }
    }

    /// Whether weights of `self` fit a model built as `other`: everything that shapes or defines the
    /// tensors must agree; dropout may differ (fine-tuning with another dropout is legitimate).
    pub(crate) fn compatible(&self, other: &SavedArchitecture) -> bool {
        self.without_dropout() == other.without_dropout()
    }

    /// `self` with dropout zeroed: what [`Self::compatible`] and [`Self::differences`] compare.
    fn without_dropout(&self) -> SavedArchitecture {
        let mut a = self.clone();
        match &mut a {
            SavedArchitecture::LanguageModel { config } | SavedArchitecture::EncoderClassifier { config, .. } => {
                config.dropout = 0.0;
            }
        }
        a
    }

    /// The config keys in which `self` (saved) and `other` (this model) differ, dropout aside, for
    /// an error message: `; they differ in `model.short_conv` (saved 4, this model 2)`, or empty.
    /// (Two descriptions can read alike while the configs differ, e.g. in `attention.window`.)
    pub(crate) fn differences(&self, other: &SavedArchitecture) -> String {
        let (saved, here) = (flat_keys(&self.without_dropout()), flat_keys(&other.without_dropout()));
        let keys: std::collections::BTreeSet<&String> = saved.keys().chain(here.keys()).collect();
        let show = |v: Option<&serde_json::Value>| v.map_or("unset".to_string(), |v| v.to_string());
        let diffs: Vec<String> = keys
            .into_iter()
            .filter(|k| saved.get(*k) != here.get(*k))
            .map(|k| format!("`{k}` (saved {}, this model {})", show(saved.get(k)), show(here.get(k))))
            .collect();
        if diffs.is_empty() { String::new() } else { format!("; they differ in {}", diffs.join(", ")) }
    }
}

/// `arch` as dotted run-config keys (`model.attention.window` → 8); the tag naming the kind of
/// model is left out (the description says it).
fn flat_keys(arch: &SavedArchitecture) -> std::collections::BTreeMap<String, serde_json::Value> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut std::collections::BTreeMap<String, serde_json::Value>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    walk(&format!("{prefix}.{k}"), v, out);
                }
            }
            serde_json::Value::Null => {}
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(arch) {
        for (k, v) in map.iter().filter(|(k, _)| k.as_str() != "model") {
            // The trunk's keys are the run config's `model.*` keys.
            walk(if k == "config" { "model" } else { k }, v, &mut out);
        }
    }
    out
}

/// Loads the parameters of `path` into `module`, whose architecture may differ from the file's only
/// in the attention variant (the paper's weight transfer: projections, MLPs, norms and embeddings
/// are reused; parameters the file lacks, such as a fresh Ω, keep their initial values).
pub(crate) fn transfer<M: Module>(mut module: M, arch: &SavedArchitecture, path: &Path) -> Result<M, ModelError> {
    let saved = read_architecture(path)?;
    let without_attention = |a: &SavedArchitecture| {
        let mut a = a.clone();
        match &mut a {
            SavedArchitecture::LanguageModel { config } | SavedArchitecture::EncoderClassifier { config, .. } => {
                config.attention = crate::attention::AttentionConfig::default();
            }
        }
        a
    };
    if !without_attention(&saved).compatible(&without_attention(arch)) {
        return Err(ModelError::Mismatch {
            path: path.display().to_string(),
            saved: saved.describe(),
            expected: format!(
                "{}{} (weight transfer allows only the attention variant to differ)",
                arch.describe(),
                without_attention(&saved).differences(&without_attention(arch))
            ),
        });
    }
    let mut store = BurnpackStore::from_file(path).auto_extension(false).allow_partial(true);
    module.load_from(&mut store).map_err(|e| io("read", path, e))?;
    Ok(module)
}

fn io(action: &'static str, path: &Path, reason: impl ToString) -> ModelError {
    ModelError::Io { action, path: path.display().to_string(), reason: reason.to_string() }
}

/// Reads the architecture stored in a weight file.
pub fn read_architecture(path: &Path) -> Result<SavedArchitecture, ModelError> {
    let reader = burn_pack::Reader::from_file_exact(path).map_err(|e| io("read", path, e))?;
    let json = reader
        .metadata()
        .get(ARCH_KEY)
        .ok_or_else(|| io("read", path, "the file has no astro architecture metadata (was it written by astro?)"))?;
    serde_json::from_str(json).map_err(|e| io("read", path, format!("corrupt architecture metadata: {e}")))
}

/// Saves `module`'s parameters and its architecture to `path` (atomically; replaces the file).
pub(crate) fn save<M: Module>(module: &M, arch: &SavedArchitecture, path: &Path) -> Result<(), ModelError> {
    let json = serde_json::to_string(arch).map_err(|e| io("write", path, e))?;
    // Written beside the target and renamed over it, so a crash or a full disk leaves the old file
    // (or none), never a torn one.
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut store = BurnpackStore::from_file(&tmp).auto_extension(false).overwrite(true).metadata(ARCH_KEY, json);
        module.save_into(&mut store).map_err(|e| io("write", path, e))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| io("write", path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("write", path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Loads parameters from `path` into `module`, built as `arch`; refuses files of another architecture.
pub(crate) fn load<M: Module>(mut module: M, arch: &SavedArchitecture, path: &Path) -> Result<M, ModelError> {
    let saved = read_architecture(path)?;
    if !saved.compatible(arch) {
        return Err(ModelError::Mismatch {
            path: path.display().to_string(),
            saved: saved.describe(),
            expected: format!("{}{}", arch.describe(), saved.differences(arch)),
        });
    }
    let mut store = BurnpackStore::from_file(path).auto_extension(false);
    module.load_from(&mut store).map_err(|e| io("read", path, e))?;
    Ok(module)
}
