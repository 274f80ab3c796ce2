//! A finished (or interrupted) run directory: its resolved config, tokenizer and weights.

use std::path::{Path, PathBuf};

use astro_data::Tokenizer;
use astro_train::{Net, RunConfig};
use burn::tensor::Device;

use crate::error::EvalError;

/// Which weights of a run to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weights {
    /// The final model (`model.bpk`), else the newest valid checkpoint.
    #[default]
    Final,
    /// The best-validation model (`best.bpk`).
    Best,
}

/// A run directory, loaded.
pub struct Run {
    /// The directory.
    pub dir: PathBuf,
    /// Its resolved configuration.
    pub config: RunConfig,
    /// Its tokenizer (text runs).
    pub tokenizer: Option<Box<dyn Tokenizer>>,
    /// The network.
    pub net: Net,
    /// The weight file used.
    pub weights: PathBuf,
}

impl Run {
    /// Loads `dir` onto `device`: a run directory made by `astro train`, or an export made by
    /// `astro export` (recognised by its `config.json`; `weights` does not apply to it).
    pub fn load(dir: &Path, weights: Weights, device: &Device) -> Result<Self, EvalError> {
        let bad = |reason: String| EvalError::Run { run: dir.to_path_buf(), reason };
        let config_path = dir.join("config.toml");
        if !config_path.is_file() && astro_model::transformer::is_export(dir) {
            return Self::load_export(dir, device);
        }
        if !config_path.is_file() && dir.join("model.safetensors").is_file() {
            return Err(bad(
                "it has model.safetensors but no config.json (an export needs both; write one with `astro export`)"
                    .into(),
            ));
        }
        if !config_path.is_file() {
            return Err(bad(
                "no config.toml (pass the directory `astro train` created, e.g. runs/shakespeare-char)".into()
            ));
        }
        let config = RunConfig::load(&config_path).map_err(|e| bad(e.to_string()))?;
        let file = match weights {
            Weights::Best => dir.join(astro_train::trainer::BEST_FILE),
            Weights::Final => {
                let fin = dir.join(astro_train::checkpoint::MODEL_FILE);
                if fin.is_file() {
                    fin
                } else {
                    astro_train::checkpoint::latest_valid(&dir.join("checkpoints"))
                        .map(|(d, _)| d.join(astro_train::checkpoint::MODEL_FILE))
                        .ok_or_else(|| bad("it holds no model (model.bpk) and no valid checkpoint".into()))?
                }
            }
        };
        if !file.is_file() {
            return Err(bad(format!("{} is missing", file.display())));
        }
        // A run trained on a larger machine may not fit this one: evaluating it holds the model and
        // one batch of the run's shape.
        {
            use astro_model::memory::{KeyNames, MemoryEstimate, Workload, available};
            let classes = config.task.as_ref().and_then(|t| t.classes()).unwrap_or(0);
            let workload = Workload::Infer { batch: config.optim.batch_size, seq: config.model.block_size };
            let vocab = config.model.vocab_size.unwrap_or(0);
            MemoryEstimate::new(&config.model, vocab, classes, workload, &KeyNames::run_config())
                .check(&format!("loading {}", dir.display()), &available())
                .map_err(astro_model::ModelError::from)?;
        }
        // Built from the run's config, then filled: weights of another variant or size (a file
        // copied from another run) are refused naming both architectures.
        let net = match config.model.vocab_size {
            Some(_) => Net::new(&config, device)?.load_weights(&file)?,
            None => Net::load(&file, device)?,
        };
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if config.task.is_none() { Some(astro_data::load_tokenizer(&tok_path)?) } else { None };
        Ok(Self { dir: dir.to_path_buf(), config, tokenizer, net, weights: file })
    }

    /// Loads an export directory: `config.json` + `model.safetensors`, with `tokenizer.json` for
    /// text models and, when it came from a run, that run's config as `run.toml` (its corpus and
    /// split; without it, evaluation needs `--data`).
    fn load_export(dir: &Path, device: &Device) -> Result<Self, EvalError> {
        let bad = |reason: String| EvalError::Run { run: dir.to_path_buf(), reason };
        let net = Net::from_export(dir, device)?;
        let run_toml = dir.join(RUN_CONFIG_FILE);
        let mut config = if run_toml.is_file() {
            RunConfig::load(&run_toml).map_err(|e| bad(e.to_string()))?
        } else {
            let mut config = RunConfig::default();
            config.data.dataset = None;
            config.data.path = None;
            config
        };
        config.model = match &net {
            Net::Lm(m) => m.config().clone(),
            Net::Classifier(m) => m.config().clone(),
        };
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if tok_path.is_file() {
            Some(astro_data::load_tokenizer(&tok_path)?)
        } else if config.task.is_none() && matches!(net, Net::Lm(_)) && run_toml.is_file() {
            return Err(bad("it has no tokenizer.json (export text models with `astro export`)".into()));
        } else {
            None
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            net,
            weights: dir.join(astro_model::transformer::export::WEIGHTS_FILE),
        })
    }
}

/// The run config an export carries (`astro export` copies the run's `config.toml`).
pub const RUN_CONFIG_FILE: &str = "run.toml";

/// Writes a directory all at once: `fill` writes into a temporary sibling of `out`, which then
/// replaces `out` with one rename (an empty `out` the user made is replaced; the caller refuses a
/// non-empty one beforehand). On any error the temporary directory is removed and nothing appears.
pub(crate) fn write_dir_atomically(
    out: &Path,
    fill: impl FnOnce(&Path) -> Result<(), EvalError>,
) -> Result<(), EvalError> {
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| EvalError::io("create", parent, e))?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| EvalError::io("create", &tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        // An empty directory (anything else was refused before): replace it.
        let _ = std::fs::remove_dir(out);
    }
    std::fs::rename(&tmp, out).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        EvalError::io("rename", out, e)
    })
}
