//! `astro distill`: swap a softmax-trained language model's attention for astrocytic attention and
//! fit every layer's hidden-neuron weights to softmax's attention (astrocyte plasticity), keeping
//! every other weight. The result is an ordinary run directory (`config.toml`, `tokenizer.json`,
//! `model.bpk`) that `eval`, `generate`, `export` and `fidelity`-style comparisons read, plus
//! `distill.json` / `distill.md` with the fit on held-out data.
//!
//! Data: fitting sequences come from the training split of the run's corpus (or `--data`), the
//! held-out KL and the validation losses from its validation split; they never overlap.

use std::path::{Path, PathBuf};

use astro_data::{BatchSampler, CorpusSpec, Sampling, tokenize_cached};
use astro_model::attention::{AstrocyticConfig, Attention, AttentionMask, FeatureMap};
use astro_model::{AttentionConfig, LanguageModel};
use astro_train::Net;
use astro_train::distill::{AttentionInputs, DistillOptions, LayerFit, distill_layer};
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Serialize;

use crate::error::EvalError;
use crate::fidelity::ValBatches;
use crate::run::Run;

/// What to distil.
#[derive(Debug, Clone)]
pub struct DistillRequest {
    /// Hidden neurons m per head.
    pub features: usize,
    /// The map whose parameters are fitted (calibrated maps start from their closed form).
    pub feature_map: FeatureMap,
    /// Ω seed (the starting point).
    pub seed: u64,
    /// Training-split sequences to fit on.
    pub fit_sequences: usize,
    /// Validation-split sequences for the held-out KL.
    pub held_out_sequences: usize,
    /// Validation batches for the losses.
    pub batches: usize,
    /// Another corpus instead of the run's (must suit the run's tokenizer).
    pub data: Option<PathBuf>,
    /// Use ψ = 1 where the closed form is undefined.
    pub fallback: bool,
    /// The optimiser settings.
    pub options: DistillOptions,
}

/// The report (`distill.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DistillReport {
    /// The softmax run.
    pub source: PathBuf,
    /// The distilled run.
    pub out: PathBuf,
    /// Hidden neurons.
    pub features: usize,
    /// Map name.
    pub feature_map: String,
    /// Softmax model's validation loss.
    pub softmax_val_loss: f64,
    /// Swapped model before fitting (closed-form calibration only).
    pub swapped_val_loss: f64,
    /// Swapped model after fitting.
    pub distilled_val_loss: f64,
    /// Per layer, the attention KL before and after, on fitting and held-out data.
    pub layers: Vec<LayerFit>,
    /// Seconds spent fitting.
    pub seconds: f64,
}

