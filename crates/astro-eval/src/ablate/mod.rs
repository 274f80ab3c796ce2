//! `astro ablate`: train a grid of runs that differ in chosen config keys, with the same data order
//! and seeds, then tabulate and plot them. Finished cells are skipped on re-run; an interrupted cell
//! resumes from its newest checkpoint; a failing cell is recorded and the grid goes on.
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use astro_model::AttentionConfig;
use astro_model::attention::FeatureMap;
use astro_train::{RunConfig, TrainOptions};
use serde::{Deserialize, Serialize};

use crate::error::EvalError;
use crate::plot::{self, Chart, Series};

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

/// One row of `results.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Cell id (`cell-007`), also its run directory's name.
    pub cell: String,
    /// The cell's grid values, `key=value; …` (TOML values).
    pub values: String,
    /// `ok` or `failed: <reason>`.
    pub status: String,
    /// Steps trained.
    pub steps: Option<usize>,
    /// Final validation/test loss.
    pub val_loss: Option<f64>,
    /// Best validation/test loss.
    pub best_val_loss: Option<f64>,
    /// Final task accuracy.
    pub accuracy: Option<f64>,
    /// Training throughput.
    pub tokens_per_sec: Option<f64>,
    /// Wall seconds of the cell's last invocation.
    pub wall_seconds: Option<f64>,
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
    fn values_text(&self) -> String {
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
    fn label(&self) -> String {
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

fn read_rows(path: &Path) -> Result<Vec<Row>, EvalError> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let mut reader = csv::Reader::from_path(path).map_err(|e| EvalError::io("read", path, e))?;
    reader.deserialize().collect::<Result<Vec<Row>, _>>().map_err(|e| EvalError::io("parse", path, e))
}

fn write_rows(path: &Path, rows: &[Row]) -> Result<(), EvalError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for r in rows {
        writer.serialize(r).map_err(|e| EvalError::io("encode", path, e))?;
    }
    let bytes = writer.into_inner().map_err(|e| EvalError::io("encode", path, e))?;
    astro_data::fsutil::write_atomic(path, &bytes).map_err(|e| EvalError::io("write", path, e))
}

