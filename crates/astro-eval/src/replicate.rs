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

use astro_model::attention::{AstrocyticConfig, AttentionConfig, AttentionMask, FeatureMap, InnerAttention};
use burn::tensor::{Device, Tensor};
use serde::Serialize;

use crate::bert::Bert;
use crate::error::EvalError;
use crate::fidelity::{HeadStat, loglog_slope, median, pearson, save_error_chart};
use crate::plot::{self, Chart, Series};

/// Settings of a replication.
#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    /// The text (its sentences are also embedded).
    pub text: String,
    /// Numbers of hidden neurons.
    pub features: Vec<usize>,
    /// Hidden-neuron map.
    pub feature_map: FeatureMap,
    /// Ω seed.
    pub seed: u64,
    /// (layer, head) of the figure, 0-based.
    pub head: (usize, usize),
}

/// Summary over all heads of one layer (or of the whole model, `layer = None`) at one m.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
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
    /// Log–log slope of the mean median relative error against m (whole model).
    pub error_slope: f64,
    /// (m, cosine similarity of each sentence's embedding with the original model's).
    pub embedding_cosine: Vec<(usize, Vec<f64>)>,
    /// The sentences embedded.
    pub sentences: Vec<String>,
    /// Files written.
    pub files: Vec<PathBuf>,
}

