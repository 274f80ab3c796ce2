//! Turning a pretrained BERT encoder into an astrocytic one on a real corpus, and keeping it.
//!
//! The fitting text's lines (≥ 20 characters, headings skipped) are tokenised, truncated to
//! `max_tokens`, sorted by length and batched; every `held_out_every`-th line is held out. One pass
//! of the original (softmax) model gathers every layer's query and key statistics over all fitting
//! lines ([`layer_stats`]), from which the calibrated maps take their closed form for any m
//! ([`calibrated`]). Distillation ([`distill`]) then walks the original model block by block, fits
//! each astrocytic layer's Ω, ψ, c (and U) to softmax's attention on the fitting batches, and keeps
//! the step with the lowest held-out attention KL (early stopping). [`save`] writes the result
//! beside a copy of the checkpoint's files, atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use astro_model::SentenceEncoder;
use astro_model::attention::calibration::HeadStats;
use astro_model::attention::{AstrocyticAttention, AstrocyticConfig, Attention, AttentionConfig, AttentionMask};
use astro_model::transformer::{ASTRO_CONFIG_FILE, ASTROCYTES_FILE, AstroEncoderFile, saved_attention};
use astro_train::distill::{AttentionInputs, DistillOptions, FitSchedule, LayerFit, distill_layer_batches};
use burn::tensor::{Bool, Device, Int, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::bert::Bert;
use crate::error::EvalError;

/// How the fitting text is cut into batches.
#[derive(Debug, Clone)]
pub struct FitDataOptions {
    /// Use at most this many lines (`None`: all).
    pub lines: Option<usize>,
    /// Tokens per line at most (with `[CLS]` and `[SEP]`).
    pub max_tokens: usize,
    /// Lines per batch.
    pub batch: usize,
    /// Every this-many-th line is held out (early stopping and the held-out KL).
    pub held_out_every: usize,
}

impl Default for FitDataOptions {
    fn default() -> Self {
        Self { lines: None, max_tokens: 64, batch: 8, held_out_every: 10 }
    }
}

/// One batch of lines: token ids `[batch, seq]` and padding `[batch, seq]`.
#[derive(Debug, Clone)]
pub struct LineBatch {
    /// Token ids.
    pub tokens: Tensor<2, Int>,
    /// True at padding.
    pub padding: Tensor<2, Bool>,
}

impl LineBatch {
    fn mask(&self) -> AttentionMask {
        AttentionMask::bidirectional().with_padding(self.padding.clone())
    }
}

/// The fitting text, tokenised and batched.
#[derive(Debug, Clone)]
pub struct FitData {
    /// Batches the maps are fitted on.
    pub fit: Vec<LineBatch>,
    /// Held-out batches (early stopping, held-out KL).
    pub held_out: Vec<LineBatch>,
    /// Lines in `fit`.
    pub fit_lines: usize,
    /// Lines in `held_out`.
    pub held_out_lines: usize,
    /// Non-padding tokens in `fit`.
    pub fit_tokens: usize,
}

impl FitData {
    /// Cuts `text` for `bert` (its tokenizer) as `options` say. A text without a usable line is an
    /// error that says so.
    pub fn new(bert: &Bert, text: &str, options: &FitDataOptions, device: &Device) -> Result<Self, EvalError> {
        if options.batch == 0 || options.held_out_every < 2 {
            return Err(EvalError::Invalid(
                "the fitting batch needs at least 1 line and held_out_every at least 2".into(),
            ));
        }
        let lines = crate::replicate::fit_lines(text, options.lines.unwrap_or(usize::MAX));
        let mut fit_rows = Vec::new();
        let mut held_rows = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let ids = bert.tokens_up_to(line, options.max_tokens)?;
            if ids.len() <= 2 {
                continue; // only [CLS] [SEP]
            }
            if i % options.held_out_every == options.held_out_every - 1 {
                held_rows.push(ids);
            } else {
                fit_rows.push(ids);
            }
        }
        if fit_rows.is_empty() || held_rows.is_empty() {
            return Err(EvalError::Invalid(format!(
                "the fitting text gave {} usable lines (lines of at least 20 characters that tokenise to something); \
                 fitting needs at least {} — give a longer --fit text",
                fit_rows.len() + held_rows.len(),
                options.held_out_every
            )));
        }
        let batches = |mut rows: Vec<Vec<u32>>| -> Vec<LineBatch> {
            // Similar lengths together (less padding), then the batches in a fixed shuffled order so
            // that every stretch of steps sees every length.
            rows.sort_by_key(Vec::len);
            let mut chunks: Vec<&[Vec<u32>]> = rows.chunks(options.batch).collect();
            chunks.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0xf17));
            chunks
                .into_iter()
                .map(|chunk| {
                    let (tokens, padding) = bert.padded(chunk, device);
                    LineBatch { tokens, padding }
                })
                .collect()
        };
        let fit_tokens = fit_rows.iter().map(Vec::len).sum();
        let (fit_lines, held_out_lines) = (fit_rows.len(), held_rows.len());
        Ok(Self { fit: batches(fit_rows), held_out: batches(held_rows), fit_lines, held_out_lines, fit_tokens })
    }
}

