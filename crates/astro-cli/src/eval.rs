//! `astro eval` and `astro generate`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use astro_eval::evaluate::{evaluate_task, evaluate_text};
use astro_eval::{Run, Weights};
use astro_model::transformer::{SamplingConfig, generate};

/// Arguments of `astro eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Run directory made by `astro train`, or an export made by `astro export` (`--model`).
    #[arg(long, visible_alias = "model", value_name = "DIR")]
    run: PathBuf,
    /// Evaluate a language model on this text file or directory instead of its validation split.
    #[arg(long, value_name = "PATH", conflicts_with = "examples")]
    data: Option<PathBuf>,
    /// Test examples for a task run (default: the run's train.test_examples).
    #[arg(long)]
    examples: Option<usize>,
    /// Evaluate the best-validation weights (best.bpk) instead of the final ones.
    #[arg(long)]
    best: bool,
    /// Stop after this many tokens (quick estimates on large corpora).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run_eval(args: EvalArgs, device: Option<&str>) -> anyhow::Result<()> {
    let device = crate::device(device)?;
    let weights = if args.best { Weights::Best } else { Weights::Final };
    let run = Run::load(&args.run, weights, &device)?;
    let report = match &run.config.task {
        Some(_) => {
            if args.data.is_some() {
                bail!("{} trained on a task; --data applies to language-model runs", args.run.display());
            }
            evaluate_task(&run, args.examples.unwrap_or(run.config.train.test_examples))?
        }
        None => evaluate_text(&run, args.data.as_deref(), args.max_tokens)?,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{} on {}", report.weights.display(), report.on);
        println!("  loss           {:.4}", report.loss);
        if let Some(p) = report.perplexity {
            println!("  perplexity     {p:.3}");
        }
        if let Some(b) = report.bits_per_char {
            println!("  bits per char  {b:.4}");
        }
        if let Some(b) = report.bits_per_byte {
            println!("  bits per byte  {b:.4}");
        }
        if let Some(a) = report.accuracy {
            println!("  accuracy       {a:.4}");
        }
        println!(
            "  tokens         {}  ({:.0} tokens/s, {:.2} s)",
            report.tokens, report.tokens_per_sec, report.seconds
        );
    }
    Ok(())
}

/// Arguments of `astro generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Run directory made by `astro train`, or an export made by `astro export` (`--model`).
    #[arg(long, visible_alias = "model", value_name = "DIR")]
    run: PathBuf,
    /// Text to continue.
    #[arg(long)]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 200)]
    top_k: usize,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Use the best-validation weights.
    #[arg(long)]
    best: bool,
    /// Print milliseconds per generated token (and the prompt's encoding time) to stderr.
    #[arg(long)]
    stats: bool,
}

pub fn run_generate(args: GenerateArgs, device: Option<&str>) -> anyhow::Result<()> {
    let device = crate::device(device)?;
    let weights = if args.best { Weights::Best } else { Weights::Final };
    let run = Run::load(&args.run, weights, &device)?;
    let tokenizer = run.tokenizer.as_ref().with_context(|| {
        format!(
            "{} has no tokenizer to generate text with (a task run, or an export without tokenizer.json)",
            args.run.display()
        )
    })?;
    let lm = run.net.lm().context("this run holds a classifier, not a language model")?;
    let lm = burn::module::Module::valid(lm);
    if args.prompt.is_empty() {
        bail!("--prompt is empty; give at least one character");
    }
    let prompt =
        tokenizer.encode(&args.prompt).with_context(|| "the prompt cannot be encoded with this run's tokenizer")?;
    let sampling = SamplingConfig {
        temperature: args.temperature,
        top_k: (args.top_k > 0).then_some(args.top_k),
        seed: args.seed,
    };
    let mut out = std::io::stdout();
    let mut stream = astro_data::DecodeStream::new(tokenizer.as_ref(), &prompt)?;
    write!(out, "{}", stream.text())?;
    out.flush()?;
    let started = Instant::now();
    let mut first_token_at = None;
    let mut token_times = Vec::with_capacity(args.tokens);
    generate(&lm, &prompt, args.tokens, &sampling, |t| {
        first_token_at.get_or_insert_with(|| started.elapsed());
        token_times.push(started.elapsed().as_secs_f64());
        if let Some(new) = stream.push(t) {
            let _ = write!(out, "{new}");
            let _ = out.flush();
        }
    })?;
    writeln!(out)?;
    if args.stats {
        let total = started.elapsed().as_secs_f64();
        let prompt_s = first_token_at.map_or(total, |d| d.as_secs_f64());
        let per_token = if args.tokens > 1 { (total - prompt_s) / (args.tokens - 1) as f64 } else { 0.0 };
        eprintln!(
            "prompt {} tokens encoded + first token in {:.1} ms; {:.3} ms per further token ({} tokens, {})",
            prompt.len(),
            prompt_s * 1e3,
            per_token * 1e3,
            args.tokens,
            run.config.model.attention.describe()
        );
        // Learned positions: tokens past the block re-encode the window; report both kinds apart.
        if let Some(limit) = lm.trunk.max_positions() {
            let start = prompt.len().min(run.config.model.block_size.min(limit));
            let (mut within, mut past) = (Vec::new(), Vec::new());
            for (i, pair) in token_times.windows(2).enumerate() {
                let dt = (pair[1] - pair[0]) * 1e3;
                if start + i + 1 > limit { past.push(dt) } else { within.push(dt) }
            }
            let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len().max(1) as f64;
            eprintln!(
                "within the block ({limit} positions): {} tokens, {:.3} ms each; past it (window re-encoded): {} tokens, {:.3} ms each",
                within.len(),
                mean(&within),
                past.len(),
                mean(&past)
            );
        }
    }
    Ok(())
}
