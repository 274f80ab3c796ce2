//! End-to-end tests of the `astro` binary.

#[path = "common/mod.rs"]
mod common;

use assert_cmd::Command;
use common::{fixture, repo};
use predicates::prelude::*;

fn astro() -> Command {
    let mut cmd = Command::cargo_bin("astro").expect("binary built");
    let cache = std::env::temp_dir().join(format!("astro-cli-test-cache-{}", std::process::id()));
    // No corpora anywhere: commands that would need one are given a vocabulary size or a fixture.
    cmd.current_dir(repo())
        .env("ASTRO_DATA_DIR", cache.join("no-data"))
        .env("ASTRO_CACHE_DIR", cache)
        .env("ASTRO_OFFLINE", "1");
    cmd
}

#[test]
fn info_prints_parameters_and_state_size() {
    astro()
        .args(["info", "--config", "configs/shakespeare-char.toml", "--vocab-size", "65"])
        .assert()
        .success()
        .stdout(predicate::str::contains("trunk.blocks.3.attn.q_proj"))
        // nanoGPT reports 0.80M parameters for this recipe; Ω adds 4 × 4 × 256 × 32 frozen ones.
        .stdout(predicate::str::contains("804,096"))
        .stdout(predicate::str::contains("131,072"))
        .stdout(predicate::str::contains("context   2048"));
}

#[test]
fn info_takes_the_vocabulary_from_the_configs_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let data = fixture("shakespeare-excerpt.txt").display().to_string();
    std::fs::write(&path, format!("[data]\npath = {data:?}\n[model]\nattention = {{ kind = \"softmax\" }}\n")).unwrap();
    // The excerpt has 58 distinct characters: a token embedding of 58 × 128.
    astro()
        .args(["info", "--config"])
        .arg(&path)
        .assert()
        .success()
        .stdout(predicate::str::contains("vocab 58"))
        .stdout(predicate::str::is_match(r"trunk\.wte +7,424").unwrap());
}

#[test]
fn info_for_each_variant() {
    let dir = tempfile::tempdir().unwrap();
    for (attention, state_2048) in [
        (r#"{ kind = "softmax" }"#, "2,097,152"),
        (r#"{ kind = "linear" }"#, "16,912"),
        (r#"{ kind = "astrocytic", features = 64, orthogonal = true }"#, "33,808"),
    ] {
        let path = dir.path().join("c.toml");
        let text = format!(
            "[data]\ndataset = \"tinyshakespeare\"\n[model]\nvocab_size = 65\nblock_size = 64\nattention = {attention}\n"
        );
        std::fs::write(&path, text).unwrap();
        astro()
            .args(["info", "--config"])
            .arg(&path)
            .args(["--contexts", "2048"])
            .assert()
            .success()
            .stdout(predicate::str::contains(state_2048));
    }
}

#[test]
fn bad_config_gets_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[data]\ndataset = \"tinyshakespeare\"\n[model]\nvocab_size = 65\nn_head = 3\n").unwrap();
    astro()
        .args(["info", "--config"])
        .arg(&path)
        .assert()
        .failure()
        .stderr(predicate::str::contains("model.n_head"))
        .stderr(predicate::str::contains("divide"));
    std::fs::write(&path, "[model]\nvocab_size = 65\nattention = { kind = \"astrocytic\", feature_map = \"tanh\" }\n")
        .unwrap();
    astro().args(["info", "--config"]).arg(&path).assert().failure().stderr(predicate::str::contains("tanh"));
    astro()
        .args(["info", "--config", "does/not/exist.toml"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("does/not/exist.toml"));
}

#[test]
fn unknown_or_missing_device_is_explained() {
    astro()
        .args(["info", "--config", "configs/shakespeare-char.toml", "--device", "tpu"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("unknown device `tpu`"));
}

/// `astro bench --json ARGS…`'s report, which must succeed and be one JSON object.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = astro().args(["bench", "--json"]).args(args).assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).expect("one JSON object")
}

#[test]
fn bench_reports_every_asked_figure_as_json() {
    let report = bench_json(&[
        "--only",
        "forward,long,generate",
        "--variants",
        "softmax,astrocytic",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--lengths",
        "64",
        "--contexts",
        "8,16",
        "--features",
        "16",
    ]);
    assert!(report["matmul_gflops"].as_f64().unwrap() > 0.0);
    let rows = report["rows"].as_array().unwrap();
    // forward: 1 per variant, long: 1 length, generate: 2 contexts and a token inside and past a
    // block of 64 learned positions → 6 rows per variant.
    assert_eq!(rows.len(), 12, "{rows:?}");
    for variant in ["softmax", "astrocytic"] {
        let shapes: Vec<&str> = rows
            .iter()
            .filter(|r| r["section"] == "generate" && r["variant"] == variant)
            .map(|r| r["shape"].as_str().unwrap())
            .collect();
        assert_eq!(shapes, ["ctx=8", "ctx=16", "block=64 inside", "block=64 past"], "{variant}");
    }
    assert!(
        rows.iter().filter(|r| r["shape"] == "block=64 past").all(|r| r["gflops"].as_f64().is_some_and(|g| g > 0.0)),
        "the re-encode's FLOP rate is reported"
    );
    for r in rows {
        let v = &r["value"];
        assert!(v["min"].as_f64().unwrap() <= v["median"].as_f64().unwrap());
        assert!(v["median"].as_f64().unwrap() <= v["max"].as_f64().unwrap());
        assert!(v["median"].as_f64().unwrap() > 0.0);
    }
    let long: Vec<&serde_json::Value> = rows.iter().filter(|r| r["section"] == "long").collect();
    assert!(long.iter().all(|r| r["peak_mib"].as_f64().is_some_and(|p| p > 0.0)), "peak memory is measured: {long:?}");
    astro()
        .args(["bench", "--variants", "quantum"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("unknown variant `quantum`"));
}

#[test]
fn bench_train_long_holds_tokens_per_step_and_measures_peak_heap() {
    let report = bench_json(&[
        "--only",
        "train-long",
        "--variants",
        "linear,taylor-conv",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--lengths",
        "32,64",
        "--long-tokens",
        "128",
    ]);
    let rows = report["rows"].as_array().unwrap();
    let shapes: Vec<(&str, &str)> =
        rows.iter().map(|r| (r["variant"].as_str().unwrap(), r["shape"].as_str().unwrap())).collect();
    assert_eq!(
        shapes,
        [("linear", "T=32 b=4"), ("linear", "T=64 b=2"), ("taylor-conv", "T=32 b=4"), ("taylor-conv", "T=64 b=2")]
    );
    for r in rows {
        assert!(r["value"]["median"].as_f64().unwrap() > 0.0 && r["peak_mib"].as_f64().is_some_and(|p| p > 0.0), "{r}");
    }
}