/// Per layer, per head: the statistics of the original model's queries and keys over every fitting
/// batch (one forward pass of `teacher`, block by block).
pub fn layer_stats(teacher: &SentenceEncoder, data: &FitData) -> Result<Vec<Vec<HeadStats>>, EvalError> {
    let layers = teacher.config().n_layer;
    let mut stats = vec![Vec::new(); layers];
    for batch in &data.fit {
        let mask = batch.mask();
        let mut x = teacher.trunk.embed_input(batch.tokens.clone()); // [B,T,d]
        for (layer, layer_stats) in stats.iter_mut().enumerate() {
            let (q, k) = teacher.trunk.block_queries_keys(layer, x.clone()); // [B,H,T,D] each
            AstrocyticAttention::accumulate(layer_stats, q, k, Some(batch.padding.clone()), layer)
                .map_err(astro_model::ModelError::from)?;
            x = teacher.trunk.block_forward(layer, x, &mask);
        }
    }
    Ok(stats)
}

/// The checkpoint in `dir` with `astro` in every layer, calibrated maps set in closed form from
/// `stats` (other maps as drawn). Returns it and the number of fallbacks to ψ = 1.
pub fn calibrated(
    dir: &Path,
    astro: &AstrocyticConfig,
    stats: &[Vec<HeadStats>],
    fallback: bool,
    device: &Device,
) -> Result<(SentenceEncoder, usize), EvalError> {
    let mut encoder = SentenceEncoder::from_hf_bert(dir, Some(AttentionConfig::Astrocytic(astro.clone())), device)?;
    let mut fallbacks = 0;
    for (layer, block) in encoder.trunk.blocks.iter_mut().enumerate() {
        let Attention::Astrocytic(attn) = &block.attn.inner else {
            unreachable!("every layer was swapped to astrocytic attention");
        };
        let (fitted, n) =
            attn.clone().calibrate_from(&stats[layer], layer, fallback).map_err(astro_model::ModelError::from)?;
        fallbacks += n;
        block.attn.inner = Attention::Astrocytic(fitted);
    }
    Ok((encoder, fallbacks))
}

/// Fits every astrocytic layer of `student` to `teacher`'s attention on `data` (Adam as
/// `options` says, early stopping every `eval_every` steps on the held-out lines; the KLs are
/// measured on up to `report_batches` batches of each set). `progress` hears each layer's result.
pub fn distill(
    teacher: &SentenceEncoder,
    mut student: SentenceEncoder,
    data: &FitData,
    options: &DistillOptions,
    schedule: &FitSchedule,
    device: &Device,
    mut progress: impl FnMut(&LayerFit),
) -> Result<(SentenceEncoder, Vec<LayerFit>), EvalError> {
    let embed = |batches: &[LineBatch]| -> Vec<Tensor<3>> {
        batches.iter().map(|b| teacher.trunk.embed_input(b.tokens.clone())).collect()
    };
    let (mut fit_x, mut held_x) = (embed(&data.fit), embed(&data.held_out));
    let mut reports = Vec::new();
    for layer in 0..teacher.config().n_layer {
        let inputs = |xs: &[Tensor<3>], batches: &[LineBatch]| -> Vec<AttentionInputs> {
            xs.iter()
                .zip(batches)
                .map(|(x, b)| {
                    let (q, k) = teacher.trunk.block_queries_keys(layer, x.clone());
                    AttentionInputs { q, k, mask: b.mask() }
                })
                .collect()
        };
        let (fit, held) = (inputs(&fit_x, &data.fit), inputs(&held_x, &data.held_out));
        let block = &mut student.trunk.blocks[layer];
        let Attention::Astrocytic(attn) = &block.attn.inner else {
            return Err(EvalError::Invalid("distillation needs astrocytic attention in every layer".into()));
        };
        let (fitted, report) = distill_layer_batches(attn.clone(), layer, &fit, &held, options, schedule, device)?;
        progress(&report);
        block.attn.inner = Attention::Astrocytic(fitted);
        reports.push(report);
        let advance = |xs: Vec<Tensor<3>>, batches: &[LineBatch]| -> Vec<Tensor<3>> {
            xs.into_iter().zip(batches).map(|(x, b)| teacher.trunk.block_forward(layer, x, &b.mask())).collect()
        };
        fit_x = advance(fit_x, &data.fit);
        held_x = advance(held_x, &data.held_out);
    }
    Ok((student, reports))
}

