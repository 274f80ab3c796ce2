//! `astro compare RUN… --out DIR`: runs side by side. Their validation loss against steps, tokens
//! and seconds of training (and the training loss against steps), as PNG and SVG, and a table
//! (Markdown and CSV) of final and best losses, throughput and training time. With `--against KEY`
//! also each run's final accuracy (or validation loss) against a number of its config, e.g.
//! `task.seq_len`: runs that share a label form one line (Zoology's accuracy-against-length
//! picture). `astro ablate` draws its curves with the same code ([`curve_series`], [`curves_chart`]).

use std::path::{Path, PathBuf};

use astro_train::metrics::MetricsRow;
use serde::Serialize;

use crate::error::EvalError;
use crate::plot::{self, Chart, Series};

/// What a curve's x axis counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Optimiser steps.
    Step,
    /// Training tokens consumed.
    Tokens,
    /// Seconds of training (evaluation and checkpoints excluded).
    Seconds,
}

impl Axis {
    /// The axis's value at a metrics row.
    pub fn of(self, row: &MetricsRow) -> f64 {
        match self {
            Axis::Step => row.step as f64,
            Axis::Tokens => row.tokens as f64,
            Axis::Seconds => row.elapsed,
        }
    }

    /// Axis label.
    pub fn label(self) -> &'static str {
        match self {
            Axis::Step => "step",
            Axis::Tokens => "training tokens",
            Axis::Seconds => "training seconds",
        }
    }

    fn stem(self) -> &'static str {
        match self {
            Axis::Step => "step",
            Axis::Tokens => "tokens",
            Axis::Seconds => "seconds",
        }
    }
}

/// What a curve's y axis shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// Validation (or test) loss, at evaluations.
    ValLoss,
    /// Training loss of each logged step's batch.
    TrainLoss,
    /// Task accuracy, at evaluations.
    Accuracy,
}

impl Curve {
    /// The curve's value at a metrics row, where it has one.
    pub fn of(self, row: &MetricsRow) -> Option<f64> {
        match self {
            Curve::ValLoss => row.val_loss,
            Curve::TrainLoss => Some(row.train_loss),
            Curve::Accuracy => row.val_accuracy,
        }
    }

    /// Axis label.
    pub fn label(self) -> &'static str {
        match self {
            Curve::ValLoss => "validation loss",
            Curve::TrainLoss => "training loss",
            Curve::Accuracy => "accuracy",
        }
    }

    fn stem(self) -> &'static str {
        match self {
            Curve::ValLoss => "val_loss",
            Curve::TrainLoss => "train_loss",
            Curve::Accuracy => "accuracy",
        }
    }
}

/// Mean and sample standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// The values one run (or several seeds) has at one x: (x, values).
pub type Samples = (f64, Vec<f64>);

/// One line per label through the mean of the values at each x (in x order), with ±sample-std
/// bars where some x has several values (seeds); lines in the order given, so a line keeps its
/// colour from chart to chart.
pub fn curve_series(lines: impl IntoIterator<Item = (String, Vec<Samples>)>) -> Vec<Series> {
    let lines: Vec<(String, Vec<Samples>)> = lines.into_iter().collect();
    let spread = lines.iter().any(|(_, at)| at.iter().any(|(_, v)| v.len() > 1));
    lines
        .into_iter()
        .map(|(label, mut at)| {
            at.sort_by(|a, b| a.0.total_cmp(&b.0));
            let stats: Vec<(f64, (f64, f64))> = at.iter().map(|(x, v)| (*x, mean_std(v))).collect();
            Series {
                label,
                points: stats.iter().map(|(x, (mean, _))| (*x, *mean)).collect(),
                errors: spread.then(|| stats.iter().map(|(_, (_, s))| *s).collect()),
            }
        })
        .collect()
}

