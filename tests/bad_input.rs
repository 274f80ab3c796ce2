//! The bad-input table of `docs/bad-input.md`, executed: each row names a case below; the test
//! runs it and requires the row's exit status and message excerpt. Rows and cases must match one
//! to one, so the documentation cannot drift from what astro does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

#[path = "common/mod.rs"]
mod common;

use common::{astro, repo, snapshot};

/// One row of the table.
struct Row {
    exit: i32,
    excerpt: String,
}

/// Parses `| case | input | exit | message (excerpt) |` rows; the excerpt is the text between the
/// first and the last backtick of its cell.
fn table() -> BTreeMap<String, Row> {
    let text = std::fs::read_to_string(repo().join("docs/bad-input.md")).expect("docs/bad-input.md");
    let mut rows = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| case")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 4, "malformed row: {line}");
        let message = cells[3];
        let (start, end) = (message.find('`').unwrap(), message.rfind('`').unwrap());
        assert!(end > start, "the excerpt must be quoted in backticks: {line}");
        let row = Row { exit: cells[2].parse().expect("exit status"), excerpt: message[start + 1..end].to_string() };
        assert!(rows.insert(cells[0].to_string(), row).is_none(), "duplicate case {}", cells[0]);
    }
    rows
}

/// Fixtures shared by the cases: a corpus, a tiny config, an astrocytic and a softmax run, and
/// their exports.
struct World {
    root: PathBuf,
    config: PathBuf,
    run: PathBuf,
    soft: PathBuf,
    export: PathBuf,
    soft_export: PathBuf,
}

fn corpus_text() -> String {
    let words = ["the", "astrocyte", "neuron", "glia", "and", "of", "calcium"];
    let mut state = 3u64;
    let mut text = String::new();
    while text.len() < 12_000 {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        text.push_str(words[(state >> 33) as usize % words.len()]);
        text.push(' ');
    }
    text
}

impl World {
    fn new(root: &Path) -> World {
        std::fs::write(root.join("corpus.txt"), corpus_text()).unwrap();
        let config = root.join("tiny.toml");
        std::fs::write(
            &config,
            format!(
                "[run]\nname = \"r\"\nout_dir = {out:?}\n[data]\npath = {data:?}\n[model]\nblock_size = 16\nn_layer = 1\n\
                 n_head = 2\nn_embd = 16\nattention = {{ kind = \"astrocytic\", features = 8 }}\n[optim]\nbatch_size = 4\n\
                 [train]\nmax_iters = 2\neval_interval = 2\neval_iters = 1\ncheckpoint_interval = 2\nsample_tokens = 0\n",
                out = root.join("runs").display().to_string(),
                data = root.join("corpus.txt").display().to_string()
            ),
        )
        .unwrap();
        let w = World {
            root: root.to_path_buf(),
            run: root.join("runs/astro"),
            soft: root.join("runs/soft"),
            export: root.join("export-astro"),
            soft_export: root.join("export-soft"),
            config,
        };
        w.astro(&["train", "--name", "astro"]).assert().success();
        w.astro(&["train", "--name", "soft", "--set", "model.attention.kind=softmax"]).assert().success();
        for (run, out) in [(&w.run, &w.export), (&w.soft, &w.soft_export)] {
            astro(root).arg("export").arg("--run").arg(run).arg("--out").arg(out).assert().success();
        }
        w
    }

    /// `astro ARGS --config tiny.toml` for `train` (other commands as given).
    fn astro(&self, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = astro(&self.root);
        cmd.args(args);
        if args.first() == Some(&"train") && !args.contains(&"--config") && !args.contains(&"--resume") {
            cmd.arg("--config").arg(&self.config);
        }
        cmd
    }

    fn set(&self, sets: &[&str]) -> Output {
        let mut args = vec!["train"];
        for s in sets {
            args.extend(["--set", s]);
        }
        self.astro(&args).output().unwrap()
    }

    /// A copy of `dir` under a new name, for a case to damage.
    fn copy(&self, dir: &Path, name: &str) -> PathBuf {
        let to = self.root.join(name);
        common::copy_dir(dir, &to);
        to
    }

