//! Fault injection: `kill -9` at random points, corrupt and truncated checkpoints, a full disk, a
//! file-size limit, a read-only run directory, an ablation killed mid-way. Each test checks that
//! nothing more than the work since the last checkpoint is lost, that no corrupt checkpoint is
//! used, and that the resumed result equals an uninterrupted run's.
//!
//! The full-disk and read-only tests mount a small tmpfs / a read-only bind mount inside a private
//! user + mount namespace (`unshare -r -m`), so they need no privileges on the host.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;

use common::{astro, astro_bin, astro_process, copy_dir, metrics_without_timing as metrics, snapshot};
use predicates::prelude::*;
use serde_json::Value;

/// A deterministic pseudo-text corpus of about 20 kB.
fn corpus(path: &Path) {
    let words = ["the", "astrocyte", "neuron", "synapse", "calcium", "wave", "and", "of", "glia", "fires"];
    let mut state = 4242u64;
    let mut text = String::new();
    while text.len() < 20_000 {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        text.push_str(words[(state >> 33) as usize % words.len()]);
        text.push(if (state >> 20).is_multiple_of(9) { '\n' } else { ' ' });
    }
    std::fs::write(path, text).unwrap();
}

/// A small astrocytic run with dropout (so RNG state matters on resume) writing under `root/runs`.
fn config(root: &Path, iters: usize, checkpoint_interval: usize, eval_interval: usize) -> PathBuf {
    corpus(&root.join("corpus.txt"));
    let path = root.join("run.toml");
    let text = format!(
        r#"[run]
name = "run"
out_dir = {out:?}
seed = 11
[data]
path = {data:?}
[model]
block_size = 16
n_layer = 2
n_head = 2
n_embd = 32
dropout = 0.1
attention = {{ kind = "astrocytic", features = 16, chunk_size = 4 }}
[optim]
batch_size = 4
warmup_iters = 3
[train]
max_iters = {iters}
eval_interval = {eval_interval}
eval_iters = 2
log_interval = 1
checkpoint_interval = {checkpoint_interval}
keep_checkpoints = 2
sample_tokens = 12
"#,
        out = root.join("runs").display().to_string(),
        data = root.join("corpus.txt").display().to_string(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn summary(run: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

/// The run must equal the uninterrupted `reference` in every logged metric, the final validation
/// loss and the sampled text.
fn assert_same_result(reference: &Path, run: &Path) {
    let (ma, mb) = (metrics(reference), metrics(run));
    assert_eq!(ma.len(), mb.len(), "metrics rows: {} vs {}", ma.len(), mb.len());
    assert_eq!(ma, mb, "metrics differ from the uninterrupted run");
    let (sa, sb) = (summary(reference), summary(run));
    assert_eq!(sa["steps"], sb["steps"]);
    assert_eq!(sa["final_val_loss"], sb["final_val_loss"]);
    assert_eq!(sa["best_val_loss"], sb["best_val_loss"]);
    assert_eq!(sa["sample"], sb["sample"]);
}

/// The last step logged in a run's metrics (0 if none).
fn metrics_step(run: &Path) -> usize {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()?["step"].as_u64()).max().unwrap_or(0) as usize
}

/// Newest checkpoint step in a run, if any.
fn newest_checkpoint(run: &Path) -> Option<usize> {
    std::fs::read_dir(run.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .max()
}

/// `program` with the hermetic environment of [`astro_process`] (for scripts that start astro).
fn shell(root: &Path, program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(root).env_remove("ASTRO_STOP_AFTER");
    for (k, v) in astro_process(root).get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd
}

/// Runs `script` with `sh` inside a private user + mount namespace.
fn in_namespace(root: &Path, script: &str) -> std::process::Output {
    shell(root, "unshare").args(["-r", "-m", "sh", "-c", script]).output().expect("unshare runs")
}

#[test]
fn kill_9_at_random_points_then_resume_gives_the_uninterrupted_result() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let config = config(root, 40, 3, 10);

    astro(root).args(["train", "--config"]).arg(&config).args(["--name", "a"]).assert().success();

    // B: killed with SIGKILL at pseudo-random points, resumed each time. A point is a step (the
    // kill follows its metrics row by a random 0–20 ms, so it lands inside a step, an evaluation or
    // a checkpoint write).
    let b = root.join("runs/b");
    let mut rng = 0x5eed_u64;
    let mut next = move || {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng >> 33) as usize
    };
    let mut targets: Vec<usize> = (0..5).map(|_| 2 + next() % 36).collect();
    targets.sort_unstable();
    targets.dedup();
    let mut kills = Vec::new();
    for target in targets {
        let mut cmd = astro_process(root);
        cmd.arg("train");
        if b.join("config.toml").is_file() {
            cmd.arg("--resume").arg(&b);
        } else {
            cmd.arg("--config").arg(&config).args(["--name", "b"]);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        while metrics_step(&b) < target {
            assert!(child.try_wait().unwrap().is_none(), "the run ended before step {target}");
            assert!(Instant::now() < deadline, "timed out waiting for step {target}");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis((next() % 21) as u64));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed at step {target}");
        kills.push((target, metrics_step(&b), newest_checkpoint(&b)));
    }
    eprintln!("kills (target step, last logged step, newest checkpoint): {kills:?}");
    assert!(kills.len() >= 3, "at least three kills: {kills:?}");
    let resumed = astro(root).args(["train", "--resume"]).arg(&b).assert().success();
    let stderr = String::from_utf8_lossy(&resumed.get_output().stderr).into_owned();
    assert!(stderr.contains("resuming") || stderr.contains("starting it again"), "{stderr}");
    assert_same_result(&root.join("runs/a"), &b);
    // No temporary files or directories were left behind.
    for (path, _) in snapshot(&b) {
        assert!(!path.to_string_lossy().contains(".tmp"), "left behind: {}", path.display());
    }
}

#[test]
fn a_run_killed_before_its_first_checkpoint_starts_again() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let config = config(root, 6, 3, 3);
    astro(root).args(["train", "--config"]).arg(&config).args(["--name", "a"]).assert().success();
    // As if killed after setting up the run directory, before the first checkpoint was written.
    astro(root)
        .args(["train", "--config"])
        .arg(&config)
        .args(["--name", "b"])
        .env("ASTRO_STOP_AFTER", "3")
        .assert()
        .success();
    let b = root.join("runs/b");
    std::fs::remove_dir_all(b.join("checkpoints")).unwrap();
    astro(root)
        .args(["train", "--resume"])
        .arg(&b)
        .assert()
        .success()
        .stderr(predicate::str::contains("has no valid checkpoint; starting it again from step 0"));
    assert_same_result(&root.join("runs/a"), &b);
}

#[test]
fn a_corrupt_newest_checkpoint_is_detected_and_the_previous_one_used() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let config = config(root, 12, 4, 4);
    astro(root).args(["train", "--config"]).arg(&config).args(["--name", "a"]).assert().success();
    astro(root)
        .args(["train", "--config"])
        .arg(&config)
        .args(["--name", "stopped"])
        .env("ASTRO_STOP_AFTER", "8")
        .assert()
        .success();
    let stopped = root.join("runs/stopped");
    type Damage = fn(&Path);
    let damages: [(&str, &str, Damage); 4] = [
        ("truncated", "model.bpk", |p| {
            let len = std::fs::metadata(p).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(len / 2).unwrap();
        }),
        ("one flipped byte", "optim.bpk", |p| {
            let mut bytes = std::fs::read(p).unwrap();
            let i = bytes.len() - 7;
            bytes[i] ^= 0x10;
            std::fs::write(p, bytes).unwrap();
        }),
        ("emptied", "model.bpk", |p| std::fs::write(p, b"").unwrap()),
        ("garbage", "state.json", |p| std::fs::write(p, b"{\"step\": 8, \"tokens\":").unwrap()),
    ];
    for (i, (what, file, damage)) in damages.into_iter().enumerate() {
        let run = root.join(format!("runs/damaged-{i}"));
        copy_dir(&stopped, &run);
        damage(&run.join("checkpoints/step-00000008").join(file));
        astro(root)
            .args(["train", "--resume"])
            .arg(&run)
            .assert()
            .success()
            .stderr(predicate::str::contains(format!("step-00000008/{file}")))
            .stderr(predicate::str::contains("using the previous one"))
            .stderr(predicate::str::contains("from step 4"));
        assert_same_result(&root.join("runs/a"), &run);
        eprintln!("{what} {file}: detected, resumed from step 4, same result");
    }
}

/// Bytes that `dir` occupies on a tmpfs (each file rounded up to 4 KiB pages).
fn tmpfs_bytes(dir: &Path) -> u64 {
    snapshot(dir).values().map(|b| (b.len() as u64).div_ceil(4096).max(1) * 4096).sum()
}

/// Run `a` to the end and run `b` stopped after its step-4 checkpoint (12 steps, checkpoints every 4,
/// one evaluation at the end, so the only large writes are the checkpoints); returns `b`'s directory.
fn reference_and_stopped_at_4(root: &Path) -> PathBuf {
    let config = config(root, 12, 4, 12);
    astro(root).args(["train", "--config"]).arg(&config).args(["--name", "a"]).assert().success();
    astro(root)
        .args(["train", "--config"])
        .arg(&config)
        .args(["--name", "b"])
        .env("ASTRO_STOP_AFTER", "4")
        .assert()
        .success();
    root.join("runs/b")
}

#[test]
fn a_disk_that_fills_up_mid_checkpoint_keeps_the_previous_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let b = reference_and_stopped_at_4(root);
    let used = tmpfs_bytes(&b);
    let one_checkpoint = tmpfs_bytes(&b.join("checkpoints/step-00000004"));
    // Room for the run as it is, a few small files, and half of the next checkpoint.
    let size_kib = (used + one_checkpoint / 2 + 3 * 4096) / 1024;
    let mnt = root.join("disk");
    let saved = root.join("after");
    std::fs::create_dir_all(&mnt).unwrap();
    let script = format!(
        "mount -t tmpfs -o size={size_kib}k tmpfs {mnt:?} || exit 90\n\
         cp -a {b:?} {mnt:?}/b || exit 91\n\
         {bin:?} train --resume {mnt:?}/b > {log:?} 2>&1; echo $? > {rc:?}\n\
         cp -a {mnt:?}/b {saved:?}",
        mnt = mnt.display().to_string(),
        b = b.display().to_string(),
        bin = astro_bin().display().to_string(),
        log = root.join("log").display().to_string(),
        rc = root.join("rc").display().to_string(),
        saved = saved.display().to_string(),
    );
    let out = in_namespace(root, &script);
    assert!(out.status.success(), "namespace setup failed: {}", String::from_utf8_lossy(&out.stderr));
    let rc = std::fs::read_to_string(root.join("rc")).unwrap();
    let log = std::fs::read_to_string(root.join("log")).unwrap();
    assert_ne!(rc.trim(), "0", "the run cannot fit on the disk: {log}");
    assert!(log.contains("No space left on device"), "{log}");
    assert!(log.contains("step-00000008") || log.contains("checkpoints"), "the error names the file: {log}");
    assert!(!log.contains("panicked"), "{log}");
    // The previous checkpoint is intact, nothing half-written is left, and the run resumes from it.
    assert_eq!(newest_checkpoint(&saved), Some(4));
    for (path, _) in snapshot(&saved) {
        assert!(!path.to_string_lossy().contains(".tmp"), "left behind: {}", path.display());
    }
    astro(root)
        .args(["train", "--resume"])
        .arg(&saved)
        .assert()
        .success()
        .stderr(predicate::str::contains("from step 4"));
    assert_same_result(&root.join("runs/a"), &saved);
}