/// A chart of `curve` against `axis` with these lines.
pub fn curves_chart(series: Vec<Series>, curve: Curve, axis: Axis, title: String) -> Chart {
    Chart {
        title,
        x_label: axis.label().into(),
        y_label: curve.label().into(),
        log_x: false,
        log_y: false,
        series,
        references: vec![],
        // Accuracy on its whole scale, as Zoology draws it.
        y_range: (curve == Curve::Accuracy).then_some((0.0, 1.04)),
    }
}

/// A run's curves.
#[derive(Debug, Clone)]
pub struct RunCurves {
    /// Its name in legends and the table.
    pub label: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Its metrics rows.
    pub rows: Vec<MetricsRow>,
}

impl RunCurves {
    /// Reads `dir/metrics.jsonl`.
    pub fn read(dir: &Path, label: String) -> Result<Self, EvalError> {
        let path = dir.join("metrics.jsonl");
        if !path.is_file() {
            return Err(EvalError::Run {
                run: dir.to_path_buf(),
                reason: "no metrics.jsonl: give the directory of a training run (runs/<name>)".into(),
            });
        }
        let rows = astro_train::metrics::read(&path)?;
        if rows.is_empty() {
            return Err(EvalError::Run { run: dir.to_path_buf(), reason: "metrics.jsonl has no rows yet".into() });
        }
        Ok(RunCurves { label, dir: dir.to_path_buf(), rows })
    }

    /// `(x, [y])` of `curve` against `axis`.
    pub fn points(&self, curve: Curve, axis: Axis) -> Vec<Samples> {
        self.rows.iter().filter_map(|r| Some((axis.of(r), vec![curve.of(r)?]))).collect()
    }
}

/// One row of the comparison table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompareRow {
    /// The run's label.
    pub run: String,
    /// Steps trained.
    pub steps: usize,
    /// Training tokens consumed.
    pub tokens: u64,
    /// The last validation loss.
    pub final_val_loss: Option<f64>,
    /// The lowest validation loss.
    pub best_val_loss: Option<f64>,
    /// The last logged step's training loss.
    pub final_train_loss: f64,
    /// The last task accuracy.
    pub final_accuracy: Option<f64>,
    /// Training tokens per second of training time.
    pub tokens_per_sec: f64,
    /// Seconds of training (evaluation and checkpoints excluded).
    pub train_seconds: f64,
}

impl CompareRow {
    fn of(run: &RunCurves) -> Self {
        let last = run.rows.last().expect("read() refuses empty metrics");
        let vals: Vec<f64> = run.rows.iter().filter_map(|r| r.val_loss).collect();
        CompareRow {
            run: run.label.clone(),
            steps: last.step,
            tokens: last.tokens,
            final_val_loss: vals.last().copied(),
            best_val_loss: vals.iter().copied().reduce(f64::min),
            final_train_loss: last.train_loss,
            final_accuracy: run.rows.iter().rev().find_map(|r| r.val_accuracy),
            tokens_per_sec: if last.elapsed > 0.0 { last.tokens as f64 / last.elapsed } else { 0.0 },
            train_seconds: last.elapsed,
        }
    }
}

/// What a comparison wrote.
#[derive(Debug, Clone)]
pub struct CompareReport {
    /// The table's rows, one per run in the order given.
    pub rows: Vec<CompareRow>,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Labels for `dirs`: each directory's name, or `parent/name` where names repeat.
pub fn default_labels(dirs: &[PathBuf]) -> Vec<String> {
    let name = |d: &Path| d.file_name().map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into_owned());
    let names: Vec<String> = dirs.iter().map(|d| name(d)).collect();
    dirs.iter()
        .zip(&names)
        .map(|(d, n)| {
            if names.iter().filter(|m| *m == n).count() > 1 {
                d.parent().map_or(n.clone(), |p| format!("{}/{n}", name(p)))
            } else {
                n.clone()
            }
        })
        .collect()
}

