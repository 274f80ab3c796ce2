//! `astro replicate`: the paper's figure on a pretrained BERT encoder, with numbers.

use std::path::PathBuf;

use anyhow::{Context, bail};
use astro_eval::replicate::ReplicateOptions;

/// The README's opening paragraph (the default text).
fn readme_paragraph() -> String {
    let readme = include_str!("../../../README.md");
    readme
        .split("\n\n")
        .find(|p| p.starts_with("**astro** implements"))
        .unwrap_or("Astrocytes wrap synapses and listen to both neurons.")
        .replace(['\n', '*'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Arguments of `astro replicate`.
#[derive(clap::Args, Debug)]
pub struct ReplicateArgs {
    /// Hugging Face BERT checkpoint directory: config.json, model.safetensors, tokenizer.json.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// The text (default: the README's opening paragraph).
    #[arg(long, conflicts_with = "file")]
    text: Option<String>,
    /// Read the text from a file.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Numbers of hidden neurons m.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    features: Vec<usize>,
    /// Hidden-neuron maps compared side by side (positive, saderf, shifted_saderf, cosine, truncated,
    /// positive_cosine, linear, elu).
    #[arg(long, value_delimiter = ',', default_value = "positive,saderf,shifted_saderf")]
    feature_maps: Vec<String>,
    /// Text the calibrated maps are fitted on: a file or a named dataset (held out from the text).
    #[arg(long, value_name = "FILE|DATASET", default_value = "wikitext2-valid")]
    fit: String,
    /// Lines of the fitting text used (those of at least 20 characters; default: all).
    #[arg(long)]
    fit_lines: Option<usize>,
    /// Tokens per fitting line at most.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Held-out texts (files or dataset names, never fitted on) whose sentences measure the swapped
    /// encoders' usefulness: cosine, pairwise-similarity Spearman, neighbour agreement.
    #[arg(long, value_delimiter = ',', default_value = "wikitext2-test,tinyshakespeare")]
    eval: Vec<String>,
    /// Sentences per held-out text (0: skip the usefulness measures).
    #[arg(long, default_value_t = 200)]
    eval_sentences: usize,
    /// Use ψ = 1 where a calibrated map's closed form is undefined, instead of stopping.
    #[arg(long)]
    fallback: bool,
    /// Adam steps per layer of the `distilled` row (--distill-map's closed form, then fitted to
    /// softmax's attention on the fitting lines); 0 leaves it out.
    #[arg(long, default_value_t = 0)]
    distill_steps: usize,
    /// The map the `distilled` row starts from.
    #[arg(long, default_value = "shifted_saderf")]
    distill_map: String,
    /// Seed of Ω.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Layer and head of the figure, 0-based (`1,5`: the head the paper showed).
    #[arg(long, value_delimiter = ',', default_value = "1,5")]
    head: Vec<usize>,
    /// Output directory.
    #[arg(long, default_value = "reports/replicate")]
    out: PathBuf,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ReplicateArgs, device: Option<&str>) -> anyhow::Result<()> {
    let feature_maps = args.feature_maps.iter().map(|m| crate::feature_map(m)).collect::<anyhow::Result<Vec<_>>>()?;
    if args.head.len() != 2 {
        bail!("--head takes `layer,head`, e.g. 1,5");
    }
    let text = match (&args.text, &args.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
        (None, None) => readme_paragraph(),
    };
    let fit_text = if args.distill_steps > 0 || feature_maps.iter().any(|m| m.is_calibrated()) {
        Some(crate::read_text_source(&args.fit)?)
    } else {
        None
    };
    let eval_sets = if args.eval_sentences == 0 {
        Vec::new()
    } else {
        args.eval
            .iter()
            .map(|name| {
                let text = crate::read_text_source(name)?;
                Ok(astro_eval::usefulness::EvalSet::from_text(name, &text, args.eval_sentences)?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    if eval_sets.iter().any(|s| s.name == args.fit) {
        bail!("--eval {} is also the fitting text (--fit); held-out text must not be fitted on", args.fit);
    }
    let distill_map = crate::feature_map(&args.distill_map)?;
    let device = crate::device(device)?;
    let options = ReplicateOptions {
        text,
        features: args.features.clone(),
        feature_maps,
        fit_text,
        fit_data: astro_eval::encoder_fit::FitDataOptions {
            lines: args.fit_lines,
            max_tokens: args.max_tokens,
            ..Default::default()
        },
        eval_sets,
        fallback: args.fallback,
        distill: Some((
            distill_map,
            astro_train::distill::DistillOptions { steps: args.distill_steps, ..Default::default() },
        )),
        seed: args.seed,
        head: (args.head[0], args.head[1]),
    };
    let report = astro_eval::replicate::run(&args.model, &options, &args.out, &device)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("{} tokens; Pearson r / median relative error of a_t against Z_t, mean over heads:", report.tokens);
    for s in report.summary.iter().filter(|s| s.layer.is_none()) {
        println!("  {:>15}, m = {:>7}: {:.4} / {:.4}", s.map, s.m, s.mean_pearson, s.mean_median_rel_err);
    }
    let (l, h) = options.head;
    for s in report.heads.iter().filter(|s| (s.layer, s.head) == (l, h)) {
        println!("  layer {l}, head {h}, {:>15}, m = {:>7}: {:.4} / {:.4}", s.map, s.m, s.pearson, s.median_rel_err);
    }
    for (map, slope) in report.error_slope.iter().filter(|(_, s)| s.is_finite()) {
        println!("  {map:>15}: log–log slope of the error against m {slope:.3}");
    }
    for (map, m, c) in &report.embedding_cosine {
        println!(
            "  every layer swapped, {map:>15}, m = {m:>7}: sentence-embedding cosine {:.4} (mean)",
            c.iter().sum::<f64>() / c.len().max(1) as f64
        );
    }
    for (map, m, set, a) in &report.usefulness {
        println!(
            "  {map:>15}, m = {m:>7}, {set}: cosine {:.4}, Spearman {:.4}, top-1 {:.3}, top-5 {:.3}",
            a.mean_cosine, a.spearman, a.top1, a.top5
        );
    }
    for f in &report.files {
        println!("  wrote {}", f.display());
    }
    Ok(())
}
