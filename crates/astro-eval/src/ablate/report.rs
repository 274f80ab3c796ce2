//! The ablation's report: `results.csv` (one row per finished or failed cell), `results.md` (mean ±
//! std over seeds per group of cells, and what has not finished) and the plots, from whatever the
//! cells' directories hold. Written under `report.lock` with atomic writes, so that cells finishing
//! at once, on one machine or on a cluster's shared filesystem, never clobber it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use astro_model::AttentionConfig;
use serde::{Deserialize, Serialize};

use super::cell::{failed_row, finished_row};
use super::{AblationConfig, AblationReport, Cell, CellStatus, Grid, Metric};
use crate::compare::{Axis, Curve, RunCurves, curve_series, curves_chart, mean_std, write_csv};
use crate::error::EvalError;
use crate::plot::{self, Chart, Series};

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

/// Writes the report of whatever has finished, holding `report.lock` (cells that finish at once
/// take turns; every file is replaced atomically).
pub(super) fn write(grid: &Grid) -> Result<AblationReport, EvalError> {
    write_parts(grid, true)
}

/// Writes `results.csv` alone (what a grid run updates after each cell: the tables and plots load
/// every finished model and read every curve, which would make a long grid quadratic).
pub(super) fn write_table(grid: &Grid) -> Result<(), EvalError> {
    write_parts(grid, false).map(|_| ())
}

fn write_parts(grid: &Grid, everything: bool) -> Result<AblationReport, EvalError> {
    std::fs::create_dir_all(&grid.out).map_err(|e| EvalError::io("create", &grid.out, e))?;
    let _lock = super::cell::FileLock::wait(&grid.out.join("report.lock"))?;
    let mut done: Vec<Cell> = Vec::new();
    let mut rows = Vec::new();
    let mut unfinished = Vec::new();
    for cell in &grid.cells {
        match grid.status(cell) {
            CellStatus::Finished(summary) => rows.push(finished_row(cell, &summary)),
            CellStatus::Failed { error } => rows.push(failed_row(cell, &error)),
            other => {
                unfinished.push((cell.id.clone(), other.describe()));
                continue;
            }
        }
        done.push(cell.clone());
    }
    let runs_dir = grid.runs_dir();
    let csv_path = grid.out.join("results.csv");
    write_csv(&csv_path, &rows)?;
    let mut files = vec![csv_path];
    if !everything {
        return Ok(AblationReport { rows, trained: 0, skipped: 0, unfinished, files });
    }
    let states: BTreeMap<String, usize> = done
        .iter()
        .zip(&rows)
        .filter(|(_, row)| row.status == "ok")
        .filter_map(|(cell, _)| Some((cell.id.clone(), state_floats(&runs_dir, cell)?)))
        .collect();
    files.push(write_markdown(&grid.out, &grid.ablation, &done, &rows, &states, &unfinished)?);
    files.extend(write_plots(&grid.out, &grid.ablation, &done, &rows, &runs_dir, &states)?);
    Ok(AblationReport { rows, trained: 0, skipped: 0, unfinished, files })
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
    unfinished: &[(String, String)],
) -> Result<PathBuf, EvalError> {
    let metric = match ablation.metric {
        Metric::ValLoss => "val loss",
        Metric::Accuracy => "accuracy",
    };
    let mut md = format!(
        "# Ablation results\n\nMean ± sample std over seeds; {} cells reported, base `{}`.\n\n| cell group | seeds ok | {metric} | best val loss | tokens/s | wall s | decoding state (floats/sequence) |\n|---|---:|---:|---:|---:|---:|---:|\n",
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
    if !unfinished.is_empty() {
        md.push_str(&format!("\nNot finished ({} of {} cells):\n\n", unfinished.len(), rows.len() + unfinished.len()));
        for (id, status) in unfinished {
            md.push_str(&format!("- {id}: {status}\n"));
        }
    }
    let path = out.join("results.md");
    astro_data::fsutil::write_atomic(&path, md.as_bytes()).map_err(|e| EvalError::io("write", &path, e))?;
    Ok(path)
}

/// The curve an ablation's metric is drawn from.
fn curve_of(metric: Metric) -> Curve {
    match metric {
        Metric::ValLoss => Curve::ValLoss,
        Metric::Accuracy => Curve::Accuracy,
    }
}

/// Lines through the mean at each x with the spread between seeds (the plotting `astro compare`
/// uses), from values gathered by an integer x.
fn mean_series(lines: impl IntoIterator<Item = (String, BTreeMap<usize, Vec<f64>>)>) -> Vec<Series> {
    curve_series(lines.into_iter().map(|(label, at)| (label, at.into_iter().map(|(x, v)| (x as f64, v)).collect())))
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
    // 1. Curves per group: the mean over seeds at each evaluation step, with ±std bars where a
    //    group has several seeds (the spread between seeds).
    let curve = curve_of(ablation.metric);
    let mut lines = Vec::new();
    for g in groups(cells, rows) {
        let mut by_step: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for (cell, row) in &g.cells {
            let Ok(run) = RunCurves::read(&runs_dir.join(&cell.id), cell.id.clone()) else { continue };
            if row.status == "ok" {
                for (s, v) in run.points(curve, Axis::Step) {
                    by_step.entry(s as usize).or_default().extend(v);
                }
            }
        }
        if !by_step.is_empty() {
            lines.push((g.label.clone(), by_step));
        }
    }
    let series = mean_series(lines);
    if !series.is_empty() {
        let chart = curves_chart(series, curve, Axis::Step, format!("{y_label} during training"));
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
