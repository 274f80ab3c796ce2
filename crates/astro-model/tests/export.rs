//! Exports (`model.safetensors` in PyTorch's layout + `config.json`): round trips and bad input.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use astro_model::attention::{AstrocyticConfig, AttentionConfig, FeatureMap, LinearConfig, SoftmaxConfig};
use astro_model::transformer::{ClassifierConfig, NormPlacement, Pooling, Positions};
use astro_model::{EncoderClassifier, LanguageModel, TransformerConfig};
use burn::tensor::{Int, Tensor, TensorData};
use common::{device, host};

fn variants() -> Vec<(&'static str, AttentionConfig)> {
    vec![
        ("softmax", AttentionConfig::Softmax(SoftmaxConfig::default())),
        ("astrocytic", AttentionConfig::Astrocytic(AstrocyticConfig { features: 32, ..AstrocyticConfig::default() })),
        (
            "astrocytic-cosine",
            AttentionConfig::Astrocytic(AstrocyticConfig {
                features: 16,
                feature_map: FeatureMap::Cosine,
                orthogonal: true,
                decay: 0.9,
                ..AstrocyticConfig::default()
            }),
        ),
        ("linear", AttentionConfig::Linear(LinearConfig::default())),
    ]
}

fn config(attention: AttentionConfig, positions: Positions, bias: bool) -> TransformerConfig {
    TransformerConfig {
        vocab_size: Some(19),
        block_size: 16,
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        positions,
        bias,
        attention,
        ..TransformerConfig::default()
    }
}

fn tokens(len: usize, dev: &burn::tensor::Device) -> Tensor<2, Int> {
    let ids: Vec<i64> = (0..len as i64).map(|i| (i * 5 + i * i) % 19).collect();
    Tensor::from_data(TensorData::new(ids, [1, len]), dev)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("astro-export-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Tensor name → shape, from a safetensors header (8-byte little-endian length, then JSON).
fn safetensors_shapes(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            (k, shape)
        })
        .collect()
}

#[test]
fn export_round_trip_gives_identical_logits() {
    let dev = device();
    let tmp = TempDir::new("round-trip");
    for (name, attention) in variants() {
        for positions in [Positions::Learned, Positions::Rotary] {
            let model = LanguageModel::new(&config(attention.clone(), positions, true), &dev).unwrap();
            let dir = tmp.0.join(format!("{name}-{positions:?}"));
            model.export(&dir).unwrap();
            let loaded = LanguageModel::from_export(&dir, &dev).unwrap();
            assert_eq!(loaded.config(), model.config(), "{name}: architecture");
            let x = tokens(12, &dev);
            assert_eq!(
                host(&model.forward(x.clone())),
                host(&loaded.forward(x)),
                "{name} {positions:?}: logits differ"
            );
            check_reference(&dir, &model);
        }
        // BERT's layout: post-LN, token types, embedding LayerNorm.
        let bert = TransformerConfig {
            norm: NormPlacement::Post,
            type_vocab_size: 2,
            embedding_norm: true,
            layer_norm_eps: 1e-12,
            ..config(attention.clone(), Positions::Learned, true)
        };
        let model = LanguageModel::new(&bert, &dev).unwrap();
        let dir = tmp.0.join(format!("{name}-bert"));
        model.export(&dir).unwrap();
        let shapes = safetensors_shapes(&dir.join("model.safetensors"));
        assert_eq!(shapes.get("wtt.weight"), Some(&vec![2, 8]));
        assert_eq!(shapes.get("ln_emb.weight"), Some(&vec![8]));
        assert!(!shapes.contains_key("ln_f.weight"));
        let loaded = LanguageModel::from_export(&dir, &dev).unwrap();
        let x = tokens(12, &dev);
        assert_eq!(host(&model.forward(x.clone())), host(&loaded.forward(x)), "{name} post-LN: logits differ");
        check_reference(&dir, &model);
    }
}

/// `reference.safetensors` holds a `[2, t]` token batch and the model's logits for it.
fn check_reference(dir: &Path, model: &LanguageModel) {
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tokens = file.tensor("tokens").unwrap();
    assert_eq!(tokens.dtype(), safetensors::Dtype::I64);
    let ids: Vec<i64> = tokens.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(tokens.shape(), &[2, 16]);
    assert!(
        ids.iter().all(|&i| (0..19).contains(&i)) && ids.iter().collect::<std::collections::HashSet<_>>().len() > 10
    );
    let logits = file.tensor("logits").unwrap();
    assert_eq!(logits.shape(), &[2, 16, 19]);
    let stored: Vec<f64> =
        logits.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect();
    let dev = device();
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 16]), &dev);
    assert_eq!(stored, host(&model.forward(x)));
}

