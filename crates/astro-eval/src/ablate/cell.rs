//! One cell as a unit any scheduler can run: its status read from its own files, a lock while it
//! trains, and its training. A cell writes only its own files: the run `runs/cell-NNN/` (made by
//! `astro train`), and `cells/cell-NNN.lock` (held while it trains; the holder's pid and host) and
//! `cells/cell-NNN.json` (its failure, when it failed). Several cells may run at once, in one
//! process each, on one machine or on the nodes of a cluster sharing the output folder.

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use astro_train::status::{RunState, RunStatus, now_unix};
use astro_train::{TrainError, TrainOptions, TrainSummary};
use serde::{Deserialize, Serialize};

use super::report::Row;
use super::{Cell, Grid, RunOptions};
use crate::error::EvalError;

/// Where a cell stands.
#[derive(Debug, Clone, PartialEq)]
pub enum CellStatus {
    /// Not trained yet, or stopped (by a signal, a crash) with a checkpoint at `resume_from`.
    Pending {
        /// The step its newest valid checkpoint holds.
        resume_from: Option<usize>,
        /// Its run stopped on a signal (its `status.json` says `interrupted`).
        interrupted: bool,
    },
    /// Another process holds its lock.
    Running {
        /// Who: `pid N on HOST since …`.
        holder: String,
    },
    /// It reached `train.max_iters`.
    Finished(Box<TrainSummary>),
    /// Its training failed (recorded in `cells/cell-NNN.json`); it is trained again on the next run.
    Failed {
        /// The error.
        error: String,
    },
    /// The grid changed since it ran: its run's config differs from the cell's in these keys.
    Changed {
        /// `key (was → now)` for each differing key.
        keys: Vec<String>,
    },
}

impl CellStatus {
    /// Where it stands, in words: pending, running, finished, failed or changed, with what else is
    /// known (`pending (resumes at step 40)`).
    pub fn describe(&self) -> String {
        match self {
            CellStatus::Pending { resume_from: Some(step), interrupted } => {
                let why = if *interrupted { "interrupted; " } else { "" };
                format!("pending ({why}resumes at step {step})")
            }
            CellStatus::Pending { resume_from: None, .. } => "pending".into(),
            CellStatus::Running { holder } => format!("running ({holder})"),
            CellStatus::Finished(s) => format!("finished ({} steps)", s.steps),
            CellStatus::Failed { error } => format!("failed: {error}"),
            CellStatus::Changed { keys } => format!("changed since it ran: {}", keys.join(", ")),
        }
    }
}

/// The failure record `cells/cell-NNN.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FailureRecord {
    /// The cell's grid values when it failed.
    values: String,
    /// The error.
    error: String,
    /// When (seconds since the Unix epoch).
    at_unix: u64,
}

impl Grid {
    /// The cell's training run.
    pub fn run_dir(&self, cell: &Cell) -> PathBuf {
        self.runs_dir().join(&cell.id)
    }

    fn lock_path(&self, cell: &Cell) -> PathBuf {
        self.out.join("cells").join(format!("{}.lock", cell.id))
    }

    fn record_path(&self, cell: &Cell) -> PathBuf {
        self.out.join("cells").join(format!("{}.json", cell.id))
    }

    /// Where `cell` stands, from its files (and its lock).
    pub fn status(&self, cell: &Cell) -> CellStatus {
        if let Some(holder) = held_by(&self.lock_path(cell)) {
            return CellStatus::Running { holder };
        }
        self.status_unlocked(cell)
    }