/// The number at dotted `key` (e.g. `task.seq_len`) of the run config `dir/config.toml`.
pub fn config_number(dir: &Path, key: &str) -> Result<f64, EvalError> {
    let path = dir.join("config.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io("read", &path, e))?;
    let value: toml::Value = toml::from_str(&text).map_err(|e| EvalError::Run {
        run: dir.to_path_buf(),
        reason: format!("config.toml is not valid TOML: {e}"),
    })?;
    let found = key.split('.').try_fold(&value, |v, part| v.get(part));
    match found {
        Some(toml::Value::Integer(i)) => Ok(*i as f64),
        Some(toml::Value::Float(f)) => Ok(*f),
        Some(other) => Err(EvalError::Run {
            run: dir.to_path_buf(),
            reason: format!("--against {key}: config.toml has `{other}` there, not a number"),
        }),
        None => Err(EvalError::Run {
            run: dir.to_path_buf(),
            reason: format!("--against {key}: config.toml has no such key (give a dotted key such as task.seq_len)"),
        }),
    }
}

/// Compares the runs in `dirs` (labelled by `labels`, else by [`default_labels`]) into `out`; with
/// `against`, also their final accuracy (validation loss where no run has one) against that config key.
pub fn compare(
    dirs: &[PathBuf],
    labels: Option<&[String]>,
    against: Option<&str>,
    out: &Path,
) -> Result<CompareReport, EvalError> {
    if dirs.is_empty() {
        return Err(EvalError::Invalid("astro compare needs at least one run directory".into()));
    }
    let labels = match labels {
        Some(l) if l.len() != dirs.len() => {
            return Err(EvalError::Invalid(format!(
                "--label given {} times for {} runs; give one label per run, in the same order",
                l.len(),
                dirs.len()
            )));
        }
        Some(l) => l.to_vec(),
        None => default_labels(dirs),
    };
    let runs: Vec<RunCurves> = dirs.iter().zip(labels).map(|(d, l)| RunCurves::read(d, l)).collect::<Result<_, _>>()?;
    // Every key is read before anything is written.
    let xs: Option<Vec<f64>> = against.map(|key| dirs.iter().map(|d| config_number(d, key)).collect()).transpose()?;
    std::fs::create_dir_all(out).map_err(|e| EvalError::io("create", out, e))?;
    let mut files = Vec::new();
    let accuracy = runs.iter().any(|r| r.rows.iter().any(|x| x.val_accuracy.is_some()));
    let mut charts = vec![
        (Curve::ValLoss, Axis::Step),
        (Curve::ValLoss, Axis::Tokens),
        (Curve::ValLoss, Axis::Seconds),
        (Curve::TrainLoss, Axis::Step),
    ];
    if accuracy {
        charts.push((Curve::Accuracy, Axis::Step));
    }
    for (curve, axis) in charts {
        let lines = runs.iter().map(|r| (r.label.clone(), r.points(curve, axis))).filter(|(_, p)| !p.is_empty());
        let series = curve_series(lines);
        if series.is_empty() {
            continue;
        }
        let chart = curves_chart(series, curve, axis, format!("{} against {}", curve.label(), axis.label()));
        let (png, svg) = plot::save(&chart, &out.join(format!("{}_vs_{}", curve.stem(), axis.stem())))?;
        files.extend([png, svg]);
    }
    let mut rows: Vec<CompareRow> = runs.iter().map(CompareRow::of).collect();
    if let (Some(key), Some(xs)) = (against, &xs) {
        files.extend(final_against(&rows, key, xs, out)?);
        for (row, x) in rows.iter_mut().zip(xs) {
            row.run = format!("{} ({key} = {x})", row.run);
        }
    }
    let csv = out.join("compare.csv");
    write_csv(&csv, &rows)?;
    files.push(csv);
    files.push(write_markdown(&out.join("compare.md"), &rows, &runs)?);
    Ok(CompareReport { rows, files })
}

/// The final accuracy of each run (its final validation loss where no run has an accuracy) against
/// `xs`, the runs' values of config `key`; runs with the same label form one line (mean and spread
/// where a label has several runs at one x).
fn final_against(rows: &[CompareRow], key: &str, xs: &[f64], out: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let accuracy = rows.iter().any(|r| r.final_accuracy.is_some());
    let (curve, y_range) = if accuracy { (Curve::Accuracy, Some((0.0, 1.04))) } else { (Curve::ValLoss, None) };
    let mut lines: Vec<(String, Vec<Samples>)> = Vec::new();
    for (row, &x) in rows.iter().zip(xs) {
        let Some(y) = (if accuracy { row.final_accuracy } else { row.final_val_loss }) else { continue };
        match lines.iter_mut().find(|(l, _)| *l == row.run) {
            Some((_, points)) => match points.iter_mut().find(|(px, _)| *px == x) {
                Some((_, ys)) => ys.push(y), // seeds of one setting: one point with its spread
                None => points.push((x, vec![y])),
            },
            None => lines.push((row.run.clone(), vec![(x, vec![y])])),
        }
    }
    let (lo, hi) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let chart = Chart {
        title: format!("final {} against {key}", curve.label()),
        x_label: key.to_string(),
        y_label: curve.label().to_string(),
        log_x: lo > 0.0 && hi / lo >= 8.0,
        log_y: false,
        series: curve_series(lines),
        references: vec![],
        y_range,
    };
    let (png, svg) = plot::save(&chart, &out.join(format!("final_{}_vs_{}", curve.stem(), key.replace('.', "_"))))?;
    Ok(vec![png, svg])
}

/// Writes `rows` as CSV (a header from the fields' names) to `path`, atomically; `astro ablate`'s
/// results.csv is written the same way.
pub fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<(), EvalError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for r in rows {
        writer.serialize(r).map_err(|e| EvalError::io("encode", path, e))?;
    }
    let bytes = writer.into_inner().map_err(|e| EvalError::io("encode", path, e))?;
    astro_data::fsutil::write_atomic(path, &bytes).map_err(|e| EvalError::io("write", path, e))
}