    fn corpus(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.root.join(name);
        std::fs::write(&path, bytes).unwrap();
        format!("data.path={:?}", path.display().to_string())
    }
}

/// `root/<name>.toml`: a two-cell grid (two seeds) over the tiny config with `set` under `[set]`,
/// reporting into `reports/<name>`.
fn ablation(w: &World, name: &str, set: &str) -> PathBuf {
    let path = w.root.join(format!("{name}.toml"));
    let (key, value) = set.split_once(" = ").unwrap();
    let text = format!(
        "base = {:?}\n[set]\n{key:?} = {value}\n[grid]\n\"run.seed\" = [1, 2]\n",
        w.config.display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs one case; returns the process output.
fn run_case(w: &World, case: &str) -> Output {
    let root = &w.root;
    match case {
        "config-unknown-key" => {
            let text = std::fs::read_to_string(&w.config).unwrap() + "bogus = 1\n";
            std::fs::write(root.join("bogus.toml"), text).unwrap();
            w.astro(&["train", "--config", "bogus.toml"]).output().unwrap()
        }
        "config-wrong-type" => w.set(&["model.n_layer=\"two\""]),
        "config-unknown-variant" => w.set(&["model.attention.kind=quantum"]),
        "config-heads-do-not-divide" => w.set(&["model.n_head=3"]),
        "config-negative-lr" => w.set(&["optim.lr=-1"]),
        "config-val-fraction" => w.set(&["data.val_fraction=1.5"]),
        "config-zero-features" => w.set(&["model.attention.features=0"]),
        "config-decay" => w.set(&["model.attention.decay=2"]),
        "config-bad-override" => w.set(&["model.n_layer"]),
        "config-taylor-too-wide" => {
            w.set(&[r#"model.attention={kind="astrocytic",features=100,feature_map="taylor",learnable_omega=true}"#])
        }
        "config-short-conv-too-long" => w.set(&["model.short_conv=1000"]),
        "config-short-conv-longer-than-block" => w.set(&["model.short_conv=32", "model.block_size=16"]),
        "config-window-zero" => w.set(&["model.attention={ kind = \"astrocytic\", window = 0 }"]),
        "device-bad-index" => w.astro(&["train", "--device", "flex:1"]).output().unwrap(),
        "devices-cpu-backend" => w.astro(&["train", "--devices", "flex,flex"]).output().unwrap(),
        "devices-mixed-backends" => w.astro(&["train", "--devices", "wgpu:0,cuda:0"]).output().unwrap(),
        "devices-and-device" => w.astro(&["train", "--devices", "wgpu:0,wgpu:1", "--device", "flex"]).output().unwrap(),
        "config-missing-file" => w.astro(&["train", "--config", "nope.toml"]).output().unwrap(),
        "corpus-empty" => w.set(&[&w.corpus("empty.txt", b"")]),
        "corpus-binary" => {
            let mut bytes = corpus_text().into_bytes();
            bytes[100] = 0;
            w.set(&[&w.corpus("binary.dat", &bytes)])
        }
        "corpus-not-utf8" => {
            let bytes: Vec<u8> = (0..12_000u32).map(|i| 0x80 + (i % 64) as u8).collect();
            w.set(&[&w.corpus("latin.txt", &bytes)])
        }
        "corpus-few-invalid-bytes" => {
            let mut bytes = corpus_text().into_bytes();
            bytes[10] = 0xff;
            bytes[2000] = 0xfe;
            w.set(&[&w.corpus("stray.txt", &bytes)])
        }
        "corpus-one-enormous-line" => {
            let line = "word ".repeat(400_000);
            let data = w.corpus("line.txt", line.as_bytes());
            let char_run = w.set(&[&data, "run.name=\"line\""]);
            assert!(char_run.status.success(), "{}", String::from_utf8_lossy(&char_run.stderr));
            w.set(&[&data, "data.tokenizer={ kind = \"bpe\", vocab_size = 300 }", "run.name=\"line-bpe\""])
        }
        "corpus-too-short" => w.set(&[&w.corpus("short.txt", b"a few words")]),
        "corpus-missing" => w.set(&[&format!("data.path={:?}", root.join("nope.txt").display().to_string())]),
        "tokenizer-malformed" => {
            std::fs::write(root.join("broken.json"), "{\"model\": {").unwrap();
            let path = root.join("broken.json").display().to_string();
            w.set(&[&format!("data.tokenizer={{ kind = \"file\", path = {path:?} }}")])
        }
        "tokenizer-malformed-in-run" => {
            let run = w.copy(&w.run, "run-broken-tokenizer");
            std::fs::write(run.join("tokenizer.json"), "{\"version\": \"1.0\"").unwrap();
            astro(root).arg("eval").arg("--run").arg(&run).output().unwrap()
        }
        "prompt-not-encodable" => astro(root)
            .arg("generate")
            .arg("--run")
            .arg(&w.run)
            .args(["--prompt", "∂x", "--tokens", "4"])
            .output()
            .unwrap(),
        "weights-of-another-variant" => {
            let run = w.copy(&w.run, "run-mixed");
            std::fs::copy(w.soft.join("model.bpk"), run.join("model.bpk")).unwrap();
            astro(root).arg("eval").arg("--run").arg(&run).output().unwrap()
        }
        "model-too-wide" => w.set(&["model.n_embd=1048576"]),
        "model-too-deep" => w.set(&["model.n_layer=10000000"]),
        "model-too-many-features" => w.set(&["model.attention.features=50000000"]),
        "batch-too-large" => w.set(&["optim.batch_size=10000000"]),
        "allocation-failure" => {
            let mut cmd = w.astro(&["train", "--set", "model.n_embd=1048576"]);
            cmd.env("ASTRO_MEMORY", "10PiB").output().unwrap()
        }
        "eval-run-too-large" => {
            let run = w.copy(&w.run, "run-huge");
            let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
            assert!(config.contains("n_embd = 16"), "{config}");
            std::fs::write(run.join("config.toml"), config.replace("n_embd = 16", "n_embd = 1048576")).unwrap();
            astro(root).arg("eval").arg("--run").arg(&run).output().unwrap()
        }
        "distill-too-many-features" => astro(root)
            .args(["distill", "--features", "1000000000", "--model"])
            .arg(&w.soft)
            .arg("--out")
            .arg(root.join("d-huge"))
            .output()
            .unwrap(),
        "resume-finished" | "resume-more-steps" | "resume-changed-key" => {
            let run = w.copy(&w.run, &format!("run-{case}"));
            let sets: &[&str] = match case {
                "resume-finished" => &[],
                "resume-more-steps" => &["--set", "train.max_iters=4"],
                _ => &["--set", "optim.lr=0.01", "--set", "run.seed=7"],
            };
            let before = snapshot(&run);
            let out = astro(root).args(["train", "--resume"]).arg(&run).args(sets).output().unwrap();
            if case != "resume-more-steps" {
                assert_eq!(snapshot(&run), before, "{case}: the run directory changed");
            }
            out
        }
        "resume-another-model" => {
            let run = w.copy(&w.run, "run-resumed");
            astro(root)
                .args(["train", "--config"])
                .arg(&w.config)
                .args(["--set", "model.attention.kind=softmax", "--resume"])
                .arg(&run)
                .output()
                .unwrap()
        }
        "export-of-another-variant" => {
            let export = w.copy(&w.export, "export-mixed");
            std::fs::copy(w.soft_export.join("model.safetensors"), export.join("model.safetensors")).unwrap();
            astro(root).arg("eval").arg("--model").arg(&export).output().unwrap()
        }
        "export-of-another-size" => {
            let init = format!("train.init={:?}", w.soft_export.display().to_string());
            w.set(&[&init, "model.n_embd=32", "run.name=\"init\""])
        }
        "safetensors-truncated" => {
            let export = w.copy(&w.export, "export-truncated");
            let file = export.join("model.safetensors");
            let len = std::fs::metadata(&file).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len / 2).unwrap();
            astro(root).arg("eval").arg("--model").arg(&export).output().unwrap()
        }
        "safetensors-garbage" => {
            let export = w.copy(&w.export, "export-garbage");
            std::fs::write(export.join("model.safetensors"), "this is not a tensor file").unwrap();
            astro(root).arg("generate").arg("--model").arg(&export).args(["--prompt", "the"]).output().unwrap()
        }
        "export-without-config" => {
            let dir = root.join("export-no-config");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(w.export.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
            astro(root).arg("eval").arg("--model").arg(&dir).output().unwrap()
        }
        "distill-zero-features" | "distill-foreign-text" | "distill-existing-out" | "distill-not-softmax" => {
            let (model, out, extra): (&Path, PathBuf, Vec<String>) = match case {
                "distill-zero-features" => (&w.soft, root.join("d-zero"), vec!["--features".into(), "0".into()]),
                "distill-foreign-text" => {
                    std::fs::write(root.join("greek.txt"), "αβγδε ζηθ ".repeat(300)).unwrap();
                    (&w.soft, root.join("d-greek"), vec!["--data".into(), root.join("greek.txt").display().to_string()])
                }
                "distill-existing-out" => (&w.soft, w.run.clone(), vec![]),
                _ => (&w.run, root.join("d-astro"), vec![]),
            };
            let before = snapshot(&out);
            let output = astro(root)
                .args(["distill", "--steps", "2", "--fit-sequences", "2", "--held-out-sequences", "2", "--model"])
                .arg(model)
                .arg("--out")
                .arg(&out)
                .args(&extra)
                .output()
                .unwrap();
            assert_eq!(snapshot(&out), before, "{case}: the output directory changed");
            output
        }
        "calibration-undefined" => {
            let data = w.corpus("aaaa.txt", "a".repeat(4000).as_bytes());
            w.set(&[
                &data,
                r#"model.attention={kind="astrocytic",features=8,feature_map="shifted_saderf"}"#,
                r#"model.positions="none""#,
                "run.name=\"flat\"",
            ])
        }
        "fidelity-unknown-map" => astro(root)
            .args(["fidelity", "--feature-maps", "positive,gaussian", "--run"])
            .arg(&w.soft)
            .output()
            .unwrap(),
        "corpus-jsonl-not-json" | "corpus-jsonl-bad-line-skipped" => {
            let mut lines =
                (0..300).map(|i| format!("{{\"text\": \"the astrocyte {i} and the neuron\"}}\n")).collect::<String>();
            lines.insert_str(0, "{\"text\": \"first\"}\n{not json\n");
            let data = w.corpus("bad.jsonl", lines.as_bytes());
            if case == "corpus-jsonl-not-json" {
                w.set(&[&data])
            } else {
                w.set(&[&data, "data.bad_lines=\"skip\"", "run.name=\"skipped\""])
            }
        }
        "corpus-jsonl-missing-field" => w.set(&[&w.corpus("body.jsonl", b"{\"body\": \"text under another name\"}\n")]),
        "corpus-gzip-truncated" => {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(corpus_text().as_bytes()).unwrap();
            let bytes = e.finish().unwrap();
            w.set(&[&w.corpus("cut.txt.gz", &bytes[..bytes.len() / 2])])
        }
        "corpus-directory-without-text" => {
            let dir = root.join("no-text");
            std::fs::create_dir_all(dir.join("sub")).unwrap();
            std::fs::write(dir.join("sub/table.csv"), "a,b\n1,2\n").unwrap();
            w.set(&[&format!("data.path={:?}", dir.display().to_string())])
        }
        "corpus-validation-too-short" => {
            let val = w.corpus("val.txt", b"too short");
            w.set(&[&val.replacen("data.path", "data.val_path", 1)])
        }
        "ablate-cell-out-of-range" => {
            let grid = ablation(w, "range", "optim.lr = 0.001");
            astro(root).args(["ablate", "--cell", "7", "--config"]).arg(&grid).output().unwrap()
        }
        "ablate-slurm-without-sbatch" => {
            let grid = ablation(w, "nosbatch", "optim.lr = 0.001");
            let empty = root.join("empty-path");
            std::fs::create_dir_all(&empty).unwrap();
            astro(root).env("PATH", &empty).args(["ablate", "--slurm", "--config"]).arg(&grid).output().unwrap()
        }
        "ablate-grid-edited" => {
            let grid = ablation(w, "edited", "optim.lr = 0.001");
            astro(root).args(["ablate", "--config"]).arg(&grid).assert().success();
            let runs = root.join("reports/edited/runs");
            let before = snapshot(&runs);
            let grid = ablation(w, "edited", "optim.lr = 0.002");
            let out = astro(root).args(["ablate", "--config"]).arg(&grid).output().unwrap();
            assert_eq!(snapshot(&runs), before, "{case}: the finished cells' runs changed");
            out
        }
        other => panic!("docs/bad-input.md names case `{other}`, which tests/bad_input.rs does not implement"),
    }
}

const CASES: &[&str] = &[
    "config-unknown-key",
    "config-wrong-type",
    "config-unknown-variant",
    "config-heads-do-not-divide",
    "config-negative-lr",
    "config-val-fraction",
    "config-zero-features",
    "config-decay",
    "config-bad-override",
    "config-taylor-too-wide",
    "config-short-conv-too-long",
    "config-short-conv-longer-than-block",
    "config-window-zero",
    "device-bad-index",
    "devices-cpu-backend",
    "devices-mixed-backends",
    "devices-and-device",
    "config-missing-file",
    "corpus-empty",
    "corpus-binary",
    "corpus-not-utf8",
    "corpus-few-invalid-bytes",
    "corpus-one-enormous-line",
    "corpus-too-short",
    "corpus-missing",
    "tokenizer-malformed",
    "tokenizer-malformed-in-run",
    "prompt-not-encodable",
    "weights-of-another-variant",
    "model-too-wide",
    "model-too-deep",
    "model-too-many-features",
    "batch-too-large",
    "allocation-failure",
    "eval-run-too-large",
    "distill-too-many-features",
    "resume-finished",
    "resume-more-steps",
    "resume-changed-key",
    "resume-another-model",
    "export-of-another-variant",
    "export-of-another-size",
    "safetensors-truncated",
    "safetensors-garbage",
    "export-without-config",
    "distill-zero-features",
    "distill-foreign-text",
    "distill-existing-out",
    "distill-not-softmax",
    "calibration-undefined",
    "fidelity-unknown-map",
    "corpus-jsonl-not-json",
    "corpus-jsonl-bad-line-skipped",
    "corpus-jsonl-missing-field",
    "corpus-gzip-truncated",
    "corpus-directory-without-text",
    "corpus-validation-too-short",
    "ablate-cell-out-of-range",
    "ablate-slurm-without-sbatch",
    "ablate-grid-edited",
];

#[test]
fn every_row_of_the_bad_input_table_holds() {
    let rows = table();
    let documented: Vec<&str> = rows.keys().map(String::as_str).collect();
    let mut implemented = CASES.to_vec();
    implemented.sort_unstable();
    assert_eq!(documented, implemented, "docs/bad-input.md and tests/bad_input.rs list different cases");

    let root = tempfile::tempdir().unwrap();
    let w = World::new(root.path());
    let runs_before = snapshot(&w.run);
    let mut failures = Vec::new();
    let runs = |root: &Path| -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
        dirs.sort();
        dirs
    };
    for (case, row) in &rows {
        let runs_before = runs(&w.root);
        let out = run_case(&w, case);
        if row.exit != 0 && runs(&w.root) != runs_before {
            failures.push(format!("{case}: a failed start left a run directory behind: {:?}", runs(&w.root)));
        }
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let code = out.status.code();
        if code != Some(row.exit) || !said.contains(&row.excerpt) || said.contains("panicked") {
            failures
                .push(format!("{case}: exit {code:?} (want {}), output:\n{said}\nwanted: {}", row.exit, row.excerpt));
        }
        if row.exit != 0 {
            let errors = said.lines().filter(|l| l.starts_with("error:")).count();
            if errors != 1 {
                failures.push(format!("{case}: {errors} `error:` lines, want one:\n{said}"));
            }
        }
    }
    assert_eq!(snapshot(&w.run), runs_before, "a case changed the original run");
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}
