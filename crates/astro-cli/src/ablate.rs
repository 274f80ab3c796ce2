//! `astro ablate`: a grid of training runs, tabulated and plotted; each cell also runs on its own
//! (`--cell`), so a scheduler can spread the grid (`--slurm` submits it as a Slurm job array).

use std::path::PathBuf;

use astro_eval::ablate::slurm::{self, SlurmOptions};
use astro_eval::ablate::{self, CellOutcome, Grid, RunOptions};

/// Arguments of `astro ablate`.
#[derive(clap::Args, Debug)]
pub struct AblateArgs {
    /// Ablation config (configs/ablation/<name>.toml).
    #[arg(long, short)]
    config: PathBuf,
    /// Output directory (default: reports/<name of the config>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print each cell's id, status (pending, running, finished, failed, changed) and label; train nothing.
    #[arg(long, conflicts_with_all = ["cell", "report", "slurm"])]
    list: bool,
    /// Train one cell (its index, as `--list` and Slurm's array task id give it, or its id `cell-003`).
    #[arg(long, value_name = "I", conflicts_with_all = ["report", "slurm"])]
    cell: Option<String>,
    /// Write the report (tables and plots) of whatever has finished, and list what has not; train nothing.
    #[arg(long, conflicts_with = "slurm")]
    report: bool,
    /// Train cells whose runs were made with another config than the grid now gives them again
    /// (their old runs are kept under OUT/replaced/), instead of refusing.
    #[arg(long)]
    rerun_changed: bool,
    #[command(flatten)]
    slurm: SlurmArgs,
}

/// Options of `--slurm`.
#[derive(clap::Args, Debug)]
struct SlurmArgs {
    /// Submit the unfinished cells as one Slurm job array (one task per cell) and a report job after it.
    #[arg(long)]
    slurm: bool,
    /// With --slurm: print the scripts and the sbatch commands; submit nothing.
    #[arg(long, requires = "slurm")]
    dry_run: bool,
    /// With --slurm: the partition.
    #[arg(long, requires = "slurm")]
    partition: Option<String>,
    /// With --slurm: each task's time limit (e.g. 04:00:00).
    #[arg(long, requires = "slurm")]
    time: Option<String>,
    /// With --slurm: CPUs per task (astro then uses that many threads).
    #[arg(long, requires = "slurm", value_name = "N")]
    cpus: Option<u32>,
    /// With --slurm: memory per task (e.g. 8G).
    #[arg(long, requires = "slurm")]
    mem: Option<String>,
    /// With --slurm: GPUs per task (--gres=gpu:N); give --device too (e.g. --device cuda).
    #[arg(long, requires = "slurm", value_name = "N")]
    gpus: Option<u32>,
    /// With --slurm: at most this many tasks at once (the array's % throttle).
    #[arg(long, requires = "slurm", default_value_t = 8, value_name = "K")]
    max_parallel: usize,
    /// With --slurm: Slurm signals a task this many seconds before its time limit; it checkpoints and requeues itself.
    #[arg(long, requires = "slurm", default_value_t = 120, value_name = "SECONDS")]
    signal_before: u32,
    /// With --slurm: one more #SBATCH option, as written (e.g. --sbatch-arg=--account=lab); repeatable.
    #[arg(long, requires = "slurm", value_name = "OPTION", allow_hyphen_values = true)]
    sbatch_arg: Vec<String>,
}

