//! `astro info --config FILE`: parameters per module, total, decoding-state size.

use std::path::PathBuf;

use anyhow::Context;
use astro_model::info::report;
use astro_model::{LanguageModel, TransformerConfig};

/// Arguments of `astro info`.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Run config (TOML) whose `[model]` table describes the model.
    #[arg(long, short)]
    config: PathBuf,
    /// Vocabulary size (default: the config's, else that of the tokenizer its [data] table builds).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Context lengths at which to report the decoding state.
    #[arg(long, value_delimiter = ',', default_value = "64,2048")]
    contexts: Vec<usize>,
}

/// The model config of a run config, with the vocabulary size taken from the tokenizer its `[data]`
/// table describes when the `[model]` table leaves it unset.
pub fn resolve_model_config(path: &std::path::Path, vocab_size: Option<usize>) -> anyhow::Result<TransformerConfig> {
    let config = astro_train::RunConfig::load(path)?;
    let mut model = config.model.clone();
    model.validate().with_context(|| format!("invalid [model] in {}", path.display()))?;
    if vocab_size.is_some() {
        model.vocab_size = vocab_size;
    }
    if model.vocab_size.is_none() {
        let why =
            "model.vocab_size is unset, so the tokenizer is built from [data] to find it (or pass --vocab-size N)";
        let corpus = config.corpus().files(config.data.val_fraction).context(why)?;
        let tokenizer = astro_data::tokenizer_for(&config.data.tokenizer, &corpus, &|| false).context(why)?;
        model.vocab_size = Some(tokenizer.vocab_size());
    }
    Ok(model)
}

fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn human_bytes(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

pub fn run(args: InfoArgs, device: Option<&str>) -> anyhow::Result<()> {
    let device = crate::device(device)?.autodiff();
    let config = resolve_model_config(&args.config, args.vocab_size)?;
    let model = LanguageModel::new(&config, &device)?;
    let r = report(&model, &args.contexts);

    println!("language model: {}", config.describe());
    println!();
    println!("{:<36} {:>12} {:>12}", "module", "trainable", "frozen");
    for g in &r.groups {
        let frozen = if g.frozen > 0 { group_digits(g.frozen) } else { String::new() };
        println!("{:<36} {:>12} {:>12}", g.path, group_digits(g.trainable), frozen);
    }
    println!("{:<36} {:>12} {:>12}", "total", group_digits(r.trainable), group_digits(r.frozen));
    println!();
    println!("decoding state per sequence ({}):", config.attention.kind());
    for (ctx, floats) in &r.state_floats {
        println!("  context {:>6}: {:>12} floats ({}, f32)", ctx, group_digits(*floats), human_bytes(floats * 4));
    }
    Ok(())
}
