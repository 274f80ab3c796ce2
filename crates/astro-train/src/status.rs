//! `status.json` in a run directory: what became of the run's last invocation — running, finished,
//! interrupted (by a signal, with a checkpoint to resume from) or failed (with the error) — and
//! every interruption so far, so that a run stopped by a scheduler reads as stopped, not broken.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// The file's name in a run directory.
pub const STATUS_FILE: &str = "status.json";

/// The state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// An invocation is training it (or died without a word: `kill -9`, a lost node).
    Running,
    /// It reached `train.max_iters`.
    Finished,
    /// A signal stopped it after a checkpoint; `--resume` continues it.
    Interrupted,
    /// An error stopped it.
    Failed,
}

/// One stop on a signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interruption {
    /// The signal's name (`SIGUSR1`).
    pub signal: String,
    /// The step of the checkpoint it left.
    pub step: usize,
    /// When (seconds since the Unix epoch).
    pub at_unix: u64,
}

/// The content of `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    /// What the run is now.
    pub state: RunState,
    /// Steps completed (for `interrupted`: the step of its checkpoint).
    pub step: usize,
    /// The error, for `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Host of the last invocation.
    pub host: String,
    /// Process id of the last invocation.
    pub pid: u32,
    /// When this was written (seconds since the Unix epoch).
    pub updated_unix: u64,
    /// Every stop on a signal, oldest first.
    #[serde(default)]
    pub interruptions: Vec<Interruption>,
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl RunStatus {
    /// A status of this process at `step`, keeping the interruptions of `earlier`.
    pub fn new(state: RunState, step: usize, earlier: Option<&RunStatus>) -> Self {
        RunStatus {
            state,
            step,
            error: None,
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id(),
            updated_unix: now_unix(),
            interruptions: earlier.map(|s| s.interruptions.clone()).unwrap_or_default(),
        }
    }

    /// The run directory's status, if it has a readable one.
    pub fn read(run_dir: &Path) -> Option<RunStatus> {
        let bytes = std::fs::read(run_dir.join(STATUS_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes it atomically into `run_dir`.
    pub fn write(&self, run_dir: &Path) -> Result<(), TrainError> {
        let path = run_dir.join(STATUS_FILE);
        let json = serde_json::to_vec_pretty(self).expect("status serialises");
        astro_data::fsutil::write_atomic(&path, &json).map_err(|e| TrainError::io("write", path, e))
    }
}
