//! Exports for other tools: `model.safetensors` in PyTorch's layout and names, with the
//! architecture in `config.json` beside it.
//!
//! Tensor names are the module paths without the `trunk.` prefix and without enum-variant names,
//! with PyTorch's conventions applied by burn-store's adapters (Linear weights `[out, in]`,
//! LayerNorm `weight`/`bias`):
//!
//! ```text
//! wte.weight                      [vocab, d]        token embedding (also the tied LM head)
//! wpe.weight                      [block_size, d]   learned positions (absent for rotary / none)
//! blocks.{i}.ln_1.weight|bias     [d]
//! blocks.{i}.attn.{q,k,v,o}_proj.weight   [d, d]   (+ .bias with model.bias)
//! blocks.{i}.attn.conv.weight      [3d, K]           model.short_conv = K: kernels of q | k | v, column j = j tokens back
//! blocks.{i}.attn.inner.omega     [heads, m, d/heads]   astrocytic: hidden-neuron weights Ω
//! blocks.{i}.attn.inner.phase     [heads, m]        astrocytic, cosine maps: phases b
//! blocks.{i}.attn.inner.log_psi   [heads, d/heads]  astrocytic, saderf maps: ln ψ (query ψ⊙q̃, key (k̃ − c)/ψ)
//! blocks.{i}.attn.inner.shift     [heads, d/heads]  astrocytic, shifted_saderf: key shift c (0 for saderf)
//! blocks.{i}.attn.inner.gerf_a    [heads]           astrocytic, saderf maps: GERF parameter A
//! blocks.{i}.attn.inner.rotation  [heads, d/heads, d/heads]  astrocytic, full_saderf: U (both sides read x̃ U)
//! blocks.{i}.ln_2.weight|bias     [d]
//! blocks.{i}.mlp.fc.weight        [mlp_ratio·d, d]  blocks.{i}.mlp.proj.weight [d, mlp_ratio·d]
//! ln_f.weight|bias                [d]
//! head.weight|bias                [classes, d]      encoder classifiers only
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use serde::{Deserialize, Serialize};

use super::weights::SavedArchitecture;
use crate::error::ModelError;

/// File name of the exported weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the exported architecture.
pub const CONFIG_FILE: &str = "config.json";
/// The `format` field of an astro `config.json`.
pub const FORMAT: &str = "astro";
/// File name of the reference batch: `tokens` `[2, t]` (I64) and astro's `logits` for them (F32),
/// so that another implementation can check itself against this one.
pub const REFERENCE_FILE: &str = "reference.safetensors";
/// Version of the export layout.
pub const FORMAT_VERSION: u32 = 1;

/// The contents of an export's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportConfig {
    /// Always `"astro"`.
    pub format: String,
    /// Layout version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// The model: its kind, Transformer config (attention variant included) and head.
    pub architecture: SavedArchitecture,
}

impl ExportConfig {
    /// The config of an export of a model built as `architecture`.
    pub fn new(architecture: SavedArchitecture) -> Self {
        Self { format: FORMAT.into(), format_version: FORMAT_VERSION, architecture }
    }

    /// Reads and checks `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| io("read", &path, e))?;
        let config: ExportConfig =
            serde_json::from_str(&text).map_err(|e| io("read", &path, format!("not an astro export config: {e}")))?;
        if config.format != FORMAT || config.format_version != FORMAT_VERSION {
            return Err(io(
                "read",
                &path,
                format!(
                    "format {:?} version {}; this astro reads format {FORMAT:?} version {FORMAT_VERSION}",
                    config.format, config.format_version
                ),
            ));
        }
        Ok(config)
    }
}

fn io(action: &'static str, path: &Path, reason: impl ToString) -> ModelError {
    ModelError::Io { action, path: path.display().to_string(), reason: reason.to_string() }
}

/// Writes `module`'s parameters to `path` in PyTorch's layout and names (see the module docs).
pub(crate) fn save_safetensors<M: Module>(module: &M, path: &Path) -> Result<(), ModelError> {
    let mut store = SafetensorsStore::from_file(path)
        .with_to_adapter(BurnToPyTorchAdapter)
        .skip_enum_variants(true)
        .with_key_remapping(r"^trunk\.", "")
        .overwrite(true);
    module.save_into(&mut store).map_err(|e| io("write", path, e))
}

