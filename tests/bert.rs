//! End-to-end tests of Hugging Face BERT checkpoints: `astro embed` and `astro replicate` on a tiny
//! synthetic checkpoint written here (the real all-MiniLM-L6-v2 parity runs in scripts/minilm.sh).

#[path = "common/mod.rs"]
mod common;

use std::path::Path;

use common::astro;
use predicates::prelude::*;
use serde_json::{Value, json};

const WORDS: [&str; 12] =
    ["the", "glia", "neuron", "synapse", "astrocyte", "calcium", "wave", "and", "of", "a", ".", "fires"];
const D: usize = 8;
const LAYERS: usize = 2;

fn config() -> Value {
    json!({
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
        "hidden_size": D, "num_attention_heads": 2, "num_hidden_layers": LAYERS, "intermediate_size": 2 * D,
        "max_position_embeddings": 32, "type_vocab_size": 2, "vocab_size": 4 + WORDS.len(),
        "layer_norm_eps": 1e-12, "position_embedding_type": "absolute"
    })
}

fn tokenizer() -> Value {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"].iter().chain(WORDS.iter()).enumerate() {
        vocab.insert(t.to_string(), json!(i));
    }
    let special = |id: usize, content: &str| json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"), special(3, "[SEP]")],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab}
    })
}

/// The checkpoint's tensors in Hugging Face names: (name, shape).
fn tensors() -> Vec<(String, Vec<usize>)> {
    let v = 4 + WORDS.len();
    let mut t = vec![
        ("embeddings.word_embeddings.weight".to_string(), vec![v, D]),
        ("embeddings.position_embeddings.weight".into(), vec![32, D]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, D]),
        ("embeddings.LayerNorm.weight".into(), vec![D]),
        ("embeddings.LayerNorm.bias".into(), vec![D]),
        ("pooler.dense.weight".into(), vec![D, D]),
        ("pooler.dense.bias".into(), vec![D]),
    ];
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}.");
        for (name, shape) in [
            ("attention.self.query", vec![D, D]),
            ("attention.self.key", vec![D, D]),
            ("attention.self.value", vec![D, D]),
            ("attention.output.dense", vec![D, D]),
            ("intermediate.dense", vec![2 * D, D]),
            ("output.dense", vec![D, 2 * D]),
        ] {
            t.push((format!("{p}{name}.weight"), shape.clone()));
            t.push((format!("{p}{name}.bias"), vec![shape[0]]));
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            t.push((format!("{p}{norm}.weight"), vec![D]));
            t.push((format!("{p}{norm}.bias"), vec![D]));
        }
    }
    t
}

