//! `astro ablate` cells as units a scheduler can run: `--list`, `--cell`, `--report`, the cell lock,
//! a grid edited after its cells ran, and the Slurm job array (`--slurm --dry-run`, and a submission
//! through a stand-in `sbatch`; CI submits to a real Slurm, `scripts/slurm/ci_test.sh`).

use std::path::{Path, PathBuf};

#[path = "common/mod.rs"]
mod common;

use common::{astro, base_config, write_corpus};
use predicates::prelude::*;

/// A grid of three seeds over the tiny config, with `set` under `[set]`; returns its path.
fn grid(root: &Path, set: &str) -> PathBuf {
    write_corpus(&root.join("corpus.txt"));
    let base = base_config(root, "{ kind = \"astrocytic\", features = 8 }");
    let path = root.join("grid.toml");
    let text = format!(
        "base = {:?}\n[set]\n{set}\n[grid]\n\"run.seed\" = [1, 2, 3]\n",
        base.file_name().unwrap().to_string_lossy()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn ablate(root: &Path, grid: &Path, out: &Path) -> assert_cmd::Command {
    let mut cmd = astro(root);
    cmd.arg("ablate").arg("--config").arg(grid).arg("--out").arg(out);
    cmd
}

/// `results.csv` without the timing columns.
fn results(out: &Path) -> Vec<Vec<String>> {
    let mut reader = csv::Reader::from_path(out.join("results.csv")).unwrap();
    let header = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            header
                .iter()
                .zip(r.iter())
                .filter(|(h, _)| !["tokens_per_sec", "wall_seconds"].contains(h))
                .map(|(_, v)| v.to_string())
                .collect()
        })
        .collect()
}

fn stdout(cmd: &mut assert_cmd::Command) -> String {
    String::from_utf8(cmd.assert().success().get_output().stdout.clone()).unwrap()
}

#[test]
fn cells_run_one_at_a_time_and_the_report_shows_what_finished() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let grid = grid(root, "\"train.max_iters\" = 6");
    let out = root.join("out");
    let listed = stdout(ablate(root, &grid, &out).arg("--list"));
    assert_eq!(listed.matches(" pending").count(), 3, "{listed}");
    assert!(listed.contains("cell-002") && listed.contains("seed=3"), "{listed}");

    // One cell alone, as a scheduler's task would run it.
    ablate(root, &grid, &out)
        .args(["--cell", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("cell-001: trained"));
    assert!(
        !out.join("runs/cell-000").exists() && !out.join("results.csv").exists(),
        "a cell writes only its own files"
    );
    let listed = stdout(ablate(root, &grid, &out).arg("--list"));
    assert!(listed.lines().any(|l| l.starts_with("cell-001") && l.contains("finished (6 steps)")), "{listed}");
    assert_eq!(listed.matches(" pending").count(), 2, "{listed}");
    ablate(root, &grid, &out)
        .args(["--cell", "cell-001"])
        .assert()
        .success()
        .stdout(predicate::str::contains("finished earlier"));

    // The report of whatever finished, and what has not.
    ablate(root, &grid, &out)
        .arg("--report")
        .assert()
        .success()
        .stdout(predicate::str::contains("not finished: cell-000"));
    assert_eq!(results(&out).len(), 1);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("Not finished (2 of 3 cells)") && md.contains("- cell-002: pending"), "{md}");

    // The whole grid skips the finished cell and equals a grid run in one go.
    let all = ablate(root, &grid, &out).assert().success();
    let said = String::from_utf8_lossy(&all.get_output().stderr).into_owned();
    assert!(said.contains("cell-001 done, skipped") && said.contains("cell-000 training"), "{said}");
    ablate(root, &grid, &root.join("whole")).assert().success();
    assert_eq!(results(&out), results(&root.join("whole")));
    assert_eq!(results(&out).len(), 3);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| 3/3 |") && md.contains(" ± "), "mean ± std over the three seeds: {md}");
}

#[test]
fn a_cell_another_process_trains_is_not_trained_twice() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let grid = grid(root, "\"train.max_iters\" = 6");
    let out = root.join("out");
    std::fs::create_dir_all(out.join("cells")).unwrap();
    // This test process holds cell 0's lock, as a running `--cell 0` would.
    let lock = std::fs::File::create(out.join("cells/cell-000.lock")).unwrap();
    lock.lock().unwrap();
    ablate(root, &grid, &out)
        .args(["--cell", "0"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("cell-000 is already running"));
    let listed = stdout(ablate(root, &grid, &out).arg("--list"));
    assert!(listed.lines().any(|l| l.starts_with("cell-000") && l.contains("running")), "{listed}");
    let all = ablate(root, &grid, &out).assert().success();
    let said = String::from_utf8_lossy(&all.get_output().stderr).into_owned();
    assert!(said.contains("cell-000 running elsewhere"), "{said}");
    assert!(!out.join("runs/cell-000").exists());
    assert_eq!(results(&out).len(), 2);
    drop(lock);
    ablate(root, &grid, &out).args(["--cell", "0"]).assert().success();
    ablate(root, &grid, &out).arg("--report").assert().success();
    assert_eq!(results(&out).len(), 3);
}