pub fn run(args: AblateArgs, device: Option<&str>) -> anyhow::Result<()> {
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("reports")
            .join(args.config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
    });
    let grid = Grid::load(&args.config, &out)?;
    if args.list {
        list(&grid);
        return Ok(());
    }
    if args.slurm.slurm {
        return submit(&grid, &args, device);
    }
    if args.report {
        let report = ablate::report(&grid)?;
        println!("report: {} of {} cells finished or failed", report.rows.len(), grid.cells.len());
        for (id, status) in &report.unfinished {
            println!("  not finished: {id} {status}");
        }
        for f in &report.files {
            println!("  wrote {}", f.display());
        }
        return Ok(());
    }
    let options = RunOptions {
        device: device.map(str::to_string),
        interrupt: astro_train::Interrupt::install()?,
        rerun_changed: args.rerun_changed,
    };
    if let Some(which) = &args.cell {
        let cell = grid.find(which)?;
        eprintln!("[ablation] {} — {}", cell.id, cell.label());
        match grid.run_cell(cell, &options)? {
            CellOutcome::Trained(s) => {
                println!("{}: trained, {} steps, val loss {:?}", cell.id, s.steps, s.final_val_loss)
            }
            CellOutcome::AlreadyFinished(s) => {
                println!("{}: finished earlier ({} steps); nothing to do", cell.id, s.steps)
            }
            CellOutcome::Failed(error) => anyhow::bail!(
                "{} failed: {error}\n(recorded in {}; `astro ablate --report` lists it, a later run trains it again)",
                cell.id,
                out.join("cells").join(format!("{}.json", cell.id)).display()
            ),
        }
        return Ok(());
    }
    let report = ablate::run(&grid, &options)?;
    let failed = report.rows.iter().filter(|r| r.status != "ok").count();
    println!(
        "ablation: {} cells ({} trained now, {} already done or running elsewhere, {} failed, {} not finished)",
        grid.cells.len(),
        report.trained,
        report.skipped,
        failed,
        report.unfinished.len()
    );
    for f in &report.files {
        println!("  wrote {}", f.display());
    }
    Ok(())
}

/// `--list`: one line per cell.
fn list(grid: &Grid) {
    let values: Vec<String> = grid.cells.iter().map(|c| c.values_text()).collect();
    let width = values.iter().map(|v| v.chars().count()).max().unwrap_or(0).max(6);
    println!("{:<9} {:>5}  {:<width$}  status", "cell", "index", "values");
    for (i, (cell, values)) in grid.cells.iter().zip(&values).enumerate() {
        println!("{:<9} {:>5}  {values:<width$}  {}", cell.id, i, grid.status(cell).describe());
    }
}

/// `--slurm`: plan the job array, then print it (`--dry-run`) or submit it.
fn submit(grid: &Grid, args: &AblateArgs, device: Option<&str>) -> anyhow::Result<()> {
    let s = &args.slurm;
    let options = SlurmOptions {
        partition: s.partition.clone(),
        time: s.time.clone(),
        cpus_per_task: s.cpus,
        mem: s.mem.clone(),
        gpus: s.gpus,
        max_parallel: s.max_parallel,
        signal_seconds: s.signal_before,
        extra: s.sbatch_arg.clone(),
        device: device.map(str::to_string),
        rerun_changed: args.rerun_changed,
    };
    let astro = std::env::current_exe()?;
    let plan = slurm::plan(grid, &options, &astro)?;
    if plan.indices.is_empty() {
        let report = ablate::report(grid)?;
        println!("every cell of {} has finished; nothing to submit. The report:", grid.config_path.display());
        for f in &report.files {
            println!("  wrote {}", f.display());
        }
        return Ok(());
    }
    let dir = grid.out.join("slurm");
    if s.dry_run {
        println!("# {}/ablate-array.sbatch\n{}", dir.display(), plan.array_script);
        println!("# {}/ablate-report.sbatch\n{}", dir.display(), plan.report_script);
        println!("# would run:");
        println!("sbatch --parsable --array={} {}/ablate-array.sbatch", plan.array, dir.display());
        println!("sbatch --parsable --dependency=afterany:<array job id> {}/ablate-report.sbatch", dir.display());
        return Ok(());
    }
    let submitted = slurm::submit(grid, &plan)?;
    println!(
        "submitted job array {} ({} cell{}: --array={}) and report job {} after it",
        submitted.array_job,
        plan.indices.len(),
        if plan.indices.len() == 1 { "" } else { "s" },
        plan.array,
        submitted.report_job
    );
    println!("  scripts: {}, {}", submitted.scripts[0].display(), submitted.scripts[1].display());
    println!("  logs:    {}/cell-<index>.out, {}/report.out", dir.display(), dir.display());
    println!(
        "  watch:   squeue -j {},{}   |   astro ablate --config {} --out {} --list",
        submitted.array_job,
        submitted.report_job,
        grid.config_path.display(),
        grid.out.display()
    );
    Ok(())
}
