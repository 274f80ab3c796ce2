//! `astro ablate`: train a grid of runs that differ in chosen config keys, with the same data order
//! and seeds, then tabulate and plot them. Finished cells are skipped on re-run; an interrupted cell
//! resumes from its newest checkpoint; a failing cell is recorded and the grid goes on.
//!
//! Each cell is a unit any scheduler can run ([`cell`]: `--cell I` trains one, `--list` says where
//! each stands), the report is made from whatever has finished ([`report`]), and [`slurm`] turns
//! the unfinished cells into one Slurm job array. Cells repeated over seeds (`"run.seed" = [1, 2, 3]`
//! as a grid key) are reported as mean ± sample std, and their spread is drawn.
//!
//! Config (`configs/ablation/*.toml`):
//!
//! ```toml
//! base = "../shakespeare-char.toml"   # run config every cell starts from (relative to this file)
//! metric = "val_loss"                 # or "accuracy" (task runs)
//! [set]                               # overrides applied to every cell
//! "train.max_iters" = 1000
//! [grid]                              # every combination of these values is one cell
//! "model.attention" = [{ kind = "softmax" }, { kind = "astrocytic", features = 64 }]
//! "run.seed" = [1, 2, 3]
//! [[include]]                         # optional: one more cell, appended after the grid's (as in
//! "model.attention" = { kind = "linear" }   # a CI matrix); it gives one value per grid key
//! "run.seed" = 1
//! ```

mod cell;
mod report;
pub mod slurm;

use std::path::{Path, PathBuf};

use astro_model::AttentionConfig;
use astro_model::attention::FeatureMap;
use astro_train::{Interrupt, RunConfig};
use serde::{Deserialize, Serialize};

pub use crate::compare::mean_std;
pub use cell::{CellOutcome, CellStatus};
pub use report::Row;

use crate::error::EvalError;

/// Which number a cell is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Final validation (or test) loss; lower is better.
    #[default]
    ValLoss,
    /// Final task accuracy; higher is better.
    Accuracy,
}

/// An ablation grid.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblationConfig {
    /// The base run config, relative to the ablation file.
    pub base: PathBuf,
    /// The number reported per cell.
    #[serde(default)]
    pub metric: Metric,
    /// Overrides applied to every cell (dotted keys).
    #[serde(default)]
    pub set: toml::Table,
    /// Dotted keys → the values to try.
    pub grid: toml::Table,
    /// Extra cells beyond the grid's combinations, each one value per grid key; numbered after
    /// them, so adding one keeps every finished cell's id.
    #[serde(default)]
    pub include: Vec<toml::Table>,
}

/// One cell of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// `cell-NNN`.
    pub id: String,
    /// (key, value) of every grid key.
    pub values: Vec<(String, toml::Value)>,
    /// The full run config.
    pub config: RunConfig,
}

impl Cell {
    /// The cell's grid values, `key=value; …`.
    pub fn values_text(&self) -> String {
        self.values.iter().map(|(k, v)| format!("{k}={}", inline(v))).collect::<Vec<_>>().join("; ")
    }

    /// The grid values other than the seed (what seeds are averaged over).
    fn group(&self) -> String {
        let parts: Vec<String> =
            self.values.iter().filter(|(k, _)| k != "run.seed").map(|(k, v)| format!("{k}={}", inline(v))).collect();
        if parts.is_empty() { "all".into() } else { parts.join("; ") }
    }

    /// A short human label of the group: the attention's short description, then `name=value` of
    /// every other grid key by the last part of its name (`softmax, short_conv=4`).
    pub fn label(&self) -> String {
        let parts: Vec<String> = self
            .values
            .iter()
            .filter(|(k, _)| k != "run.seed")
            .map(|(k, v)| match k.as_str() {
                "model.attention" => short_attention(&self.config.model.attention),
                _ => format!("{}={}", k.rsplit('.').next().unwrap_or(k), inline(v)),
            })
            .collect();
        if parts.is_empty() { "all".into() } else { parts.join(", ") }
    }
}

