//! The corpora people have, each trained on end to end from the CLI: a directory (searched
//! recursively), gzip and zstd, JSON Lines with a text field, a list of files, a separate
//! validation file. Built from the repository's Shakespeare excerpt.

use std::io::Write;
use std::path::{Path, PathBuf};

#[path = "common/mod.rs"]
mod common;

use common::{astro, fixture};
use serde_json::Value;

fn excerpt() -> String {
    std::fs::read_to_string(fixture("shakespeare-excerpt.txt")).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Trains two steps of a small model on `[data]` as the `sets` give it; returns the summary.
fn train(root: &Path, name: &str, sets: &[String]) -> Value {
    // A config that names no corpus: each test gives it through `--set data.…`.
    let base = root.join("base.toml");
    std::fs::write(&base, "[run]\nseed = 3\n").unwrap();
    let mut cmd = astro(root);
    cmd.args(["train", "--json", "--name", name, "--config"])
        .arg(&base)
        .args(["--set", "train.max_iters=2", "--set", "train.eval_iters=1", "--set", "train.sample_tokens=0"])
        .args(["--set", "model.n_layer=1", "--set", "model.n_embd=16", "--set", "model.n_head=2"])
        .args(["--set", "model.block_size=32", "--set", "optim.batch_size=4"])
        .args(["--set", &format!("run.out_dir={:?}", root.join("runs").display().to_string())]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).unwrap()
}

fn path_set(key: &str, path: &Path) -> String {
    format!("{key}={:?}", path.display().to_string())
}

fn paths_set(paths: &[PathBuf]) -> String {
    let list: Vec<String> = paths.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    format!("data.paths=[{}]", list.join(", "))
}

#[test]
fn every_input_form_trains_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let text = excerpt();
    let (first, second) = text.split_at(text.len() / 2 + text[text.len() / 2..].find('\n').unwrap() + 1);

    // A directory with a subdirectory; files sorted by path.
    std::fs::create_dir_all(root.join("corpus/part-2")).unwrap();
    std::fs::write(root.join("corpus/part-1.txt"), first).unwrap();
    std::fs::write(root.join("corpus/part-2/rest.txt"), second).unwrap();
    let s = train(root, "dir", &[path_set("data.path", &root.join("corpus"))]);
    assert_eq!(s["steps"], 2);

    // Compressed text.
    std::fs::write(root.join("e.txt.gz"), gzip(text.as_bytes())).unwrap();
    std::fs::write(root.join("e.txt.zst"), zstd::encode_all(text.as_bytes(), 3).unwrap()).unwrap();
    for name in ["e.txt.gz", "e.txt.zst"] {
        train(root, name, &[path_set("data.path", &root.join(name))]);
    }
    // The same text, however it is stored, gives the same tokens and the same losses.
    let losses = |run: &str| std::fs::read_to_string(root.join("runs").join(run).join("summary.json")).unwrap();
    let plain = {
        std::fs::write(root.join("e.txt"), &text).unwrap();
        train(root, "plain", &[path_set("data.path", &root.join("e.txt"))])
    };
    for run in ["e.txt.gz", "e.txt.zst", "dir"] {
        let other: Value = serde_json::from_str(&losses(run)).unwrap();
        assert_eq!(other["final_val_loss"], plain["final_val_loss"], "{run}");
    }

    // JSON Lines, one paragraph per document, the text in `content`; compressed too.
    let lines: String =
        text.split("\n\n").map(|p| serde_json::json!({ "id": 1, "content": p }).to_string() + "\n").collect();
    std::fs::write(root.join("docs.jsonl"), &lines).unwrap();
    std::fs::write(root.join("docs.jsonl.zst"), zstd::encode_all(lines.as_bytes(), 3).unwrap()).unwrap();
    for name in ["docs.jsonl", "docs.jsonl.zst"] {
        train(root, name, &[path_set("data.path", &root.join(name)), "data.text_field=\"content\"".into()]);
    }

    // A list of files, and a separate validation file.
    std::fs::write(root.join("a.txt"), first).unwrap();
    std::fs::write(root.join("b.txt.gz"), gzip(second.as_bytes())).unwrap();
    train(root, "list", &[paths_set(&[root.join("a.txt"), root.join("b.txt.gz")])]);
    train(
        root,
        "val",
        &[path_set("data.path", &root.join("a.txt")), path_set("data.val_path", &root.join("b.txt.gz"))],
    );
    let config = std::fs::read_to_string(root.join("runs/val/config.toml")).unwrap();
    assert!(config.contains("val_path"), "{config}");

    // BPE on a compressed corpus with a sample smaller than it.
    train(
        root,
        "bpe",
        &[
            path_set("data.path", &root.join("e.txt.gz")),
            "data.tokenizer={kind=\"bpe\",vocab_size=300,sample_bytes=20000}".into(),
        ],
    );
    let tok: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("runs/bpe/tokenizer.json")).unwrap()).unwrap();
    assert_eq!(tok["model"]["vocab"].as_object().unwrap().len(), 300);
}