/// What an ablation produced.
#[derive(Debug, Clone)]
pub struct AblationReport {
    /// Every cell's row.
    pub rows: Vec<Row>,
    /// Cells trained by this invocation.
    pub trained: usize,
    /// Cells skipped because they had finished before.
    pub skipped: usize,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Runs (or continues) the ablation in `config_path`, writing into `out`.
pub fn run(config_path: &Path, out: &Path, device: Option<String>) -> Result<AblationReport, EvalError> {
    let text = std::fs::read_to_string(config_path).map_err(|e| EvalError::io("read", config_path, e))?;
    let ablation: AblationConfig =
        toml::from_str(&text).map_err(|e| EvalError::Invalid(format!("{}: {e}", config_path.display())))?;
    let runs_dir = out.join("runs");
    let cells = cells(config_path, &ablation, &runs_dir)?;
    std::fs::create_dir_all(out).map_err(|e| EvalError::io("create", out, e))?;
    let csv_path = out.join("results.csv");
    let mut rows: BTreeMap<String, Row> = read_rows(&csv_path)?.into_iter().map(|r| (r.cell.clone(), r)).collect();
    let (mut trained, mut skipped) = (0, 0);
    for (i, cell) in cells.iter().enumerate() {
        let done = rows.get(&cell.id).is_some_and(|r| r.status == "ok" && r.values == cell.values_text());
        eprintln!(
            "[ablation {}/{}] {} {} — {}",
            i + 1,
            cells.len(),
            cell.id,
            if done { "done, skipped" } else { "training" },
            cell.values_text()
        );
        if done {
            skipped += 1;
            continue;
        }
        let run_dir = runs_dir.join(&cell.id);
        let resume = astro_train::checkpoint::latest_valid(&run_dir.join("checkpoints")).map(|_| run_dir.clone());
        if resume.is_none() && run_dir.exists() {
            // A cell that died before its first checkpoint: start it again from scratch.
            std::fs::remove_dir_all(&run_dir).map_err(|e| EvalError::io("clear", &run_dir, e))?;
        }
        let options = TrainOptions { resume, device: device.clone(), sample_to_stderr: true, stop_after: None };
        let mut config = cell.config.clone();
        config.train.sample_tokens = 0;
        let row = match astro_train::train(config, options) {
            Ok(s) => Row {
                cell: cell.id.clone(),
                values: cell.values_text(),
                status: "ok".into(),
                steps: Some(s.steps),
                val_loss: s.final_val_loss,
                best_val_loss: s.best_val_loss,
                accuracy: s.final_val_accuracy,
                tokens_per_sec: Some(s.tokens_per_sec),
                wall_seconds: Some(s.wall_seconds),
            },
            Err(e) => {
                eprintln!("[ablation] {} failed: {e}", cell.id);
                Row {
                    cell: cell.id.clone(),
                    values: cell.values_text(),
                    status: format!("failed: {e}").replace('\n', " "),
                    steps: None,
                    val_loss: None,
                    best_val_loss: None,
                    accuracy: None,
                    tokens_per_sec: None,
                    wall_seconds: None,
                }
            }
        };
        rows.insert(cell.id.clone(), row);
        trained += 1;
        write_rows(&csv_path, &rows.values().cloned().collect::<Vec<_>>())?;
    }
    let rows: Vec<Row> = cells.iter().filter_map(|c| rows.get(&c.id).cloned()).collect();
    write_rows(&csv_path, &rows)?;
    let mut files = vec![csv_path];
    let states: BTreeMap<String, usize> = cells
        .iter()
        .zip(&rows)
        .filter(|(_, row)| row.status == "ok")
        .filter_map(|(cell, _)| Some((cell.id.clone(), state_floats(&runs_dir, cell)?)))
        .collect();
    files.push(write_markdown(out, &ablation, &cells, &rows, &states)?);
    files.extend(write_plots(out, &ablation, &cells, &rows, &runs_dir, &states)?);
    Ok(AblationReport { rows, trained, skipped, files })
}

/// Decoding state of a finished cell's language model after `block_size` tokens, in floats per
/// sequence over all layers (softmax: its KV cache; astrocytic: (H, p), window and convolution
/// buffers) — the x axis of Zoology's accuracy-against-state picture. `None` for classifiers.
fn state_floats(runs_dir: &Path, cell: &Cell) -> Option<usize> {
    let device = astro_model::device::default_device().ok()?;
    let run = crate::Run::load(&runs_dir.join(&cell.id), crate::Weights::Final, &device).ok()?;
    let astro_train::Net::Lm(model) = &run.net else { return None };
    let context = model.config().block_size;
    astro_model::info::report(model, &[context]).state_floats.first().map(|&(_, floats)| floats)
}

fn metric_of(metric: Metric, row: &Row) -> Option<f64> {
    match metric {
        Metric::ValLoss => row.val_loss,
        Metric::Accuracy => row.accuracy,
    }
}

/// Mean and sample standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

struct Group<'a> {
    label: String,
    cells: Vec<(&'a Cell, &'a Row)>,
}

fn groups<'a>(cells: &'a [Cell], rows: &'a [Row]) -> Vec<Group<'a>> {
    let mut out: Vec<(String, Group<'a>)> = Vec::new();
    for (cell, row) in cells.iter().zip(rows) {
        let key = cell.group();
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.cells.push((cell, row)),
            None => out.push((key, Group { label: cell.label(), cells: vec![(cell, row)] })),
        }
    }
    out.into_iter().map(|(_, g)| g).collect()
}

