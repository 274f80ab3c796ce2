//! A saved astrocytic encoder (`astro.toml` + `astrocytes.safetensors` beside a BERT checkpoint's
//! files): it loads with its own astrocytes, gives the same outputs, and bad directories are named.

mod common;

use std::path::Path;

use astro_model::SentenceEncoder;
use astro_model::attention::{AstrocyticConfig, AttentionConfig, FeatureMap};
use astro_model::transformer::{
    ASTRO_CONFIG_FILE, ASTROCYTES_FILE, AstroEncoderFile, bert_config, bert_tensors, saved_attention,
};
use burn::tensor::{Int, Tensor, TensorData};
use common::{device, host, normal4};
use rand::{Rng, SeedableRng};

/// A tiny random BERT checkpoint (config.json + model.safetensors in Hugging Face names).
fn write_bert(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "model_type": "bert", "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32,
        "vocab_size": 30, "max_position_embeddings": 12, "num_hidden_layers": 2, "type_vocab_size": 2,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let shapes = bert_tensors(&bert_config(&dir.join("config.json")).unwrap());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values: Vec<u8> = (0..n).flat_map(|_| (rng.random_range(-0.3f32..0.3) + 0.0).to_le_bytes()).collect();
            (name, shape, values)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, v)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), v).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn tokens() -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(vec![1i64, 5, 7, 9, 2, 1, 4, 4, 8, 2], [2, 5]), &device())
}

#[test]
fn saved_astrocytic_encoder_round_trips_and_refuses_bad_directories() {
    let dev = device();
    let root = std::env::temp_dir().join(format!("astro-saved-encoder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("bert");
    write_bert(&dir);
    let attention = AttentionConfig::Astrocytic(AstrocyticConfig {
        features: 8,
        feature_map: FeatureMap::FullSaderf,
        ..AstrocyticConfig::default()
    });
    // A plain checkpoint directory has no saved attention and loads as softmax.
    assert_eq!(saved_attention(&dir).unwrap(), None);
    let mut encoder = SentenceEncoder::from_hf_bert(&dir, Some(attention.clone()), &dev).unwrap();
    // Non-trivial astrocytes: calibrate every layer on random queries and keys (ψ, c, A, U all move).
    let inputs: Vec<_> = (0..2)
        .map(|l| {
            (
                normal4([2, 2, 10, 8], 1.0, 10 + l, burn::tensor::DType::F32, &dev),
                normal4([2, 2, 10, 8], 0.7, 20 + l, burn::tensor::DType::F32, &dev).add_scalar(0.4),
            )
        })
        .collect();
    let (trunk, _) = encoder.trunk.calibrate_from_inputs(&inputs, None, false).unwrap();
    encoder.trunk = trunk;
    let expected = host(&encoder.embed(tokens(), None));
    let fresh =
        host(&SentenceEncoder::from_hf_bert(&dir, Some(attention.clone()), &dev).unwrap().embed(tokens(), None));
    assert!(expected.iter().zip(&fresh).any(|(a, b)| (a - b).abs() > 1e-4), "calibration must change the encoder");

    // Save: the checkpoint's files plus astro.toml and the astrocytes.
    let out = root.join("astro");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(dir.join(f), out.join(f)).unwrap();
    }
    let file = AstroEncoderFile {
        attention: attention.clone(),
        provenance: [("source".to_string(), "test".to_string())].into(),
    };
    std::fs::write(out.join(ASTRO_CONFIG_FILE), file.to_toml().unwrap()).unwrap();
    encoder.save_astrocytes(&out.join(ASTROCYTES_FILE)).unwrap();
    // Only the astrocytes are in the file.
    let bytes = std::fs::read(out.join(ASTROCYTES_FILE)).unwrap();
    let names: Vec<String> =
        safetensors::SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(String::from).collect();
    assert!(!names.is_empty() && names.iter().all(|n| n.contains(".attn.inner.")), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("rotation")), "{names:?}");

    assert_eq!(saved_attention(&out).unwrap(), Some(attention.clone()));
    let loaded = SentenceEncoder::load(&out, None, &dev).unwrap();
    let got = host(&loaded.embed(tokens(), None));
    for (a, b) in got.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-6, "loaded {a} vs saved {b}");
    }
    // The teacher: same directory, softmax.
    let softmax = SentenceEncoder::load_softmax(&out, &dev).unwrap();
    let plain = SentenceEncoder::from_hf_bert(&dir, None, &dev).unwrap();
    assert_eq!(host(&softmax.embed(tokens(), None)), host(&plain.embed(tokens(), None)));

    // Another attention on top of a saved one: refused.
    let err = SentenceEncoder::load(&out, Some(attention.clone()), &dev).unwrap_err().to_string();
    assert!(err.contains("astro.toml") && err.contains("its own fitted attention"), "{err}");
    // astro.toml saying another m than the astrocytes file: the shapes are named.
    let other = AstroEncoderFile {
        attention: AttentionConfig::Astrocytic(AstrocyticConfig {
            features: 16,
            feature_map: FeatureMap::FullSaderf,
            ..AstrocyticConfig::default()
        }),
        provenance: Default::default(),
    };
    std::fs::write(out.join(ASTRO_CONFIG_FILE), other.to_toml().unwrap()).unwrap();
    let err = SentenceEncoder::load(&out, None, &dev).unwrap_err().to_string();
    assert!(err.contains(ASTROCYTES_FILE) && err.contains("omega"), "{err}");
    // A missing astrocytes file.
    std::fs::write(out.join(ASTRO_CONFIG_FILE), file.to_toml().unwrap()).unwrap();
    std::fs::remove_file(out.join(ASTROCYTES_FILE)).unwrap();
    let err = SentenceEncoder::load(&out, None, &dev).unwrap_err().to_string();
    assert!(err.contains("no such file") && err.contains(ASTROCYTES_FILE), "{err}");
    // A broken astro.toml.
    std::fs::write(out.join(ASTRO_CONFIG_FILE), "attention = 3").unwrap();
    let err = SentenceEncoder::load(&out, None, &dev).unwrap_err().to_string();
    assert!(err.contains("not a valid astro.toml"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}
