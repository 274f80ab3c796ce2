//! `astro distill`: fit astrocytic attention to a softmax-trained language model.

use std::path::PathBuf;

use astro_eval::distill::DistillRequest;
use astro_eval::{Run, Weights};
use astro_train::distill::DistillOptions;

/// Arguments of `astro distill`.
#[derive(clap::Args, Debug)]
pub struct DistillArgs {
    /// Run directory of a language model trained with softmax attention.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Where to write the distilled run (must not exist, or be empty).
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
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Training-split sequences to fit on.
    #[arg(long, default_value_t = 256)]
    fit_sequences: usize,
    /// Validation-split sequences for the held-out attention KL.
    #[arg(long, default_value_t = 64)]
    held_out_sequences: usize,
    /// Validation batches for the losses.
    #[arg(long, default_value_t = 20)]
    batches: usize,
    /// Fit on this text file or directory instead of the run's corpus (it must suit the tokenizer).
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
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
    let device = crate::device(device)?;
    let run = Run::load(&args.model, Weights::Final, &device)?;
    let request = DistillRequest {
        features: args.features,
        feature_map,
        seed: args.seed,
        fit_sequences: args.fit_sequences,
        held_out_sequences: args.held_out_sequences,
        batches: args.batches,
        data: args.data.clone(),
        fallback: args.fallback,
        options: DistillOptions { steps: args.steps, lr: args.lr, batch: args.batch },
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