/// Distils the softmax run `run` into `out` (which must not exist or be empty).
pub fn distill(run: &Run, request: &DistillRequest, out: &Path, device: &Device) -> Result<DistillReport, EvalError> {
    if !matches!(run.config.model.attention, AttentionConfig::Softmax(_)) {
        return Err(EvalError::Invalid(format!(
            "{} was trained with {} attention; distillation fits astrocytic attention to a softmax-trained model",
            run.dir.display(),
            run.config.model.attention.kind()
        )));
    }
    if request.features == 0 {
        return Err(EvalError::Invalid("--features must be at least 1 hidden neuron".into()));
    }
    // The student: the run's model with m hidden neurons, trained on the fitting sequences.
    let keys = astro_model::memory::KeyNames {
        model: "the run's model.",
        batch: "--fit-sequences",
        seq: "the run's model.block_size",
        features: "--features",
    };
    let batch = request.fit_sequences.max(request.held_out_sequences).max(run.config.optim.batch_size);
    let workload = astro_model::memory::Workload::Train { batch, seq: run.config.model.block_size };
    astro_model::memory::check_swapped(&run.config.model, request.features, workload, &keys, "this distillation")
        .map_err(astro_model::ModelError::from)?;
    if request.options.steps > 0 && !(request.options.lr > 0.0 && request.options.lr.is_finite()) {
        return Err(EvalError::Invalid(format!("--lr {} must be a positive number", request.options.lr)));
    }
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(EvalError::Invalid(format!(
            "{} already exists and is not empty; choose another --out (nothing was written)",
            out.display()
        )));
    }
    let lm = run.net.lm().ok_or_else(|| EvalError::Invalid("the run holds no language model".into()))?.valid();
    let tokenizer = run.tokenizer.as_ref().ok_or_else(|| EvalError::Invalid("the run has no tokenizer".into()))?;
    let vf = run.config.data.val_fraction;
    let corpus = match &request.data {
        Some(path) => CorpusSpec::file(path).files(vf)?,
        None => run.config.corpus().files(vf)?,
    };
    let file = tokenize_cached(&corpus, tokenizer.as_ref(), &|| false).map_err(|e| match &request.data {
        Some(path) => EvalError::Invalid(format!(
            "--data {} does not suit the model's tokenizer: {e}; distil on text like the model was trained on",
            path.display()
        )),
        None => EvalError::from(e),
    })?;
    let (train, val) = file.split(vf);
    let block = run.config.model.block_size;
    if train.len() <= block + 1 || val.len() <= block + 1 {
        return Err(EvalError::Invalid(format!(
            "the corpus {} is too short for sequences of {block} tokens in both splits",
            corpus.name
        )));
    }
    let tokens_of = |range: std::ops::Range<usize>, n: usize, seed: u64| {
        let b = BatchSampler::new(range, block, n.max(1), Sampling::Random, seed).next_batch(&file);
        (Tensor::<2, Int>::from_data(TensorData::new(b.inputs, [b.batch, b.block]), device), b.targets, b.batch)
    };
    let (fit_tokens, _, _) = tokens_of(train, request.fit_sequences, 0xd157_0001);
    let (held_tokens, _, _) = tokens_of(val.clone(), request.held_out_sequences, 0xd157_0002);
    let val_batches = ValBatches::new(&file, val, block, run.config.optim.batch_size, request.batches, device);
    let loss_of = |net: &Net| val_batches.loss(net);
    let softmax_val_loss = loss_of(&Net::Lm(lm.clone()));

    let astro = AstrocyticConfig {
        features: request.features,
        feature_map: request.feature_map,
        seed: request.seed,
        ..AstrocyticConfig::default()
    };
    let mut config = run.config.clone();
    config.model.attention = AttentionConfig::Astrocytic(astro);
    // Teacher inputs: the softmax model's own queries and keys, per layer. The closed form starts
    // from their statistics; the fit matches its attention on them.
    let fit_qk = lm.attention_inputs(fit_tokens);
    let held_qk = lm.attention_inputs(held_tokens);
    let mut swapped = LanguageModel::new(&config.model, device)?.transfer_weights(&run.weights)?;
    let (trunk, fallbacks) = swapped.trunk.calibrate_from_inputs(&fit_qk, None, request.fallback)?;
    swapped.trunk = trunk;
    if fallbacks > 0 {
        eprintln!("warning: ψ = 1 on {fallbacks} dimensions where the closed form is undefined (--fallback)");
    }
    let swapped_val_loss = loss_of(&Net::Lm(swapped.clone()));
    eprintln!(
        "softmax {softmax_val_loss:.4}; swapped ({} map, m = {}) {swapped_val_loss:.4} before fitting",
        request.feature_map.name(),
        request.features
    );

    let started = std::time::Instant::now();
    let mut layers = Vec::new();
    for (layer, ((fq, fk), (hq, hk))) in fit_qk.into_iter().zip(held_qk).enumerate() {
        let block = &mut swapped.trunk.blocks[layer];
        let Attention::Astrocytic(attn) = &block.attn.inner else {
            unreachable!("every layer was swapped to astrocytic attention");
        };
        let fit = AttentionInputs { q: fq, k: fk, mask: AttentionMask::causal() };
        let held = AttentionInputs { q: hq, k: hk, mask: AttentionMask::causal() };
        let (fitted, report) = distill_layer(attn.clone(), layer, &fit, &held, &request.options, device)?;
        eprintln!(
            "layer {layer}: attention KL {:.4} → {:.4} on fitting data, {:.4} → {:.4} held out",
            report.fit_before, report.fit_after, report.held_out_before, report.held_out_after
        );
        block.attn.inner = Attention::Astrocytic(fitted);
        layers.push(report);
    }
    let seconds = started.elapsed().as_secs_f64();
    let distilled_val_loss = loss_of(&Net::Lm(swapped.clone()));
    eprintln!("distilled: validation loss {distilled_val_loss:.4} (softmax {softmax_val_loss:.4})");

    // Write a run directory: everything into a temporary sibling, then one rename.
    let report = DistillReport {
        source: run.dir.clone(),
        out: out.to_path_buf(),
        features: request.features,
        feature_map: request.feature_map.name().into(),
        softmax_val_loss,
        swapped_val_loss,
        distilled_val_loss,
        layers,
        seconds,
    };
    crate::run::write_dir_atomically(out, |tmp| {
        let write = |name: &str, bytes: &[u8]| {
            let path = tmp.join(name);
            std::fs::write(&path, bytes).map_err(|e| EvalError::io("write", &path, e))
        };
        config.run.name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(config.run.name.clone());
        if let Some(path) = &request.data {
            config.data.path = Some(path.clone());
            config.data.dataset = None;
        }
        write("config.toml", config.to_toml().as_bytes())?;
        let tok = run.dir.join("tokenizer.json");
        std::fs::copy(&tok, tmp.join("tokenizer.json")).map_err(|e| EvalError::io("copy", &tok, e))?;
        swapped.save(&tmp.join(astro_train::checkpoint::MODEL_FILE))?;
        write("distill.json", serde_json::to_string_pretty(&report).unwrap_or_default().as_bytes())?;
        write("distill.md", markdown(&report).as_bytes())?;
        Ok(())
    })?;
    Ok(report)
}

fn markdown(r: &DistillReport) -> String {
    let mut md = format!(
        "# Distilled astrocytic attention\n\nFrom {} ({} map, m = {}); {:.0} s of fitting.\n\n| model | validation loss |\n|---|---:|\n| softmax | {:.4} |\n| swapped, closed form | {:.4} |\n| swapped, distilled | {:.4} |\n\nAttention KL(softmax ‖ astrocytic), nats per query, mean over heads:\n\n| layer | fitting data, before | after | held out, before | after |\n|---:|---:|---:|---:|---:|\n",
        r.source.display(),
        r.feature_map,
        r.features,
        r.seconds,
        r.softmax_val_loss,
        r.swapped_val_loss,
        r.distilled_val_loss
    );
    for l in &r.layers {
        md.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.4} | {:.4} |\n",
            l.layer, l.fit_before, l.fit_after, l.held_out_before, l.held_out_after
        ));
    }
    md
}