fn short_attention(a: &AttentionConfig) -> String {
    match a {
        AttentionConfig::Astrocytic(c) => {
            let mut s = "astrocytic".to_string();
            if c.feature_map != Default::default() {
                s.push_str(&format!(" {}", c.feature_map.name()));
            }
            // The Taylor map's `features` is the width r of its projection, not m.
            let width = if c.feature_map == FeatureMap::Taylor { "r" } else { "m" };
            s.push_str(&format!(" {width}={}", c.features));
            if c.orthogonal {
                s.push_str(" orth");
            }
            if c.decay < 1.0 {
                s.push_str(&format!(" γ={}", c.decay));
            }
            // Hedgehog's map always trains Ω: its name says so.
            if c.omega_trained() && c.feature_map != FeatureMap::Hedgehog {
                s.push_str(" learnable");
            }
            if let Some(w) = c.window {
                s.push_str(&format!(" window={w}"));
            }
            s
        }
        other => other.describe(),
    }
}

/// A TOML value on one line.
fn inline(v: &toml::Value) -> String {
    v.to_string()
}

/// Expands the grid into cells (every combination, in key order), validating every key.
pub fn cells(config_path: &Path, ablation: &AblationConfig, runs_dir: &Path) -> Result<Vec<Cell>, EvalError> {
    let base_path = config_path.parent().unwrap_or(Path::new(".")).join(&ablation.base);
    let base = RunConfig::load(&base_path).map_err(|e| EvalError::Invalid(format!("base config: {e}")))?;
    let fixed: Vec<String> = ablation.set.iter().map(|(k, v)| format!("{k}={}", inline(v))).collect();
    let mut axes: Vec<(String, Vec<toml::Value>)> = Vec::new();
    for (key, values) in &ablation.grid {
        let values = match values {
            toml::Value::Array(a) if !a.is_empty() => a.clone(),
            _ => return Err(EvalError::Invalid(format!("grid key `{key}` must map to a non-empty array of values"))),
        };
        // Reject keys the config does not have before any training starts.
        let probe = format!("{key}={}", inline(&values[0]));
        if let Err(e) = base.clone().with_overrides(&[probe]) {
            let msg = e.to_string();
            if msg.contains("unknown field") || msg.contains("not a table") {
                return Err(EvalError::Invalid(format!("grid key `{key}` does not exist in the config: {msg}")));
            }
        }
        axes.push((key.clone(), values));
    }
    let mut combos: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
    for (key, values) in &axes {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    for (i, extra) in ablation.include.iter().enumerate() {
        let combo: Vec<(String, toml::Value)> = axes
            .iter()
            .map(|(key, _)| {
                extra.get(key).map(|v| (key.clone(), v.clone())).ok_or_else(|| {
                    EvalError::Invalid(format!(
                        "include #{}: no value for grid key `{key}`; give one value for every grid key",
                        i + 1
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        if let Some(key) = extra.keys().find(|k| !ablation.grid.contains_key(*k)) {
            return Err(EvalError::Invalid(format!(
                "include #{}: `{key}` is not a grid key; put it in [grid] (or in [set] for every cell)",
                i + 1
            )));
        }
        if combos.contains(&combo) {
            return Err(EvalError::Invalid(format!("include #{}: that cell is already in the grid", i + 1)));
        }
        combos.push(combo);
    }
    let mut cells = Vec::with_capacity(combos.len());
    for (i, values) in combos.into_iter().enumerate() {
        let id = format!("cell-{i:03}");
        let mut sets = fixed.clone();
        sets.extend(values.iter().map(|(k, v)| format!("{k}={}", inline(v))));
        sets.push(format!("run.name={id:?}"));
        sets.push(format!("run.out_dir={:?}", runs_dir.display().to_string()));
        let config = base.clone().with_overrides(&sets).map_err(|e| EvalError::Invalid(format!("{id}: {e}")))?;
        cells.push(Cell { id, values, config });
    }
    Ok(cells)
}

/// A grid, expanded into its cells, and the folder its cells and report write into.
#[derive(Debug, Clone)]
pub struct Grid {
    /// The ablation config file.
    pub config_path: PathBuf,
    /// Its content.
    pub ablation: AblationConfig,
    /// The output folder: `runs/`, `cells/`, the report, `slurm/`.
    pub out: PathBuf,
    /// Every cell, in id order.
    pub cells: Vec<Cell>,
}

impl Grid {
    /// Reads the ablation config at `config_path` and expands it, for output under `out`.
    pub fn load(config_path: &Path, out: &Path) -> Result<Grid, EvalError> {
        let text = std::fs::read_to_string(config_path).map_err(|e| EvalError::io("read", config_path, e))?;
        let ablation: AblationConfig =
            toml::from_str(&text).map_err(|e| EvalError::Invalid(format!("{}: {e}", config_path.display())))?;
        let cells = cells(config_path, &ablation, &out.join("runs"))?;
        Ok(Grid { config_path: config_path.to_path_buf(), ablation, out: out.to_path_buf(), cells })
    }

    /// The folder of the cells' training runs.
    pub fn runs_dir(&self) -> PathBuf {
        self.out.join("runs")
    }

    /// The cell `which` names: its index (`3`, as Slurm's array task id) or its id (`cell-003`).
    pub fn find(&self, which: &str) -> Result<&Cell, EvalError> {
        let n = self.cells.len();
        let index = which
            .trim()
            .parse::<usize>()
            .ok()
            .or_else(|| which.trim().strip_prefix("cell-").and_then(|i| i.parse::<usize>().ok()));
        index.and_then(|i| self.cells.get(i)).ok_or_else(|| {
            EvalError::Invalid(format!(
                "--cell {which}: the grid {} has {n} cells, 0 to {} (cell-000 to cell-{:03}); `astro ablate --config {} --list` lists them",
                self.config_path.display(),
                n.saturating_sub(1),
                n.saturating_sub(1),
                self.config_path.display()
            ))
        })
    }
}

/// How cells are trained (things that are not part of the grid).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Device override (`--device`).
    pub device: Option<String>,
    /// Stop signals: the cell in training checkpoints and the grid stops.
    pub interrupt: Interrupt,
    /// Train cells whose runs were made with another config again (their old runs are kept under
    /// `replaced/`) instead of refusing.
    pub rerun_changed: bool,
}

/// What an ablation produced.
#[derive(Debug, Clone)]
pub struct AblationReport {
    /// The rows of the finished and failed cells.
    pub rows: Vec<Row>,
    /// Cells trained by this invocation.
    pub trained: usize,
    /// Cells skipped because they had finished before (or were running elsewhere).
    pub skipped: usize,
    /// The cells not in the report, with where they stand.
    pub unfinished: Vec<(String, String)>,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Trains every cell that has not finished, one after another (skipping cells another process is
/// training), updating `results.csv` after each; then writes and returns the whole report. A grid edited since some
/// cells ran is refused (naming them) unless `rerun_changed`. A stop signal stops the grid after
/// the cell in training has checkpointed ([`astro_train::TrainError::Interrupted`]).
pub fn run(grid: &Grid, options: &RunOptions) -> Result<AblationReport, EvalError> {
    let changed = grid.changed();
    if !changed.is_empty() && !options.rerun_changed {
        return Err(cell::changed_error(&changed));
    }
    let (mut trained, mut skipped) = (0, 0);
    for (i, cell) in grid.cells.iter().enumerate() {
        let status = grid.status(cell);
        let what = match &status {
            CellStatus::Finished(_) => "done, skipped".to_string(),
            CellStatus::Running { holder } => format!("running elsewhere ({holder}), skipped"),
            _ => "training".to_string(),
        };
        eprintln!("[ablation {}/{}] {} {what} — {}", i + 1, grid.cells.len(), cell.id, cell.values_text());
        if matches!(status, CellStatus::Finished(_) | CellStatus::Running { .. }) {
            skipped += 1;
            continue;
        }
        let outcome = match grid.run_cell(cell, options) {
            Ok(outcome) => outcome,
            Err(e) => {
                // Stopped by a signal: the report shows what has finished so far.
                let _ = report::write(grid);
                return Err(e);
            }
        };
        match outcome {
            CellOutcome::AlreadyFinished(_) => skipped += 1,
            CellOutcome::Failed(error) => {
                eprintln!("[ablation] {} failed: {error}", cell.id);
                trained += 1;
            }
            CellOutcome::Trained(_) => trained += 1,
        }
        report::write_table(grid)?;
    }
    let mut report = report::write(grid)?;
    report.trained = trained;
    report.skipped = skipped;
    Ok(report)
}

/// Writes the report of whatever has finished (`--report`): results.csv, results.md, plots.
pub fn report(grid: &Grid) -> Result<AblationReport, EvalError> {
    report::write(grid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[5.0]), (5.0, 0.0));
    }
}

#[cfg(test)]
mod shipped_configs {
    use super::*;

    /// Every grid under `configs/ablation/` expands into valid run configs (keys exist, values
    /// parse, every combination validates), so a shipped grid never fails an hour into a run.
    #[test]
    fn every_shipped_ablation_grid_expands_into_valid_runs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ablation");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let ablation: AblationConfig = toml::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let cells = cells(&path, &ablation, Path::new("/nonexistent/runs"))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!cells.is_empty(), "{}", path.display());
            for cell in &cells {
                cell.config.validate().unwrap_or_else(|e| panic!("{} {}: {e}", path.display(), cell.id));
            }
            seen += 1;
        }
        assert!(seen >= 4, "found only {seen} grids in {}", dir.display());
    }

    /// `[[include]]` cells come after the grid's, keep their ids stable, and are checked.
    #[test]
    fn included_cells_follow_the_grid_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/mqar.toml");
        let write = |extra: &str| {
            let path = dir.path().join("grid.toml");
            std::fs::write(
                &path,
                format!(
                    "base = {:?}\n[grid]\n\"model.attention\" = [{{ kind = \"softmax\" }}, {{ kind = \"linear\" }}]\n\"model.short_conv\" = [4]\n{extra}",
                    base.display().to_string()
                ),
            )
            .unwrap();
            let ablation: AblationConfig = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            cells(&path, &ablation, Path::new("/nonexistent/runs"))
        };
        let plain = write("").unwrap();
        let extra = "[[include]]\n\"model.attention\" = { kind = \"softmax\" }\n\"model.short_conv\" = 0\n";
        let cells = write(extra).unwrap();
        assert_eq!(cells.len(), 3);
        assert_eq!(cells[..2], plain[..]);
        assert_eq!((cells[2].id.as_str(), cells[2].label().as_str()), ("cell-002", "softmax, short_conv=0"));
        assert_eq!(cells[2].config.model.short_conv, 0);

        let missing = write("[[include]]\n\"model.short_conv\" = 0\n").unwrap_err().to_string();
        assert!(missing.contains("include #1") && missing.contains("`model.attention`"), "{missing}");
        let stray = format!("{extra}\"run.seed\" = 3\n");
        let stray = write(&stray).unwrap_err().to_string();
        assert!(stray.contains("`run.seed` is not a grid key"), "{stray}");
        let twice = write("[[include]]\n\"model.attention\" = { kind = \"linear\" }\n\"model.short_conv\" = 4\n")
            .unwrap_err()
            .to_string();
        assert!(twice.contains("already in the grid"), "{twice}");
    }

    /// Table rows and plot legends name each cell by its attention and its other grid values, short
    /// enough to read (the recall grid's ten cells).
    #[test]
    fn recall_grid_cells_get_short_distinct_labels() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ablation/recall.toml");
        let ablation: AblationConfig = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let labels: Vec<String> =
            cells(&path, &ablation, Path::new("/nonexistent/runs")).unwrap().iter().map(Cell::label).collect();
        assert_eq!(labels[0], "softmax, short_conv=0");
        assert_eq!(labels[1], "softmax, short_conv=4");
        assert_eq!(labels[2], "astrocytic m=256, short_conv=0");
        assert_eq!(labels[5], "astrocytic taylor r=16 learnable, short_conv=4");
        assert!(labels.iter().all(|l| l.chars().count() <= 48), "{labels:?}");
        let distinct: std::collections::BTreeSet<&String> = labels.iter().collect();
        assert_eq!(distinct.len(), labels.len(), "{labels:?}");
    }
}
