//! `astro fidelity`: the paper's weight-transfer question on our own trained models. A model
//! trained with softmax attention has every attention layer swapped for the astrocytic one with the
//! same weights (no retraining), for several numbers of hidden neurons m:
//!
//! - validation loss against m (softmax's as the reference);
//! - per layer and head, the Pearson correlation and median relative error between the astrocyte
//!   response a_t = pᵀφ(q̃_t) and softmax's normaliser Z_t = Σ_τ exp(q_t·k_τ/√D), both computed on
//!   the softmax model's own queries and keys (as the paper did);
//! - plots: both normalisers against t for one head (like the paper's figure), the error against m
//!   (log–log, slope fitted), and the loss against m.

use std::path::{Path, PathBuf};

use astro_data::{BatchSampler, Sampling, tokenize_cached};
use astro_model::attention::{AstrocyticConfig, Attention, AttentionMask, FeatureMap, InnerAttention};
use astro_model::{AttentionConfig, LanguageModel};
use astro_train::Net;
use astro_train::distill::{AttentionInputs, DistillOptions, distill_layer};
use astro_train::source::{Batch, score};
use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;

use crate::error::EvalError;
use crate::plot::{self, Chart, Series};
use crate::run::Run;

/// Settings of a fidelity report.
#[derive(Debug, Clone)]
pub struct FidelityOptions {
    /// Numbers of hidden neurons to try.
    pub features: Vec<usize>,
    /// Hidden-neuron maps to compare, side by side.
    pub feature_maps: Vec<FeatureMap>,
    /// Training-split sequences the calibrated maps are fitted on (never the evaluation data).
    pub fit_sequences: usize,
    /// Use ψ = 1 where a calibrated map's closed form is undefined, instead of failing.
    pub fallback: bool,
    /// Also distil (astrocyte plasticity, see [`astro_train::distill`]) a shifted-SADERF layer per m
    /// with these settings, reported as the map `distilled`; `None` or 0 steps: not compared.
    pub distill: Option<DistillOptions>,
    /// Orthogonal Ω.
    pub orthogonal: bool,
    /// Ω seed.
    pub seed: u64,
    /// Validation batches for the loss.
    pub batches: usize,
    /// Validation sequences for the normaliser statistics.
    pub sequences: usize,
    /// (layer, head) drawn in the paper-style figure.
    pub head: (usize, usize),
}

impl Default for FidelityOptions {
    fn default() -> Self {
        Self {
            features: vec![64, 256, 1024, 4096, 16384],
            feature_maps: vec![FeatureMap::Positive, FeatureMap::Saderf, FeatureMap::ShiftedSaderf],
            fit_sequences: 32,
            fallback: false,
            distill: None,
            orthogonal: false,
            seed: 0,
            batches: 20,
            sequences: 8,
            head: (0, 0),
        }
    }
}

/// Statistics of one (map, layer, head, m).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadStat {
    /// Hidden-neuron map.
    pub map: String,
    /// Block index.
    pub layer: usize,
    /// Head index.
    pub head: usize,
    /// Hidden neurons.
    pub m: usize,
    /// Pearson correlation of a_t and Z_t over all queries.
    pub pearson: f64,
    /// Median of |a_t − Z_t| / Z_t.
    pub median_rel_err: f64,
}

/// The report (`--json` prints it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FidelityReport {
    /// The softmax run.
    pub run: PathBuf,
    /// The softmax model's validation loss on the same batches.
    pub softmax_val_loss: f64,
    /// (map, m, validation loss of the swapped model).
    pub val_loss: Vec<(String, usize, f64)>,
    /// Per (map, layer, head, m) statistics.
    pub heads: Vec<HeadStat>,
    /// (map, log–log slope of the median relative error, mean over all heads, against m).
    pub error_slope: Vec<(String, f64)>,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Pearson correlation of two equally long samples.
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt().max(1e-300)
}

/// Median of `xs` (not empty).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}

/// Least-squares slope of log y against log x.
pub fn loglog_slope(points: &[(f64, f64)]) -> f64 {
    let pts: Vec<(f64, f64)> = points.iter().filter(|p| p.0 > 0.0 && p.1 > 0.0).map(|p| (p.0.ln(), p.1.ln())).collect();
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return f64::NAN;
    }
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let cov: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let var: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    cov / var
}

