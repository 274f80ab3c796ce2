//! `astro`: train, evaluate and inspect astrocytic-attention Transformers.

mod ablate;
mod bench;
mod compare;
mod distill;
mod embed;
mod eval;
mod export;
mod fidelity;
mod info;
mod oom;
mod replicate;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Astrocytic-attention Transformers (Kozachkov, Kastanenka & Krotov, PNAS 2023) on Burn.
#[derive(Parser, Debug)]
#[command(name = "astro", version, about)]
struct Cli {
    /// Compute backend: flex (CPU, default), ndarray (CPU), wgpu (GPU; wgpu:N the N-th discrete GPU,
    /// wgpu:cpu the software adapter) or cuda (NVIDIA GPU; cuda:N); default from $ASTRO_DEVICE.
    #[arg(long, global = true)]
    device: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a language model (default: shakespeare-char with astrocytic attention).
    Train(train::TrainArgs),
    /// Evaluate a run: loss, perplexity, bits per character/byte, or task accuracy.
    Eval(eval::EvalArgs),
    /// Generate text from a run, streaming tokens as they are produced.
    Generate(eval::GenerateArgs),
    /// Write a run's model as model.safetensors (PyTorch layout) + config.json + tokenizer.json.
    Export(export::ExportArgs),
    /// Sentence embeddings from a Hugging Face BERT checkpoint (optionally with astro attention swapped in).
    Embed(embed::EmbedArgs),
    /// Train a grid of runs over config keys, then tabulate and plot them (resumable).
    Ablate(ablate::AblateArgs),
    /// Compare runs: their losses against steps, tokens and seconds (plots), and a table.
    Compare(compare::CompareArgs),
    /// Swap a softmax-trained model's attention for astrocytic attention (same weights) and report fidelity against m.
    Fidelity(fidelity::FidelityArgs),
    /// Fit astrocytic attention to a softmax-trained model's attention (astrocyte plasticity).
    Distill(distill::DistillArgs),
    /// The paper's experiment on a pretrained BERT encoder: astrocyte response against softmax's normaliser, with numbers.
    Replicate(replicate::ReplicateArgs),
    /// Benchmark training/inference throughput, long contexts and generation per attention variant.
    Bench(bench::BenchArgs),
    /// Print a model's parameters per module, the total, and its decoding-state size.
    Info(info::InfoArgs),
}

/// Counts heap bytes for `astro bench`'s peak-memory column (two relaxed atomics per allocation),
/// and turns a failed allocation into an `error:` line and exit status 1 (see `oom.rs`).
#[global_allocator]
static ALLOCATOR: oom::ExitOnOom<astro_eval::bench::PeakAlloc<std::alloc::System>> =
    oom::ExitOnOom(astro_eval::bench::PeakAlloc(std::alloc::System));

/// Keeps freed heap memory in the process (glibc): by default every allocation above 128 KiB is its
/// own mmap, returned to the OS when freed, so each training step page-faulted its activations back
/// in (`perf`: ~10 % of a step in page faults, memmove and memset). With a 32 MiB mmap threshold, no
/// trimming and 256 MiB top padding the b16-t256 training step is ~30 % faster (softmax 3.4k →
/// 4.4k tokens/s, astrocytic 2.1k → 2.7k). `MALLOC_*_` environment variables still override.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (param, value, env) in [
        (libc::M_MMAP_THRESHOLD, 32 << 20, "MALLOC_MMAP_THRESHOLD_"),
        (libc::M_TRIM_THRESHOLD, 1 << 30, "MALLOC_TRIM_THRESHOLD_"),
        (libc::M_TOP_PAD, 256 << 20, "MALLOC_TOP_PAD_"),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: mallopt only changes glibc's allocation policy; it is called before any thread starts.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

/// Mesa's Vulkan drivers print `error: XDG_RUNTIME_DIR is invalid or not set in the environment.`
/// at start-up (four times) when the variable is unset, as on servers and in containers; astro opens
/// no window, so the message only reads as if astro had failed. Where it is unset, it is pointed at
/// a private directory under the temporary folder before any thread starts.
#[cfg(all(unix, feature = "wgpu"))]
fn quiet_vulkan_start() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("astro-runtime-{uid}"));
    let private = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
        .is_ok();
    if private {
        // SAFETY: called first thing in `main`, before any thread exists that could read the environment.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
    }
}