fn write_markdown(
    out: &Path,
    ablation: &AblationConfig,
    cells: &[Cell],
    rows: &[Row],
    states: &BTreeMap<String, usize>,
) -> Result<PathBuf, EvalError> {
    let metric = match ablation.metric {
        Metric::ValLoss => "val loss",
        Metric::Accuracy => "accuracy",
    };
    let mut md = format!(
        "# Ablation results\n\nMean ± sample std over seeds; {} cells, base `{}`.\n\n| cell group | seeds ok | {metric} | best val loss | tokens/s | wall s | decoding state (floats/sequence) |\n|---|---:|---:|---:|---:|---:|---:|\n",
        rows.len(),
        ablation.base.display()
    );
    for g in groups(cells, rows) {
        let ok: Vec<&Row> = g.cells.iter().map(|(_, r)| *r).filter(|r| r.status == "ok").collect();
        let col = |f: &dyn Fn(&Row) -> Option<f64>, digits: usize| {
            let xs: Vec<f64> = ok.iter().filter_map(|r| f(r)).collect();
            if xs.is_empty() {
                return "—".to_string();
            }
            let (m, s) = mean_std(&xs);
            if xs.len() > 1 { format!("{m:.digits$} ± {s:.digits$}") } else { format!("{m:.digits$}") }
        };
        let state = g.cells.iter().find_map(|(c, _)| states.get(&c.id)).map_or("—".to_string(), |f| f.to_string());
        md.push_str(&format!(
            "| {} | {}/{} | {} | {} | {} | {} | {} |\n",
            g.label,
            ok.len(),
            g.cells.len(),
            col(&|r| metric_of(ablation.metric, r), 4),
            col(&|r| r.best_val_loss, 4),
            col(&|r| r.tokens_per_sec, 0),
            col(&|r| r.wall_seconds, 0),
            state
        ));
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| r.status != "ok").collect();
    if !failed.is_empty() {
        md.push_str("\nFailed cells:\n\n");
        for r in failed {
            md.push_str(&format!("- {} ({}): {}\n", r.cell, r.values, r.status));
        }
    }
    let path = out.join("results.md");
    astro_data::fsutil::write_atomic(&path, md.as_bytes()).map_err(|e| EvalError::io("write", &path, e))?;
    Ok(path)
}

/// Evaluation rows `(step, value)` of a cell's metrics.
fn curve(run_dir: &Path, metric: Metric) -> Vec<(f64, f64)> {
    let rows = astro_train::metrics::read(&run_dir.join("metrics.jsonl")).unwrap_or_default();
    rows.iter()
        .filter_map(|r| {
            let v = match metric {
                Metric::ValLoss => r.val_loss,
                Metric::Accuracy => r.val_accuracy,
            }?;
            Some((r.step as f64, v))
        })
        .collect()
}

/// One line per label through (x, mean) with ±sample-std bars, from the values at each x; lines in
/// the order given (so a cell keeps its colour from chart to chart).
fn mean_series(lines: impl IntoIterator<Item = (String, BTreeMap<usize, Vec<f64>>)>) -> Vec<Series> {
    lines
        .into_iter()
        .map(|(label, at)| {
            let stats: Vec<(f64, (f64, f64))> = at.iter().map(|(x, v)| (*x as f64, mean_std(v))).collect();
            Series {
                label,
                points: stats.iter().map(|(x, (mean, _))| (*x, *mean)).collect(),
                errors: Some(stats.iter().map(|(_, (_, s))| *s).collect()),
            }
        })
        .collect()
}