/// What `astro distill --model <BERT dir>` did (`distill.json` in the output).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncoderDistillReport {
    /// The checkpoint distilled.
    pub source: PathBuf,
    /// Where it was written.
    pub out: PathBuf,
    /// Hidden neurons m.
    pub features: usize,
    /// The map.
    pub feature_map: String,
    /// The fitting text.
    pub fit: String,
    /// Lines fitted on / held out.
    pub fit_lines: usize,
    /// Held-out lines.
    pub held_out_lines: usize,
    /// Adam steps per layer.
    pub steps: usize,
    /// Per layer, attention KL before and after on fitting and held-out lines.
    pub layers: Vec<LayerFit>,
    /// Seconds spent (statistics, calibration and distillation).
    pub seconds: f64,
}

/// Fails if `out` exists (a saved encoder is never written over).
pub fn check_out(out: &Path) -> Result<(), EvalError> {
    if out.exists() {
        return Err(EvalError::Invalid(format!(
            "{} already exists; choose another --out (nothing was written)",
            out.display()
        )));
    }
    Ok(())
}

/// Fails unless `dir` is a plain BERT checkpoint (not already an astrocytic encoder).
pub fn check_source(dir: &Path) -> Result<(), EvalError> {
    if saved_attention(dir)?.is_some() {
        return Err(EvalError::Invalid(format!(
            "{} is already an astrocytic encoder ({ASTRO_CONFIG_FILE}); distil the original checkpoint instead",
            dir.display()
        )));
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), EvalError> {
    std::fs::create_dir_all(to).map_err(|e| EvalError::io("create", to, e))?;
    let entries = std::fs::read_dir(from).map_err(|e| EvalError::io("read", from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| EvalError::io("read", from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst)?;
        } else if src.is_file() {
            std::fs::copy(&src, &dst).map_err(|e| EvalError::io("copy", &src, e))?;
        }
    }
    Ok(())
}

/// Writes `encoder` (made from the checkpoint `source` with `attention`) to `out`: a copy of every
/// file of `source` (weights, config, tokenizer, sentence-transformers files; unchanged), plus
/// `astro.toml`, `astrocytes.safetensors`, `distill.json` and `distill.md`. Everything goes into
/// a temporary sibling first and appears with one rename; `out` must not exist.
pub fn save(
    encoder: &SentenceEncoder,
    source: &Path,
    out: &Path,
    attention: &AttentionConfig,
    report: &EncoderDistillReport,
) -> Result<(), EvalError> {
    check_out(out)?;
    crate::run::write_dir_atomically(out, |tmp| {
        copy_dir(source, tmp)?;
        let write = |file: &str, text: String| {
            let path = tmp.join(file);
            std::fs::write(&path, text).map_err(|e| EvalError::io("write", &path, e))
        };
        let provenance = BTreeMap::from([
            ("source".to_string(), source.display().to_string()),
            ("fit".to_string(), report.fit.clone()),
            ("fit_lines".to_string(), report.fit_lines.to_string()),
            ("steps".to_string(), report.steps.to_string()),
        ]);
        let file = AstroEncoderFile { attention: attention.clone(), provenance };
        write(ASTRO_CONFIG_FILE, file.to_toml()?)?;
        encoder.save_astrocytes(&tmp.join(ASTROCYTES_FILE))?;
        write("distill.json", serde_json::to_string_pretty(report).unwrap_or_default())?;
        write("distill.md", markdown(report))?;
        Ok(())
    })
}

fn markdown(r: &EncoderDistillReport) -> String {
    let mut md = format!(
        "# Astrocytic encoder\n\nFrom {} ({} map, m = {}); fitted on {} ({} lines, {} held out), {} Adam steps per layer; {:.0} s.\n\n\
         Attention KL(softmax ‖ astrocytic), nats per query, mean over heads:\n\n\
         | layer | fitting lines, before | after | held out, before | after | kept step |\n|---:|---:|---:|---:|---:|---:|\n",
        r.source.display(),
        r.feature_map,
        r.features,
        r.fit,
        r.fit_lines,
        r.held_out_lines,
        r.steps,
        r.seconds
    );
    for l in &r.layers {
        md.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {} |\n",
            l.layer, l.fit_before, l.fit_after, l.held_out_before, l.held_out_after, l.best_step
        ));
    }
    md
}

