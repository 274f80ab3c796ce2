//! `astro ablate --slurm`: the grid's unfinished cells as one Slurm job array (one task per cell,
//! `--cell $SLURM_ARRAY_TASK_ID`, at most `max_parallel` at once), and a report job that runs after
//! the whole array. The scripts are the templates in `scripts/slurm/` with their `@…@` fields filled
//! in (a handful of literal substitutions; no template engine is needed for that).

use std::path::{Path, PathBuf};

use super::{CellStatus, Grid};
use crate::error::EvalError;

const ARRAY_TEMPLATE: &str = include_str!("../../../../scripts/slurm/ablate-array.sbatch");
const REPORT_TEMPLATE: &str = include_str!("../../../../scripts/slurm/ablate-report.sbatch");

/// Slurm's default `MaxArraySize` is 1001: task ids run up to 1000.
const MAX_ARRAY_INDEX: usize = 1000;

/// What the job array asks of Slurm.
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time` of each task (e.g. `04:00:00`).
    pub time: Option<String>,
    /// `--cpus-per-task`.
    pub cpus_per_task: Option<u32>,
    /// `--mem` of each task (e.g. `8G`).
    pub mem: Option<String>,
    /// GPUs per task (`--gres=gpu:N`).
    pub gpus: Option<u32>,
    /// At most this many tasks at once (the array's `%` throttle).
    pub max_parallel: usize,
    /// Seconds before the time limit at which Slurm signals a task to checkpoint and requeue.
    pub signal_seconds: u32,
    /// More `#SBATCH` options, as written (`--account=lab`, `--qos=long`).
    pub extra: Vec<String>,
    /// `--device` for every cell.
    pub device: Option<String>,
    /// Tasks train cells whose runs were made with another config again.
    pub rerun_changed: bool,
}

impl Default for SlurmOptions {
    fn default() -> Self {
        SlurmOptions {
            partition: None,
            time: None,
            cpus_per_task: None,
            mem: None,
            gpus: None,
            max_parallel: 8,
            signal_seconds: 120,
            extra: Vec::new(),
            device: None,
            rerun_changed: false,
        }
    }
}

/// The scripts and the array a submission would use.
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmPlan {
    /// The cell indices that get a task (the unfinished ones).
    pub indices: Vec<usize>,
    /// `--array=` value: the indices, compressed into ranges, and the throttle.
    pub array: String,
    /// The job array's script.
    pub array_script: String,
    /// The report job's script.
    pub report_script: String,
}

/// What was submitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// The job array's id.
    pub array_job: String,
    /// The report job's id.
    pub report_job: String,
    /// The scripts, as written under `OUT/slurm/`.
    pub scripts: [PathBuf; 2],
}

/// Indices as Slurm writes them: `0-3,5,7-8`.
pub fn compress(indices: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let mut j = i;
        while j + 1 < indices.len() && indices[j + 1] == indices[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { indices[i].to_string() } else { format!("{}-{}", indices[i], indices[j]) });
        i = j + 1;
    }
    parts.join(",")
}

/// `text` as one shell word.
fn shell_word(text: &str) -> Result<String, EvalError> {
    shlex::try_quote(text)
        .map(|q| q.into_owned())
        .map_err(|_| EvalError::Invalid(format!("{text:?} cannot be written in a shell script (a NUL byte)")))
}

fn quote(path: &Path) -> Result<String, EvalError> {
    let text = path.to_str().ok_or_else(|| EvalError::Invalid(format!("{} is not valid UTF-8", path.display())))?;
    shell_word(text)
}

fn absolute(path: &Path) -> Result<PathBuf, EvalError> {
    std::path::absolute(path).map_err(|e| EvalError::io("resolve", path, e))
}

