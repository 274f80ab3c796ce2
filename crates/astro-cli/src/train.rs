//! `astro train`: train a language model from a run config (default: shakespeare-char).

use std::path::PathBuf;

use anyhow::Context;
use astro_train::{RunConfig, TrainOptions};

/// The config `astro train` runs when given none.
const DEFAULT_CONFIG: &str = include_str!("../../../configs/shakespeare-char.toml");

/// Arguments of `astro train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Run config (TOML); default: configs/shakespeare-char.toml (built in).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set model.attention.kind=softmax --set optim.lr=3e-4`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Continue the run in this directory from its newest valid checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Train on this text file or directory of .txt files (sets data.path).
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// Train on a synthetic task (mqar, copy, induction, listops) with its default parameters;
    /// set them with `--set task.<key>=…`.
    #[arg(long, value_name = "NAME", conflicts_with = "data")]
    task: Option<String>,
    /// Start from the weights of an export (`astro export`); its architecture and tokenizer
    /// replace the config's (dropout and everything else stay the config's).
    #[arg(long, value_name = "EXPORT_DIR", conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Run name (the run directory is runs/<name>).
    #[arg(long)]
    name: Option<String>,
    /// Data-parallel training over several devices of one backend, e.g. `wgpu:0,wgpu:1` or
    /// `cuda:0,cuda:1`: the batch is split over them (optim.batch_size must divide evenly) and the
    /// run equals one device with the whole batch. Instead of --device.
    #[arg(long, value_name = "LIST")]
    devices: Option<String>,
    /// Print one JSON summary line at the end (and the sample on stderr).
    #[arg(long)]
    json: bool,
}

pub fn run(args: TrainArgs, device: Option<&str>) -> anyhow::Result<()> {
    let mut config = match (&args.config, &args.resume) {
        (Some(path), _) => RunConfig::load(path)?,
        // Resuming without --config continues with the run's own resolved config.
        (None, Some(run)) => RunConfig::load(&run.join("config.toml"))
            .with_context(|| format!("{} does not look like a run directory", run.display()))?,
        (None, None) => match &args.task {
            Some(name) => RunConfig::for_task(astro_data::tasks::TaskConfig::by_name(name)?),
            None => RunConfig::from_toml(DEFAULT_CONFIG, "configs/shakespeare-char.toml")?,
        },
    };
    if let (Some(name), Some(_)) = (&args.task, &args.config) {
        // `--task` with a config file replaces the config's data or task with this task.
        config.task = Some(astro_data::tasks::TaskConfig::by_name(name)?);
        config.data.dataset = None;
        config.data.path = None;
    }
    if let Some(dir) = &args.init {
        init_from_export(&mut config, dir)?;
    }
    let mut sets = args.sets.clone();
    if let Some(data) = &args.data {
        config.data.path = Some(data.clone());
        if config.data.dataset.is_some() && args.config.is_none() {
            // `--data` on the default config replaces the named corpus.
            config.data.dataset = None;
        }
    }
    if let Some(name) = &args.name {
        sets.push(format!("run.name={name:?}"));
    }
    let config = config.with_overrides(&sets)?;
    let options = TrainOptions {
        resume: args.resume.clone(),
        device: match (&args.devices, device) {
            (Some(_), Some(one)) => anyhow::bail!("--device {one} and --devices both given; use --devices alone"),
            (Some(list), None) => Some(list.clone()),
            (None, one) => one.map(str::to_string),
        },
        sample_to_stderr: args.json,
        stop_after: std::env::var("ASTRO_STOP_AFTER").ok().and_then(|v| v.parse().ok()),
        interrupt: astro_train::Interrupt::install()?,
    };
    let config_max_iters = config.train.max_iters;
    let summary = astro_train::train(config, options).context("training failed")?;
    let val = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.4}"));
    let acc = summary.final_val_accuracy.map_or(String::new(), |a| format!(" | accuracy {a:.4}"));
    if summary.already_finished {
        eprintln!(
            "{} is already finished: {} steps (train.max_iters = {}); nothing to do. To train it further, resume with \
             --set train.max_iters=N, N > {}",
            summary.run_dir.display(),
            summary.steps,
            config_max_iters,
            summary.steps
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else if summary.already_finished {
        println!(
            "finished earlier: {} steps | train loss {:.4} | val loss {} (best {}){acc}\nrun directory: {}",
            summary.steps,
            summary.final_train_loss,
            val(summary.final_val_loss),
            val(summary.best_val_loss),
            summary.run_dir.display()
        );
    } else {
        println!(
            "done: {} steps | train loss {:.4} | val loss {} (best {}){acc} | {:.0} tokens/s | {:.1} s\nrun directory: {}",
            summary.steps,
            summary.final_train_loss,
            val(summary.final_val_loss),
            val(summary.best_val_loss),
            summary.tokens_per_sec,
            summary.wall_seconds,
            summary.run_dir.display()
        );
    }
    Ok(())
}

/// Makes `config` start from the export in `dir`: its architecture (keeping the config's dropout),
/// its tokenizer for text runs, and `train.init` so the trainer loads its weights.
fn init_from_export(config: &mut RunConfig, dir: &std::path::Path) -> anyhow::Result<()> {
    use astro_model::transformer::{ExportConfig, SavedArchitecture};
    let export = ExportConfig::read(dir)?;
    let (SavedArchitecture::LanguageModel { config: model }
    | SavedArchitecture::EncoderClassifier { config: model, .. }) = export.architecture;
    let dropout = config.model.dropout;
    config.model = model;
    config.model.dropout = dropout;
    let tokenizer = dir.join("tokenizer.json");
    if config.task.is_none() && tokenizer.is_file() {
        config.data.tokenizer = astro_data::TokenizerSpec::File { path: tokenizer };
    }
    config.train.init = Some(dir.to_path_buf());
    Ok(())
}
