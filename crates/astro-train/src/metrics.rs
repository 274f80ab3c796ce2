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
    /// The kept rows are kept as written: parsing and printing them again would not give the same
    /// text (serde_json's default float parsing is not exact to the last bit).
    pub fn open(path: &Path, keep_through: usize) -> Result<Self, TrainError> {
        let old = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(TrainError::io("read", path, e)),
        };
        let mut text = String::new();
        for line in old.lines() {
            if serde_json::from_str::<MetricsRow>(line).is_ok_and(|r| r.step <= keep_through) {
                text.push_str(line);
                text.push('\n');
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed run keeps the rows before its checkpoint byte for byte (a round trip through
    /// serde_json once printed 3.8707094192504883 back as 3.870709419250488), and drops the rows
    /// past it and a torn last line.
    #[test]
    fn reopening_keeps_earlier_rows_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let kept = "{\"step\":9,\"tokens\":2304,\"train_loss\":3.8707094192504883,\"lr\":0.0009999435476843854,\"tokens_per_sec\":23605.19354829489,\"elapsed\":0.099026861}\n";
        let later = "{\"step\":10,\"tokens\":2560,\"train_loss\":3.8607051372528076,\"lr\":0.001,\"tokens_per_sec\":1.0,\"elapsed\":0.1}\n";
        std::fs::write(&path, format!("{kept}{later}{{\"step\":11,\"tok")).unwrap();
        MetricsLog::open(&path, 9).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), kept);
    }
}
