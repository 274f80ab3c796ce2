//! End-to-end tests of `astro export` and of using an export: `eval --model`, `generate --model`,
//! `train --init`.

#[path = "common/mod.rs"]
mod common;

use std::path::Path;

use common::{astro, base_config, train, write_corpus};
use predicates::prelude::*;
use serde_json::Value;

/// `astro export --run RUN --out OUT [extra…]` in `root`.
fn export_run(root: &Path, run: &Path, out: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    astro(root).args(["export", "--run"]).arg(run).arg("--out").arg(out).args(extra).assert()
}

fn eval_json(root: &Path, flag: &str, dir: &Path) -> Value {
    let out = astro(root).args(["eval", "--json", flag]).arg(dir).assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).unwrap()
}

fn generated(root: &Path, flag: &str, dir: &Path) -> String {
    let out = astro(root)
        .args(["generate", "--prompt", "the neuron", "--tokens", "30", "--seed", "5", flag])
        .arg(dir)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn an_export_evaluates_and_generates_like_its_run() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_corpus(&root.join("corpus.txt"));
    for (name, attention) in [
        ("softmax", r#"{ kind = "softmax" }"#),
        ("astro", r#"{ kind = "astrocytic", features = 16 }"#),
        ("linear", r#"{ kind = "linear" }"#),
    ] {
        let run = train(root, attention, name);
        let export = root.join(format!("export-{name}"));
        export_run(root, &run, &export, &[]).success().stdout(predicate::str::contains("model.safetensors"));
        for f in ["model.safetensors", "config.json", "reference.safetensors", "tokenizer.json", "run.toml"] {
            assert!(export.join(f).is_file(), "{name}: {f} missing");
        }
        let (a, b) = (eval_json(root, "--run", &run), eval_json(root, "--model", &export));
        assert_eq!(a["loss"], b["loss"], "{name}: same loss on the run's validation split");
        assert_eq!(a["tokens"], b["tokens"]);
        assert_eq!(generated(root, "--run", &run), generated(root, "--model", &export), "{name}: same sample");
    }
}

#[test]
fn training_can_start_from_an_export() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_corpus(&root.join("corpus.txt"));
    let run = train(root, r#"{ kind = "softmax" }"#, "base");
    let export = root.join("export");
    export_run(root, &run, &export, &[]).success();
    let exported_loss = eval_json(root, "--model", &export)["loss"].as_f64().unwrap();
    // A fresh run of another architecture in its config takes the export's; one step at a
    // negligible learning rate leaves the weights as exported, so the model evaluates as the export.
    let config = base_config(root, r#"{ kind = "linear" }"#);
    astro(root)
        .args(["train", "--config"])
        .arg(&config)
        .args([
            "--name",
            "continued",
            "--set",
            "train.max_iters=1",
            "--set",
            "optim.lr=1e-12",
            "--set",
            "optim.min_lr=1e-12",
        ])
        .arg("--init")
        .arg(&export)
        .assert()
        .success();
    let continued = root.join("runs/continued");
    let text = std::fs::read_to_string(continued.join("config.toml")).unwrap();
    assert!(text.contains("init = ") && text.contains("kind = \"softmax\""), "{text}");
    let continued_loss = eval_json(root, "--run", &continued)["loss"].as_f64().unwrap();
    assert!((continued_loss - exported_loss).abs() < 1e-5, "{continued_loss} vs {exported_loss}");
    // Without --init the same step starts from scratch.
    astro(root)
        .args(["train", "--config"])
        .arg(&config)
        .args([
            "--name",
            "fresh",
            "--set",
            "train.max_iters=1",
            "--set",
            "optim.lr=1e-12",
            "--set",
            "optim.min_lr=1e-12",
        ])
        .assert()
        .success();
    let fresh_loss = eval_json(root, "--run", &root.join("runs/fresh"))["loss"].as_f64().unwrap();
    assert!((fresh_loss - exported_loss).abs() > 1e-3, "fresh {fresh_loss} vs exported {exported_loss}");
}

#[test]
fn export_refuses_to_overwrite_and_bad_exports_are_named() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_corpus(&root.join("corpus.txt"));
    let run = train(root, r#"{ kind = "softmax" }"#, "r");
    // A directory with other files is never written into.
    let taken = root.join("taken");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("notes.txt"), "mine").unwrap();
    export_run(root, &run, &taken, &[]).failure().stderr(predicate::str::contains("already holds files"));
    assert_eq!(std::fs::read_dir(&taken).unwrap().count(), 1);
    // An earlier export is replaced only with --force.
    let out = root.join("export");
    export_run(root, &run, &out, &[]).success();
    export_run(root, &run, &out, &[]).failure().stderr(predicate::str::contains("--force"));
    export_run(root, &run, &out, &["--force"]).success();
    // Missing weights: the file is named.
    std::fs::remove_file(out.join("model.safetensors")).unwrap();
    astro(root)
        .args(["eval", "--model"])
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicate::str::contains("model.safetensors"));
    // --init with something that is not an export.
    astro(root)
        .args(["train", "--config"])
        .arg(base_config(root, r#"{ kind = "softmax" }"#))
        .arg("--init")
        .arg(&run)
        .assert()
        .failure()
        .stderr(predicate::str::contains("config.json"));
}