fn main() -> ExitCode {
    #[cfg(all(unix, feature = "wgpu"))]
    quiet_vulkan_start();
    tune_allocator();
    // A write past a file-size limit (`ulimit -f`) then fails with EFBIG, which is reported like a
    // full disk (previous checkpoint intact), instead of the signal killing the process mid-write.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN before any thread exists has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    // Without ASTRO_LOG: errors only, and none from the GPU stack's adapter probing (wgpu tries
    // every API and logs each one that is missing, e.g. OpenGL on a machine with Vulkan only);
    // a device that cannot be opened is reported as astro's own error.
    let filter = tracing_subscriber::EnvFilter::try_from_env("ASTRO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,wgpu_hal=off,wgpu_core=off,naga=off"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    // The command runs on a worker of a rayon pool rather than on the main thread. flex, gemm and
    // astro's kernels split every operation over the current pool; called from outside a pool, each
    // operation is handed to the pool's threads while the caller sleeps and is woken again (two
    // context switches per operation, three threads on two cores). On a worker the caller does its
    // share and steals the rest (issue 15: the scheduler was ~12 % of a recipe training step).
    // RAYON_NUM_THREADS still sets the thread count.
    let result = match rayon::ThreadPoolBuilder::new().stack_size(WORKER_STACK).build() {
        Ok(pool) => pool.install(|| run(cli)),
        Err(_) => run(cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if interrupted(&err) => {
            // Stopped on a signal after a checkpoint: a line saying where, and a status of its own.
            let cause = err.chain().find(|c| {
                c.downcast_ref::<astro_train::TrainError>().is_some()
                    || c.downcast_ref::<astro_eval::EvalError>().is_some()
            });
            eprintln!("{}", cause.unwrap_or(err.as_ref()));
            ExitCode::from(astro_train::EXIT_INTERRUPTED)
        }
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether `err` is a training run that stopped on a signal (SIGTERM, SIGINT, SIGUSR1).
fn interrupted(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        matches!(c.downcast_ref::<astro_train::TrainError>(), Some(astro_train::TrainError::Interrupted { .. }))
            || matches!(
                c.downcast_ref::<astro_eval::EvalError>(),
                Some(astro_eval::EvalError::Train(astro_train::TrainError::Interrupted { .. }))
            )
    })
}

/// Stack of the pool's threads, which run whole commands (the main thread's default size).
const WORKER_STACK: usize = 8 << 20;

/// Runs one parsed command.
fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => train::run(args, cli.device.as_deref()),
        Command::Eval(args) => eval::run_eval(args, cli.device.as_deref()),
        Command::Generate(args) => eval::run_generate(args, cli.device.as_deref()),
        Command::Export(args) => export::run(args, cli.device.as_deref()),
        Command::Embed(args) => embed::run(args, cli.device.as_deref()),
        Command::Bench(args) => bench::run_bench(args, cli.device.as_deref()),
        Command::Ablate(args) => ablate::run(args, cli.device.as_deref()),
        Command::Compare(args) => compare::run(args),
        Command::Fidelity(args) => fidelity::run(args, cli.device.as_deref()),
        Command::Distill(args) => distill::run(args, cli.device.as_deref()),
        Command::Replicate(args) => replicate::run(args, cli.device.as_deref()),
        Command::Info(args) => info::run(args, cli.device.as_deref()),
    }
}

/// The device named by `--device` (or the default one).
pub(crate) fn device(name: Option<&str>) -> anyhow::Result<burn::tensor::Device> {
    use astro_model::device::{BackendKind, DeviceSpec};
    match name {
        Some(n) if n.contains(',') => {
            anyhow::bail!("--device {n}: this command runs on one device; several are for `astro train --devices`")
        }
        Some(n) => Ok(n.parse::<DeviceSpec>()?.open()?),
        None => Ok(BackendKind::default_kind()?.device()?),
    }
}

/// `--feature-map` text → the map, or an error listing the choices.
pub(crate) fn feature_map(name: &str) -> anyhow::Result<astro_model::attention::FeatureMap> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
        anyhow::anyhow!(
            "unknown feature map `{name}`; expected positive, saderf, shifted_saderf, full_saderf, cosine, truncated, positive_cosine, linear, elu, taylor or hedgehog"
        )
    })
}

/// Text from a file, or from a named dataset of the manifest (found offline or downloaded).
pub(crate) fn read_text_source(source: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(source);
    let spec = if path.exists() || !astro_data::corpus::manifest()?.contains_key(source) {
        astro_data::CorpusSpec::file(path)
    } else {
        astro_data::CorpusSpec::named(source)
    };
    Ok(spec.load()?.text)
}
