//! `astro ablate`: a grid of training runs, tabulated and plotted.

use std::path::PathBuf;

/// Arguments of `astro ablate`.
#[derive(clap::Args, Debug)]
pub struct AblateArgs {
    /// Ablation config (configs/ablation/<name>.toml).
    #[arg(long, short)]
    config: PathBuf,
    /// Output directory (default: reports/<name of the config>).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: AblateArgs, device: Option<&str>) -> anyhow::Result<()> {
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("reports")
            .join(args.config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
    });
    let report = astro_eval::ablate::run(&args.config, &out, device.map(str::to_string))?;
    let failed = report.rows.iter().filter(|r| r.status != "ok").count();
    println!(
        "ablation: {} cells ({} trained now, {} already done, {} failed)",
        report.rows.len(),
        report.trained,
        report.skipped,
        failed
    );
    for f in &report.files {
        println!("  wrote {}", f.display());
    }
    Ok(())
}
