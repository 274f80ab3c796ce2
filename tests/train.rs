//! End-to-end tests of `astro train`: runs, exact resume, offline datasets, bad input.
//!
//! Every test runs the binary in its own process with its own cache and data directories.

use std::path::{Path, PathBuf};

#[path = "common/mod.rs"]
mod common;

use common::{astro, fixture, metrics_without_timing as metrics, real_corpora, repo};
use predicates::prelude::*;
use serde_json::Value;

/// A deterministic pseudo-text corpus of about `bytes` bytes.
fn corpus(path: &Path, bytes: usize) {
    let words = ["the", "astrocyte", "neuron", "synapse", "calcium", "wave", "and", "of", "glia", "fires", "rests"];
    let mut state = 12345u64;
    let mut text = String::new();
    while text.len() < bytes {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        text.push_str(words[(state >> 33) as usize % words.len()]);
        text.push(if (state >> 20).is_multiple_of(7) { '\n' } else { ' ' });
    }
    std::fs::write(path, text).unwrap();
}

/// A tiny run config on `data`.
fn tiny_config(root: &Path, data: &Path, extra: &str) -> PathBuf {
    let path = root.join("tiny.toml");
    let text = format!(
        r#"[run]
name = "tiny"
out_dir = "{out}"
seed = 7

[data]
path = "{data}"
tokenizer = {{ kind = "char" }}

[model]
block_size = 16
n_layer = 2
n_head = 2
n_embd = 16
dropout = 0.1
attention = {{ kind = "astrocytic", features = 16, chunk_size = 4 }}

[optim]
batch_size = 4
warmup_iters = 3

[train]
max_iters = 12
eval_interval = 4
eval_iters = 2
log_interval = 1
checkpoint_interval = 4
keep_checkpoints = 5
sample_tokens = 10
{extra}"#,
        out = root.join("runs").display(),
        data = data.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn resume_continues_exactly_like_an_uninterrupted_run() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    corpus(&root.join("corpus.txt"), 20_000);
    let config = tiny_config(root, &root.join("corpus.txt"), "");

    // A: uninterrupted.
    astro(root).args(["train", "--json", "--config"]).arg(&config).args(["--name", "a"]).assert().success();
    // B: stopped after 6 steps (checkpoints at 4 and 6), the step-6 checkpoint lost as in a crash,
    // so the resume restarts from step 4 with metrics rows 5–6 already written.
    astro(root)
        .args(["train", "--config"])
        .arg(&config)
        .args(["--name", "b"])
        .env("ASTRO_STOP_AFTER", "6")
        .assert()
        .success();
    let b = root.join("runs/b");
    std::fs::remove_dir_all(b.join("checkpoints/step-00000006")).unwrap();
    astro(root)
        .args(["train", "--json", "--resume"])
        .arg(&b)
        .assert()
        .success()
        .stderr(predicate::str::contains("resuming"));

    let (ma, mb) = (metrics(&root.join("runs/a")), metrics(&b));
    assert_eq!(ma.len(), 12);
    assert_eq!(ma, mb, "metrics after resume differ from the uninterrupted run");
    // and the final model predicts identically (its files differ only in parameter ids)
    let summary = |run: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
    };
    let (sa, sb) = (summary(&root.join("runs/a")), summary(&b));
    assert_eq!(sa["final_val_loss"], sb["final_val_loss"]);
    assert_eq!(sa["sample"], sb["sample"], "same weights and seed give the same sample");
}

