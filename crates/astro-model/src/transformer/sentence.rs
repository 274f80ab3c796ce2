//! Sentence encoders: a bidirectional trunk with mean pooling (sentence-transformers' recipe), built
//! from a Hugging Face BERT checkpoint directory (`config.json` + `model.safetensors`), with its own
//! attention or with any astro variant in its place (the paper's weight transfer).

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::{Bool, Device, Int, Tensor};

use super::block::Trunk;
use super::config::{NormPlacement, Positions, TransformerConfig};
use crate::attention::{AttentionConfig, AttentionMask, NormaliserTrace, SoftmaxConfig};
use crate::error::ModelError;

/// A bidirectional Transformer encoder whose sentence embedding is the mean of its token states.
#[derive(Module, Debug)]
pub struct SentenceEncoder {
    /// Embeddings and blocks.
    pub trunk: Trunk,
    #[module(skip)]
    config: TransformerConfig,
}

/// Hugging Face names → astro module paths, applied in order (`bert.` prefixes of task models first).
const BERT_NAMES: [(&str, &str); 13] = [
    (r"^bert\.", ""),
    (r"^embeddings\.word_embeddings\.", "trunk.wte."),
    (r"^embeddings\.position_embeddings\.", "trunk.wpe."),
    (r"^embeddings\.token_type_embeddings\.", "trunk.wtt."),
    (r"^embeddings\.LayerNorm\.", "trunk.ln_emb."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.query\.", "trunk.blocks.$1.attn.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.key\.", "trunk.blocks.$1.attn.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.value\.", "trunk.blocks.$1.attn.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", "trunk.blocks.$1.attn.o_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", "trunk.blocks.$1.ln_1."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", "trunk.blocks.$1.mlp.fc."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", "trunk.blocks.$1.mlp.proj."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", "trunk.blocks.$1.ln_2."),
];

/// Checkpoint tensors a sentence encoder does not use (the pooler, task heads, buffers).
fn unused_is_fine(name: &str) -> bool {
    name.contains("pooler.")
        || name.ends_with("position_ids")
        || name.starts_with("cls.")
        || name.starts_with("classifier.")
}

fn bad(path: &Path, reason: impl ToString) -> ModelError {
    ModelError::Io { action: "read", path: path.display().to_string(), reason: reason.to_string() }
}

/// The astro architecture of a Hugging Face BERT `config.json`: post-LN blocks, learned
/// positions, token types, embedding LayerNorm, biases, exact GELU, softmax attention.
/// Options astro does not implement are errors naming the key.
pub fn bert_config(path: &Path) -> Result<TransformerConfig, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, e))?;
    let hf: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(path, format!("not JSON: {e}")))?;
    let usize_key = |key: &str| -> Result<usize, ModelError> {
        hf.get(key)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| bad(path, format!("`{key}` is missing or not a non-negative integer")))
    };
    let unsupported = |key: &str, value: &serde_json::Value, why: &str| {
        bad(path, format!("unsupported option `{key}` = {value}: {why}"))
    };
    if let Some(kind) = hf.get("model_type").and_then(|v| v.as_str())
        && kind != "bert"
    {
        return Err(unsupported("model_type", &hf["model_type"], "only BERT checkpoints can be loaded"));
    }
    let checks: [(&str, &str, &str); 3] = [
        ("hidden_act", "gelu", "astro's MLP uses the exact (erf) GELU"),
        ("position_embedding_type", "absolute", "only learned absolute positions are implemented"),
        ("is_decoder", "false", "a sentence encoder is bidirectional"),
    ];
    for (key, expected, why) in checks {
        if let Some(value) = hf.get(key)
            && value.to_string().trim_matches('"') != expected
        {
            return Err(unsupported(key, value, why));
        }
    }
    let (d, heads, ff) =
        (usize_key("hidden_size")?, usize_key("num_attention_heads")?, usize_key("intermediate_size")?);
    if d == 0 || ff % d != 0 {
        return Err(unsupported(
            "intermediate_size",
            &hf["intermediate_size"],
            &format!("astro's MLP width is a multiple of hidden_size = {d}"),
        ));
    }
    let config = TransformerConfig {
        vocab_size: Some(usize_key("vocab_size")?),
        block_size: usize_key("max_position_embeddings")?,
        n_layer: usize_key("num_hidden_layers")?,
        n_head: heads,
        n_embd: d,
        dropout: 0.0,
        bias: true,
        positions: Positions::Learned,
        mlp_ratio: ff / d,
        attention: AttentionConfig::Softmax(SoftmaxConfig::default()),
        short_conv: 0,
        norm: NormPlacement::Post,
        type_vocab_size: usize_key("type_vocab_size").unwrap_or(0),
        embedding_norm: true,
        layer_norm_eps: hf.get("layer_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-12),
    };
    config.validate().map_err(|e| bad(path, e))?;
    Ok(config)
}