#[test]
fn a_file_size_limit_is_an_error_not_a_kill_and_keeps_the_previous_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let b = reference_and_stopped_at_4(root);
    let model = std::fs::metadata(b.join("checkpoints/step-00000004/model.bpk")).unwrap().len();
    let before = snapshot(&b.join("checkpoints/step-00000004"));
    // bash's `ulimit -f` counts KiB: half the model file.
    let limit = (model / 2 / 1024).max(1);
    let out = shell(root, "bash")
        .arg("-c")
        .arg(format!("ulimit -f {limit}; exec {:?} train --resume {:?}", astro_bin(), b))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a clean error exit, not a signal: {stderr}");
    assert!(stderr.contains("File too large") && stderr.contains("model.bpk"), "{stderr}");
    assert_eq!(newest_checkpoint(&b), Some(4));
    assert_eq!(snapshot(&b.join("checkpoints/step-00000004")), before, "the previous checkpoint is untouched");
    astro(root).args(["train", "--resume"]).arg(&b).assert().success();
    assert_same_result(&root.join("runs/a"), &b);
}

#[test]
fn a_read_only_run_directory_is_reported_and_left_as_it_was() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let config = config(root, 8, 4, 8);
    astro(root).args(["train", "--config"]).arg(&config).env("ASTRO_STOP_AFTER", "4").assert().success();
    let run = root.join("runs/run");
    let before = snapshot(&run);
    let script = format!(
        "mount --bind {run:?} {run:?} && mount -o remount,bind,ro {run:?} || exit 90\n\
         {bin:?} train --resume {run:?} > {log:?} 2>&1; echo $? > {rc:?}",
        run = run.display().to_string(),
        bin = astro_bin().display().to_string(),
        log = root.join("log").display().to_string(),
        rc = root.join("rc").display().to_string(),
    );
    let out = in_namespace(root, &script);
    assert!(out.status.success(), "namespace setup failed: {}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(root.join("log")).unwrap();
    assert_eq!(std::fs::read_to_string(root.join("rc")).unwrap().trim(), "1", "{log}");
    assert!(log.contains("Read-only file system") && log.contains(&run.display().to_string()), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(snapshot(&run), before, "nothing in the run changed");
}

#[test]
fn an_ablation_killed_mid_way_resumes_without_redoing_or_duplicating_cells() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let base = config(root, 30, 3, 10);
    let grid = root.join("grid.toml");
    std::fs::write(
        &grid,
        format!(
            "base = {:?}\n[set]\n\"train.sample_tokens\" = 0\n[grid]\n\"run.seed\" = [1, 2, 3]\n",
            base.file_name().unwrap()
        ),
    )
    .unwrap();
    astro(root).args(["ablate", "--config"]).arg(&grid).arg("--out").arg(root.join("whole")).assert().success();

    let out = root.join("killed");
    let mut child = astro_process(root)
        .args(["ablate", "--config"])
        .arg(&grid)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the first cell is recorded and the second has a checkpoint.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let csv = std::fs::read_to_string(out.join("results.csv")).unwrap_or_default();
        if csv.lines().count() == 2 && newest_checkpoint(&out.join("runs/cell-001")).is_some_and(|s| s >= 6) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the ablation finished before it could be killed");
        assert!(Instant::now() < deadline, "timed out waiting for the second cell");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let rerun = astro(root).args(["ablate", "--config"]).arg(&grid).arg("--out").arg(&out).assert().success();
    let stderr = String::from_utf8_lossy(&rerun.get_output().stderr).into_owned();
    assert!(stderr.contains("cell-000 done, skipped"), "{stderr}");
    assert!(stderr.contains("resuming") && stderr.contains("cell-001"), "{stderr}");
    let rows = |dir: &Path| -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(dir.join("results.csv")).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let keep: Vec<usize> = header
            .iter()
            .enumerate()
            .filter(|(_, h)| !["tokens_per_sec", "wall_seconds"].contains(h))
            .map(|(i, _)| i)
            .collect();
        lines.map(|l| keep.iter().map(|&i| l.split(',').nth(i).unwrap_or("").to_string()).collect()).collect()
    };
    let (whole, killed) = (rows(&root.join("whole")), rows(&out));
    assert_eq!(killed.len(), 3, "one row per cell, no duplicates: {killed:?}");
    assert_eq!(whole, killed, "the resumed ablation's results equal the uninterrupted one's");
}