#[test]
fn calibrated_maps_train_from_scratch_and_resume_exactly() {
    // shifted_saderf from scratch: refitted in closed form at steps 0, 3, 6, 9; a resume from the
    // step-4 checkpoint (taken between two refits) continues exactly like the uninterrupted run.
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    corpus(&root.join("corpus.txt"), 20_000);
    let config = tiny_config(root, &root.join("corpus.txt"), "calibrate_every = 3");
    let set = ["--set", r#"model.attention={kind="astrocytic",features=16,chunk_size=4,feature_map="shifted_saderf"}"#];
    astro(root).args(["train", "--json", "--config"]).arg(&config).args(set).args(["--name", "a"]).assert().success();
    astro(root)
        .args(["train", "--config"])
        .arg(&config)
        .args(set)
        .args(["--name", "b"])
        .env("ASTRO_STOP_AFTER", "5")
        .assert()
        .success();
    let b = root.join("runs/b");
    std::fs::remove_dir_all(b.join("checkpoints/step-00000005")).ok();
    astro(root).args(["train", "--json", "--resume"]).arg(&b).assert().success();
    let (ma, mb) = (metrics(&root.join("runs/a")), metrics(&b));
    assert_eq!(ma.len(), 12);
    assert_eq!(ma, mb, "metrics after resume differ from the uninterrupted run");
    assert!(ma.iter().all(|m| m["train_loss"].as_f64().unwrap().is_finite()));
    // The calibrated parameters are saved and exported under their own names.
    astro(root).args(["export", "--run"]).arg(root.join("runs/a")).arg("--out").arg(root.join("x")).assert().success();
    let weights = std::fs::read(root.join("x/model.safetensors")).unwrap();
    let header = String::from_utf8_lossy(&weights[..weights.len().min(20_000)]);
    for name in ["blocks.0.attn.inner.log_psi", "blocks.1.attn.inner.shift", "blocks.0.attn.inner.gerf_a"] {
        assert!(header.contains(name), "{name} not exported");
    }
}

#[test]
fn run_directory_holds_everything() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    corpus(&root.join("corpus.txt"), 10_000);
    let config = tiny_config(root, &root.join("corpus.txt"), "");
    let out =
        astro(root).args(["train", "--json", "--config"]).arg(&config).assert().success().get_output().stdout.clone();
    let summary: Value = serde_json::from_slice(&out).expect("one JSON line");
    assert_eq!(summary["steps"], 12);
    assert!(summary["final_val_loss"].as_f64().unwrap().is_finite());
    let run = root.join("runs/tiny");
    for f in ["config.toml", "tokenizer.json", "metrics.jsonl", "model.bpk", "best.bpk", "summary.json"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    // keep_checkpoints = 5 of 4, 8, 12 → all three; each verified by checksum
    let ckpts: Vec<_> = std::fs::read_dir(run.join("checkpoints")).unwrap().collect();
    assert_eq!(ckpts.len(), 3);
    // A second run with the same name never overwrites the first.
    astro(root).args(["train", "--json", "--config"]).arg(&config).assert().success();
    assert!(root.join("runs/tiny-2/model.bpk").is_file());
    // The resolved config records the vocabulary taken from the tokenizer.
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains("vocab_size"), "{resolved}");
}

/// `astro train` with the default recipe shrunk to two steps of a one-layer model, into `root/runs`.
fn two_steps(root: &Path) -> assert_cmd::Command {
    let mut cmd = astro(root);
    cmd.args(["train", "--json"])
        .args(["--set", "train.max_iters=2", "--set", "train.eval_iters=1", "--set", "train.sample_tokens=0"])
        .args(["--set", "model.n_layer=1", "--set", "model.n_embd=16", "--set", "model.n_head=2"])
        .args(["--set", &format!("run.out_dir={:?}", root.join("runs").display().to_string())]);
    cmd
}

/// The characters of a run's character-level tokenizer.
fn tokenizer_chars(run: &Path) -> usize {
    let tokenizer = std::fs::read_to_string(run.join("tokenizer.json")).unwrap();
    let parsed: Value = serde_json::from_str(&tokenizer).unwrap();
    parsed["astro_char_tokenizer"]["chars"].as_str().unwrap().chars().count()
}