/// The tensors of a BERT checkpoint for `config`, in Hugging Face names, with their shapes.
pub fn bert_tensors(config: &TransformerConfig) -> BTreeMap<String, Vec<usize>> {
    let (d, ff, vocab) = (config.n_embd, config.mlp_ratio * config.n_embd, config.vocab_size.unwrap_or(0));
    let mut t = BTreeMap::new();
    t.insert("embeddings.word_embeddings.weight".to_string(), vec![vocab, d]);
    t.insert("embeddings.position_embeddings.weight".into(), vec![config.block_size, d]);
    if config.type_vocab_size > 0 {
        t.insert("embeddings.token_type_embeddings.weight".into(), vec![config.type_vocab_size, d]);
    }
    for p in ["weight", "bias"] {
        t.insert(format!("embeddings.LayerNorm.{p}"), vec![d]);
    }
    for l in 0..config.n_layer {
        let layer = |name: &str| format!("encoder.layer.{l}.{name}");
        for (name, out, inp) in [
            ("attention.self.query", d, d),
            ("attention.self.key", d, d),
            ("attention.self.value", d, d),
            ("attention.output.dense", d, d),
            ("intermediate.dense", ff, d),
            ("output.dense", d, ff),
        ] {
            t.insert(layer(&format!("{name}.weight")), vec![out, inp]);
            t.insert(layer(&format!("{name}.bias")), vec![out]);
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            for p in ["weight", "bias"] {
                t.insert(layer(&format!("{norm}.{p}")), vec![d]);
            }
        }
    }
    t
}

impl SentenceEncoder {
    /// A freshly initialised encoder; `config.vocab_size` must be set.
    pub fn new(config: &TransformerConfig, device: &Device) -> Result<Self, ModelError> {
        config.validate()?;
        let vocab = config.vocab()?;
        Ok(Self { trunk: Trunk::init(config, vocab, device), config: config.clone() })
    }