#[test]
fn export_uses_pytorch_names_and_layouts() {
    let dev = device();
    let tmp = TempDir::new("names");
    let astro = variants()[2].1.clone(); // cosine map: Ω and phases
    let model = LanguageModel::new(&config(astro, Positions::Learned, true), &dev).unwrap();
    model.export(&tmp.0).unwrap();
    let shapes = safetensors_shapes(&tmp.0.join("model.safetensors"));
    let expect = |name: &str, shape: &[usize]| {
        assert_eq!(shapes.get(name).map(Vec::as_slice), Some(shape), "{name} in {:?}", shapes.keys());
    };
    expect("wte.weight", &[19, 8]);
    expect("wpe.weight", &[16, 8]);
    expect("ln_f.weight", &[8]);
    expect("ln_f.bias", &[8]);
    for l in 0..2 {
        expect(&format!("blocks.{l}.ln_1.weight"), &[8]);
        expect(&format!("blocks.{l}.attn.q_proj.weight"), &[8, 8]);
        expect(&format!("blocks.{l}.attn.o_proj.bias"), &[8]);
        expect(&format!("blocks.{l}.attn.inner.omega"), &[2, 16, 4]);
        expect(&format!("blocks.{l}.attn.inner.phase"), &[2, 16]);
        expect(&format!("blocks.{l}.mlp.fc.weight"), &[32, 8]); // [out, in]: transposed from Burn's [in, out]
        expect(&format!("blocks.{l}.mlp.proj.weight"), &[8, 32]);
    }
    assert!(shapes.keys().all(|k| !k.contains("trunk") && !k.contains("Astrocytic") && !k.contains("gamma")));
    // Linear weights really are transposed: PyTorch's y = x Wᵀ with W [out, in].
    let bytes = std::fs::read(tmp.0.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let entry = &header["blocks.0.mlp.fc.weight"];
    assert_eq!(entry["dtype"], "F32");
    let [start, end] = [0, 1].map(|i| entry["data_offsets"][i].as_u64().unwrap() as usize + 8 + n);
    let exported: Vec<f32> =
        bytes[start..end].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let burn_w = host(&model.trunk.blocks[0].mlp.as_ref().unwrap().fc.weight.val()); // [in 8, out 32]
    for i in 0..8 {
        for o in 0..32 {
            assert_eq!(exported[o * 8 + i] as f64, burn_w[i * 32 + o]);
        }
    }
}

#[test]
fn encoder_classifier_export_round_trip() {
    let dev = device();
    let tmp = TempDir::new("encoder");
    let classifier = ClassifierConfig { classes: 3, pooling: Pooling::Mean };
    let model =
        EncoderClassifier::new(&config(variants()[1].1.clone(), Positions::Learned, false), &classifier, &dev).unwrap();
    model.export(&tmp.0).unwrap();
    assert!(safetensors_shapes(&tmp.0.join("model.safetensors")).contains_key("head.weight"));
    let loaded = EncoderClassifier::from_export(&tmp.0, &dev).unwrap();
    let x = tokens(10, &dev);
    assert_eq!(host(&model.forward(x.clone(), None)), host(&loaded.forward(x, None)));
    let err = LanguageModel::from_export(&tmp.0, &dev).unwrap_err().to_string();
    assert!(err.contains("encoder classifier") && err.contains("language model"), "{err}");
}

#[test]
fn bad_exports_name_the_file_and_tensor() {
    let dev = device();
    let tmp = TempDir::new("bad");
    let model = LanguageModel::new(&config(variants()[0].1.clone(), Positions::Learned, true), &dev).unwrap();
    model.export(&tmp.0).unwrap();
    let config_path = tmp.0.join("config.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let edited = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
        edit(&mut v["architecture"]["config"]);
        std::fs::write(&config_path, serde_json::to_string(&v).unwrap()).unwrap();
    };

    // A config whose shapes disagree with the weights: the tensor is named.
    edited(&|c| c["n_embd"] = 16.into());
    let err = LanguageModel::from_export(&tmp.0, &dev).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("`blocks.0.attn.k_proj.weight` has shape [8, 8]"),
        "{err}"
    );

    // A config of another variant: its parameters are missing from the file.
    edited(&|c| c["attention"] = serde_json::json!({ "kind": "astrocytic", "features": 8 }));
    let err = LanguageModel::from_export(&tmp.0, &dev).unwrap_err().to_string();
    assert!(err.contains("`blocks.0.attn.inner.omega` [2, 8, 4] is missing"), "{err}");

    // Not an astro config at all, and no config.
    std::fs::write(&config_path, r#"{ "architectures": ["BertModel"] }"#).unwrap();
    let err = LanguageModel::from_export(&tmp.0, &dev).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("not an astro export"), "{err}");
    std::fs::remove_file(&config_path).unwrap();
    let err = LanguageModel::from_export(&tmp.0, &dev).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");

    // A config without its weights.
    std::fs::write(&config_path, &original).unwrap();
    std::fs::remove_file(tmp.0.join("model.safetensors")).unwrap();
    let err = LanguageModel::from_export(&tmp.0, &dev).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");

    // Weights that are not safetensors.
    std::fs::write(tmp.0.join("model.safetensors"), b"not a tensor file").unwrap();
    let err = LanguageModel::from_export(&tmp.0, &dev).unwrap_err().to_string();
    assert!(err.contains("not a valid safetensors file"), "{err}");
}