#[test]
fn an_edited_grid_is_refused_until_rerun_changed_trains_the_changed_cells_again() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let grid_path = grid(root, "\"train.max_iters\" = 6");
    let out = root.join("out");
    ablate(root, &grid_path, &out).args(["--cell", "0"]).assert().success();
    // A larger train.max_iters is not a change: the cell continues.
    let grid_path = grid(root, "\"train.max_iters\" = 8");
    ablate(root, &grid_path, &out).args(["--cell", "0"]).assert().success().stdout(predicate::str::contains("8 steps"));
    // Another learning rate is.
    let grid_path = grid(root, "\"train.max_iters\" = 8\n\"optim.lr\" = 0.002");
    ablate(root, &grid_path, &out).args(["--cell", "0"]).assert().failure().stderr(
        predicate::str::contains("cell-000 (optim.lr (0.001 → 0.002))")
            .and(predicate::str::contains("--rerun-changed")),
    );
    let listed = stdout(ablate(root, &grid_path, &out).arg("--list"));
    assert!(listed.lines().any(|l| l.starts_with("cell-000") && l.contains("changed since it ran")), "{listed}");
    ablate(root, &grid_path, &out).args(["--cell", "0", "--rerun-changed"]).assert().success();
    let kept: Vec<_> = std::fs::read_dir(out.join("replaced")).unwrap().collect();
    assert_eq!(kept.len(), 1, "the old run is kept");
    let config = std::fs::read_to_string(out.join("runs/cell-000/config.toml")).unwrap();
    assert!(config.contains("lr = 0.002"), "{config}");
}

#[test]
fn slurm_dry_run_prints_one_task_per_unfinished_cell_and_submits_nothing() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let grid = grid(root, "\"train.max_iters\" = 6");
    let out = root.join("out");
    ablate(root, &grid, &out).args(["--cell", "1"]).assert().success();
    let printed = stdout(ablate(root, &grid, &out).args([
        "--slurm",
        "--dry-run",
        "--partition",
        "gpu",
        "--time",
        "01:00:00",
        "--cpus",
        "2",
        "--mem",
        "4G",
        "--gpus",
        "1",
        "--max-parallel",
        "2",
        "--sbatch-arg=--account=lab",
    ]));
    for wanted in [
        "--array=0,2%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=01:00:00",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=4G",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --account=lab",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        "--cell \"$SLURM_ARRAY_TASK_ID\"",
        "scontrol requeue",
        "--dependency=afterany:",
        "--report",
    ] {
        assert!(printed.contains(wanted), "missing {wanted:?} in:\n{printed}");
    }
    for field in ["@NAME@", "@OUT@", "@OUT_DIR@", "@WORKDIR@", "@ASTRO@", "@CONFIG@", "@CELL_ARGS@", "@SBATCH_OPTIONS@"]
    {
        assert!(!printed.contains(field), "{field} left unfilled:\n{printed}");
    }
    assert!(!out.join("slurm").exists(), "a dry run writes nothing");
    // Both scripts are valid bash.
    let array = printed.split("# ").find(|s| s.contains("ablate-array.sbatch\n")).unwrap();
    let script = root.join("array.sh");
    std::fs::write(&script, array.split_once('\n').unwrap().1).unwrap();
    let check = std::process::Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}

#[test]
fn slurm_submits_the_array_then_the_report_after_it() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let grid = grid(root, "\"train.max_iters\" = 6");
    let out = root.join("out");
    // A stand-in sbatch that records its arguments and answers job ids as `sbatch --parsable` does.
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = root.join("sbatch.log");
    std::fs::write(
        bin.join("sbatch"),
        format!(
            "#!/bin/sh\necho \"$@\" >> {log:?}\nn=$(wc -l < {log:?})\necho \"$((100 + n));cluster\"\n",
            log = log.display().to_string()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("sbatch"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let printed = stdout(ablate(root, &grid, &out).env("PATH", path).args(["--slurm", "--max-parallel", "3"]));
    assert!(printed.contains("submitted job array 101 (3 cells: --array=0-2%3) and report job 102"), "{printed}");
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].contains("--array=0-2%3") && calls[0].ends_with("ablate-array.sbatch"), "{calls:?}");
    assert!(calls[1].contains("--dependency=afterany:101") && calls[1].ends_with("ablate-report.sbatch"), "{calls:?}");
    let script = std::fs::read_to_string(out.join("slurm/ablate-array.sbatch")).unwrap();
    assert!(script.contains("--out") && !script.contains("@OUT@"), "{script}");
}