    /// Loads a Hugging Face BERT checkpoint directory (`config.json`, `model.safetensors`) with
    /// `attention` in every layer (`None`: the checkpoint's softmax). Every tensor the encoder
    /// needs must be present with its shape; a fresh Ω comes from the attention config's seed.
    pub fn from_hf_bert(dir: &Path, attention: Option<AttentionConfig>, device: &Device) -> Result<Self, ModelError> {
        let mut config = bert_config(&dir.join("config.json"))?;
        if let Some(attention) = attention {
            config.attention = attention;
        }
        let mut model = Self::new(&config, device)?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            let other = ["pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "model.onnx"]
                .into_iter()
                .find(|f| dir.join(f).is_file());
            return Err(bad(
                &weights,
                match other {
                    Some(f) => format!(
                        "no such file; the checkpoint has {f}, a format astro does not read — save it as safetensors \
                         (transformers: `model.save_pretrained(dir, safe_serialization=True)`)"
                    ),
                    None => "no such file (a Hugging Face checkpoint directory holds model.safetensors)".into(),
                },
            ));
        }
        // Task models (BertForSequenceClassification, …) prefix the encoder's names with `bert.`.
        let found = super::export::safetensors_shapes(&weights)?;
        let prefix = if found.contains_key("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let expected = bert_tensors(&config).into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)).collect();
        super::export::compare_tensors(&weights, &expected, unused_is_fine, "is config.json the checkpoint's own?")?;
        let mut store =
            SafetensorsStore::from_file(&weights).with_from_adapter(PyTorchToBurnAdapter).allow_partial(true);
        for (from, to) in BERT_NAMES {
            store = store.with_key_remapping(from, to);
        }
        let result = model.load_from(&mut store).map_err(|e| bad(&weights, e))?;
        let mut problems: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        problems.extend(
            result
                .missing
                .iter()
                .filter(|(name, _)| !name.contains(".inner."))
                .map(|(name, _)| format!("tensor for `{name}` is missing")),
        );
        problems.extend(
            result
                .unused
                .iter()
                .filter(|n| !unused_is_fine(n))
                .map(|n| format!("tensor `{n}` has no place in a BERT encoder")),
        );
        if !problems.is_empty() {
            let more = problems.len().saturating_sub(3);
            let mut reason = problems.into_iter().take(3).collect::<Vec<_>>().join("; ");
            if more > 0 {
                reason.push_str(&format!("; and {more} more"));
            }
            return Err(bad(&weights, reason));
        }
        Ok(model)
    }

    /// Loads an encoder directory: a Hugging Face BERT checkpoint as [`Self::from_hf_bert`] does
    /// (`attention` in every layer, `None`: its softmax), or a saved astrocytic encoder (the
    /// checkpoint's files plus [`ASTRO_CONFIG_FILE`] and [`ASTROCYTES_FILE`], written by
    /// `astro distill --model <BERT dir>`), which loads with its own astrocytes; `attention` must
    /// then be `None`.
    pub fn load(dir: &Path, attention: Option<AttentionConfig>, device: &Device) -> Result<Self, ModelError> {
        let Some(saved) = saved_attention(dir)? else {
            return Self::from_hf_bert(dir, attention, device);
        };
        if attention.is_some() {
            return Err(bad(
                &dir.join(ASTRO_CONFIG_FILE),
                "this directory is an astrocytic encoder with its own fitted attention; another attention cannot \
                 replace it (load the original checkpoint for that)",
            ));
        }
        let model = Self::from_hf_bert(dir, Some(saved), device)?;
        model.load_astrocytes(&dir.join(ASTROCYTES_FILE))
    }

    /// The softmax encoder a directory was made from: for a saved astrocytic encoder, the original
    /// checkpoint's weights with softmax attention (its `config.json` and weights are the source's).
    pub fn load_softmax(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        Self::from_hf_bert(dir, None, device)
    }

    /// Writes the astrocytic layers' parameters (Ω and the map's ψ, c, A, U per block; nothing
    /// else) to `path` as safetensors, under astro's module paths (`trunk.blocks.{i}.attn.inner.omega`, …).
    pub fn save_astrocytes(&self, path: &Path) -> Result<(), ModelError> {
        let mut store = SafetensorsStore::from_file(path).with_regex(r"\.attn\.inner\.").overwrite(true);
        self.save_into(&mut store).map_err(|e| ModelError::Io {
            action: "write",
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Reads [`Self::save_astrocytes`]'s file into this encoder's astrocytic layers; every such
    /// parameter must be there with its shape.
    fn load_astrocytes(mut self, path: &Path) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(bad(
                path,
                format!(
                    "no such file; an astrocytic encoder directory holds {ASTROCYTES_FILE} beside {ASTRO_CONFIG_FILE}"
                ),
            ));
        }
        let mut store =
            SafetensorsStore::from_file(path).with_regex(r"\.attn\.inner\.").validate(true).allow_partial(true);
        let result = self.load_from(&mut store).map_err(|e| bad(path, e))?;
        let mut problems: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        problems.extend(
            result
                .missing
                .iter()
                .filter(|(name, _)| name.contains(".attn.inner."))
                .map(|(name, _)| format!("tensor `{name}` is missing")),
        );
        problems.extend(result.unused.iter().map(|n| format!("tensor `{n}` has no place in this encoder")));
        if !problems.is_empty() {
            let more = problems.len().saturating_sub(3);
            let mut reason = problems.into_iter().take(3).collect::<Vec<_>>().join("; ");
            if more > 0 {
                reason.push_str(&format!("; and {more} more"));
            }
            return Err(bad(path, format!("{reason} (does {ASTRO_CONFIG_FILE} match this file?)")));
        }
        Ok(self)
    }

    /// The architecture.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// Token states `[batch, seq, d]` for `tokens` `[batch, seq]`; `padding` `[batch, seq]` marks
    /// padding (ignored as keys).
    pub fn forward(&self, tokens: Tensor<2, Int>, padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        self.trunk.forward(tokens, &mask(padding))
    }

    /// Sentence embeddings `[batch, d]`: the mean of the non-padding token states, scaled to unit
    /// length (sentence-transformers' Pooling + Normalize modules).
    pub fn embed(&self, tokens: Tensor<2, Int>, padding: Option<Tensor<2, Bool>>) -> Tensor<2> {
        let h = self.forward(tokens, padding.clone()); // [B,T,d]
        let [b, t, _] = h.dims();
        let keep = match padding {
            Some(p) => p.bool_not().float().unsqueeze_dim::<3>(2), // [B,T,1]
            None => Tensor::ones([b, t, 1], &h.device()),
        };
        let count = keep.clone().sum_dim(1).clamp_min(1e-9); // [B,1,1]
        let mean = ((h * keep).sum_dim(1) / count).squeeze_dim::<2>(1); // [B,d]
        let norm = mean.clone().square().sum_dim(1).sqrt().clamp_min(1e-12); // [B,1]
        mean / norm
    }

    /// Each block's queries and keys `[batch, heads, seq, head_dim]` on this model's own forward pass.
    pub fn attention_inputs(
        &self,
        tokens: Tensor<2, Int>,
        padding: Option<Tensor<2, Bool>>,
    ) -> Vec<(Tensor<4>, Tensor<4>)> {
        self.trunk.attention_inputs(tokens, &mask(padding))
    }

    /// Per-block traces of the astrocyte response and softmax's normaliser for every head and query.
    pub fn normalisers(&self, tokens: Tensor<2, Int>, padding: Option<Tensor<2, Bool>>) -> Vec<NormaliserTrace> {
        self.trunk.normalisers(tokens, &mask(padding))
    }
}

/// A saved astrocytic encoder's settings file (beside the Hugging Face checkpoint's files).
pub const ASTRO_CONFIG_FILE: &str = "astro.toml";
/// A saved astrocytic encoder's astrocyte parameters.
pub const ASTROCYTES_FILE: &str = "astrocytes.safetensors";

/// `astro.toml`: which attention replaces the checkpoint's softmax, and where it came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AstroEncoderFile {
    /// The attention in every layer (its parameters are in [`ASTROCYTES_FILE`]).
    pub attention: AttentionConfig,
    /// How it was made (free-form key–value pairs: source, fitting text, steps, …).
    #[serde(default)]
    pub provenance: BTreeMap<String, String>,
}

impl AstroEncoderFile {
    /// The file's TOML text.
    pub fn to_toml(&self) -> Result<String, ModelError> {
        toml::to_string(self).map_err(|e| ModelError::Io {
            action: "write",
            path: ASTRO_CONFIG_FILE.into(),
            reason: e.to_string(),
        })
    }
}

/// The attention of a saved astrocytic encoder in `dir` (`None` for a plain checkpoint directory).
pub fn saved_attention(dir: &Path) -> Result<Option<AttentionConfig>, ModelError> {
    let path = dir.join(ASTRO_CONFIG_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| bad(&path, e))?;
    let file: AstroEncoderFile =
        toml::from_str(&text).map_err(|e| bad(&path, format!("not a valid {ASTRO_CONFIG_FILE}: {e}")))?;
    if let AttentionConfig::Astrocytic(a) = &file.attention {
        a.validate().map_err(|e| bad(&path, e))?;
    }
    Ok(Some(file.attention))
}

fn mask(padding: Option<Tensor<2, Bool>>) -> AttentionMask {
    let mask = AttentionMask::bidirectional();
    match padding {
        Some(p) => mask.with_padding(p),
        None => mask,
    }
}
