//! Real signals to a running `astro train` / `astro ablate`: SIGTERM, SIGUSR1 and Ctrl-C stop it
//! after the current step with a checkpoint, exit status 75 and one line; the run says
//! `interrupted`; `--resume` continues it exactly. A second Ctrl-C exits at once.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;

use common::{astro, astro_process, metrics_without_timing as metrics, write_corpus};
use serde_json::Value;

/// A run of `iters` small steps that logs every step and checkpoints only at its end (so the only
/// other checkpoint is the one a signal asks for).
fn config(root: &Path, iters: usize, width: usize) -> PathBuf {
    write_corpus(&root.join("corpus.txt"));
    let path = root.join(format!("long-{width}.toml"));
    let text = format!(
        "[run]\nname = \"r\"\nout_dir = {out:?}\n[data]\npath = {data:?}\n[model]\nblock_size = 32\nn_layer = 2\nn_head = 2\n\
         n_embd = {width}\ndropout = 0.1\nattention = {{ kind = \"astrocytic\", features = 16 }}\n[optim]\nbatch_size = 8\n\
         warmup_iters = 5\n[train]\nmax_iters = {iters}\neval_interval = 50\neval_iters = 2\nlog_interval = 1\n\
         checkpoint_interval = 100000\nsample_tokens = 0\n",
        out = root.join("runs").display().to_string(),
        data = root.join("corpus.txt").display().to_string(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Rows in a run's metrics.jsonl.
fn logged(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

/// Waits until `run` has logged `rows` steps; panics if `child` ends first.
fn wait_for_steps(child: &mut Child, run: &Path, rows: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while logged(run) < rows {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be signalled");
        assert!(Instant::now() < deadline, "timed out waiting for {rows} steps");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) with the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

fn status(run: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(run.join("status.json")).unwrap()).unwrap()
}

#[test]
fn sigterm_and_sigusr1_checkpoint_exit_75_and_the_run_resumes_exactly() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let config = config(root, 120, 16);
    astro(root).args(["train", "--name", "whole", "--config"]).arg(&config).assert().success();
    assert_eq!(status(&root.join("runs/whole"))["state"], "finished");

    let run = root.join("runs/stopped");
    let mut stops = Vec::new();
    for (i, (sig, name)) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGUSR1, "SIGUSR1")].into_iter().enumerate() {
        let mut cmd = astro_process(root);
        if i == 0 {
            cmd.args(["train", "--name", "stopped", "--config"]).arg(&config);
        } else {
            cmd.args(["train", "--resume"]).arg(&run);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        wait_for_steps(&mut child, &run, logged(&run) + 15);
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(75), "{said}");
        let line = said.lines().find(|l| l.starts_with("interrupted by")).unwrap_or_else(|| panic!("{said}"));
        assert!(line.contains(name) && line.contains("--resume") && !said.contains("error:"), "{said}");
        let s = status(&run);
        assert_eq!(s["state"], "interrupted", "{s}");
        let step = s["step"].as_u64().unwrap() as usize;
        assert!(run.join(format!("checkpoints/step-{step:08}/model.bpk")).is_file(), "the step's checkpoint");
        assert!(line.contains(&format!("at step {step}")), "{line}");
        assert_eq!(s["interruptions"][i]["signal"], name, "{s}");
        stops.push(step);
    }
    assert!(stops[0] < stops[1] && stops[1] < 120, "{stops:?}");
    astro(root).args(["train", "--resume"]).arg(&run).assert().success();
    assert_eq!(metrics(&root.join("runs/whole")), metrics(&run), "the resumed run differs from the uninterrupted one");
    let s = status(&run);
    assert_eq!((s["state"].as_str(), s["interruptions"].as_array().unwrap().len()), (Some("finished"), 2), "{s}");
}

#[test]
fn a_second_ctrl_c_exits_at_once() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    // Steps of a wider model take long enough that the run is still in one when the second arrives.
    let config = config(root, 100_000, 256);
    let run = root.join("runs/r");
    let mut child = astro_process(root)
        .args(["train", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_steps(&mut child, &run, 2);
    signal(&child, libc::SIGINT);
    // Two signals sent at once may arrive as one: the kernel keeps one pending SIGINT, and a loaded
    // machine may not run the child between two sends 20 ms apart (a test run beside four trainings
    // on two cores saw the pair merge and the run exit 75 after its step). So the second Ctrl-C is
    // repeated every 20 ms until the child exits.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the run did not exit after repeated Ctrl-C");
        signal(&child, libc::SIGINT);
    };
    assert_eq!(status.code(), Some(130), "the second Ctrl-C exits at once with 130");
}

#[test]
fn an_interrupted_ablation_stops_its_grid_and_resumes_it() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let base = config(root, 60, 16);
    let grid = root.join("grid.toml");
    std::fs::write(
        &grid,
        format!("base = {:?}\n[grid]\n\"run.seed\" = [1, 2]\n", base.file_name().unwrap().to_string_lossy()),
    )
    .unwrap();
    let out = root.join("out");
    let mut child = astro_process(root)
        .args(["ablate", "--config"])
        .arg(&grid)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_steps(&mut child, &out.join("runs/cell-000"), 10);
    signal(&child, libc::SIGTERM);
    let done = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&done.stderr).into_owned();
    assert_eq!(done.status.code(), Some(75), "{said}");
    assert!(!out.join("runs/cell-001").exists(), "the grid stopped at the interrupted cell: {said}");
    let listed =
        astro(root).args(["ablate", "--list", "--config"]).arg(&grid).arg("--out").arg(&out).assert().success();
    let listed = String::from_utf8_lossy(&listed.get_output().stdout).into_owned();
    assert!(listed.contains("pending (interrupted; resumes at step"), "{listed}");
    astro(root).args(["ablate", "--config"]).arg(&grid).arg("--out").arg(&out).assert().success();
    astro(root).args(["ablate", "--config"]).arg(&grid).arg("--out").arg(root.join("whole")).assert().success();
    for cell in ["cell-000", "cell-001"] {
        assert_eq!(metrics(&out.join("runs").join(cell)), metrics(&root.join("whole/runs").join(cell)), "{cell}");
    }
}