#[test]
fn named_dataset_resolves_offline_from_the_data_dir() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    // The default recipe names `tinyshakespeare`; $ASTRO_DATA_DIR/tinyshakespeare.txt is taken as it
    // is (here the repository's excerpt of it, 58 distinct characters), with no download.
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(fixture("shakespeare-excerpt.txt"), data.join("tinyshakespeare.txt")).unwrap();
    let out = two_steps(root).env("ASTRO_DATA_DIR", &data).assert().success().get_output().stdout.clone();
    let summary: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(summary["steps"], 2);
    assert_eq!(tokenizer_chars(&root.join("runs/shakespeare-char")), 58);
    assert!(!root.join("cache/datasets").exists(), "nothing was downloaded or cached");
}

#[test]
#[ignore = "needs the real corpora: ASTRO_DATA_DIR=… cargo test -- --ignored real_corpus"]
fn real_corpus_tinyshakespeare_resolves_offline_with_nanogpt_vocabulary() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let out = two_steps(root).env("ASTRO_DATA_DIR", real_corpora()).assert().success().get_output().stdout.clone();
    let summary: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(summary["steps"], 2);
    assert_eq!(tokenizer_chars(&root.join("runs/shakespeare-char")), 65);
}

/// `configs/wikitext2-bpe.toml` for two steps of a one-layer model, into `root/runs`.
fn bpe_config(root: &Path) -> assert_cmd::Command {
    let mut cmd = astro(root);
    cmd.args(["train", "--json", "--config"])
        .arg(repo().join("configs/wikitext2-bpe.toml"))
        .args(["--set", "train.max_iters=2", "--set", "train.eval_iters=1", "--set", "train.sample_tokens=5"])
        .args(["--set", "model.n_layer=1", "--set", "data.tokenizer.vocab_size=300"])
        .args(["--set", &format!("run.out_dir={:?}", root.join("runs").display().to_string())]);
    cmd
}

/// The run of [`bpe_config`] saved a byte-level BPE tokenizer of 300 tokens.
fn assert_bpe_tokenizer(root: &Path) {
    let tok = std::fs::read_to_string(root.join("runs/wikitext2-bpe/tokenizer.json")).unwrap();
    let parsed: Value = serde_json::from_str(&tok).unwrap();
    assert_eq!(parsed["model"]["type"], "BPE", "a Hugging Face BPE tokenizer.json");
    assert_eq!(parsed["model"]["vocab"].as_object().unwrap().len(), 300);
}

#[test]
fn bpe_config_trains_a_tokenizer() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    bpe_config(root).arg("--data").arg(fixture("shakespeare-excerpt.txt")).assert().success();
    assert_bpe_tokenizer(root);
}

#[test]
#[ignore = "needs the real corpora: ASTRO_DATA_DIR=… cargo test -- --ignored real_corpus"]
fn real_corpus_bpe_config_trains_on_wikitext() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    bpe_config(root).env("ASTRO_DATA_DIR", real_corpora()).assert().success();
    assert_bpe_tokenizer(root);
}

#[test]
fn missing_dataset_names_three_ways_to_provide_it() {
    let root = tempfile::tempdir().unwrap();
    astro(root.path())
        .args(["train"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("tinyshakespeare"))
        .stderr(predicate::str::contains("--data"))
        .stderr(predicate::str::contains("ASTRO_DATA_DIR"))
        .stderr(predicate::str::contains("cache directory"));
}

#[test]
fn bad_corpora_get_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    std::fs::write(root.join("empty.txt"), "").unwrap();
    let config = tiny_config(root, &root.join("empty.txt"), "");
    astro(root).args(["train", "--config"]).arg(&config).assert().failure().stderr(predicate::str::contains("empty"));
    std::fs::write(root.join("short.txt"), "just a few words, not enough").unwrap();
    let config = tiny_config(root, &root.join("short.txt"), "");
    astro(root)
        .args(["train", "--config"])
        .arg(&config)
        .assert()
        .failure()
        .stderr(predicate::str::contains("fewer than one window"));
    let config = tiny_config(root, &root.join("nope.txt"), "");
    astro(root)
        .args(["train", "--config"])
        .arg(&config)
        .assert()
        .failure()
        .stderr(predicate::str::contains("nope.txt"));
    // Invalid UTF-8 is replaced (char-level) and training proceeds.
    let mut bytes = std::fs::read(root.join("short.txt")).unwrap();
    bytes.extend([0xff, 0xfe]);
    for _ in 0..200 {
        bytes.extend(b" more words to make the corpus long enough");
    }
    std::fs::write(root.join("bytes.txt"), bytes).unwrap();
    let config = tiny_config(root, &root.join("bytes.txt"), "");
    astro(root)
        .args(["train", "--config"])
        .arg(&config)
        .args(["--set", "train.max_iters=2", "--set", "optim.grad_accum=2", "--set", "data.sampling=\"epoch\""])
        .assert()
        .success();
}

