//! `metrics.jsonl`: one JSON object per logged step.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// One row of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    /// Optimiser steps completed.
    pub step: usize,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Loss of this step's batch.
    pub train_loss: f64,
    /// Validation loss, on evaluation steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Training-split loss estimated in eval mode, on evaluation steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_train_loss: Option<f64>,
    /// Task accuracy, on evaluation steps of task runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
    /// Learning rate of this step.
    pub lr: f64,
    /// Training throughput since the previous row (tokens per second).
    pub tokens_per_sec: f64,
    /// Training wall time so far (seconds, excluding evaluation and checkpoints).
    pub elapsed: f64,
}

/// Appends rows to a run's `metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// Opens the log, dropping rows after `keep_through` (rows an interrupted run wrote past its
    /// last checkpoint), so that a resumed run's log equals an uninterrupted one's.
    pub fn open(path: &Path, keep_through: usize) -> Result<Self, TrainError> {
        let rows = read(path)?;
        let kept: Vec<MetricsRow> = rows.into_iter().filter(|r| r.step <= keep_through).collect();
        let mut text = String::new();
        for r in &kept {
            text.push_str(&serde_json::to_string(r).expect("row serialises"));
            text.push('\n');
        }
        astro_data::fsutil::write_atomic(path, text.as_bytes()).map_err(|e| TrainError::io("write", path, e))?;
        Ok(Self { path: path.to_path_buf() })
    }

    /// Appends one row (flushed, so a crash loses at most the row being written).
    pub fn append(&mut self, row: &MetricsRow) -> Result<(), TrainError> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| TrainError::io("append to", &self.path, e))?;
        let line = serde_json::to_string(row).expect("row serialises");
        writeln!(file, "{line}").map_err(|e| TrainError::io("append to", &self.path, e))
    }
}

/// All complete rows of a metrics file (a torn last line is ignored).
pub fn read(path: &Path) -> Result<Vec<MetricsRow>, TrainError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(TrainError::io("read", path, e)),
    }
}