/// What `astro distill --model <BERT dir>` is asked for.
#[derive(Debug, Clone)]
pub struct EncoderDistillRequest {
    /// The astrocytic attention to fit (m, map, seed).
    pub astro: AstrocyticConfig,
    /// The fitting text and its name (for the report).
    pub fit_text: String,
    /// The fitting text's name (file or dataset).
    pub fit_name: String,
    /// How the text is batched.
    pub data: FitDataOptions,
    /// Adam settings (`steps = 0`: the closed form only).
    pub options: DistillOptions,
    /// Early stopping.
    pub schedule: FitSchedule,
    /// ψ = 1 (or a floored spectrum) where a closed form is undefined.
    pub fallback: bool,
}

/// Distils the BERT checkpoint `source` into an astrocytic encoder written to `out` (see [`save`]);
/// `out` is checked before any work, and nothing is written on failure.
pub fn distill_encoder(
    source: &Path,
    request: &EncoderDistillRequest,
    out: &Path,
    device: &Device,
) -> Result<EncoderDistillReport, EvalError> {
    check_out(out)?;
    check_source(source)?;
    if request.astro.features == 0 {
        return Err(EvalError::Invalid("--features must be at least 1 hidden neuron".into()));
    }
    if request.options.steps > 0 && !(request.options.lr > 0.0 && request.options.lr.is_finite()) {
        return Err(EvalError::Invalid(format!("--lr {} must be a positive number", request.options.lr)));
    }
    let started = std::time::Instant::now();
    let teacher = Bert::load_softmax(source, device)?;
    let data = FitData::new(&teacher, &request.fit_text, &request.data, device)?;
    eprintln!(
        "fitting on {} lines ({} tokens), {} held out, in batches of {}",
        data.fit_lines, data.fit_tokens, data.held_out_lines, request.data.batch
    );
    let stats = layer_stats(&teacher.encoder, &data)?;
    let (student, fallbacks) = calibrated(source, &request.astro, &stats, request.fallback, device)?;
    if fallbacks > 0 {
        eprintln!("warning: {fallbacks} undefined closed-form dimensions fell back (--fallback)");
    }
    let (student, layers) =
        distill(&teacher.encoder, student, &data, &request.options, &request.schedule, device, |l| {
            eprintln!(
                "layer {}: attention KL {:.4} → {:.4} on fitting lines, {:.4} → {:.4} held out (kept step {})",
                l.layer, l.fit_before, l.fit_after, l.held_out_before, l.held_out_after, l.best_step
            )
        })?;
    let report = EncoderDistillReport {
        source: source.to_path_buf(),
        out: out.to_path_buf(),
        features: request.astro.features,
        feature_map: request.astro.feature_map.name().into(),
        fit: request.fit_name.clone(),
        fit_lines: data.fit_lines,
        held_out_lines: data.held_out_lines,
        steps: request.options.steps,
        layers,
        seconds: started.elapsed().as_secs_f64(),
    };
    save(&student, source, out, &AttentionConfig::Astrocytic(request.astro.clone()), &report)?;
    Ok(report)
}
