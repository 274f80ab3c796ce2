//! `astro export`: a run's model as `model.safetensors` (PyTorch layout) + `config.json`, with its
//! tokenizer and run config, for other tools — and for `astro eval/generate --model` and
//! `astro train --init`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use astro_eval::run::RUN_CONFIG_FILE;
use astro_eval::{Run, Weights};

/// Arguments of `astro export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Run directory made by `astro train`.
    #[arg(long)]
    run: PathBuf,
    /// Directory to write (created; must not hold files unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Export the best-validation weights (best.bpk) instead of the final ones.
    #[arg(long)]
    best: bool,
    /// Replace the files of an earlier export in --out.
    #[arg(long)]
    force: bool,
}

pub fn run(args: ExportArgs, device: Option<&str>) -> anyhow::Result<()> {
    let device = crate::device(device)?;
    let weights = if args.best { Weights::Best } else { Weights::Final };
    let run = Run::load(&args.run, weights, &device)?;
    if run.weights.extension().is_some_and(|e| e == "safetensors") {
        bail!("{} is already an export; copy the directory instead", args.run.display());
    }
    if let Ok(mut entries) = std::fs::read_dir(&args.out)
        && entries.next().is_some()
    {
        let earlier_export = astro_model::transformer::is_export(&args.out);
        if !(args.force && earlier_export) {
            bail!(
                "{} already holds files; choose a new directory{}",
                args.out.display(),
                if earlier_export { " or pass --force to replace the earlier export" } else { "" }
            );
        }
    }
    run.net.export(&args.out)?;
    let mut files = vec!["model.safetensors", "config.json", "reference.safetensors"];
    if run.tokenizer.is_some() {
        let from = run.dir.join("tokenizer.json");
        std::fs::copy(&from, args.out.join("tokenizer.json"))
            .with_context(|| format!("cannot copy {} into {}", from.display(), args.out.display()))?;
        files.push("tokenizer.json");
    }
    let run_toml = args.out.join(RUN_CONFIG_FILE);
    std::fs::write(&run_toml, run.config.to_toml()).with_context(|| format!("cannot write {}", run_toml.display()))?;
    files.push(RUN_CONFIG_FILE);
    println!(
        "exported {} ({}) → {}: {}",
        run.weights.display(),
        run.config.model.describe(),
        args.out.display(),
        files.join(", ")
    );
    Ok(())
}