fn write_markdown(path: &Path, rows: &[CompareRow], runs: &[RunCurves]) -> Result<PathBuf, EvalError> {
    let opt = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.4}"));
    // Task runs (MQAR and the like) also get their final accuracy.
    let accuracy = rows.iter().any(|r| r.final_accuracy.is_some());
    let mut md = String::from(
        "| run | steps | tokens | final val loss | best val loss | final train loss | tokens/s | training s |",
    );
    md.push_str(if accuracy { " final accuracy |\n" } else { "\n" });
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|");
    md.push_str(if accuracy { "---:|\n" } else { "\n" });
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.4} | {:.0} | {:.1} |",
            r.run,
            r.steps,
            r.tokens,
            opt(r.final_val_loss),
            opt(r.best_val_loss),
            r.final_train_loss,
            r.tokens_per_sec,
            r.train_seconds
        ));
        if accuracy {
            md.push_str(&format!(" {} |", opt(r.final_accuracy)));
        }
        md.push('\n');
    }
    md.push_str("\nRuns:\n\n");
    for run in runs {
        md.push_str(&format!("- {}: `{}`\n", run.label, run.dir.display()));
    }
    astro_data::fsutil::write_atomic(path, md.as_bytes()).map_err(|e| EvalError::io("write", path, e))?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_directory_names_made_unique_by_their_parent() {
        let dirs: Vec<PathBuf> = ["a/runs/x", "b/runs/y", "c/cells/x"].iter().map(PathBuf::from).collect();
        assert_eq!(default_labels(&dirs), ["runs/x", "y", "cells/x"]);
    }

    #[test]
    fn one_value_per_x_draws_no_bars_and_several_draw_the_spread() {
        let single = curve_series([("a".to_string(), vec![(2.0, vec![1.0]), (1.0, vec![3.0])])]);
        assert_eq!(single[0].points, [(1.0, 3.0), (2.0, 1.0)]);
        assert!(single[0].errors.is_none());
        let seeds = curve_series([("a".to_string(), vec![(1.0, vec![1.0, 3.0])])]);
        assert_eq!(seeds[0].points, [(1.0, 2.0)]);
        assert!((seeds[0].errors.as_ref().unwrap()[0] - 2f64.sqrt()).abs() < 1e-12);
    }
}