    /// [`Grid::status`] without looking at the lock (its holder's own view).
    fn status_unlocked(&self, cell: &Cell) -> CellStatus {
        let run = self.run_dir(cell);
        if let Ok(saved) = astro_train::RunConfig::load(&run.join("config.toml")) {
            let keys = astro_train::trainer::resume_conflicts(&saved, &cell.config);
            if !keys.is_empty() {
                return CellStatus::Changed { keys };
            }
        }
        let summary = std::fs::read(run.join("summary.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<TrainSummary>(&b).ok())
            .filter(|s| s.steps >= cell.config.train.max_iters);
        if let Some(summary) = summary {
            return CellStatus::Finished(Box::new(summary));
        }
        let failed = std::fs::read(self.record_path(cell))
            .ok()
            .and_then(|b| serde_json::from_slice::<FailureRecord>(&b).ok())
            .filter(|r| r.values == cell.values_text());
        if let Some(record) = failed {
            return CellStatus::Failed { error: record.error };
        }
        let resume_from = astro_train::checkpoint::latest_valid(&run.join("checkpoints")).map(|(_, s)| s.step);
        let interrupted = RunStatus::read(&run).is_some_and(|s| s.state == RunState::Interrupted);
        CellStatus::Pending { resume_from, interrupted }
    }

    /// The cells whose runs were made with another config than the grid now gives them.
    pub fn changed(&self) -> Vec<(&Cell, Vec<String>)> {
        self.cells
            .iter()
            .filter_map(|c| match self.status_unlocked(c) {
                CellStatus::Changed { keys } => Some((c, keys)),
                _ => None,
            })
            .collect()
    }

    /// Trains `cell` (or continues it) in this process, holding its lock.
    pub fn run_cell(&self, cell: &Cell, options: &RunOptions) -> Result<CellOutcome, EvalError> {
        let _lock = CellLock::acquire(&self.lock_path(cell), &cell.id)?;
        let run = self.run_dir(cell);
        match self.status_unlocked(cell) {
            CellStatus::Finished(summary) => return Ok(CellOutcome::AlreadyFinished(summary)),
            CellStatus::Changed { keys } if !options.rerun_changed => return Err(changed_error(&[(cell, keys)])),
            CellStatus::Changed { .. } => self.set_aside(cell)?,
            _ => {}
        }
        let record = self.record_path(cell);
        if record.exists() {
            std::fs::remove_file(&record).map_err(|e| EvalError::io("remove", &record, e))?;
        }
        let resume = astro_train::checkpoint::latest_valid(&run.join("checkpoints")).map(|_| run.clone());
        if resume.is_none() && run.exists() {
            // A cell that died before its first checkpoint: start it again from scratch.
            std::fs::remove_dir_all(&run).map_err(|e| EvalError::io("clear", &run, e))?;
        }
        let train_options = TrainOptions {
            resume,
            device: options.device.clone(),
            sample_to_stderr: true,
            stop_after: None,
            interrupt: options.interrupt.clone(),
        };
        let mut config = cell.config.clone();
        config.train.sample_tokens = 0;
        match astro_train::train(config, train_options) {
            Ok(summary) => Ok(CellOutcome::Trained(Box::new(summary))),
            Err(e @ TrainError::Interrupted { .. }) => Err(e.into()),
            Err(e) => {
                let error = e.to_string().replace('\n', " ");
                let failure = FailureRecord { values: cell.values_text(), error: error.clone(), at_unix: now_unix() };
                let json = serde_json::to_vec_pretty(&failure).expect("record serialises");
                astro_data::fsutil::write_atomic(&record, &json).map_err(|e| EvalError::io("write", &record, e))?;
                Ok(CellOutcome::Failed(error))
            }
        }
    }

    /// Moves a changed cell's run to `replaced/cell-NNN-<unix time>` (kept, not deleted).
    fn set_aside(&self, cell: &Cell) -> Result<(), EvalError> {
        let run = self.run_dir(cell);
        let aside = self.out.join("replaced").join(format!("{}-{}", cell.id, now_unix()));
        std::fs::create_dir_all(self.out.join("replaced")).map_err(|e| EvalError::io("create", &aside, e))?;
        std::fs::rename(&run, &aside).map_err(|e| EvalError::io("move aside", &run, e))?;
        eprintln!("{}: the grid changed since it ran; its old run is kept in {}", cell.id, aside.display());
        Ok(())
    }
}

/// What running a cell came to.
#[derive(Debug, Clone, PartialEq)]
pub enum CellOutcome {
    /// It trained to the end now.
    Trained(Box<TrainSummary>),
    /// It had finished before.
    AlreadyFinished(Box<TrainSummary>),
    /// Its training failed with this error (recorded).
    Failed(String),
}

/// The error for cells whose runs were made with another config than the grid now gives them.
pub(super) fn changed_error(cells: &[(&Cell, Vec<String>)]) -> EvalError {
    let list: Vec<String> = cells.iter().map(|(c, keys)| format!("{} ({})", c.id, keys.join(", "))).collect();
    EvalError::Invalid(format!(
        "the grid changed since {} ran: {}; run with --rerun-changed to train {} again (the old runs are kept under \
         replaced/), or restore the grid",
        if cells.len() == 1 { "this cell" } else { "these cells" },
        list.join("; "),
        if cells.len() == 1 { "it" } else { "them" }
    ))
}

/// A finished cell's row of `results.csv`.
pub(super) fn finished_row(cell: &Cell, s: &TrainSummary) -> Row {
    Row {
        cell: cell.id.clone(),
        values: cell.values_text(),
        status: "ok".into(),
        steps: Some(s.steps),
        val_loss: s.final_val_loss,
        best_val_loss: s.best_val_loss,
        accuracy: s.final_val_accuracy,
        tokens_per_sec: Some(s.tokens_per_sec),
        wall_seconds: Some(s.wall_seconds),
    }
}

/// A failed cell's row of `results.csv`.
pub(super) fn failed_row(cell: &Cell, error: &str) -> Row {
    Row {
        cell: cell.id.clone(),
        values: cell.values_text(),
        status: format!("failed: {error}"),
        steps: None,
        val_loss: None,
        best_val_loss: None,
        accuracy: None,
        tokens_per_sec: None,
        wall_seconds: None,
    }
}

/// An exclusive advisory lock (`flock`) on a file, released when dropped or when the process dies
/// (so a killed or preempted cell never leaves a stale lock). The file itself is never removed:
/// removing a lock file races with a process about to lock it.
pub(crate) struct FileLock {
    file: std::fs::File,
}

impl FileLock {
    fn open(path: &Path) -> Result<std::fs::File, EvalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| EvalError::io("create", dir, e))?;
        }
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| EvalError::io("open lock", path, e))
    }

    /// Waits for the lock.
    pub(crate) fn wait(path: &Path) -> Result<FileLock, EvalError> {
        let file = Self::open(path)?;
        file.lock().map_err(|e| EvalError::io("lock", path, e))?;
        Ok(FileLock { file })
    }

    /// Takes the lock if it is free.
    fn try_take(path: &Path) -> Result<Option<FileLock>, EvalError> {
        let file = Self::open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(EvalError::io("lock", path, e)),
        }
    }
}

/// A cell's lock; its file says who holds it.
struct CellLock(#[allow(dead_code)] FileLock);

impl CellLock {
    fn acquire(path: &Path, id: &str) -> Result<CellLock, EvalError> {
        let Some(mut lock) = FileLock::try_take(path)? else {
            let holder = held_by(path).unwrap_or_else(|| "another process".into());
            return Err(EvalError::Invalid(format!(
                "{id} is already running ({holder}); wait for it to finish, or stop that process first"
            )));
        };
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let who = format!("pid {} on {host} since unix time {}\n", std::process::id(), now_unix());
        // Written through the locked file itself (a rename would swap the inode others lock).
        let f = &mut lock.file;
        let _ = f.set_len(0).and_then(|()| f.rewind()).and_then(|()| f.write_all(who.as_bytes()));
        Ok(CellLock(lock))
    }
}

/// Who holds the lock at `path`, if anyone does.
fn held_by(path: &Path) -> Option<String> {
    if !path.exists() {
        return None;
    }
    match FileLock::try_take(path) {
        Ok(None) => {
            let who = std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default();
            Some(if who.is_empty() { "another process".into() } else { who })
        }
        _ => None,
    }
}