#[test]
fn config_mistakes_are_named() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    corpus(&root.join("corpus.txt"), 5_000);
    let config = tiny_config(root, &root.join("corpus.txt"), "");
    astro(root)
        .args(["train", "--config"])
        .arg(&config)
        .args(["--set", "optim.learning_rate=0.1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("learning_rate"));
    astro(root)
        .args(["train", "--config"])
        .arg(&config)
        .args(["--set", "model.vocab_size=100"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("vocab_size"));
    let config = tiny_config(root, &root.join("corpus.txt"), "bogus = 1\n");
    astro(root).args(["train", "--config"]).arg(&config).assert().failure().stderr(predicate::str::contains("bogus"));
}

#[test]
fn resume_with_another_model_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    corpus(&root.join("corpus.txt"), 10_000);
    let config = tiny_config(root, &root.join("corpus.txt"), "");
    astro(root).args(["train", "--config"]).arg(&config).env("ASTRO_STOP_AFTER", "4").assert().success();
    astro(root)
        .args(["train", "--config"])
        .arg(&config)
        .args(["--set", "model.attention.kind=softmax", "--resume"])
        .arg(root.join("runs/tiny"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("softmax"))
        .stderr(predicate::str::contains("astrocytic"));
}

#[test]
fn unwritable_run_directory_is_reported() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    corpus(&root.join("corpus.txt"), 10_000);
    std::fs::write(root.join("blocker"), "a file where the runs directory should be").unwrap();
    let config = tiny_config(root, &root.join("corpus.txt"), "");
    astro(root)
        .args(["train", "--config"])
        .arg(&config)
        .args(["--set", &format!("run.out_dir={:?}", root.join("blocker/runs").display().to_string())])
        .assert()
        .failure()
        .stderr(predicate::str::contains("blocker"));
}

#[test]
fn diverging_loss_stops_cleanly_keeping_the_last_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    corpus(&root.join("corpus.txt"), 10_000);
    let config = tiny_config(root, &root.join("corpus.txt"), "");
    astro(root)
        .args(["train", "--config"])
        .arg(&config)
        .args(["--set", "optim.lr=1e30", "--set", "optim.min_lr=0", "--set", "optim.warmup_iters=0"])
        .args(["--set", "optim.grad_clip=0", "--set", "train.checkpoint_interval=1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("non-finite"))
        .stderr(predicate::str::contains("at step"));
}

/// Serves `body` for every request on 127.0.0.1 (a bounded number of requests), returning the base URL.
fn serve(body: Vec<u8>, requests: usize) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}")
}