/// The job array and report job for `grid`'s unfinished cells, run by the `astro` at `astro`.
/// Refuses a grid edited since some cells ran, unless `options.rerun_changed`.
pub fn plan(grid: &Grid, options: &SlurmOptions, astro: &Path) -> Result<SlurmPlan, EvalError> {
    let changed = grid.changed();
    if !changed.is_empty() && !options.rerun_changed {
        return Err(super::cell::changed_error(&changed));
    }
    if options.max_parallel == 0 {
        return Err(EvalError::Invalid("--max-parallel must be at least 1".into()));
    }
    let indices: Vec<usize> = grid
        .cells
        .iter()
        .enumerate()
        .filter(|(_, c)| !matches!(grid.status(c), CellStatus::Finished(_)))
        .map(|(i, _)| i)
        .collect();
    if let Some(&last) = indices.last().filter(|&&i| i > MAX_ARRAY_INDEX) {
        return Err(EvalError::Invalid(format!(
            "cell {last} is beyond Slurm's default largest array index ({MAX_ARRAY_INDEX}); split the grid into several \
             ablation files"
        )));
    }
    let name = format!(
        "astro-{}",
        grid.config_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "ablate".into())
    );
    let config = quote(&absolute(&grid.config_path)?)?;
    let out_dir = absolute(&grid.out)?;
    let out = quote(&out_dir)?;
    let workdir = absolute(Path::new("."))?;
    let astro = quote(&absolute(astro)?)?;
    let mut cell_args = Vec::new();
    if let Some(device) = &options.device {
        cell_args.push(format!("--device {}", shell_word(device)?));
    }
    if options.rerun_changed {
        cell_args.push("--rerun-changed".into());
    }
    let mut sbatch: Vec<String> = Vec::new();
    if let Some(p) = &options.partition {
        sbatch.push(format!("--partition={p}"));
    }
    if let Some(t) = &options.time {
        sbatch.push(format!("--time={t}"));
    }
    let mut report_sbatch = sbatch.clone();
    if let Some(c) = options.cpus_per_task {
        sbatch.push(format!("--cpus-per-task={c}"));
    }
    if let Some(m) = &options.mem {
        sbatch.push(format!("--mem={m}"));
    }
    if let Some(g) = options.gpus {
        sbatch.push(format!("--gres=gpu:{g}"));
    }
    sbatch.extend(options.extra.iter().cloned());
    report_sbatch.extend(options.extra.iter().cloned());
    report_sbatch.push("--cpus-per-task=1".into());
    let lines = |opts: &[String]| opts.iter().map(|o| format!("#SBATCH {o}")).collect::<Vec<_>>().join("\n");
    // `#SBATCH` lines are read by Slurm, not by a shell: they take the paths as they are (`@OUT_DIR@`,
    // `@WORKDIR@`); the command lines take them quoted (`@OUT@`, `@CONFIG@`, `@ASTRO@`).
    let fill = |template: &str, options_text: &str| {
        template
            .replace("@NAME@", &name)
            .replace("@OUT_DIR@", &out_dir.display().to_string())
            .replace("@WORKDIR@", &workdir.display().to_string())
            .replace("@SIGNAL_SECONDS@", &options.signal_seconds.to_string())
            .replace("@SBATCH_OPTIONS@", options_text)
            .replace("@OUT@", &out)
            .replace("@ASTRO@", &astro)
            .replace("@CONFIG@", &config)
            .replace("@CELL_ARGS@", &cell_args.join(" "))
    };
    let array_script = fill(ARRAY_TEMPLATE, &lines(&sbatch));
    let report_script = fill(REPORT_TEMPLATE, &lines(&report_sbatch));
    let array = format!("{}%{}", compress(&indices), options.max_parallel);
    Ok(SlurmPlan { indices, array, array_script, report_script })
}

/// Writes the plan's scripts under `OUT/slurm/` and submits the array, then the report job after it.
pub fn submit(grid: &Grid, plan: &SlurmPlan) -> Result<Submitted, EvalError> {
    let sbatch = which("sbatch").ok_or_else(|| {
        EvalError::Invalid(
            "--slurm: `sbatch` is not on PATH, so nothing was submitted; run this on a Slurm login node, or add \
             --dry-run to print the scripts and submit them yourself"
                .into(),
        )
    })?;
    let dir = grid.out.join("slurm");
    std::fs::create_dir_all(&dir).map_err(|e| EvalError::io("create", &dir, e))?;
    let array_path = dir.join("ablate-array.sbatch");
    let report_path = dir.join("ablate-report.sbatch");
    for (path, text) in [(&array_path, &plan.array_script), (&report_path, &plan.report_script)] {
        astro_data::fsutil::write_atomic(path, text.as_bytes()).map_err(|e| EvalError::io("write", path, e))?;
    }
    let run = |args: &[String]| -> Result<String, EvalError> {
        let out =
            std::process::Command::new(&sbatch).args(args).output().map_err(|e| EvalError::io("run", &sbatch, e))?;
        if !out.status.success() {
            return Err(EvalError::Invalid(format!(
                "sbatch {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // `--parsable` prints `jobid` or `jobid;cluster`.
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text.trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() {
            return Err(EvalError::Invalid(format!("sbatch {} printed no job id", args.join(" "))));
        }
        Ok(id)
    };
    let array_job = run(&["--parsable".into(), format!("--array={}", plan.array), array_path.display().to_string()])?;
    let report_job =
        run(&["--parsable".into(), format!("--dependency=afterany:{array_job}"), report_path.display().to_string()])?;
    Ok(Submitted { array_job, report_job, scripts: [array_path, report_path] })
}

/// The first executable `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_compressed_into_ranges() {
        assert_eq!(compress(&[0, 1, 2, 3]), "0-3");
        assert_eq!(compress(&[0, 2, 3, 5, 7, 8, 9]), "0,2-3,5,7-9");
        assert_eq!(compress(&[4]), "4");
        assert_eq!(compress(&[]), "");
    }
}
