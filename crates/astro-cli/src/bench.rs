//! `astro bench`: throughput, long-context time and memory, generation latency and FLOP/s per
//! attention variant (see `astro_eval::bench`; `scripts/bench_compare.sh` puts PyTorch beside it).

use anyhow::bail;
use astro_eval::bench::{BenchOptions, Section, markdown, model_config, run};

/// Arguments of `astro bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Sections to run: train, forward, long, generate, matmul, and on request chunk (the chunk-size
    /// probe) and train-long (training tokens/s and peak heap at --lengths, rotary, --long-tokens per step).
    #[arg(long, value_delimiter = ',', default_value = "train,forward,long,generate,matmul")]
    only: Vec<String>,
    /// Attention variants: softmax, astrocytic, linear; and taylor-conv (the MQAR recall configuration).
    #[arg(long, value_delimiter = ',', default_value = "softmax,astrocytic,linear")]
    variants: Vec<String>,
    /// Timed repetitions per figure (the median is reported, with min and max).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Untimed warm-up repetitions per figure.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Context lengths of the long-context forward (batch 1).
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,16384")]
    lengths: Vec<usize>,
    /// Prompt lengths at which generation latency is measured.
    #[arg(long, value_delimiter = ',', default_value = "64,4096")]
    contexts: Vec<usize>,
    /// Hidden neurons m of the astrocytic variant.
    #[arg(long, default_value_t = 256)]
    features: usize,
    /// Training tokens per step of train-long (batch = this / T).
    #[arg(long, default_value_t = 16384)]
    long_tokens: usize,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `astro bench`.
pub fn run_bench(args: BenchArgs, device: Option<&str>) -> anyhow::Result<()> {
    let mut sections = Vec::new();
    for name in &args.only {
        match Section::parse(name) {
            Some(s) => sections.push(s),
            None => {
                let known: Vec<&str> = Section::ALL.iter().map(|s| s.name()).collect();
                bail!("unknown section `{name}` in --only; expected some of: {}", known.join(", "))
            }
        }
    }
    // Every variant is checked before any section runs (the benchmark model names the known ones).
    for v in &args.variants {
        model_config(v, 64, args.features)?;
    }
    let options = BenchOptions {
        sections,
        variants: args.variants,
        repeats: args.repeats,
        warmup: args.warmup,
        lengths: args.lengths,
        contexts: args.contexts,
        features: args.features,
        long_tokens: args.long_tokens,
        ..BenchOptions::default()
    };
    let device = crate::device(device)?;
    let report = run(&options, &device, |row| {
        eprintln!(
            "{:<8} {:<9} {:<10} {:>10.1} {}{}",
            row.section,
            row.shape,
            row.variant,
            row.value.median,
            row.unit,
            row.peak_mib.map_or(String::new(), |p| format!("  (peak {p:.0} MiB)"))
        );
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", markdown(&report));
    }
    Ok(())
}
