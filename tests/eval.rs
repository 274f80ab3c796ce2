//! End-to-end tests of `astro eval`, `astro generate`, `astro ablate` and `astro fidelity`.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::{astro, base_config, train, write_corpus};
use predicates::prelude::*;
use serde_json::Value;

/// `astro ablate --config GRID --out OUT` in `root`.
fn ablate(root: &Path, grid: &Path, out: &Path) -> assert_cmd::assert::Assert {
    astro(root).args(["ablate", "--config"]).arg(grid).arg("--out").arg(out).assert()
}

#[test]
fn eval_reports_loss_perplexity_and_bits_per_char() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_corpus(&root.join("corpus.txt"));
    let run = train(root, r#"{ kind = "astrocytic", features = 16 }"#, "a");
    let out = astro(root).args(["eval", "--json", "--run"]).arg(&run).assert().success().get_output().stdout.clone();
    let r: Value = serde_json::from_slice(&out).unwrap();
    let (loss, ppl, bpc) =
        (r["loss"].as_f64().unwrap(), r["perplexity"].as_f64().unwrap(), r["bits_per_char"].as_f64().unwrap());
    assert!((ppl - loss.exp()).abs() < 1e-9 && (bpc - loss / std::f64::consts::LN_2).abs() < 1e-9);
    // the validation split: 10 % of the corpus, every position scored once
    let tokens = r["tokens"].as_u64().unwrap();
    assert!(tokens > 1000 && tokens < 1300, "{tokens}");
    // another corpus, and one with a character the vocabulary lacks
    std::fs::write(root.join("other.txt"), "the glia and the neuron of the synapse ".repeat(20)).unwrap();
    astro(root)
        .args(["eval", "--run"])
        .arg(&run)
        .arg("--data")
        .arg(root.join("other.txt"))
        .assert()
        .success()
        .stdout(predicate::str::contains("bits per char"));
    std::fs::write(root.join("alien.txt"), "the neuron §").unwrap();
    astro(root)
        .args(["eval", "--run"])
        .arg(&run)
        .arg("--data")
        .arg(root.join("alien.txt"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("'§'"));
    astro(root).args(["eval", "--run", "nowhere"]).assert().failure().stderr(predicate::str::contains("config.toml"));
}

#[test]
fn generate_streams_a_continuation_of_the_prompt() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_corpus(&root.join("corpus.txt"));
    for (attention, name) in [
        (r#"{ kind = "softmax" }"#, "s"),
        (r#"{ kind = "astrocytic", features = 16 }"#, "a"),
        (r#"{ kind = "linear" }"#, "l"),
    ] {
        let run = train(root, attention, name);
        let out = astro(root)
            .args(["generate", "--prompt", "the neuron", "--tokens", "30", "--stats", "--run"])
            .arg(&run)
            .assert()
            .success()
            .stderr(predicate::str::contains("ms per further token"))
            .get_output()
            .stdout
            .clone();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("the neuron"), "{text}");
        assert!(text.trim_end().chars().count() >= "the neuron".len() + 25, "{text}");
        astro(root)
            .args(["generate", "--prompt", "the ∂ neuron", "--run"])
            .arg(&run)
            .assert()
            .failure()
            .stderr(predicate::str::contains("'∂'"));
    }
}

/// A corpus, a softmax base config and `root/grid.toml` = `base = "…"` + `body`; returns the
/// base's file name and the grid's path.
fn grid_file(root: &Path, body: &str) -> (String, PathBuf) {
    write_corpus(&root.join("corpus.txt"));
    let base = base_config(root, r#"{ kind = "softmax" }"#);
    let base = base.file_name().unwrap().to_string_lossy().into_owned();
    let grid = root.join("grid.toml");
    std::fs::write(&grid, format!("base = \"{base}\"\n{body}")).unwrap();
    (base, grid)
}

#[test]
fn ablation_tabulates_plots_and_skips_finished_cells() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let (base, grid) = grid_file(
        root,
        "[set]\n\"train.max_iters\" = 3\n[grid]\n\"model.attention\" = [{ kind = \"softmax\" }, { kind = \"astrocytic\", features = 8 }, { kind = \"astrocytic\", features = 16 }]\n\"run.seed\" = [1, 2]\n",
    );
    let out = root.join("report");
    ablate(root, &grid, &out).success();
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");
    assert_eq!(csv.matches(",ok,").count(), 6);
    for f in ["results.md", "curves.png", "curves.svg", "metric_vs_m.png", "metric_vs_m.svg", "metric_vs_state.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("astrocytic m=16") && md.contains("2/2"), "{md}");
    // The last column: each group's decoding state in floats per sequence — the astrocyte's grows
    // with m (H·(D·m + m + 1) per layer), softmax's is its KV cache.
    let state = |label: &str| -> usize {
        let row = md.lines().find(|l| l.starts_with(&format!("| {label} |"))).expect(label);
        row.trim_end_matches(" |").rsplit("| ").next().unwrap().trim().parse().expect("a number of floats")
    };
    let (soft, m8, m16) = (state("softmax"), state("astrocytic m=8"), state("astrocytic m=16"));
    assert!(soft > 0 && m8 > 0 && m16 > m8, "{md}");
    // Re-running trains nothing and writes no duplicate rows.
    ablate(root, &grid, &out).success().stdout(predicate::str::contains("0 trained now, 6 already done"));
    assert_eq!(std::fs::read_to_string(out.join("results.csv")).unwrap(), csv);
    // A grid key the config does not have is refused before training.
    std::fs::write(&grid, format!("base = \"{base}\"\n[grid]\n\"model.atention\" = [1]\n")).unwrap();
    ablate(root, &grid, &root.join("other")).failure().stderr(predicate::str::contains("model.atention"));
}

#[test]
fn a_failing_cell_is_recorded_and_the_grid_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    // block_size 100000 makes the corpus too short for one cell only.
    let (_, grid) = grid_file(root, "[set]\n\"train.max_iters\" = 2\n[grid]\n\"model.block_size\" = [100000, 16]\n");
    ablate(root, &grid, &root.join("r")).success();
    let csv = std::fs::read_to_string(root.join("r/results.csv")).unwrap();
    assert!(csv.contains("failed:") && csv.contains(",ok,"), "{csv}");
}

#[test]
fn fidelity_report_on_a_softmax_run() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_corpus(&root.join("corpus.txt"));
    let run = train(root, r#"{ kind = "softmax" }"#, "s");
    let out = astro(root)
        .args(["fidelity", "--json", "--features", "8,64,512", "--batches", "2", "--sequences", "2"])
        .args(["--distill-steps", "5", "--fit-sequences", "4", "--run"])
        .arg(&run)
        .arg("--out")
        .arg(root.join("fid"))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let r: Value = serde_json::from_slice(&out).unwrap();
    // Three maps side by side by default (positive, saderf, shifted_saderf), and the distilled one.
    assert_eq!(r["val_loss"].as_array().unwrap().len(), 4 * 3);
    assert_eq!(r["heads"].as_array().unwrap().len(), 4 * 2 * 2 * 3);
    assert_eq!(r["error_slope"].as_array().unwrap().len(), 4);
    // With small trained norms the astrocyte response converges: error falls with m.
    let err = |map: &str, m: u64| {
        let hs: Vec<f64> = r["heads"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["m"].as_u64() == Some(m) && h["map"] == map)
            .map(|h| h["median_rel_err"].as_f64().unwrap())
            .collect();
        hs.iter().sum::<f64>() / hs.len() as f64
    };
    for map in ["positive", "saderf", "shifted_saderf"] {
        assert!(
            err(map, 512) < err(map, 8),
            "{map}: median error {} at m=512 vs {} at m=8",
            err(map, 512),
            err(map, 8)
        );
    }
    for f in ["fidelity.csv", "fidelity.md", "normalisers.png", "error_vs_m.svg", "loss_vs_m.png"] {
        assert!(root.join("fid").join(f).is_file(), "{f} missing");
    }
    let astro_run = train(root, r#"{ kind = "astrocytic", features = 16 }"#, "a");
    astro(root)
        .args(["fidelity", "--run"])
        .arg(&astro_run)
        .assert()
        .failure()
        .stderr(predicate::str::contains("softmax"));
}

#[test]
fn task_runs_evaluate_accuracy() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    astro(root)
        .args([
            "train",
            "--task",
            "induction",
            "--set",
            "train.max_iters=2",
            "--set",
            "model.n_layer=1",
            "--set",
            "model.n_embd=16",
        ])
        .args(["--set", &format!("run.out_dir={:?}", root.join("runs").display().to_string())])
        .assert()
        .success();
    let out = astro(root)
        .args(["eval", "--json", "--examples", "50", "--run"])
        .arg(root.join("runs/induction"))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let r: Value = serde_json::from_slice(&out).unwrap();
    assert!(r["accuracy"].as_f64().is_some());
    assert_eq!(r["tokens"].as_u64(), Some(50 * 64));
    // astro compare gives a task run's final accuracy in its table and against the length.
    let cmp = root.join("cmp");
    astro(root)
        .args(["compare", "--against", "task.seq_len", "--out"])
        .arg(&cmp)
        .arg(root.join("runs/induction"))
        .assert()
        .success()
        .stdout(predicate::str::contains("final accuracy |").and(predicate::str::contains("(task.seq_len = 64)")));
    assert!(cmp.join("final_accuracy_vs_task_seq_len.svg").is_file());
    assert!(cmp.join("accuracy_vs_step.svg").is_file());
    let _ = common::repo();
}

#[test]
fn distill_fits_astrocytic_attention_to_a_softmax_run() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_corpus(&root.join("corpus.txt"));
    let run = train(root, r#"{ kind = "softmax" }"#, "s");
    let before = common::snapshot(&run);
    let out = root.join("distilled");
    let distill_m = |out: &Path, m: &str, extra: &[&str]| {
        let mut cmd = astro(root);
        cmd.args(["distill", "--json", "--features", m, "--steps", "40", "--lr", "0.01"])
            .args(["--fit-sequences", "8", "--held-out-sequences", "4", "--batches", "2", "--model"])
            .arg(&run)
            .arg("--out")
            .arg(out)
            .args(extra);
        cmd.assert()
    };
    let distill = |out: &Path, extra: &[&str]| distill_m(out, "32", extra);
    let json = distill(&out, &[]).success().get_output().stdout.clone();
    let r: Value = serde_json::from_slice(&json).unwrap();
    let layers = r["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        let f = |k: &str| l[k].as_f64().unwrap();
        assert!(f("fit_after") < f("fit_before"), "distillation lowers the KL it minimises: {l}");
        assert!(f("held_out_after").is_finite());
    }
    // The result is an ordinary run directory: eval reads it, as astrocytic attention.
    for f in ["config.toml", "tokenizer.json", "model.bpk", "distill.json", "distill.md"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config.contains("shifted_saderf") && config.contains("astrocytic"), "{config}");
    let eval: Value = serde_json::from_slice(
        &astro(root).args(["eval", "--json", "--run"]).arg(&out).assert().success().get_output().stdout.clone(),
    )
    .unwrap();
    let loss = eval["loss"].as_f64().unwrap();
    assert!((loss - r["distilled_val_loss"].as_f64().unwrap()).abs() < 0.5, "{eval} vs {r}");
    // The source is untouched; an existing output is never overwritten.
    assert_eq!(common::snapshot(&run), before);
    let out_before = common::snapshot(&out);
    distill(&out, &[]).failure().stderr(predicate::str::contains("already exists"));
    assert_eq!(common::snapshot(&out), out_before);
    // Bad input: m = 0, text the tokenizer cannot encode, a non-softmax model.
    distill_m(&root.join("d0"), "0", &[]).failure().stderr(predicate::str::contains("at least 1"));
    std::fs::write(root.join("greek.txt"), "αβγδε ".repeat(400)).unwrap();
    distill(&root.join("d1"), &["--data", root.join("greek.txt").to_str().unwrap()])
        .failure()
        .stderr(predicate::str::contains("does not suit the model's tokenizer"));
    assert!(!root.join("d0").exists() && !root.join("d1").exists());
    astro(root)
        .args(["distill", "--model"])
        .arg(&out)
        .arg("--out")
        .arg(root.join("d2"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("softmax-trained"));
}

#[test]
fn compare_draws_runs_against_steps_tokens_and_seconds_with_a_table() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write_corpus(&root.join("corpus.txt"));
    let soft = train(root, "{ kind = \"softmax\" }", "soft");
    let lin = train(root, "{ kind = \"linear\" }", "lin");
    let out = root.join("cmp");
    astro(root)
        .arg("compare")
        .arg(&soft)
        .arg(&lin)
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("| soft | 6 |").and(predicate::str::contains("| lin | 6 |")));
    for f in ["val_loss_vs_step", "val_loss_vs_tokens", "val_loss_vs_seconds", "train_loss_vs_step"] {
        for ext in ["png", "svg"] {
            assert!(out.join(format!("{f}.{ext}")).is_file(), "{f}.{ext}");
        }
    }
    let mut reader = csv::Reader::from_path(out.join("compare.csv")).unwrap();
    let rows: Vec<std::collections::HashMap<String, String>> = reader.deserialize().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 2);
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(soft.join("summary.json")).unwrap()).unwrap();
    let table: f64 = rows[0]["final_val_loss"].parse().unwrap();
    assert_eq!(Some(table), summary["final_val_loss"].as_f64(), "the table's final loss is the run's");
    // --against: final loss against a config number; shared labels form one line; a key that is
    // missing or not a number is named, and nothing is written.
    let out4 = root.join("cmp4");
    astro(root)
        .args(["compare", "--against", "model.block_size", "--label", "both", "--label", "both"])
        .arg(&soft)
        .arg(&lin)
        .arg("--out")
        .arg(&out4)
        .assert()
        .success()
        .stdout(predicate::str::contains("| both (model.block_size = 16) | 6 |"));
    for ext in ["png", "svg"] {
        assert!(out4.join(format!("final_val_loss_vs_model_block_size.{ext}")).is_file(), "{ext}");
    }
    for (key, message) in [("model.nothing", "has no such key"), ("model.attention.kind", "not a number")] {
        astro(root)
            .args(["compare", "--against", key])
            .arg(&soft)
            .arg("--out")
            .arg(root.join("cmp5"))
            .assert()
            .failure()
            .stderr(predicate::str::contains(format!("--against {key}")).and(predicate::str::contains(message)));
        assert!(!root.join("cmp5").exists());
    }
    // Labels, and what is not a run.
    astro(root)
        .args(["compare", "--label", "only-one"])
        .arg(&soft)
        .arg(&lin)
        .arg("--out")
        .arg(root.join("cmp2"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("one label per run"));
    astro(root)
        .arg("compare")
        .arg(root.join("corpus.txt").parent().unwrap())
        .arg("--out")
        .arg(root.join("cmp3"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("no metrics.jsonl"));
}
