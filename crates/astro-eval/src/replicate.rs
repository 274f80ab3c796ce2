//! `astro replicate`: the paper's experiment on a real pretrained encoder, with numbers.
//!
//! A Hugging Face BERT checkpoint keeps its weights. On one text, for every layer and head and every
//! query t, softmax's normaliser Z_t = Σ_τ exp(q_t·k_τ/√D) is compared with the astrocyte response
//! a_t = pᵀφ(q̃_t) of m hidden neurons (fixed Ω seed), both on the model's own queries and keys:
//! Pearson correlation and median relative error per (layer, head, m), summaries over heads, the
//! paper-style figure for one head (one chart per m). Then every attention layer is swapped for
//! astrocytic attention with the same weights, and the sentence embeddings are compared with the
//! original model's (cosine similarity) against m.

use std::path::{Path, PathBuf};

use astro_model::attention::{AstrocyticConfig, Attention, AttentionConfig, AttentionMask, FeatureMap, InnerAttention};
use burn::tensor::Device;
use serde::Serialize;

use astro_train::distill::{AttentionInputs, DistillOptions, distill_layer};

use crate::bert::Bert;
use crate::error::EvalError;
use crate::fidelity::{DISTILL_MAX_FEATURES, HeadStat, head_stats, loglog_slope, mean_of, save_error_chart};
use crate::plot::{self, Chart, Series};

/// Settings of a replication.
#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    /// The text (its sentences are also embedded).
    pub text: String,
    /// Numbers of hidden neurons.
    pub features: Vec<usize>,
    /// Hidden-neuron maps compared side by side.
    pub feature_maps: Vec<FeatureMap>,
    /// Text the calibrated maps are fitted on (held out from `text`); its lines of ≥ 20 characters.
    pub fit_text: Option<String>,
    /// Lines of `fit_text` used.
    pub fit_sentences: usize,
    /// Use ψ = 1 where a calibrated map's closed form is undefined, instead of failing.
    pub fallback: bool,
    /// Also distil a shifted-SADERF encoder per m on the fitting lines (the map `distilled`).
    pub distill: Option<DistillOptions>,
    /// Ω seed.
    pub seed: u64,
    /// (layer, head) of the figure, 0-based.
    pub head: (usize, usize),
}

/// Summary over all heads of one layer (or of the whole model, `layer = None`) at one (map, m).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Hidden-neuron map.
    pub map: String,
    /// Hidden neurons.
    pub m: usize,
    /// Block index; `None` for all blocks together.
    pub layer: Option<usize>,
    /// Mean over heads of the Pearson correlation.
    pub mean_pearson: f64,
    /// Mean over heads of the median relative error.
    pub mean_median_rel_err: f64,
}

/// The report (`--json` prints it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicateReport {
    /// The checkpoint directory.
    pub model: PathBuf,
    /// Tokens of the text (with [CLS] and [SEP]).
    pub tokens: usize,
    /// Per (layer, head, m).
    pub heads: Vec<HeadStat>,
    /// Per (m, layer) and per m over the whole model.
    pub summary: Vec<Summary>,
    /// (map, log–log slope of the mean median relative error against m, whole model).
    pub error_slope: Vec<(String, f64)>,
    /// (map, m, cosine similarity of each sentence's embedding with the original model's).
    pub embedding_cosine: Vec<(String, usize, Vec<f64>)>,
    /// The sentences embedded.
    pub sentences: Vec<String>,
    /// Files written.
    pub files: Vec<PathBuf>,
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-300)
}

/// The text's sentences (split after `.`, `!`, `?`), at least one.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if matches!(c, '.' | '!' | '?') && current.trim().len() > 1 {
            out.push(current.trim().to_string());
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    if out.is_empty() {
        out.push(text.trim().to_string());
    }
    out
}