/// Loads the parameters of an export into `module`; every parameter must be present with its shape.
pub(crate) fn load_safetensors<M: Module>(mut module: M, path: &Path) -> Result<M, ModelError> {
    if !path.is_file() {
        return Err(io("read", path, "no such file (an export directory holds model.safetensors and config.json)"));
    }
    check_tensors(&module, path)?;
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(PyTorchToBurnAdapter)
        .skip_enum_variants(true)
        .with_key_remapping(r"^((wte|wpe|wtt|ln_emb|blocks|ln_f)\.)", "trunk.$1")
        .validate(true)
        .allow_partial(false);
    let result = module.load_from(&mut store).map_err(|e| io("read", path, e))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        let mut problems: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        problems.extend(result.missing.iter().map(|(name, _)| format!("tensor `{name}` is missing")));
        return Err(io("read", path, problems.join("; ")));
    }
    if !result.unused.is_empty() {
        return Err(io(
            "read",
            path,
            format!(
                "tensors the model does not have: {} (was it exported from another model?)",
                result.unused.join(", ")
            ),
        ));
    }
    Ok(module)
}

/// Writes `dir/model.safetensors` and `dir/config.json` for `module`, built as `architecture`
/// (creating `dir`; existing files of an earlier export are replaced).
pub(crate) fn write_export<M: Module>(
    module: &M,
    architecture: SavedArchitecture,
    dir: &Path,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    // Write each file beside its target and rename, so that a failed export never leaves half a file.
    let config = dir.join(CONFIG_FILE);
    let json = serde_json::to_string_pretty(&ExportConfig::new(architecture)).map_err(|e| io("write", &config, e))?;
    let partial_config = dir.join(format!("{CONFIG_FILE}.partial"));
    std::fs::write(&partial_config, json + "\n").map_err(|e| io("write", &partial_config, e))?;
    let weights = dir.join(WEIGHTS_FILE);
    let partial = dir.join(format!("{WEIGHTS_FILE}.partial"));
    save_safetensors(module, &partial)?;
    // The store writes owner-only files; give the weights the permissions of an ordinary file.
    let permissions = std::fs::metadata(&partial_config).map_err(|e| io("write", &partial_config, e))?.permissions();
    std::fs::set_permissions(&partial, permissions).map_err(|e| io("write", &partial, e))?;
    std::fs::rename(&partial, &weights).map_err(|e| io("write", &weights, e))?;
    std::fs::rename(&partial_config, &config).map_err(|e| io("write", &config, e))
}

/// Whether `dir` looks like an export (it has a `config.json`).
pub fn is_export(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file()
}

/// Compares the tensors of the file at `path` with those `module` expects, by export name and
/// shape, so that a mismatch is reported in the file's own names.
fn check_tensors<M: Module>(module: &M, path: &Path) -> Result<(), ModelError> {
    let expected: BTreeMap<String, Vec<usize>> = module
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .map(|t| (t.name.strip_prefix("trunk.").unwrap_or(&t.name).to_string(), t.shape.iter().copied().collect()))
        .collect();
    compare_tensors(path, &expected, |_| false, "do model.safetensors and config.json come from the same export?")
}

/// Tensor names and shapes of the safetensors file at `path`, from its header alone (the tensor
/// data is not read: the checks before loading a large checkpoint stay cheap).
pub(crate) fn safetensors_shapes(path: &Path) -> Result<BTreeMap<String, Vec<usize>>, ModelError> {
    use std::io::Read;
    let invalid = |reason: String| io("read", path, format!("not a valid safetensors file: {reason}"));
    let mut file = std::fs::File::open(path).map_err(|e| io("read", path, e))?;
    let size = file.metadata().map_err(|e| io("read", path, e))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| invalid(e.to_string()))?;
    let n = u64::from_le_bytes(len);
    // The format caps headers at 100 MB.
    if n > 100_000_000 || n + 8 > size {
        return Err(invalid(format!("its header claims {n} bytes in a file of {size}")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|e| invalid(e.to_string()))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| invalid(e.to_string()))?;
    let data_end = header
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .filter_map(|(_, entry)| entry["data_offsets"].get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    if 8 + n + data_end > size {
        return Err(io(
            "read",
            path,
            format!(
                "truncated: its tensors end at byte {} but the file has {size} bytes; export or download it again",
                8 + n + data_end
            ),
        ));
    }
    header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, entry)| {
            let shape = entry["shape"]
                .as_array()
                .and_then(|dims| dims.iter().map(|d| d.as_u64().map(|d| d as usize)).collect::<Option<Vec<_>>>())
                .ok_or_else(|| invalid(format!("tensor `{name}` has no shape")))?;
            Ok((name, shape))
        })
        .collect()
}