fn write_plots(
    out: &Path,
    ablation: &AblationConfig,
    cells: &[Cell],
    rows: &[Row],
    runs_dir: &Path,
    states: &BTreeMap<String, usize>,
) -> Result<Vec<PathBuf>, EvalError> {
    let (y_label, y_range) = match ablation.metric {
        Metric::ValLoss => ("validation loss", None),
        // Accuracy on its whole scale, as Zoology draws it: equal cells do not blow up into a band.
        Metric::Accuracy => ("accuracy", Some((0.0, 1.04))),
    };
    let mut files = Vec::new();
    // 1. Curves per group (mean over seeds at each evaluation step).
    let mut series = Vec::new();
    for g in groups(cells, rows) {
        let mut by_step: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for (cell, row) in &g.cells {
            if row.status == "ok" {
                for (s, v) in curve(&runs_dir.join(&cell.id), ablation.metric) {
                    by_step.entry(s as u64).or_default().push(v);
                }
            }
        }
        if !by_step.is_empty() {
            let points = by_step.iter().map(|(s, v)| (*s as f64, mean_std(v).0)).collect();
            series.push(Series { label: g.label.clone(), points, errors: None });
        }
    }
    if !series.is_empty() {
        let chart = Chart {
            title: format!("{y_label} during training"),
            x_label: "step".into(),
            y_label: y_label.into(),
            log_x: false,
            log_y: false,
            series,
            references: vec![],
            y_range,
        };
        let (png, svg) = plot::save(&chart, &out.join("curves"))?;
        files.extend([png, svg]);
    }
    // 2. Final metric against m for astrocytic cells; other variants as reference lines.
    let mut astro: BTreeMap<String, BTreeMap<usize, Vec<f64>>> = BTreeMap::new();
    let mut references: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (cell, row) in cells.iter().zip(rows) {
        let Some(v) = metric_of(ablation.metric, row).filter(|_| row.status == "ok") else { continue };
        match &cell.config.model.attention {
            AttentionConfig::Astrocytic(c) => {
                // The cell's label without its m: cells that differ only in m share a line.
                let label = cell.label().replace(&format!(" m={}", c.features), "");
                astro.entry(label).or_default().entry(c.features).or_default().push(v);
            }
            _ => references.entry(cell.label()).or_default().push(v),
        }
    }
    if astro.values().any(|by_m| by_m.len() > 1) {
        let series = mean_series(astro);
        let chart = Chart {
            title: format!("final {y_label} against hidden neurons m"),
            x_label: "hidden neurons m".into(),
            y_label: y_label.into(),
            log_x: true,
            log_y: false,
            series,
            references: references.into_iter().map(|(l, v)| (l, mean_std(&v).0)).collect(),
            y_range,
        };
        let (png, svg) = plot::save(&chart, &out.join("metric_vs_m"))?;
        files.extend([png, svg]);
    }
    // 3. Zoology's picture: final metric against the decoding state (floats per sequence), one
    //    line per group of cells that differ only in m, one point per cell group.
    let mut points: Vec<(String, String, usize, Vec<f64>)> = Vec::new(); // (line, own label, state, values)
    for g in groups(cells, rows) {
        let (cell, _) = g.cells[0];
        let Some(&state) = g.cells.iter().find_map(|(c, _)| states.get(&c.id)) else { continue };
        let values: Vec<f64> = g.cells.iter().filter_map(|(_, r)| metric_of(ablation.metric, r)).collect();
        if values.is_empty() {
            continue;
        }
        let line = match &cell.config.model.attention {
            AttentionConfig::Astrocytic(c) => g.label.replace(&format!(" m={}", c.features), " m=·"),
            _ => g.label.clone(),
        };
        points.push((line, g.label.clone(), state, values));
    }
    let mut by_state: Vec<(String, BTreeMap<usize, Vec<f64>>)> = Vec::new();
    for (line, own, state, values) in &points {
        // A line only where several groups differ in m alone; a lone point keeps its own label.
        let shared = points.iter().filter(|p| p.0 == *line).count() > 1;
        let label = if shared { line } else { own };
        let at = match by_state.iter().position(|(l, _)| l == label) {
            Some(i) => &mut by_state[i].1,
            None => {
                by_state.push((label.clone(), BTreeMap::new()));
                &mut by_state.last_mut().expect("just pushed").1
            }
        };
        at.entry(*state).or_default().extend(values.iter().copied());
    }
    if by_state.len() > 1 {
        let series = mean_series(by_state);
        let chart = Chart {
            title: format!("final {y_label} against decoding state"),
            x_label: "decoding state (floats per sequence, all layers)".into(),
            y_label: y_label.into(),
            log_x: true,
            log_y: false,
            series,
            references: vec![],
            y_range,
        };
        let (png, svg) = plot::save(&chart, &out.join("metric_vs_state"))?;
        files.extend([png, svg]);
    }
    Ok(files)
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