#[test]
fn named_dataset_downloads_into_the_cache_with_checksum() {
    use sha2::Digest;
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    // A dataset of a manifest of one's own, served by a server on 127.0.0.1 that this test runs.
    let original = std::fs::read(fixture("shakespeare-excerpt.txt")).unwrap();
    let sha: String = sha2::Sha256::digest(&original).iter().map(|b| format!("{b:02x}")).collect();
    let manifest = |url: &str| {
        let path = root.join("manifest.toml");
        let text = format!(
            "[excerpt]\nfile = \"excerpt.txt\"\nurl = \"{url}/shakespeare-excerpt.txt\"\nsha256 = \"{sha}\"\nbytes = {}\nlicense = \"public domain\"\ndescription = \"test\"\n",
            original.len()
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let base = |r: &Path, url: &str| {
        let mut cmd = two_steps(r);
        cmd.env_remove("ASTRO_OFFLINE")
            .env("ASTRO_DATASETS_MANIFEST", manifest(url))
            .args(["--set", "data.dataset=excerpt"]);
        cmd
    };
    // A corrupt server: the checksum check refuses the file and nothing lands in the cache.
    base(root, &serve(b"not shakespeare".to_vec(), 1)).assert().failure().stderr(predicate::str::contains("sha256"));
    assert!(!root.join("cache/datasets/excerpt.txt").exists());
    // The same through a mirror (`$ASTRO_DATASETS_MIRROR` replaces the manifest's host and path).
    base(root, "http://127.0.0.1:9")
        .env("ASTRO_DATASETS_MIRROR", serve(b"corrupt".to_vec(), 1))
        .assert()
        .failure()
        .stderr(predicate::str::contains("sha256"));
    // A good server: downloaded, verified, cached, trained on; the next run needs no network.
    base(root, &serve(original.clone(), 1)).assert().success();
    assert_eq!(std::fs::read(root.join("cache/datasets/excerpt.txt")).unwrap(), original);
    base(root, "http://127.0.0.1:9").env("ASTRO_OFFLINE", "1").assert().success();
    // A manifest that cannot be read is named.
    two_steps(root)
        .env("ASTRO_DATASETS_MANIFEST", root.join("missing.toml"))
        .args(["--set", "data.dataset=excerpt"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("missing.toml").and(predicate::str::contains("ASTRO_DATASETS_MANIFEST")));
}

#[test]
fn tasks_train_evaluate_and_resume_exactly() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let base = |r: &Path, name: &str| {
        let mut cmd = astro(r);
        cmd.args(["train", "--task", "mqar", "--name", name])
            .args(["--set", "task.vocab_size=64", "--set", "task.seq_len=32", "--set", "train.max_iters=8"])
            .args([
                "--set",
                "train.eval_interval=4",
                "--set",
                "train.checkpoint_interval=2",
                "--set",
                "train.test_examples=32",
            ])
            .args([
                "--set",
                "model.n_layer=1",
                "--set",
                "model.n_embd=32",
                "--set",
                "model.n_head=2",
                "--set",
                "model.dropout=0.1",
            ])
            .args(["--set", "model.attention={kind=\"astrocytic\",features=16}", "--set", "optim.batch_size=8"])
            .args(["--set", &format!("run.out_dir={:?}", r.join("runs").display().to_string())]);
        cmd
    };
    let out = base(root, "a").arg("--json").assert().success().get_output().stdout.clone();
    let summary: Value = serde_json::from_slice(&out).unwrap();
    let acc = summary["final_val_accuracy"].as_f64().expect("accuracy reported");
    assert!((0.0..=1.0).contains(&acc));
    base(root, "b").env("ASTRO_STOP_AFTER", "5").assert().success();
    let b = root.join("runs/b");
    std::fs::remove_dir_all(b.join("checkpoints/step-00000005")).unwrap();
    astro(root).args(["train", "--resume"]).arg(&b).assert().success();
    assert_eq!(metrics(&root.join("runs/a")), metrics(&b), "task metrics after resume differ");
    // ListOps trains the encoder classifier.
    astro(root)
        .args(["train", "--task", "listops", "--json"])
        .args(["--set", "task.min_length=10", "--set", "task.max_length=60", "--set", "model.block_size=60"])
        .args(["--set", "train.max_iters=2", "--set", "train.test_examples=8", "--set", "model.n_layer=1"])
        .args(["--set", &format!("run.out_dir={:?}", root.join("runs").display().to_string())])
        .assert()
        .success()
        .stdout(predicate::str::contains("final_val_accuracy"));
    // Unknown task and task parameters are named.
    astro(root).args(["train", "--task", "sorting"]).assert().failure().stderr(predicate::str::contains("sorting"));
    astro(root)
        .args(["train", "--task", "copy", "--set", "task.length=5"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("length"));
}
