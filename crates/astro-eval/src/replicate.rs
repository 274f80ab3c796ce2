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

use astro_train::distill::{DistillOptions, FitSchedule};

use crate::bert::Bert;
use crate::encoder_fit::{FitData, FitDataOptions};
use crate::error::EvalError;
use crate::fidelity::{DISTILL_MAX_FEATURES, HeadStat, head_stats, loglog_slope, mean_of, save_error_chart};
use crate::plot::{self, Chart, Series};
use crate::usefulness::{Agreement, EvalSet};

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
    /// How `fit_text` is used (lines, tokens per line, batch).
    pub fit_data: FitDataOptions,
    /// Held-out sentence sets on which the swapped encoders' embeddings are compared with the
    /// original's (cosine, pairwise-similarity Spearman, neighbour agreement).
    pub eval_sets: Vec<EvalSet>,
    /// Use ψ = 1 where a calibrated map's closed form is undefined, instead of failing.
    pub fallback: bool,
    /// Also distil an encoder per m (up to 4096) on the fitting lines, starting from this map's
    /// closed form (the row `distilled`).
    pub distill: Option<(FeatureMap, DistillOptions)>,
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
    /// (map, m, evaluation set, agreement with the original model on it).
    pub usefulness: Vec<(String, usize, String, Agreement)>,
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
pub fn sentences(text: &str) -> Vec<String> {
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
    // The original model (for a saved astrocytic encoder: the checkpoint it was made from).
    let bert = Bert::load_softmax(dir, device)?;
    let saved = astro_model::transformer::saved_attention(dir)?;
    let config = bert.encoder.config().clone();
    let (layers, heads) = (config.n_layer, config.n_head);
    if options.head.0 >= layers || options.head.1 >= heads {
        return Err(EvalError::Invalid(format!(
            "--head {},{} does not exist: the model has {layers} layers of {heads} heads (0-based)",
            options.head.0, options.head.1
        )));
    }
    if options.feature_maps.is_empty() && saved.is_none() {
        return Err(EvalError::Invalid("--feature-maps needs at least one map, e.g. positive,shifted_saderf".into()));
    }
    let (tokens, pad) = bert.batch(std::slice::from_ref(&options.text), device)?;
    let t = tokens.dims()[1];
    let qk = bert.encoder.attention_inputs(tokens, Some(pad.clone()));
    let mask = AttentionMask::bidirectional().with_padding(pad);
    /// What a row of the report is made from.
    enum Variant {
        /// A map with i.i.d. Ω (calibrated maps: closed form on the fitting lines).
        Map(FeatureMap),
        /// A map's closed form, then distilled on the fitting lines.
        Distilled(FeatureMap, DistillOptions),
        /// The directory's own saved astrocytes (one m).
        Saved(AstrocyticConfig),
    }
    let mut variants: Vec<(String, Variant)> =
        options.feature_maps.iter().map(|&m| (m.name().to_string(), Variant::Map(m))).collect();
    if let Some((map, d)) = options.distill.clone().filter(|(_, d)| d.steps > 0) {
        variants.push(("distilled".into(), Variant::Distilled(map, d)));
    }
    if let Some(AttentionConfig::Astrocytic(a)) = &saved {
        variants.push((format!("saved ({}, m = {})", a.feature_map.name(), a.features), Variant::Saved(a.clone())));
    }
    let needs_fit = variants.iter().any(|(_, v)| match v {
        Variant::Map(m) => m.is_calibrated(),
        Variant::Distilled(..) => true,
        Variant::Saved(_) => false,
    });
    // Fitting lines: held out from the text and the sentences embedded below.
    let fit = match (&options.fit_text, needs_fit) {
        (Some(text), true) => Some(FitData::new(&bert, text, &options.fit_data, device)?),
        (None, true) => {
            return Err(EvalError::Invalid(
                "the calibrated maps (saderf, shifted_saderf, full_saderf) and distillation need fitting text; \
                 give --fit FILE or a dataset name, or leave them out of --feature-maps"
                    .into(),
            ));
        }
        _ => None,
    };
    // One pass of the original model: every layer's query/key statistics, for every calibrated map and m.
    let stats = match &fit {
        Some(data) => {
            eprintln!(
                "fitting lines: {} ({} tokens), {} held out",
                data.fit_lines, data.fit_tokens, data.held_out_lines
            );
            crate::encoder_fit::layer_stats(&bert.encoder, data)?
        }
        None => Vec::new(),
    };
    let sentences = sentences(&options.text);
    // The swapped encoder at the largest m, one sentence (or batch of 16) at a time.
    let keys = astro_model::memory::KeyNames {
        model: "the checkpoint's ",
        batch: "sentences per batch",
        seq: "tokens per sentence",
        features: "--features",
    };
    let workload = astro_model::memory::Workload::Infer {
        batch: 16.max(options.fit_data.batch),
        seq: t.max(options.fit_data.max_tokens),
    };
    let m = options.features.iter().copied().max().unwrap_or(1);
    astro_model::memory::check_swapped(&config, m, workload, &keys, "this replication")
        .map_err(astro_model::ModelError::from)?;
    let reference = bert.embed(&sentences, device)?;
    let eval_reference: Vec<Vec<Vec<f32>>> = options
        .eval_sets
        .iter()
        .map(|set| crate::usefulness::embed_all(&bert, &set.sentences, device))
        .collect::<Result<_, _>>()?;

    let mut stats_out = Vec::new();
    let mut figures: Vec<(String, usize, Vec<Series>)> = Vec::new();
    let mut embedding_cosine = Vec::new();
    let mut usefulness = Vec::new();
    for (label, variant) in &variants {
        let ms: Vec<usize> = match variant {
            Variant::Saved(a) => vec![a.features],
            _ => options.features.clone(),
        };
        for m in ms {
            let astro = |map: FeatureMap| AstrocyticConfig {
                features: m,
                feature_map: map,
                seed: options.seed,
                ..AstrocyticConfig::default()
            };
            let swapped = match variant {
                Variant::Map(map) if map.is_calibrated() => {
                    let (encoder, _) =
                        crate::encoder_fit::calibrated(dir, &astro(*map), &stats, options.fallback, device)?;
                    Bert::with_encoder(dir, encoder)?
                }
                Variant::Map(map) => {
                    let attention = AttentionConfig::Astrocytic(astro(*map));
                    Bert::with_encoder(dir, astro_model::SentenceEncoder::from_hf_bert(dir, Some(attention), device)?)?
                }
                Variant::Distilled(map, d) => {
                    if m > DISTILL_MAX_FEATURES {
                        eprintln!(
                            "{label}: m = {m} skipped (distillation is offered up to m = {DISTILL_MAX_FEATURES})"
                        );
                        continue;
                    }
                    let data = fit.as_ref().expect("distillation has fitting data");
                    let (start, _) =
                        crate::encoder_fit::calibrated(dir, &astro(*map), &stats, options.fallback, device)?;
                    let schedule = FitSchedule { eval_every: 50, report_batches: 8 };
                    let (encoder, _) =
                        crate::encoder_fit::distill(&bert.encoder, start, data, d, &schedule, device, |l| {
                            eprintln!(
                                "distilled m = {m}, layer {}: held-out attention KL {:.4} → {:.4} (kept step {})",
                                l.layer, l.held_out_before, l.held_out_after, l.best_step
                            )
                        })?;
                    Bert::with_encoder(dir, encoder)?
                }
                Variant::Saved(_) => Bert::load(dir, None, device)?,
            };
            for (layer, (q, k)) in qk.iter().enumerate() {
                let Attention::Astrocytic(attn) = &swapped.encoder.trunk.blocks[layer].attn.inner else {
                    unreachable!("every layer was swapped to astrocytic attention");
                };
                let trace = attn.normalisers(q.clone(), k.clone(), &mask);
                let (head_stats, series) = head_stats(trace, label, layer, m);
                stats_out.extend(head_stats);
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
            for (set, reference) in options.eval_sets.iter().zip(&eval_reference) {
                let embedded = crate::usefulness::embed_all(&swapped, &set.sentences, device)?;
                let a = crate::usefulness::agreement(reference, &embedded);
                eprintln!(
                    "  {}: cosine {:.4} (min {:.4}), Spearman {:.4}, top-1 {:.3}, top-5 {:.3}",
                    set.name, a.mean_cosine, a.min_cosine, a.spearman, a.top1, a.top5
                );
                usefulness.push((label.clone(), m, set.name.clone(), a));
            }
        }
    }
    let stats = stats_out;
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
    for (label, _) in &variants {
        let mut ms: Vec<usize> = stats.iter().filter(|s| &s.map == label).map(|s| s.m).collect();
        ms.dedup();
        for m in ms {
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
        fit.as_ref().map_or(0, |d| d.fit_lines),
        &stats,
        &summary,
        &figures,
        &embedding_cosine,
        &usefulness,
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
        usefulness,
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
    usefulness: &[(String, usize, String, Agreement)],
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
        "# Astrocyte response against softmax's normaliser\n\ni.i.d. Ω, seed {}; every query of the text, every head. Calibrated maps (saderf, shifted_saderf, full_saderf) fitted in closed form to the original model's queries and keys on {fit_sentences} held-out lines; `distilled` starts from a map's closed form, with Ω, ψ, c (and U) then fitted to softmax's attention on those lines (early stopping on a tenth of them) (a learned kernel: its a_t's scale is not fitted, compare Pearson r and the embeddings). Cells: Pearson r / median |a − Z| / Z, mean over heads.\n\n| map | layer |{ms} error slope |\n|---|---:|{rule}---:|\n",
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
    if !usefulness.is_empty() {
        md.push_str(
            "\nHeld-out sentences (never used for fitting): agreement of the swapped encoder's embeddings with the original's — \
             mean / min cosine per sentence, Spearman ρ between the two models' cosine similarities over all sentence pairs, \
             nearest-neighbour agreement (top-1: same nearest neighbour; top-5: overlap of the 5 nearest, as a fraction).\n\n\
             | map | m | text | sentences | cosine mean | min | Spearman | top-1 | top-5 |\n|---|---:|---|---:|---:|---:|---:|---:|---:|\n"
        );
        let mut csv = String::from("map,m,text,sentences,mean_cosine,min_cosine,spearman,top1,top5\n");
        for (map, m, set, a) in usefulness {
            let n = options.eval_sets.iter().find(|s| &s.name == set).map_or(0, |s| s.sentences.len());
            md.push_str(&format!(
                "| {map} | {m} | {set} | {n} | {:.4} | {:.4} | {:.4} | {:.3} | {:.3} |\n",
                a.mean_cosine, a.min_cosine, a.spearman, a.top1, a.top5
            ));
            csv.push_str(&format!(
                "{map},{m},{set},{n},{:.6},{:.6},{:.6},{:.4},{:.4}\n",
                a.mean_cosine, a.min_cosine, a.spearman, a.top1, a.top5
            ));
        }
        write("usefulness.csv", csv)?;
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
                y_range: None,
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
            y_range: None,
        },
        &out.join("cosine_vs_m"),
    )?;
    files.extend([png, svg]);
    if !usefulness.is_empty() {
        // Per map and text: the held-out Spearman ρ and mean cosine against m.
        let mut series = Vec::new();
        for (map, _) in error_slope {
            for set in &options.eval_sets {
                for (what, pick) in [("Spearman", 0usize), ("cosine", 1)] {
                    let points: Vec<(f64, f64)> = usefulness
                        .iter()
                        .filter(|(n, _, s, _)| n == map && s == &set.name)
                        .map(|(_, m, _, a)| (*m as f64, if pick == 0 { a.spearman } else { a.mean_cosine }))
                        .collect();
                    if !points.is_empty() {
                        series.push(Series { label: format!("{map}, {}, {what}", set.name), points, errors: None });
                    }
                }
            }
        }
        let (png, svg) = plot::save(
            &Chart {
                title: "held-out sentences: swapped encoder against the original".into(),
                x_label: "hidden neurons m".into(),
                y_label: "Spearman ρ of pairwise similarities / mean cosine".into(),
                log_x: true,
                log_y: false,
                series,
                references: vec![],
                y_range: None,
            },
            &out.join("usefulness_vs_m"),
        )?;
        files.extend([png, svg]);
    }
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