/// Runs the replication on the checkpoint in `dir`, writing tables and plots to `out`.
pub fn run(dir: &Path, options: &ReplicateOptions, out: &Path, device: &Device) -> Result<ReplicateReport, EvalError> {
    if options.features.is_empty() || options.features.contains(&0) {
        return Err(EvalError::Invalid("--features needs positive numbers of hidden neurons, e.g. 1000,10000".into()));
    }
    if options.text.trim().is_empty() {
        return Err(EvalError::Invalid("the text is empty; give --text or --file".into()));
    }
    let bert = Bert::load(dir, None, device)?;
    let config = bert.encoder.config().clone();
    let (layers, heads) = (config.n_layer, config.n_head);
    if options.head.0 >= layers || options.head.1 >= heads {
        return Err(EvalError::Invalid(format!(
            "--head {},{} does not exist: the model has {layers} layers of {heads} heads (0-based)",
            options.head.0, options.head.1
        )));
    }
    if options.feature_maps.is_empty() {
        return Err(EvalError::Invalid("--feature-maps needs at least one map, e.g. positive,shifted_saderf".into()));
    }
    let (tokens, pad) = bert.batch(std::slice::from_ref(&options.text), device)?;
    let t = tokens.dims()[1];
    let qk = bert.encoder.attention_inputs(tokens, Some(pad.clone()));
    let mask = AttentionMask::bidirectional().with_padding(pad);
    // Calibration sentences: held out from the text and from the sentences embedded below.
    let fit: Vec<String> = match &options.fit_text {
        Some(text) => fit_lines(text, options.fit_sentences),
        None => Vec::new(),
    };
    let distill = options.distill.clone().filter(|d| d.steps > 0);
    let mut variants: Vec<(String, FeatureMap, bool)> =
        options.feature_maps.iter().map(|&m| (m.name().to_string(), m, false)).collect();
    if distill.is_some() {
        variants.push(("distilled".into(), FeatureMap::ShiftedSaderf, true));
    }
    let needs_fit = variants.iter().any(|v| v.1.is_calibrated());
    if needs_fit && fit.is_empty() {
        return Err(EvalError::Invalid(
            "the calibrated maps (saderf, shifted_saderf) need fitting text with lines of at least 20 characters; \
             give --fit FILE or a dataset name, or leave them out of --feature-maps"
                .into(),
        ));
    }
    let fit_batch = if needs_fit { Some(bert.batch(&fit, device)?) } else { None };
    // The original model's queries and keys on the fitting lines: calibrated maps are fitted to
    // their statistics (no pass through m hidden neurons), distilled layers to its attention.
    let teacher_fit: Vec<(burn::tensor::Tensor<4>, burn::tensor::Tensor<4>)> = match &fit_batch {
        Some((tokens, pad)) => bert.encoder.attention_inputs(tokens.clone(), Some(pad.clone())),
        None => Vec::new(),
    };
    let fit_mask = fit_batch.as_ref().map(|(_, pad)| AttentionMask::bidirectional().with_padding(pad.clone()));
    let sentences = sentences(&options.text);
    // The swapped encoder at the largest m, over the fitting lines or the sentences.
    let keys = astro_model::memory::KeyNames {
        model: "the checkpoint's ",
        batch: "sentences per batch",
        seq: "tokens per sentence",
        features: "--features",
    };
    let fit_seq = fit_batch.as_ref().map_or(0, |(tokens, _)| tokens.dims()[1]);
    let workload =
        astro_model::memory::Workload::Infer { batch: fit.len().max(sentences.len()).max(1), seq: t.max(fit_seq) };
    let m = options.features.iter().copied().max().unwrap_or(1);
    astro_model::memory::check_swapped(&config, m, workload, &keys, "this replication")
        .map_err(astro_model::ModelError::from)?;
    let reference = bert.embed(&sentences, device)?;

    let mut stats = Vec::new();
    let mut figures: Vec<(String, usize, Vec<Series>)> = Vec::new();
    let mut embedding_cosine = Vec::new();
    for (label, map, distilled) in &variants {
        let map = *map;
        for &m in &options.features {
            if *distilled && m > DISTILL_MAX_FEATURES {
                eprintln!("{label}: m = {m} skipped (distillation is offered up to m = {DISTILL_MAX_FEATURES})");
                continue;
            }
            let astro = AttentionConfig::Astrocytic(AstrocyticConfig {
                features: m,
                feature_map: map,
                seed: options.seed,
                ..AstrocyticConfig::default()
            });
            let mut swapped = Bert::load(dir, Some(astro), device)?;
            if let Some((_, fit_pad)) = &fit_batch {
                let (trunk, _) = swapped.encoder.trunk.calibrate_from_inputs(
                    &teacher_fit,
                    Some(fit_pad.clone()),
                    options.fallback,
                )?;
                swapped.encoder.trunk = trunk;
            }
            if let (true, Some(d), Some(fit_mask)) = (*distilled, &distill, &fit_mask) {
                for (layer, ((fq, fk), (hq, hk))) in teacher_fit.iter().zip(&qk).enumerate() {
                    let block = &mut swapped.encoder.trunk.blocks[layer];
                    let Attention::Astrocytic(attn) = &block.attn.inner else {
                        unreachable!("every layer was swapped to astrocytic attention");
                    };
                    let fit = AttentionInputs { q: fq.clone(), k: fk.clone(), mask: fit_mask.clone() };
                    let held = AttentionInputs { q: hq.clone(), k: hk.clone(), mask: mask.clone() };
                    let (fitted, report) = distill_layer(attn.clone(), layer, &fit, &held, d, device)?;
                    eprintln!(
                        "distilled m = {m}, layer {layer}: attention KL {:.4} → {:.4} on fitting lines, {:.4} → {:.4} on the text",
                        report.fit_before, report.fit_after, report.held_out_before, report.held_out_after
                    );
                    block.attn.inner = Attention::Astrocytic(fitted);
                }
            }
            for (layer, (q, k)) in qk.iter().enumerate() {
                let Attention::Astrocytic(attn) = &swapped.encoder.trunk.blocks[layer].attn.inner else {
                    unreachable!("every layer was swapped to astrocytic attention");
                };
                let trace = attn.normalisers(q.clone(), k.clone(), &mask);
                let (head_stats, series) = head_stats(trace, label, layer, m);
                stats.extend(head_stats);
                if layer == options.head.0 {
                    let (zs, as_) = &series[options.head.1];
                    let line = |label: String, ys: &[f64]| Series {
                        label,
                        points: ys.iter().enumerate().map(|(i, &y)| (i as f64, y)).collect(),
                        errors: None,
                    };
                    figures.push((
                        label.clone(),
                        m,
                        vec![
                            line("softmax normaliser Z_t".into(), zs),
                            line(format!("astrocyte response a_t, {label} map, m = {m}"), as_),
                        ],
                    ));
                }
            }
            // The whole-model swap: sentence embeddings against the original model's. One sentence
            // at a time bounds the [1, H, T, m] activity at large m.
            let mut cosines = Vec::with_capacity(sentences.len());
            for (s, r) in sentences.iter().zip(&reference) {
                let e = swapped.embed(std::slice::from_ref(s), device)?;
                cosines.push(cosine(&e[0], r));
            }
            eprintln!(
                "{label} map, m = {m}: {layers} layers × {heads} heads compared; every layer swapped, sentence-embedding cosine {:.4}",
                cosines.iter().sum::<f64>() / cosines.len() as f64
            );
            embedding_cosine.push((label.clone(), m, cosines));
        }
    }
    let summarise = |map: &str, m: usize, layer: Option<usize>| Summary {
        map: map.to_string(),
        m,
        layer,
        mean_pearson: mean_of(
            &stats,
            |s| s.map == map && s.m == m && layer.is_none_or(|l| s.layer == l),
            |s| s.pearson,
        ),
        mean_median_rel_err: mean_of(
            &stats,
            |s| s.map == map && s.m == m && layer.is_none_or(|l| s.layer == l),
            |s| s.median_rel_err,
        ),
    };
    let mut summary = Vec::new();
    let mut error_slope = Vec::new();
    for (label, _, _) in &variants {
        for &m in &options.features {
            if !stats.iter().any(|s| &s.map == label && s.m == m) {
                continue;
            }
            summary.extend((0..layers).map(|l| summarise(label, m, Some(l))));
            summary.push(summarise(label, m, None));
        }
        let overall: Vec<(f64, f64)> = summary
            .iter()
            .filter(|s| s.layer.is_none() && &s.map == label)
            .map(|s| (s.m as f64, s.mean_median_rel_err))
            .collect();
        error_slope.push((label.clone(), loglog_slope(&overall)));
    }

    let files = write_outputs(
        out,
        options,
        fit.len(),
        &stats,
        &summary,
        &figures,
        &embedding_cosine,
        &error_slope,
        layers,
        heads,
    )?;
    Ok(ReplicateReport {
        model: dir.to_path_buf(),
        tokens: t,
        heads: stats,
        summary,
        error_slope,
        embedding_cosine,
        sentences,
        files,
    })
}