/// Writes `out/error_vs_m.{png,svg}`: median relative error against m, one line per series (log–log).
pub(crate) fn save_error_chart(title: &str, series: Vec<Series>, out: &Path) -> Result<(PathBuf, PathBuf), EvalError> {
    plot::save(
        &Chart {
            title: title.into(),
            x_label: "hidden neurons m".into(),
            y_label: "median |a − Z| / Z".into(),
            log_x: true,
            log_y: true,
            series,
            references: vec![],
            y_range: None,
        },
        &out.join("error_vs_m"),
    )
}

fn host(x: Tensor<3>) -> Vec<f64> {
    x.into_data().try_into_vec_as::<f64>().unwrap_or_default()
}

/// Largest m the `distilled` rows fit (its [batch, heads, seq, m] activity and gradients grow with m).
pub const DISTILL_MAX_FEATURES: usize = 4096;

/// Fixed validation batches (inputs `[batch, block]`, host targets) for comparing models' losses.
pub(crate) struct ValBatches(pub Vec<(Tensor<2, Int>, Vec<i64>)>);

impl ValBatches {
    /// `count` random batches from `range` of `file` (a fixed seed: every model sees the same ones).
    pub(crate) fn new(
        file: &astro_data::TokenFile,
        range: std::ops::Range<usize>,
        block: usize,
        batch: usize,
        count: usize,
        device: &burn::tensor::Device,
    ) -> Self {
        let mut sampler = BatchSampler::new(range, block, batch, Sampling::Random, 0xf1de_1177);
        Self(
            (0..count.max(1))
                .map(|_| {
                    let b = sampler.next_batch(file);
                    (Tensor::from_data(TensorData::new(b.inputs, [b.batch, b.block]), device), b.targets)
                })
                .collect(),
        )
    }

    /// Mean next-token loss of `net` over the batches.
    pub(crate) fn loss(&self, net: &Net) -> f64 {
        self.0
            .iter()
            .map(|(x, y)| {
                score(net, Batch::Lm { inputs: x.clone(), targets: y.clone() }, false).loss.into_scalar::<f64>()
            })
            .sum::<f64>()
            / self.0.len() as f64
    }
}

/// One head's (Z_t, a_t) over every query, in order.
pub(crate) type Normalisers = (Vec<f64>, Vec<f64>);

/// Per-head Pearson r and median relative error of a_t against Z_t from one layer's trace.
pub(crate) fn head_stats(
    trace: astro_model::attention::NormaliserTrace,
    map: &str,
    layer: usize,
    m: usize,
) -> (Vec<HeadStat>, Vec<Normalisers>) {
    let [b, heads, t] = trace.softmax_log.dims();
    let z = host(trace.softmax_log); //                 [B,H,T] log Z
    let a = host(trace.astrocyte_log.expect("astrocytic traces carry a_t"));
    let sign = host(trace.astrocyte_sign.expect("astrocytic traces carry the sign"));
    let mut stats = Vec::with_capacity(heads);
    let mut series = Vec::with_capacity(heads);
    for h in 0..heads {
        let (mut zs, mut as_) = (Vec::new(), Vec::new());
        for bi in 0..b {
            for i in 0..t {
                let idx = (bi * heads + h) * t + i;
                zs.push(z[idx].exp());
                as_.push(sign[idx] * a[idx].exp());
            }
        }
        let rel: Vec<f64> = zs.iter().zip(&as_).map(|(z, a)| (a - z).abs() / z).collect();
        stats.push(HeadStat {
            map: map.to_string(),
            layer,
            head: h,
            m,
            pearson: pearson(&as_, &zs),
            median_rel_err: median(rel),
        });
        series.push((zs, as_));
    }
    (stats, series)
}