#[test]
fn a_hostile_run_gets_no_nan_from_the_astrocyte_and_a_diverging_one_stops_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let config = config(root, 60, 20, 20);
    let hostile = ["optim.min_lr=0", "optim.warmup_iters=0", "optim.grad_clip=0"];
    let train = |name: &str, lr: &str| {
        let mut cmd = astro(root);
        cmd.args(["train", "--config"]).arg(&config).args(["--name", name, "--set", &format!("optim.lr={lr}")]);
        for s in hostile {
            cmd.args(["--set", s]);
        }
        cmd.assert()
    };
    // Learning rate 10 without warm-up or clipping: activations and q/k norms grow by orders of
    // magnitude, yet every loss stays finite (before the astrocyte's division was rescaled, its
    // backward turned den² into 0 and this run died with NaN at step 3).
    train("lr10", "10").success();
    let rows = metrics(&root.join("runs/lr10"));
    assert_eq!(rows.len(), 60);
    for row in &rows {
        for key in ["train_loss", "val_loss"] {
            if let Some(x) = row.get(key) {
                assert!(x.as_f64().is_some_and(f64::is_finite), "step {}: {key} = {x}", row["step"]);
            }
        }
    }
    // Learning rate 1e4: weight decay alone multiplies the weights by (1 − lr·wd) each step, so the
    // activations overflow f32 within a few steps. The run stops with a message naming the step
    // and the last good checkpoint, which is intact.
    let out = train("lr1e4", "1e4").failure().code(1).stderr(predicate::str::contains("non-finite"));
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let run = root.join("runs/lr1e4");
    if let Some(step) = newest_checkpoint(&run) {
        assert!(stderr.contains(&format!("step-{step:08}")), "{stderr}");
        let state = std::fs::read_to_string(run.join(format!("checkpoints/step-{step:08}/state.json"))).unwrap();
        assert!(state.contains("\"files\""), "a complete checkpoint: {state}");
    } else {
        assert!(stderr.contains("No checkpoint was written yet"), "{stderr}");
    }
}
