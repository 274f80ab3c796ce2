//! `astro info --config FILE`: parameters per module, total, decoding-state size.

use std::path::PathBuf;

use anyhow::{Context, bail};
use astro_model::info::report;
use astro_model::{LanguageModel, TransformerConfig};

/// Arguments of `astro info`.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Run config (TOML) whose `[model]` table describes the model.
    #[arg(long, short)]
    config: PathBuf,
    /// Vocabulary size, when the config leaves it to the tokenizer.
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Context lengths at which to report the decoding state.
    #[arg(long, value_delimiter = ',', default_value = "64,2048")]
    contexts: Vec<usize>,
}

/// The part of a run config `astro info` reads; other tables are left to their own commands.
#[derive(serde::Deserialize)]
struct ModelSection {
    model: Option<TransformerConfig>,
}

/// Reads and validates the `[model]` table of a run config (errors point into the file itself).
pub fn read_model_config(path: &std::path::Path) -> anyhow::Result<TransformerConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    let section: ModelSection = toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
    let Some(model) = section.model else {
        bail!("{} has no [model] table; see configs/shakespeare-char.toml for the layout", path.display());
    };
    model.validate().with_context(|| format!("invalid [model] in {}", path.display()))?;
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
    let mut config = read_model_config(&args.config)?;
    if args.vocab_size.is_some() {
        config.vocab_size = args.vocab_size;
    }
    if config.vocab_size.is_none() {
        bail!("[model] vocab_size is unset in {}; pass --vocab-size N", args.config.display());
    }
    let device = crate::device(device)?.autodiff();
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
