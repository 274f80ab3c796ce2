//! Checkpoints: `checkpoints/step-NNNNNNNN/{model.bpk, optim.bpk, state.json}`, written into a
//! temporary directory, fsynced, then renamed into place (atomic); `state.json` records the sha256
//! of the weight files so that a truncated or corrupt checkpoint is detected and skipped.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::source::DataState;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::TrainError;

/// Everything besides the weights needed to continue a run exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimiser steps completed.
    pub step: usize,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Position of the training stream (sampler or task RNG state).
    pub data: DataState,
    /// Best validation loss so far.
    pub best_val: Option<f64>,
    /// Most recent validation loss.
    pub last_val: Option<f64>,
    /// Most recent task accuracy.
    #[serde(default)]
    pub last_accuracy: Option<f64>,
    /// Training wall time so far (seconds).
    pub elapsed: f64,
    /// sha256 of each file of the checkpoint.
    pub files: BTreeMap<String, String>,
}

/// File names inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.bpk";
/// Optimiser state file.
pub const OPTIM_FILE: &str = "optim.bpk";
const STATE_FILE: &str = "state.json";

fn sha256_file(path: &Path) -> Result<String, TrainError> {
    let mut file = std::fs::File::open(path).map_err(|e| TrainError::io("read", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| TrainError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn fsync(path: &Path) -> Result<(), TrainError> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| TrainError::io("sync", path, e))
}

/// The directory name of step `step`.
pub fn dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// Writes a checkpoint atomically. `write_weights` saves the model and optimiser files into the
/// directory it is given. Keeps the newest `keep` checkpoints. Returns the checkpoint directory.
pub fn write(
    root: &Path,
    mut state: CheckpointState,
    keep: usize,
    write_weights: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(root).map_err(|e| TrainError::io("create", root, e))?;
    let final_dir = root.join(dir_name(state.step));
    let tmp = root.join(format!(".{}.tmp-{}", dir_name(state.step), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io("create", &tmp, e))?;
    let result = (|| {
        write_weights(&tmp)?;
        for name in [MODEL_FILE, OPTIM_FILE] {
            let path = tmp.join(name);
            fsync(&path)?;
            state.files.insert(name.to_string(), sha256_file(&path)?);
        }
        let json = serde_json::to_vec_pretty(&state).map_err(|e| TrainError::io("encode", tmp.join(STATE_FILE), e))?;
        let state_path = tmp.join(STATE_FILE);
        std::fs::write(&state_path, json).map_err(|e| TrainError::io("write", &state_path, e))?;
        fsync(&state_path)?;
        fsync(&tmp)?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| TrainError::io("replace", &final_dir, e))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io("rename", &final_dir, e))?;
        fsync(root)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    prune(root, keep)?;
    Ok(final_dir)
}

/// Removes temporary checkpoint directories left by a process killed while writing one.
pub fn remove_stale(root: &Path) {
    for entry in std::fs::read_dir(root).into_iter().flatten().filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".step-") && name.contains(".tmp-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes temporary weight files a killed run left in its directory: `.best.bpk.tmp.PID` (written
/// beside the target, then renamed) and the store's own `….tmp.PID-N.tmp` inside it. The finished
/// files (`best.bpk`, `model.bpk`) are never touched.
pub fn remove_stale_weights(run_dir: &Path) {
    for entry in std::fs::read_dir(run_dir).into_iter().flatten().filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".bpk.tmp.") && entry.path().is_file() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Checkpoint directories under `root`, newest first.
pub fn list(root: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    found.sort_by_key(|x| std::cmp::Reverse(x.0));
    found
}

fn prune(root: &Path, keep: usize) -> Result<(), TrainError> {
    for (_, dir) in list(root).into_iter().skip(keep) {
        std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io("remove", &dir, e))?;
    }
    Ok(())
}

/// Reads and verifies one checkpoint.
pub fn read(dir: &Path) -> Result<CheckpointState, String> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| format!("{}: {e}", state_path.display()))?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| format!("{}: corrupt ({e})", state_path.display()))?;
    for name in [MODEL_FILE, OPTIM_FILE] {
        let path = dir.join(name);
        let expected = state.files.get(name).ok_or_else(|| format!("{}: no checksum recorded", path.display()))?;
        let actual = sha256_file(&path).map_err(|e| e.to_string())?;
        if &actual != expected {
            return Err(format!("{}: checksum mismatch (truncated or corrupt)", path.display()));
        }
    }
    Ok(state)
}

/// The newest checkpoint that verifies, skipping (with a warning naming the file) corrupt ones.
pub fn latest_valid(root: &Path) -> Option<(PathBuf, CheckpointState)> {
    for (_, dir) in list(root) {
        match read(&dir) {
            Ok(state) => return Some((dir, state)),
            Err(why) => {
                tracing::warn!("skipping checkpoint {}: {why}", dir.display());
                eprintln!("warning: skipping checkpoint {}: {why}; using the previous one", dir.display());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_weight_temps_are_removed_and_finished_files_kept() {
        let dir = std::env::temp_dir().join(format!("astro-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [".best.bpk.tmp.123", ".best.bpk.tmp.123.123-4.tmp", "best.bpk", "model.bpk", ".keep"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        remove_stale_weights(&dir);
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, [".keep", "best.bpk", "model.bpk"]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