/// Compares the tensor names and shapes in the safetensors file at `path` with `expected`
/// (names in the file's convention); `ignorable` file tensors may be extra. The error lists up to
/// three problems, then a count, then `hint`.
pub(crate) fn compare_tensors(
    path: &Path,
    expected: &BTreeMap<String, Vec<usize>>,
    ignorable: impl Fn(&str) -> bool,
    hint: &str,
) -> Result<(), ModelError> {
    let found = safetensors_shapes(path)?;
    let mut problems = Vec::new();
    for (name, shape) in expected {
        match found.get(name) {
            None => problems.push(format!("tensor `{name}` {shape:?} is missing")),
            Some(f) if f != shape => {
                problems.push(format!("tensor `{name}` has shape {f:?} but config.json implies {shape:?}"))
            }
            Some(_) => {}
        }
    }
    problems.extend(
        found
            .keys()
            .filter(|k| !expected.contains_key(*k) && !ignorable(k))
            .map(|k| format!("tensor `{k}` is not part of this model")),
    );
    if problems.is_empty() {
        return Ok(());
    }
    let more = problems.len().saturating_sub(3);
    let mut reason = problems.into_iter().take(3).collect::<Vec<_>>().join("; ");
    if more > 0 {
        reason.push_str(&format!("; and {more} more"));
    }
    reason.push_str(&format!(" ({hint})"));
    Err(io("read", path, reason))
}

/// Loads the weights of the export in `dir` into `module`, built as `architecture`; the export's
/// `config.json` must describe the same architecture (dropout may differ), else both are named.
pub(crate) fn load_export<M: Module>(module: M, architecture: &SavedArchitecture, dir: &Path) -> Result<M, ModelError> {
    let saved = ExportConfig::read(dir)?.architecture;
    if !saved.compatible(architecture) {
        return Err(ModelError::Mismatch {
            path: dir.join(CONFIG_FILE).display().to_string(),
            saved: saved.describe(),
            expected: format!("{}{}", architecture.describe(), saved.differences(architecture)),
        });
    }
    load_safetensors(module, &dir.join(WEIGHTS_FILE))
}

/// The fixed token batch of [`REFERENCE_FILE`]: `[2, t]` with t = min(16, block_size), spread
/// over the whole vocabulary.
pub fn reference_tokens(vocab: usize, block_size: usize) -> (Vec<i64>, [usize; 2]) {
    let t = block_size.min(16);
    let ids = (0..2 * t).map(|i| ((i as u64 * 7919 + 13) % vocab as u64) as i64).collect();
    (ids, [2, t])
}

/// Writes `dir/reference.safetensors`: the reference `tokens` and the `logits` astro computes for
/// them (`[2, t, vocab]` for language models, `[2, classes]` for classifiers).
pub(crate) fn write_reference(
    dir: &Path,
    tokens: &[i64],
    token_shape: [usize; 2],
    logits: burn::tensor::TensorData,
) -> Result<(), ModelError> {
    use safetensors::{Dtype, tensor::TensorView};
    let path = dir.join(REFERENCE_FILE);
    let logit_shape = logits.shape().to_vec();
    let values: Vec<f32> = logits.try_into_vec_as::<f32>().map_err(|e| io("write", &path, format!("{e:?}")))?;
    let token_bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    let logit_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = [
        ("logits", TensorView::new(Dtype::F32, logit_shape, &logit_bytes)),
        ("tokens", TensorView::new(Dtype::I64, token_shape.to_vec(), &token_bytes)),
    ];
    let mut tensors = Vec::new();
    for (name, view) in views {
        tensors.push((name, view.map_err(|e| io("write", &path, e))?));
    }
    let bytes = safetensors::serialize(tensors, None).map_err(|e| io("write", &path, e))?;
    let partial = dir.join(format!("{REFERENCE_FILE}.partial"));
    std::fs::write(&partial, bytes).map_err(|e| io("write", &partial, e))?;
    std::fs::rename(&partial, &path).map_err(|e| io("write", &path, e))
}
