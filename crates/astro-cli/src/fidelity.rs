//! `astro fidelity`: swap a softmax-trained model's attention for the astrocytic one.

use std::path::PathBuf;

use astro_eval::fidelity::FidelityOptions;
use astro_eval::{Run, Weights};

/// Arguments of `astro fidelity`.
#[derive(clap::Args, Debug)]
pub struct FidelityArgs {
    /// Run directory of a model trained with softmax attention.
    #[arg(long)]
    run: PathBuf,
    /// Numbers of hidden neurons m to try.
    #[arg(long, value_delimiter = ',', default_value = "64,256,1024,4096,16384")]
    features: Vec<usize>,
    /// Hidden-neuron maps to compare (positive, saderf, shifted_saderf, cosine, truncated,
    /// positive_cosine, linear, elu).
    #[arg(long, value_delimiter = ',', default_value = "positive,saderf,shifted_saderf")]
    feature_maps: Vec<String>,
    /// Training-split sequences the calibrated maps (saderf, shifted_saderf) are fitted on.
    #[arg(long, default_value_t = 32)]
    fit_sequences: usize,
    /// Use ψ = 1 where a calibrated map's closed form is undefined, instead of stopping.
    #[arg(long)]
    fallback: bool,
    /// Adam steps per layer of the `distilled` row (shifted_saderf fitted to softmax's attention,
    /// as `astro distill` does); 0 leaves it out.
    #[arg(long, default_value_t = 300)]
    distill_steps: usize,
    /// Orthogonal Ω.
    #[arg(long)]
    orthogonal: bool,
    /// Seed of Ω.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Validation batches for the loss.
    #[arg(long, default_value_t = 20)]
    batches: usize,
    /// Validation sequences for the normaliser statistics.
    #[arg(long, default_value_t = 8)]
    sequences: usize,
    /// Layer and head of the paper-style figure, e.g. `0,1`.
    #[arg(long, value_delimiter = ',', default_value = "0,0")]
    head: Vec<usize>,
    /// Output directory (default: reports/fidelity-<run name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: FidelityArgs, device: Option<&str>) -> anyhow::Result<()> {
    let feature_maps = args.feature_maps.iter().map(|m| crate::feature_map(m)).collect::<anyhow::Result<Vec<_>>>()?;
    if args.head.len() != 2 {
        anyhow::bail!("--head takes `layer,head`, e.g. 0,1");
    }
    let device = crate::device(device)?;
    let run = Run::load(&args.run, Weights::Final, &device)?;
    if args.head[0] >= run.config.model.n_layer || args.head[1] >= run.config.model.n_head {
        anyhow::bail!(
            "--head {},{} is outside the model ({} layers × {} heads)",
            args.head[0],
            args.head[1],
            run.config.model.n_layer,
            run.config.model.n_head
        );
    }
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("reports").join(format!(
            "fidelity-{}",
            args.run.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ))
    });
    let options = FidelityOptions {
        features: args.features.clone(),
        feature_maps,
        fit_sequences: args.fit_sequences,
        fallback: args.fallback,
        distill: Some(astro_train::distill::DistillOptions { steps: args.distill_steps, ..Default::default() }),
        orthogonal: args.orthogonal,
        seed: args.seed,
        batches: args.batches,
        sequences: args.sequences,
        head: (args.head[0], args.head[1]),
    };
    let report = astro_eval::fidelity::run(&run, &options, &out)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("softmax validation loss {:.4}", report.softmax_val_loss);
        for (map, m, l) in &report.val_loss {
            println!("  {map:>15}, m = {m:>6}: {l:.4} ({:+.4})", l - report.softmax_val_loss);
        }
        for (map, s) in &report.error_slope {
            println!("  {map:>15}: log–log slope of the median relative error against m {s:.3}");
        }
        for f in &report.files {
            println!("  wrote {}", f.display());
        }
    }
    Ok(())
}