/// Up to `n` lines of `text` with at least 20 characters (headings like ` = Title = ` skipped).
pub fn fit_lines(text: &str, n: usize) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.chars().count() >= 20 && !l.starts_with('='))
        .take(n)
        .map(|l| l.chars().take(600).collect())
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn write_outputs(
    out: &Path,
    options: &ReplicateOptions,
    fit_sentences: usize,
    stats: &[HeadStat],
    summary: &[Summary],
    figures: &[(String, usize, Vec<Series>)],
    embedding_cosine: &[(String, usize, Vec<f64>)],
    error_slope: &[(String, f64)],
    layers: usize,
    heads: usize,
) -> Result<Vec<PathBuf>, EvalError> {
    std::fs::create_dir_all(out).map_err(|e| EvalError::io("create", out, e))?;
    let mut files = Vec::new();
    let mut write = |name: &str, text: String| -> Result<(), EvalError> {
        let path = out.join(name);
        astro_data::fsutil::write_atomic(&path, text.as_bytes()).map_err(|e| EvalError::io("write", &path, e))?;
        files.push(path);
        Ok(())
    };
    let mut csv = String::from("map,layer,head,m,pearson,median_rel_err\n");
    for s in stats {
        csv.push_str(&format!("{},{},{},{},{:.6},{:.6}\n", s.map, s.layer, s.head, s.m, s.pearson, s.median_rel_err));
    }
    write("replicate.csv", csv)?;
    let ms = options.features.iter().map(|m| format!(" m = {m} |")).collect::<String>();
    let rule = options.features.iter().map(|_| "---:|").collect::<String>();
    let mut md = format!(
        "# Astrocyte response against softmax's normaliser\n\ni.i.d. Ω, seed {}; every query of the text, every head. Calibrated maps (saderf, shifted_saderf) fitted in closed form to the original model's queries and keys on {fit_sentences} held-out lines; `distilled` is shifted_saderf with Ω, ψ and c then fitted to softmax's attention on those lines (a learned kernel: its a_t's scale is not fitted, compare Pearson r and the embeddings). Cells: Pearson r / median |a − Z| / Z, mean over heads.\n\n| map | layer |{ms} error slope |\n|---|---:|{rule}---:|\n",
        options.seed,
    );
    for (map, slope) in error_slope {
        for layer in (0..layers).map(Some).chain([None]) {
            md.push_str(&format!("| {map} | {} |", layer.map_or("all".into(), |l| l.to_string())));
            for &m in &options.features {
                match summary.iter().find(|s| &s.map == map && s.m == m && s.layer == layer) {
                    Some(s) => md.push_str(&format!(" {:.3} / {:.3} |", s.mean_pearson, s.mean_median_rel_err)),
                    None => md.push_str(" — |"),
                }
            }
            md.push_str(&if layer.is_none() { format!(" {slope:.3} |\n") } else { " |\n".into() });
        }
    }
    let (l, h) = options.head;
    md.push_str(&format!(
        "\nLayer {l}, head {h} (0-based):\n\n| map | m | Pearson r | median rel. error |\n|---|---:|---:|---:|\n"
    ));
    for s in stats.iter().filter(|s| (s.layer, s.head) == (l, h)) {
        md.push_str(&format!("| {} | {} | {:.4} | {:.4} |\n", s.map, s.m, s.pearson, s.median_rel_err));
    }
    md.push_str(&format!(
        "\nWhole-model swap (every layer astrocytic, same weights): cosine similarity of the {} sentence embeddings to the original model's.\n\n| map | m | mean | min |\n|---|---:|---:|---:|\n",
        embedding_cosine.first().map_or(0, |e| e.2.len())
    ));
    for (map, m, c) in embedding_cosine {
        let mean = c.iter().sum::<f64>() / c.len().max(1) as f64;
        let min = c.iter().copied().fold(f64::INFINITY, f64::min);
        md.push_str(&format!("| {map} | {m} | {mean:.4} | {min:.4} |\n"));
    }
    md.push_str(&format!("\n{heads} heads per layer; per-head numbers in replicate.csv.\n"));
    write("replicate.md", md)?;
    for (map, m, series) in figures {
        let log_y = series.iter().all(|s| s.points.iter().all(|p| p.1 > 0.0));
        let (png, svg) = plot::save(
            &Chart {
                title: format!("layer {l}, head {h}: softmax normaliser and astrocyte response, {map}, m = {m}"),
                x_label: "query position t".into(),
                y_label: if log_y { "normaliser (log scale)".into() } else { "normaliser".into() },
                log_x: false,
                log_y,
                series: series.clone(),
                references: vec![],
            },
            &out.join(format!("normalisers_{map}_m{m}")),
        )?;
        files.extend([png, svg]);
    }
    let error_series = error_slope
        .iter()
        .map(|(map, slope)| Series {
            label: format!("{map} (slope {slope:.2})"),
            points: summary
                .iter()
                .filter(|s| &s.map == map && s.layer.is_none())
                .map(|s| (s.m as f64, s.mean_median_rel_err))
                .collect(),
            errors: None,
        })
        .collect();
    let (png, svg) =
        save_error_chart("median relative error of the astrocyte response, mean over heads", error_series, out)?;
    files.extend([png, svg]);
    let (png, svg) = plot::save(
        &Chart {
            title: "sentence embeddings after swapping every attention layer".into(),
            x_label: "hidden neurons m".into(),
            y_label: "cosine similarity to the original".into(),
            log_x: true,
            log_y: false,
            series: error_slope
                .iter()
                .map(|(map, _)| Series {
                    label: format!("{map}, mean over sentences"),
                    points: embedding_cosine
                        .iter()
                        .filter(|(n, _, _)| n == map)
                        .map(|(_, m, c)| (*m as f64, c.iter().sum::<f64>() / c.len().max(1) as f64))
                        .collect(),
                    errors: None,
                })
                .collect(),
            references: vec![],
        },
        &out.join("cosine_vs_m"),
    )?;
    files.extend([png, svg]);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sentences() {
        assert_eq!(sentences("One. Two? Three"), vec!["One.", "Two?", "Three"]);
        assert_eq!(sentences("no stop"), vec!["no stop"]);
        assert_eq!(cosine(&[1.0, 0.0], &[2.0, 0.0]), 1.0);
    }
}
