//! Helpers shared by the end-to-end tests of the `astro` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The real corpora (tiny Shakespeare, WikiText-2) in `$ASTRO_DATA_DIR`, for the opt-in tests only:
/// those are `#[ignore = "needs the real corpora …"]`, named `real_corpus_*`, and run with
/// `ASTRO_DATA_DIR=… cargo test -- --ignored real_corpus`. The default `cargo test` never calls this.
pub fn real_corpora() -> PathBuf {
    let dir = std::env::var_os("ASTRO_DATA_DIR").filter(|d| !d.is_empty()).map(PathBuf::from);
    match dir {
        Some(dir) if dir.join("tinyshakespeare.txt").is_file() => dir,
        _ => panic!(
            "this opt-in test needs the real corpora: set ASTRO_DATA_DIR to a folder holding tinyshakespeare.txt \
             and wikitext2_tokens_valid.txt (now {:?})",
            std::env::var("ASTRO_DATA_DIR").unwrap_or_else(|_| "unset".into())
        ),
    }
}

/// A file the repository ships under `tests/fixtures/` (see its README).
pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// `astro` run in `root` with hermetic cache and data directories under it, offline.
pub fn astro(root: &Path) -> Command {
    Command::from_std(astro_process(root))
}

/// A deterministic pseudo-text corpus of about 12 kB at `path`.
pub fn write_corpus(path: &Path) {
    let words = ["the", "astrocyte", "neuron", "synapse", "calcium", "and", "of", "glia"];
    let mut state = 99u64;
    let mut text = String::new();
    while text.len() < 12_000 {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        text.push_str(words[(state >> 33) as usize % words.len()]);
        text.push(' ');
    }
    std::fs::write(path, text).unwrap();
}

/// A tiny run config (6 steps on `root/corpus.txt`, runs under `root/runs`) with `attention`.
pub fn base_config(root: &Path, attention: &str) -> PathBuf {
    let path = root.join(format!("base-{}.toml", attention.len()));
    let text = format!(
        "[run]\nname = \"r\"\nout_dir = {out:?}\n[data]\npath = {data:?}\n[model]\nblock_size = 16\nn_layer = 2\nn_head = 2\nn_embd = 16\nattention = {attention}\n[optim]\nbatch_size = 4\nwarmup_iters = 2\n[train]\nmax_iters = 6\neval_interval = 3\neval_iters = 2\ncheckpoint_interval = 3\nsample_tokens = 0\n",
        out = root.join("runs").display().to_string(),
        data = root.join("corpus.txt").display().to_string(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Trains the tiny config as run `name`; returns its directory.
pub fn train(root: &Path, attention: &str, name: &str) -> PathBuf {
    let config = base_config(root, attention);
    astro(root).args(["train", "--config"]).arg(&config).args(["--name", name]).assert().success();
    root.join("runs").join(name)
}

/// `astro` as a plain child process (for tests that kill it or run it under a shell), with the same
/// hermetic environment as [`astro`].
pub fn astro_process(root: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(astro_bin());
    cmd.current_dir(root)
        .env("ASTRO_CACHE_DIR", root.join("cache"))
        .env("ASTRO_DATA_DIR", root.join("no-data"))
        .env("ASTRO_OFFLINE", "1")
        .env_remove("ASTRO_STOP_AFTER");
    cmd
}

/// A run's metrics.jsonl rows without the timing fields (which differ between runs).
pub fn metrics_without_timing(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("tokens_per_sec");
            o.remove("elapsed");
            v
        })
        .collect()
}

/// Path of the `astro` binary under test.
pub fn astro_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_astro"))
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every file under `dir` (relative path → bytes), to check that nothing changed.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                walk(base, &entry.path(), out);
            } else {
                out.insert(
                    entry.path().strip_prefix(base).unwrap().to_path_buf(),
                    std::fs::read(entry.path()).unwrap(),
                );
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}