fn host<const D: usize>(x: Tensor<D>) -> Vec<f64> {
    x.into_data().try_into_vec_as::<f64>().unwrap_or_default()
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
    let (layers, heads, head_dim) = (config.n_layer, config.n_head, config.head_dim());
    if options.head.0 >= layers || options.head.1 >= heads {
        return Err(EvalError::Invalid(format!(
            "--head {},{} does not exist: the model has {layers} layers of {heads} heads (0-based)",
            options.head.0, options.head.1
        )));
    }
    let (tokens, pad) = bert.batch(std::slice::from_ref(&options.text), device)?;
    let t = tokens.dims()[1];
    let qk = bert.encoder.attention_inputs(tokens, Some(pad.clone()));
    let mask = AttentionMask::bidirectional().with_padding(pad);

    let mut stats = Vec::new();
    let mut figures: Vec<(usize, Vec<Series>)> = Vec::new();
    for &m in &options.features {
        let astro = AstrocyticConfig {
            features: m,
            feature_map: options.feature_map,
            seed: options.seed,
            ..AstrocyticConfig::default()
        };
        for (layer, (q, k)) in qk.iter().enumerate() {
            let attn = astro.init(heads, head_dim, layer, device);
            let trace = attn.normalisers(q.clone(), k.clone(), &mask);
            let z = host(trace.softmax_log); //                  [1,H,T] log Z_t
            let a = host(trace.astrocyte_log.expect("astrocytic traces carry a_t"));
            let sign = host(trace.astrocyte_sign.expect("astrocytic traces carry the sign"));
            for h in 0..heads {
                let zs: Vec<f64> = (0..t).map(|i| z[h * t + i].exp()).collect();
                let as_: Vec<f64> = (0..t).map(|i| sign[h * t + i] * a[h * t + i].exp()).collect();
                let rel: Vec<f64> = zs.iter().zip(&as_).map(|(z, a)| (a - z).abs() / z).collect();
                stats.push(HeadStat { layer, head: h, m, pearson: pearson(&as_, &zs), median_rel_err: median(rel) });
                if (layer, h) == options.head {
                    let series = |label: String, ys: &[f64]| Series {
                        label,
                        points: ys.iter().enumerate().map(|(i, &y)| (i as f64, y)).collect(),
                        errors: None,
                    };
                    figures.push((
                        m,
                        vec![
                            series("softmax normaliser Z_t".into(), &zs),
                            series(format!("astrocyte response a_t, m = {m}"), &as_),
                        ],
                    ));
                }
            }
        }
        eprintln!("m = {m}: normalisers of {layers} layers × {heads} heads compared");
    }
    let summarise = |m: usize, layer: Option<usize>| {
        let group: Vec<&HeadStat> = stats.iter().filter(|s| s.m == m && layer.is_none_or(|l| s.layer == l)).collect();
        let n = group.len().max(1) as f64;
        Summary {
            m,
            layer,
            mean_pearson: group.iter().map(|s| s.pearson).sum::<f64>() / n,
            mean_median_rel_err: group.iter().map(|s| s.median_rel_err).sum::<f64>() / n,
        }
    };
    let mut summary = Vec::new();
    for &m in &options.features {
        summary.extend((0..layers).map(|l| summarise(m, Some(l))));
        summary.push(summarise(m, None));
    }
    let overall: Vec<(f64, f64)> =
        summary.iter().filter(|s| s.layer.is_none()).map(|s| (s.m as f64, s.mean_median_rel_err)).collect();
    let error_slope = loglog_slope(&overall);

    // The whole-model swap: sentence embeddings against the original model's.
    let sentences = sentences(&options.text);
    let reference = bert.embed(&sentences, device)?;
    let mut embedding_cosine = Vec::new();
    for &m in &options.features {
        let astro = AttentionConfig::Astrocytic(AstrocyticConfig {
            features: m,
            feature_map: options.feature_map,
            seed: options.seed,
            ..AstrocyticConfig::default()
        });
        let swapped = Bert::load(dir, Some(astro), device)?;
        // One sentence at a time bounds the [1, H, T, m] activity at large m.
        let mut cosines = Vec::with_capacity(sentences.len());
        for (s, r) in sentences.iter().zip(&reference) {
            let e = swapped.embed(std::slice::from_ref(s), device)?;
            cosines.push(cosine(&e[0], r));
        }
        eprintln!(
            "m = {m}: every layer astrocytic, sentence-embedding cosine to the original: mean {:.4}",
            cosines.iter().sum::<f64>() / cosines.len() as f64
        );
        embedding_cosine.push((m, cosines));
    }

    let files = write_outputs(out, options, &stats, &summary, &figures, &embedding_cosine, layers, heads)?;
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

#[allow(clippy::too_many_arguments)]
fn write_outputs(
    out: &Path,
    options: &ReplicateOptions,
    stats: &[HeadStat],
    summary: &[Summary],
    figures: &[(usize, Vec<Series>)],
    embedding_cosine: &[(usize, Vec<f64>)],
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
    let mut csv = String::from("layer,head,m,pearson,median_rel_err\n");
    for s in stats {
        csv.push_str(&format!("{},{},{},{:.6},{:.6}\n", s.layer, s.head, s.m, s.pearson, s.median_rel_err));
    }
    write("replicate.csv", csv)?;
    let ms = || options.features.iter().map(|m| format!(" m = {m} |")).collect::<String>();
    let rule = || options.features.iter().map(|_| "---:|").collect::<String>();
    let mut md = format!(
        "# Astrocyte response against softmax's normaliser\n\n{} map, i.i.d. Ω, seed {}; every query of the text, every head. Cells: Pearson r / median |a − Z| / Z.\n\n| layer |{}\n|---:|{}\n",
        options.feature_map.name(),
        options.seed,
        ms(),
        rule()
    );
    let cell = |s: &Summary| format!(" {:.3} / {:.3} |", s.mean_pearson, s.mean_median_rel_err);
    for layer in 0..layers {
        md.push_str(&format!("| {layer} |"));
        for &m in &options.features {
            if let Some(s) = summary.iter().find(|s| s.m == m && s.layer == Some(layer)) {
                md.push_str(&cell(s));
            }
        }
        md.push('\n');
    }
    md.push_str("| all |");
    for &m in &options.features {
        if let Some(s) = summary.iter().find(|s| s.m == m && s.layer.is_none()) {
            md.push_str(&cell(s));
        }
    }
    let (l, h) = options.head;
    md.push_str(&format!(
        "\n\nLayer {l}, head {h} (0-based):\n\n| m | Pearson r | median rel. error |\n|---:|---:|---:|\n"
    ));
    for s in stats.iter().filter(|s| (s.layer, s.head) == (l, h)) {
        md.push_str(&format!("| {} | {:.4} | {:.4} |\n", s.m, s.pearson, s.median_rel_err));
    }
    md.push_str("\nWhole-model swap (every layer astrocytic, same weights): cosine similarity of sentence embeddings to the original model's.\n\n| m | mean | min |\n|---:|---:|---:|\n");
    for (m, c) in embedding_cosine {
        let mean = c.iter().sum::<f64>() / c.len().max(1) as f64;
        let min = c.iter().copied().fold(f64::INFINITY, f64::min);
        md.push_str(&format!("| {m} | {mean:.4} | {min:.4} |\n"));
    }
    md.push_str(&format!("\n{} heads per layer; per-head numbers in replicate.csv.\n", heads));
    write("replicate.md", md)?;
    for (m, series) in figures {
        let log_y = series.iter().all(|s| s.points.iter().all(|p| p.1 > 0.0));
        let (png, svg) = plot::save(
            &Chart {
                title: format!("layer {l}, head {h}: softmax normaliser and astrocyte response, m = {m}"),
                x_label: "query position t".into(),
                y_label: if log_y { "normaliser (log scale)".into() } else { "normaliser".into() },
                log_x: false,
                log_y,
                series: series.clone(),
                references: vec![],
            },
            &out.join(format!("normalisers_m{m}")),
        )?;
        files.extend([png, svg]);
    }
    let error_series = (0..layers)
        .map(|layer| Series {
            label: format!("layer {layer}"),
            points: summary
                .iter()
                .filter(|s| s.layer == Some(layer))
                .map(|s| (s.m as f64, s.mean_median_rel_err))
                .collect(),
            errors: None,
        })
        .collect();
    let (png, svg) =
        save_error_chart("median relative error of the astrocyte response (mean over heads)", error_series, out)?;
    files.extend([png, svg]);
    let (png, svg) = plot::save(
        &Chart {
            title: "sentence embeddings after swapping every attention layer".into(),
            x_label: "hidden neurons m".into(),
            y_label: "cosine similarity to the original".into(),
            log_x: true,
            log_y: false,
            series: vec![Series {
                label: "mean over sentences".into(),
                points: embedding_cosine
                    .iter()
                    .map(|(m, c)| (*m as f64, c.iter().sum::<f64>() / c.len().max(1) as f64))
                    .collect(),
                errors: None,
            }],
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
