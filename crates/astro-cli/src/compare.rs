//! `astro compare RUN… --out DIR`: runs side by side (curves against steps, tokens and seconds; a
//! table of final and best losses, throughput and training time; `--against KEY`: final accuracy or
//! loss against a number of the runs' configs).

use std::path::PathBuf;

/// Arguments of `astro compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Run directories (runs/<name>, or an ablation's OUT/runs/cell-NNN).
    #[arg(required = true, value_name = "RUN")]
    runs: Vec<PathBuf>,
    /// Output directory for the plots (PNG + SVG) and compare.md / compare.csv.
    #[arg(long)]
    out: PathBuf,
    /// A run's name in legends and the table, once per run in order (default: its directory's name).
    #[arg(long = "label", value_name = "LABEL")]
    labels: Vec<String>,
    /// Also draw each run's final accuracy (validation loss where runs have none) against this number
    /// of their config.toml, e.g. `task.seq_len`; runs that share a --label form one line.
    #[arg(long, value_name = "KEY")]
    against: Option<String>,
}

pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let labels = (!args.labels.is_empty()).then_some(args.labels.as_slice());
    let report = astro_eval::compare::compare(&args.runs, labels, args.against.as_deref(), &args.out)?;
    let path = args.out.join("compare.md");
    print!("{}", std::fs::read_to_string(&path).unwrap_or_default());
    for f in &report.files {
        println!("  wrote {}", f.display());
    }
    Ok(())
}
