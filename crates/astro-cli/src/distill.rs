//! `astro distill`: fit astrocytic attention to a softmax-trained language model (a run
//! directory), or to a pretrained BERT encoder (a Hugging Face checkpoint directory) and save it.

use std::path::PathBuf;

use anyhow::bail;
use astro_eval::distill::DistillRequest;
use astro_eval::encoder_fit::{EncoderDistillRequest, FitDataOptions};
use astro_eval::{Run, Weights};
use astro_model::attention::{AstrocyticConfig, FeatureMap};
use astro_train::distill::{DistillOptions, FitSchedule};

/// Arguments of `astro distill`.
#[derive(clap::Args, Debug)]
pub struct DistillArgs {
    /// Run directory of a language model trained with softmax attention, or a Hugging Face BERT
    /// checkpoint directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Where to write the distilled run or encoder (a run: must not exist, or be empty; an
    /// encoder: must not exist).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Hidden neurons m per head.
    #[arg(long, default_value_t = 256)]
    features: usize,
    /// Map to fit (saderf and shifted_saderf start from their closed form).
    #[arg(long, default_value = "shifted_saderf")]
    feature_map: String,
    /// Adam steps per layer (0: closed-form calibration only).
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 5e-3)]
    lr: f64,
    /// Sequences (lines, for an encoder) per step.
    #[arg(long)]
    batch: Option<usize>,
    /// Language model: training-split sequences to fit on.
    #[arg(long)]
    fit_sequences: Option<usize>,
    /// Language model: validation-split sequences for the held-out attention KL.
    #[arg(long)]
    held_out_sequences: Option<usize>,
    /// Language model: validation batches for the losses.
    #[arg(long)]
    batches: Option<usize>,
    /// Language model: fit on this text file or directory instead of the run's corpus (it must
    /// suit the tokenizer).
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// Encoder: the fitting text, a file or a dataset name (every 10th line held out).
    #[arg(long, value_name = "FILE|DATASET")]
    fit: Option<String>,
    /// Encoder: use at most this many lines of the fitting text (default: all).
    #[arg(long)]
    fit_lines: Option<usize>,
    /// Encoder: tokens per fitting line at most.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Encoder: measure the held-out attention KL every N steps and keep the best (early stopping).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Seed of the starting Ω.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use ψ = 1 where the closed form is undefined, instead of stopping.
    #[arg(long)]
    fallback: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: DistillArgs, device: Option<&str>) -> anyhow::Result<()> {
    let feature_map = crate::feature_map(&args.feature_map)?;
    if !args.model.join("config.toml").is_file() && args.model.join("config.json").is_file() {
        return encoder(args, feature_map, device);
    }
    let encoder_only = [
        ("--fit", args.fit.is_some()),
        ("--fit-lines", args.fit_lines.is_some()),
        ("--max-tokens", args.max_tokens.is_some()),
        ("--eval-every", args.eval_every.is_some()),
    ];
    if let Some((flag, _)) = encoder_only.iter().find(|(_, given)| *given) {
        bail!(
            "{flag} applies to a BERT checkpoint directory; {} is a run directory (use --data)",
            args.model.display()
        );
    }
    let device = crate::device(device)?;
    let run = Run::load(&args.model, Weights::Final, &device)?;
    let request = DistillRequest {
        features: args.features,
        feature_map,
        seed: args.seed,
        fit_sequences: args.fit_sequences.unwrap_or(256),
        held_out_sequences: args.held_out_sequences.unwrap_or(64),
        batches: args.batches.unwrap_or(20),
        data: args.data.clone(),
        fallback: args.fallback,
        options: DistillOptions { steps: args.steps, lr: args.lr, batch: args.batch.unwrap_or(16) },
    };
    let report = astro_eval::distill::distill(&run, &request, &args.out, &device)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "validation loss: softmax {:.4}, swapped {:.4}, distilled {:.4}",
            report.softmax_val_loss, report.swapped_val_loss, report.distilled_val_loss
        );
        println!("wrote {} (a run directory: astro eval --run {})", args.out.display(), args.out.display());
    }
    Ok(())
}

/// `astro distill --model <BERT dir>`: fit on many lines, save the astrocytic encoder.
fn encoder(args: DistillArgs, feature_map: FeatureMap, device: Option<&str>) -> anyhow::Result<()> {
    let lm_only = [
        ("--fit-sequences", args.fit_sequences.is_some()),
        ("--held-out-sequences", args.held_out_sequences.is_some()),
        ("--batches", args.batches.is_some()),
        ("--data", args.data.is_some()),
    ];
    if let Some((flag, _)) = lm_only.iter().find(|(_, given)| *given) {
        bail!(
            "{flag} applies to a language-model run directory; {} is a BERT checkpoint (use --fit FILE|DATASET)",
            args.model.display()
        );
    }
    // Fail before reading anything large.
    astro_eval::encoder_fit::check_out(&args.out)?;
    astro_eval::encoder_fit::check_source(&args.model)?;
    let fit_name = args.fit.clone().unwrap_or_else(|| "wikitext2-valid".into());
    let fit_text = crate::read_text_source(&fit_name)?;
    let device = crate::device(device)?;
    let defaults = FitDataOptions::default();
    let request = EncoderDistillRequest {
        astro: AstrocyticConfig {
            features: args.features,
            feature_map,
            seed: args.seed,
            ..AstrocyticConfig::default()
        },
        fit_text,
        fit_name,
        data: FitDataOptions {
            lines: args.fit_lines,
            max_tokens: args.max_tokens.unwrap_or(defaults.max_tokens),
            batch: args.batch.unwrap_or(defaults.batch),
            held_out_every: defaults.held_out_every,
        },
        options: DistillOptions { steps: args.steps, lr: args.lr, batch: args.batch.unwrap_or(defaults.batch) },
        schedule: FitSchedule { eval_every: args.eval_every.unwrap_or(50), report_batches: 8 },
        fallback: args.fallback,
    };
    let report = astro_eval::encoder_fit::distill_encoder(&args.model, &request, &args.out, &device)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let mean = |f: fn(&astro_train::distill::LayerFit) -> f64| {
            report.layers.iter().map(f).sum::<f64>() / report.layers.len().max(1) as f64
        };
        println!(
            "held-out attention KL, mean over layers: {:.4} → {:.4}; {:.0} s",
            mean(|l| l.held_out_before),
            mean(|l| l.held_out_after),
            report.seconds
        );
        println!("wrote {} (astro embed --model {0}; astro replicate --model {0})", args.out.display());
    }
    Ok(())
}