/// Writes the tensors with deterministic pseudo-random values (LayerNorm weights near 1).
fn write_weights(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let mut state = 7u64;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let u = ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5; // [-0.5, 0.5)
                    if name.ends_with("LayerNorm.weight") { 1.0 + 0.2 * u } else { 0.6 * u }
                })
                .collect();
            (name.clone(), shape.clone(), values.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// 40 fitting lines from the tiny vocabulary (every 10th is held out for early stopping).
fn fit_text() -> String {
    (0..40)
        .map(|i| {
            let w = |k: usize| WORDS[(i * 7 + k * 5) % (WORDS.len() - 2)];
            format!("the {} and {} of a {} . a {} fires and the {} .", w(0), w(1), w(2), w(3), w(4))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Held-out sentences (other word orders than the fitting lines), written to `root/held.txt`.
fn held_out(root: &Path) -> std::path::PathBuf {
    let text = (0..30)
        .map(|i| {
            let n = WORDS.len() - 2;
            let (a, b) = (i % n, (i / n + 3 * (i % n) + 1) % n); // distinct (a, b) pairs
            format!("a {} fires and the {} of {} .", WORDS[a], WORDS[b], WORDS[(i * 7 + 3) % n])
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = root.join("held.txt");
    std::fs::write(&path, text).unwrap();
    path
}

fn checkpoint(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config().to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer().to_string()).unwrap();
    write_weights(&dir.join("model.safetensors"), &tensors());
}

fn embed(root: &Path, dir: &Path, extra: &[&str]) -> Value {
    let out = astro(root)
        .args([
            "embed",
            "--json",
            "--text",
            "the glia fires.",
            "--text",
            "a calcium wave of the astrocyte and the neuron",
            "--model",
        ])
        .arg(dir)
        .args(extra)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).unwrap()
}

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect()
}

fn cos(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>()
}

#[test]
fn embeds_sentences_with_softmax_and_astrocytic_attention() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let dir = root.join("bert");
    checkpoint(&dir);
    let softmax = embed(root, &dir, &[]);
    assert_eq!(softmax["tokens"][0], json!([2, 4, 5, 15, 14, 3]), "[CLS] the glia fires . [SEP]");
    let e = rows(&softmax);
    assert_eq!((e.len(), e[0].len()), (2, D));
    for r in &e {
        assert!((cos(r, r) - 1.0).abs() < 1e-5, "unit length");
    }
    assert!(cos(&e[0], &e[1]) < 0.999, "different sentences, different embeddings");
    // Padding the shorter sentence does not change its embedding.
    let alone =
        astro(root).args(["embed", "--json", "--text", "the glia fires.", "--model"]).arg(&dir).output().unwrap();
    let alone: Value = serde_json::from_slice(&alone.stdout).unwrap();
    let a = rows(&alone);
    assert!(e[0].iter().zip(&a[0]).all(|(x, y)| (x - y).abs() < 1e-5), "padding leaked into the embedding");
    // The weight transfer: many hidden neurons reproduce softmax's embeddings, few do worse.
    let many = rows(&embed(root, &dir, &["--attention", r#"{ kind = "astrocytic", features = 20000 }"#]));
    let few = rows(&embed(root, &dir, &["--attention", r#"{ kind = "astrocytic", features = 2 }"#]));
    let (c_many, c_few) = (cos(&many[1], &e[1]), cos(&few[1], &e[1]));
    assert!(c_many > 0.999 && c_many > c_few, "m = 20000: {c_many}, m = 2: {c_few}");
}

#[test]
fn replicate_reports_every_head_and_the_swap() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let dir = root.join("bert");
    checkpoint(&dir);
    let out = root.join("report");
    let fit = root.join("fit.txt");
    std::fs::write(&fit, fit_text()).unwrap();
    let json = astro(root)
        .args([
            "replicate",
            "--json",
            "--features",
            "16,16384",
            "--head",
            "1,1",
            "--text",
            "the glia fires. a calcium wave of the astrocyte.",
            "--eval-sentences",
            "12",
            "--model",
        ])
        .arg(&dir)
        .arg("--fit")
        .arg(&fit)
        .arg("--eval")
        .arg(held_out(root))
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let r: Value = serde_json::from_slice(&json).unwrap();
    // Three maps (positive, saderf, shifted_saderf) × 2 values of m.
    assert_eq!(r["heads"].as_array().unwrap().len(), 3 * LAYERS * 2 * 2);
    for map in ["positive", "saderf", "shifted_saderf"] {
        let overall: Vec<f64> = r["summary"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["layer"].is_null() && s["map"] == map)
            .map(|s| s["mean_median_rel_err"].as_f64().unwrap())
            .collect();
        assert!(overall[1] < overall[0] / 4.0, "{map}: error shrinks with m: {overall:?}");
    }
    let cosines = r["embedding_cosine"].as_array().unwrap();
    assert_eq!(cosines.len(), 3 * 2);
    assert_eq!(r["sentences"].as_array().unwrap().len(), 2);
    for c in cosines.iter().filter(|c| c[1] == 16384) {
        assert!(c[2].as_array().unwrap().iter().all(|c| c.as_f64().unwrap() > 0.99), "{cosines:?}");
    }
    // Usefulness on the held-out sentences: one row per map and m; more neurons, closer agreement.
    let useful = r["usefulness"].as_array().unwrap();
    assert_eq!(useful.len(), 3 * 2);
    for u in useful.iter().filter(|u| u[1] == 16384) {
        assert!(u[3]["spearman"].as_f64().unwrap() > 0.9 && u[3]["mean_cosine"].as_f64().unwrap() > 0.99, "{u}");
    }
    assert!(out.join("usefulness.csv").is_file() && out.join("usefulness_vs_m.png").is_file());
    for f in [
        "replicate.csv",
        "replicate.md",
        "normalisers_positive_m16.png",
        "normalisers_shifted_saderf_m16384.svg",
        "error_vs_m.png",
        "cosine_vs_m.svg",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The distilled row: shifted_saderf fitted to softmax's attention on the fitting lines.
    let json = astro(root)
        .args(["replicate", "--json", "--features", "16", "--feature-maps", "shifted_saderf", "--distill-steps", "3"])
        .args(["--head", "1,1"])
        .args(["--text", "the glia fires. a calcium wave of the astrocyte.", "--eval-sentences", "0", "--model"])
        .arg(&dir)
        .arg("--fit")
        .arg(&fit)
        .arg("--out")
        .arg(root.join("r3"))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let r: Value = serde_json::from_slice(&json).unwrap();
    let maps: Vec<&str> = r["embedding_cosine"].as_array().unwrap().iter().map(|c| c[0].as_str().unwrap()).collect();
    assert_eq!(maps, ["shifted_saderf", "distilled"]);
    astro(root)
        .args(["replicate", "--head", "5,0", "--features", "16", "--feature-maps", "positive", "--eval-sentences", "0"])
        .arg("--model")
        .arg(&dir)
        .arg("--out")
        .arg(root.join("r2"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("2 layers of 2 heads"));
}

#[test]
fn bad_checkpoints_name_the_option_file_or_tensor() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let run = |dir: &Path| astro(root).args(["embed", "--text", "the glia", "--model"]).arg(dir).assert().failure();
    // An option astro does not implement.
    let dir = root.join("gelu-new");
    checkpoint(&dir);
    let mut c = config();
    c["hidden_act"] = json!("gelu_new");
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    run(&dir).stderr(predicate::str::contains("hidden_act").and(predicate::str::contains("gelu_new")));
    // No weights.
    let dir = root.join("no-weights");
    checkpoint(&dir);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    run(&dir).stderr(predicate::str::contains("model.safetensors"));
    // Weights in a format astro does not read.
    std::fs::write(dir.join("pytorch_model.bin"), b"pickle").unwrap();
    run(&dir).stderr(predicate::str::contains("pytorch_model.bin").and(predicate::str::contains("safetensors")));
    // A tensor of the wrong shape, and one that is missing.
    let dir = root.join("bad-shape");
    checkpoint(&dir);
    let mut t = tensors();
    t[0].1 = vec![4 + WORDS.len(), D + 1];
    t.retain(|(n, _)| n != "encoder.layer.1.output.dense.bias");
    write_weights(&dir.join("model.safetensors"), &t);
    run(&dir).stderr(
        predicate::str::contains(
            "`embeddings.word_embeddings.weight` has shape [16, 9] but config.json implies [16, 8]",
        )
        .and(predicate::str::contains("`encoder.layer.1.output.dense.bias` [8] is missing")),
    );
    // Not a text at all.
    astro(root)
        .args(["embed", "--model"])
        .arg(root.join("gelu-new"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("--text"));
}

/// Every file under `dir` with its bytes (to show a directory was not touched).
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn distilled_encoder_is_saved_and_loads_in_embed_and_replicate() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let dir = root.join("bert");
    checkpoint(&dir);
    let fit = root.join("fit.txt");
    std::fs::write(&fit, fit_text()).unwrap();
    let source = snapshot(&dir);
    let enc = root.join("enc");
    let distill = |out: &Path, extra: &[&str]| {
        let mut cmd = astro(root);
        cmd.args(["distill", "--features", "16", "--feature-map", "full_saderf", "--steps", "4", "--eval-every", "2"])
            .arg("--model")
            .arg(&dir)
            .arg("--fit")
            .arg(&fit)
            .arg("--out")
            .arg(out)
            .args(extra);
        cmd
    };
    let json = distill(&enc, &["--json"]).assert().success().get_output().stdout.clone();
    let report: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(report["layers"].as_array().unwrap().len(), LAYERS);
    assert_eq!((report["fit_lines"].as_u64(), report["held_out_lines"].as_u64()), (Some(36), Some(4)));
    for l in report["layers"].as_array().unwrap() {
        // Early stopping keeps the best held-out KL seen, never worse than the start.
        assert!(l["held_out_after"].as_f64().unwrap() <= l["held_out_before"].as_f64().unwrap() + 1e-9, "{l}");
    }
    assert_eq!(snapshot(&dir), source, "the source checkpoint must be untouched");
    for f in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "astro.toml",
        "astrocytes.safetensors",
        "distill.json",
        "distill.md",
    ] {
        assert!(enc.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        std::fs::read(enc.join("model.safetensors")).unwrap(),
        std::fs::read(dir.join("model.safetensors")).unwrap()
    );
    let toml = std::fs::read_to_string(enc.join("astro.toml")).unwrap();
    assert!(toml.contains("full_saderf") && toml.contains("features = 16"), "{toml}");

    // embed: the saved encoder is astrocytic (differs from the source's softmax) and deterministic.
    let saved = rows(&embed(root, &enc, &[]));
    let softmax = rows(&embed(root, &dir, &[]));
    assert_eq!(saved, rows(&embed(root, &enc, &[])));
    assert!(saved.iter().zip(&softmax).any(|(a, b)| cos(a, b) < 0.999_999), "saved encoder must not be softmax");
    assert!(saved.iter().zip(&softmax).all(|(a, b)| cos(a, b) > 0.5), "but close to it");
    astro(root)
        .args(["embed", "--text", "the glia", "--attention", r#"{ kind = "astrocytic", features = 4 }"#, "--model"])
        .arg(&enc)
        .assert()
        .failure()
        .stderr(predicate::str::contains("its own fitted attention"));

    // replicate: a `saved` row beside the maps, compared with the source's softmax.
    let json = astro(root)
        .args(["replicate", "--json", "--features", "16", "--feature-maps", "positive", "--head", "0,0"])
        .args(["--text", "the glia fires. a calcium wave of the astrocyte.", "--eval-sentences", "12", "--model"])
        .arg(&enc)
        .arg("--eval")
        .arg(held_out(root))
        .arg("--out")
        .arg(root.join("rep"))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let r: Value = serde_json::from_slice(&json).unwrap();
    let maps: Vec<&str> = r["embedding_cosine"].as_array().unwrap().iter().map(|c| c[0].as_str().unwrap()).collect();
    assert_eq!(maps, ["positive", "saved (full_saderf, m = 16)"]);
    let saved_cos = &r["embedding_cosine"][1][2];
    assert!(saved_cos.as_array().unwrap().iter().all(|c| c.as_f64().unwrap() > 0.5), "{saved_cos}");

    // Bad input: nothing written, the source untouched, one clear message each.
    distill(&enc, &[]).assert().failure().stderr(predicate::str::contains("already exists; choose another --out"));
    distill(&root.join("e2"), &["--fit-sequences", "8"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--fit-sequences applies to a language-model run directory"));
    astro(root)
        .args(["distill", "--model"])
        .arg(&enc)
        .arg("--out")
        .arg(root.join("e3"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("is already an astrocytic encoder"));
    std::fs::write(root.join("empty.txt"), "short\n = Heading =\n").unwrap();
    astro(root)
        .args(["distill", "--features", "16", "--model"])
        .arg(&dir)
        .arg("--fit")
        .arg(root.join("empty.txt"))
        .arg("--out")
        .arg(root.join("e4"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("usable lines"));
    astro(root)
        .args(["distill", "--features", "0", "--model"])
        .arg(&dir)
        .arg("--fit")
        .arg(&fit)
        .arg("--out")
        .arg(root.join("e5"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("--features must be at least 1"));
    for e in ["e2", "e3", "e4", "e5"] {
        assert!(!root.join(e).exists(), "{e} must not be written");
    }
    assert!(std::fs::read_dir(root).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp-")));
    assert_eq!(snapshot(&dir), source);
}