/// Mean over the stats selected by `filter` of `f`.
pub(crate) fn mean_of(stats: &[HeadStat], filter: impl Fn(&HeadStat) -> bool, f: impl Fn(&HeadStat) -> f64) -> f64 {
    let v: Vec<f64> = stats.iter().filter(|s| filter(s)).map(f).collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Runs the report for the softmax run `run`, writing files into `out`.
pub fn run(run: &Run, options: &FidelityOptions, out: &Path) -> Result<FidelityReport, EvalError> {
    if !matches!(run.config.model.attention, AttentionConfig::Softmax(_)) {
        return Err(EvalError::Invalid(format!(
            "{} was trained with {} attention; the fidelity report swaps a softmax-trained model's attention",
            run.dir.display(),
            run.config.model.attention.kind()
        )));
    }
    if options.features.is_empty() || options.features.contains(&0) {
        return Err(EvalError::Invalid("--features needs positive numbers of hidden neurons, e.g. 64,256,1024".into()));
    }
    if options.feature_maps.is_empty() {
        return Err(EvalError::Invalid("--feature-maps needs at least one map, e.g. positive,shifted_saderf".into()));
    }
    let lm = run.net.lm().ok_or_else(|| EvalError::Invalid("the run holds no language model".into()))?.valid();
    let device = lm.trunk.wte.weight.val().device();
    let tokenizer = run.tokenizer.as_ref().ok_or_else(|| EvalError::Invalid("the run has no tokenizer".into()))?;
    let corpus = run.config.corpus().files(run.config.data.val_fraction)?;
    let file = tokenize_cached(&corpus, tokenizer.as_ref(), &|| false)?;
    let (train, val) = file.split(run.config.data.val_fraction);
    let block = run.config.model.block_size;
    let batch = run.config.optim.batch_size;
    let val_batches = ValBatches::new(&file, val.clone(), block, batch, options.batches, &device);
    let batches = &val_batches.0;
    let loss_of = |net: &Net| val_batches.loss(net);
    let softmax_val_loss = loss_of(&Net::Lm(lm.clone()));

    // Calibrated maps are fitted on training-split sequences, never on the evaluation data.
    let mut fit_sampler = BatchSampler::new(train, block, options.fit_sequences.max(1), Sampling::Random, 0xf17_0001);
    let fit = fit_sampler.next_batch(&file);
    let fit_tokens = Tensor::<2, Int>::from_data(TensorData::new(fit.inputs, [fit.batch, fit.block]), &device);
    // Queries and keys of the softmax model itself, per layer, on a few validation sequences.
    let mut seq_sampler = BatchSampler::new(val, block, options.sequences.max(1), Sampling::Random, 0x5e9_0001);
    let seqs = seq_sampler.next_batch(&file);
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(seqs.inputs, [seqs.batch, seqs.block]), &device);
    let qk = lm.attention_inputs(tokens);
    let mask = AttentionMask::causal();
    let figure_m = options.features[options.features.len() / 2];

    // The maps compared: each of `feature_maps`, and the distilled shifted SADERF when asked.
    let mut variants: Vec<(String, FeatureMap, bool)> =
        options.feature_maps.iter().map(|&m| (m.name().to_string(), m, false)).collect();
    let distill = options.distill.clone().filter(|d| d.steps > 0);
    if distill.is_some() {
        variants.push(("distilled".into(), FeatureMap::ShiftedSaderf, true));
    }
    // The softmax model's own queries and keys on the fitting sequences: calibrated maps are fitted
    // to their statistics, distilled layers to its attention.
    let teacher_fit: Vec<(Tensor<4>, Tensor<4>)> = lm.attention_inputs(fit_tokens.clone());
    let mut val_loss = Vec::new();
    let mut stats = Vec::new();
    let mut figure: Vec<Series> = Vec::new();
    for (label, map, distilled) in &variants {
        for &m in &options.features {
            if *distilled && m > DISTILL_MAX_FEATURES {
                eprintln!("{label}: m = {m} skipped (distillation is offered up to m = {DISTILL_MAX_FEATURES})");
                continue;
            }
            let astro_cfg = AstrocyticConfig {
                features: m,
                feature_map: *map,
                orthogonal: options.orthogonal,
                seed: options.seed,
                ..AstrocyticConfig::default()
            };
            let mut config = run.config.model.clone();
            config.attention = AttentionConfig::Astrocytic(astro_cfg.clone());
            let mut swapped = LanguageModel::new(&config, &device)?.transfer_weights(&run.weights)?;
            let (trunk, _) = swapped.trunk.calibrate_from_inputs(&teacher_fit, None, options.fallback)?;
            swapped.trunk = trunk;
            if let (true, Some(d)) = (*distilled, &distill) {
                for (layer, ((fq, fk), (hq, hk))) in teacher_fit.iter().zip(&qk).enumerate() {
                    let block = &mut swapped.trunk.blocks[layer];
                    let Attention::Astrocytic(attn) = &block.attn.inner else {
                        unreachable!("every layer was swapped to astrocytic attention");
                    };
                    let fit = AttentionInputs { q: fq.clone(), k: fk.clone(), mask: mask.clone() };
                    let held = AttentionInputs { q: hq.clone(), k: hk.clone(), mask: mask.clone() };
                    let (fitted, _) = distill_layer(attn.clone(), layer, &fit, &held, d, &device)?;
                    block.attn.inner = Attention::Astrocytic(fitted);
                }
            }
            let loss = loss_of(&Net::Lm(swapped.clone()));
            eprintln!("{label} map, m = {m}: validation loss {loss:.4} (softmax {softmax_val_loss:.4})");
            val_loss.push((label.clone(), m, loss));
            for (layer, (q, k)) in qk.iter().enumerate() {
                let Attention::Astrocytic(attn) = &swapped.trunk.blocks[layer].attn.inner else {
                    unreachable!("every layer was swapped to astrocytic attention");
                };
                let trace = attn.normalisers(q.clone(), k.clone(), &mask);
                let (head_stats, series) = head_stats(trace, label, layer, m);
                stats.extend(head_stats);
                if layer == options.head.0 && m == figure_m {
                    let (zs, as_) = &series[options.head.1];
                    let t = seqs.block;
                    if figure.is_empty() {
                        figure.push(Series {
                            label: "softmax normaliser Z_t".into(),
                            points: (0..t).map(|i| (i as f64, zs[i])).collect(),
                            errors: None,
                        });
                    }
                    figure.push(Series {
                        label: format!("astrocyte response, {label} map, m = {m}"),
                        points: (0..t).map(|i| (i as f64, as_[i])).collect(),
                        errors: None,
                    });
                }
            }
        }
    }

    let layers = run.config.model.n_layer;
    let map_names: Vec<&str> = variants.iter().map(|v| v.0.as_str()).collect();
    let cell = |map: &str, layer: Option<usize>, m: usize, f: &dyn Fn(&HeadStat) -> f64| {
        mean_of(&stats, |s| s.map == map && s.m == m && layer.is_none_or(|l| s.layer == l), f)
    };
    let error_slope: Vec<(String, f64)> = map_names
        .iter()
        .map(|&map| {
            let pts: Vec<(f64, f64)> = options
                .features
                .iter()
                .filter(|&&m| stats.iter().any(|s| s.map == map && s.m == m))
                .map(|&m| (m as f64, cell(map, None, m, &|s| s.median_rel_err)))
                .collect();
            (map.to_string(), loglog_slope(&pts))
        })
        .collect();

    std::fs::create_dir_all(out).map_err(|e| EvalError::io("create", out, e))?;
    let mut files = Vec::new();
    // Tables.
    let mut csv = String::from("map,layer,head,m,pearson,median_rel_err\n");
    for s in &stats {
        csv.push_str(&format!("{},{},{},{},{:.6},{:.6}\n", s.map, s.layer, s.head, s.m, s.pearson, s.median_rel_err));
    }
    let csv_path = out.join("fidelity.csv");
    astro_data::fsutil::write_atomic(&csv_path, csv.as_bytes()).map_err(|e| EvalError::io("write", &csv_path, e))?;
    files.push(csv_path);
    let ms = options.features.iter().map(|m| format!(" m = {m} |")).collect::<String>();
    let rule = "---:|".repeat(options.features.len());
    let mut md = format!(
        "# Attention fidelity: {} swapped to astrocytic attention\n\nSame weights, no retraining; {} Ω, seed {}. Calibrated maps (saderf, shifted_saderf) fitted in closed form to the softmax model's queries and keys on {} training-split sequences; `distilled` is shifted_saderf with Ω, ψ and c then fitted to softmax's attention on the same sequences (a learned kernel: the scale of its a_t is not fitted, so compare its Pearson r and loss, not its relative error). Validation loss on {} batches of {}×{} tokens; normaliser statistics on {} validation sequences, every query of every head.\n\n## Validation loss (softmax: {:.4})\n\n| map |{ms}\n|---|{rule}\n",
        run.dir.display(),
        if options.orthogonal { "orthogonal" } else { "i.i.d." },
        options.seed,
        fit.batch,
        batches.len(),
        batch,
        block,
        seqs.batch,
        softmax_val_loss
    );
    for &map in &map_names {
        md.push_str(&format!("| {map} |"));
        for &m in &options.features {
            match val_loss.iter().find(|(n, mm, _)| n == map && *mm == m) {
                Some((_, _, l)) => md.push_str(&format!(" {l:.4} ({:+.3}) |", l - softmax_val_loss)),
                None => md.push_str(" — |"),
            }
        }
        md.push('\n');
    }
    md.push_str(&format!(
        "\n## Astrocyte response against softmax's normaliser\n\nMean over heads: Pearson r(a_t, Z_t) / median |a_t − Z_t| / Z_t.\n\n| map | layer |{ms} error slope |\n|---|---:|{rule}---:|\n"
    ));
    for (map, slope) in &error_slope {
        for layer in (0..layers).map(Some).chain([None]) {
            md.push_str(&format!("| {map} | {} |", layer.map_or("all".to_string(), |l| l.to_string())));
            for &m in &options.features {
                if stats.iter().any(|s| s.map == *map && s.m == m) {
                    md.push_str(&format!(
                        " {:.3} / {:.3} |",
                        cell(map, layer, m, &|s| s.pearson),
                        cell(map, layer, m, &|s| s.median_rel_err)
                    ));
                } else {
                    md.push_str(" — |");
                }
            }
            md.push_str(&if layer.is_none() { format!(" {slope:.3} |\n") } else { " |\n".to_string() });
        }
    }
    let md_path = out.join("fidelity.md");
    astro_data::fsutil::write_atomic(&md_path, md.as_bytes()).map_err(|e| EvalError::io("write", &md_path, e))?;
    files.push(md_path);
    // Plots.
    let (l, h) = options.head;
    // Z_t spans orders of magnitude along t; a log axis shows every query, where it can (the
    // positive maps give a_t > 0; others may not).
    let log_y = figure.iter().all(|s| s.points.iter().all(|p| p.1 > 0.0));
    let (png, svg) = plot::save(
        &Chart {
            title: format!("layer {l}, head {h}: softmax normaliser and astrocyte response, m = {figure_m}"),
            x_label: "query position t".into(),
            y_label: if log_y { "normaliser (log scale)".into() } else { "normaliser".into() },
            log_x: false,
            log_y,
            series: figure,
            references: vec![],
            y_range: None,
        },
        &out.join("normalisers"),
    )?;
    files.extend([png, svg]);
    let error_series = error_slope
        .iter()
        .map(|(map, slope)| Series {
            label: format!("{map} (slope {slope:.2})"),
            points: options
                .features
                .iter()
                .filter(|&&m| stats.iter().any(|s| &s.map == map && s.m == m))
                .map(|&m| (m as f64, cell(map, None, m, &|s| s.median_rel_err)))
                .collect(),
            errors: None,
        })
        .collect();
    let (png, svg) =
        save_error_chart("median relative error of the astrocyte response, mean over heads", error_series, out)?;
    files.extend([png, svg]);
    let (png, svg) = plot::save(
        &Chart {
            title: "validation loss after swapping softmax for astrocytic attention".into(),
            x_label: "hidden neurons m".into(),
            y_label: "validation loss".into(),
            log_x: true,
            log_y: false,
            series: map_names
                .iter()
                .map(|&map| Series {
                    label: format!("{map} (same weights)"),
                    points: val_loss.iter().filter(|(n, _, _)| n == map).map(|&(_, m, l)| (m as f64, l)).collect(),
                    errors: None,
                })
                .collect(),
            references: vec![("softmax".into(), softmax_val_loss)],
            y_range: None,
        },
        &out.join("loss_vs_m"),
    )?;
    files.extend([png, svg]);
    Ok(FidelityReport { run: run.dir.clone(), softmax_val_loss, val_loss, heads: stats, error_slope, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let pts: Vec<(f64, f64)> = [64.0, 256.0, 1024.0].iter().map(|&m: &f64| (m, 2.0 / m.sqrt())).collect();
        assert!((loglog_slope(&pts) + 0.5).abs() < 1e-12);
    }
}
