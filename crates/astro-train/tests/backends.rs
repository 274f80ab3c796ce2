//! One seed, one model, on every backend: initial parameters are drawn on the host and moved to
//! the device, so every compiled backend starts from flex's weights and trains alike.
//!
//! These need a second backend compiled in, e.g.
//! `cargo test -p astro-train --features astro-model/flex,astro-model/wgpu --test backends`
//! (CI runs that on Mesa's software Vulkan, with `ASTRO_REQUIRE_BACKENDS=wgpu` so that a missing
//! backend fails instead of skipping). Under a plain `cargo test` only flex is compiled and the
//! tests say they skip. CI compiles ndarray in too (`ASTRO_REQUIRE_BACKENDS=wgpu,ndarray`) and sets
//! `$ASTRO_EXPORT_DIR`, so that the models trained on each backend are checked against PyTorch.

use std::path::Path;

use astro_data::tasks::IGNORE;
use astro_model::device::BackendKind;
use astro_train::batch::Batch;
use astro_train::trainer::initial_net;
use astro_train::{RunConfig, TrainOptions, train};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Int, Tensor, TensorData};

/// The host generator is one per process: tests that seed it and draw from it take turns.
static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The compiled backends other than flex (which must be compiled); panics when a backend named in
/// `$ASTRO_REQUIRE_BACKENDS` (comma-separated) is missing.
fn others() -> Vec<BackendKind> {
    let required: Vec<BackendKind> = std::env::var("ASTRO_REQUIRE_BACKENDS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.parse().expect("a backend name in ASTRO_REQUIRE_BACKENDS"))
        .collect();
    for kind in &required {
        assert!(kind.is_compiled(), "ASTRO_REQUIRE_BACKENDS names {kind}, which is not compiled in");
    }
    assert!(BackendKind::Flex.is_compiled(), "these tests compare against flex");
    let others: Vec<_> = BackendKind::compiled().into_iter().filter(|k| *k != BackendKind::Flex).collect();
    if others.is_empty() {
        eprintln!("skipped: build with --features astro-model/flex,astro-model/wgpu (or ndarray) to compare backends");
    }
    others
}

/// A deterministic word corpus of about `bytes` bytes.
fn corpus(path: &Path, bytes: usize) {
    let words = ["astrocyte", "neuron", "synapse", "calcium", "the", "of", "wave", "glia"];
    let mut state = 99u64;
    let mut text = String::new();
    while text.len() < bytes {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        text.push_str(words[(state >> 33) as usize % words.len()]);
        text.push(if (state >> 20).is_multiple_of(7) { '\n' } else { ' ' });
    }
    std::fs::write(path, text).unwrap();
}

/// A tiny astrocytic run without dropout (dropout masks are drawn on the device).
fn config(root: &Path, name: &str) -> RunConfig {
    let data = root.join("corpus.txt");
    if !data.exists() {
        corpus(&data, 20_000);
    }
    let text = format!(
        r#"[run]
name = "{name}"
out_dir = "{out}"
seed = 11

[data]
path = "{data}"
tokenizer = {{ kind = "char" }}

[model]
block_size = 16
n_layer = 2
n_head = 2
n_embd = 16
dropout = 0.0
attention = {{ kind = "astrocytic", features = 16, chunk_size = 4 }}

[optim]
batch_size = 4
warmup_iters = 2

[train]
max_iters = 4
eval_interval = 2
eval_iters = 1
log_interval = 1
checkpoint_interval = 4
sample_tokens = 0
"#,
        out = root.join("runs").display(),
        data = data.display(),
    );
    RunConfig::from_toml(&text, "backends test").unwrap()
}

/// Every float parameter's values, in visiting order.
fn parameters(module: &impl Module) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().into_data().try_into_vec_as::<f32>().expect("f32 values"));
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}

#[test]
fn every_backend_starts_from_flex_weights() {
    let _turn = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), "init");
    config.model.vocab_size = Some(12);
    let on = |kind: BackendKind| {
        let ad = kind.device().unwrap().autodiff();
        parameters(&initial_net(&config, kind, &ad).unwrap())
    };
    let flex = on(BackendKind::Flex);
    assert!(flex.len() > 5, "the model has parameters");
    for kind in others() {
        let other = on(kind);
        assert_eq!(flex.len(), other.len());
        for (i, (a, b)) in flex.iter().zip(&other).enumerate() {
            assert_eq!(a, b, "parameter {i} differs between flex and {kind}");
        }
        // And a second draw with the same seed is the same model again (the host generator is reseeded).
        assert_eq!(on(kind), other);
    }
}

#[test]
fn runs_on_every_backend_agree_with_flex_step_by_step() {
    let _turn = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let others = others();
    if others.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let losses = |device: &str| -> Vec<(f64, Option<f64>)> {
        let options = TrainOptions { device: Some(device.into()), ..TrainOptions::default() };
        let summary = train(config(dir.path(), device), options).unwrap();
        if device != "flex" {
            export_trained(&summary.run_dir, device);
        }
        run_losses(&summary.run_dir)
    };
    let flex = losses("flex");
    assert_eq!(flex.len(), 4, "one metrics row per step");
    for kind in others {
        let other = losses(&kind.to_string());
        assert_eq!(flex.len(), other.len());
        for (step, (a, b)) in flex.iter().zip(&other).enumerate() {
            assert!((a.0 - b.0).abs() < 1e-4, "step {}: train loss flex {} vs {kind} {}", step + 1, a.0, b.0);
            assert_eq!(a.1.is_some(), b.1.is_some());
            if let (Some(x), Some(y)) = (a.1, b.1) {
                assert!((x - y).abs() < 1e-4, "step {}: val loss flex {x} vs {kind} {y}", step + 1);
            }
        }
    }
}

/// Exports the model a run trained on `device` from that device (its reference logits computed
/// there) into `$ASTRO_EXPORT_DIR/<device>` when that is set — CI then checks it with
/// `scripts/astro_torch.py` — and checks here that the export reloads to the same logits.
fn export_trained(run_dir: &Path, device: &str) {
    use astro_train::Net;
    let kind: BackendKind = device.parse().unwrap();
    let on = kind.device().unwrap();
    let net = Net::load(&run_dir.join("model.bpk"), &on).unwrap();
    let out = match std::env::var_os("ASTRO_EXPORT_DIR") {
        Some(root) => Path::new(&root).join(device),
        None => run_dir.join("export"),
    };
    if out.exists() {
        std::fs::remove_dir_all(&out).unwrap();
    }
    net.export(&out).unwrap();
    let (Net::Lm(trained), Net::Lm(reloaded)) = (net, Net::from_export(&out, &on).unwrap()) else {
        panic!("a language model")
    };
    let host = |t: Tensor<3>| t.into_data().try_into_vec_as::<f32>().unwrap();
    let (a, b) = (host(trained.forward(tokens(&on))), host(reloaded.forward(tokens(&on))));
    assert!(err(&b, &a) < 1e-6, "{device}: the export reloads to other logits ({})", err(&b, &a));
}

/// `[batch, seq]` token ids from a fixed pattern (vocabulary 12).
fn tokens(device: &burn::tensor::Device) -> Tensor<2, burn::tensor::Int> {
    let ids: Vec<i64> = (0..2 * 12).map(|i| (i * 7 % 12) as i64).collect();
    Tensor::from_data(burn::tensor::TensorData::new(ids, [2, 12]), device)
}

/// max |a − b| / max(max |b|, 1).
fn err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn every_attention_form_agrees_with_flex_on_every_backend() {
    let _turn = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    use astro_model::transformer::DecodeState;
    let others = others();
    if others.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The paper's map, elu+1, softmax, the recall configuration (Taylor map + short convolution),
    // the paper's map beside a sliding window, a calibrated map (fitted on each device) and Hedgehog's
    // trained map.
    let variants = [
        r#"{ kind = "astrocytic", features = 16, chunk_size = 4 }"#,
        r#"{ kind = "astrocytic", features = 16, window = 3 }"#,
        r#"{ kind = "linear", chunk_size = 4 }"#,
        r#"{ kind = "softmax" }"#,
        r#"{ kind = "astrocytic", features = 4, feature_map = "taylor", learnable_omega = true }"#,
        r#"{ kind = "astrocytic", features = 16, feature_map = "shifted_saderf" }"#,
        r#"{ kind = "astrocytic", features = 8, feature_map = "hedgehog" }"#,
    ];
    for (i, attention) in variants.into_iter().enumerate() {
        let mut config = config(dir.path(), "forms");
        config = config.with_overrides(&[format!("model.attention={attention}")]).unwrap();
        if i == 4 {
            config = config.with_overrides(&["model.short_conv=2".to_string()]).unwrap();
        }
        config.model.vocab_size = Some(12);
        // Logits, every parameter's gradient of Σ logits², eval-mode logits, and the logits of
        // token-by-token decoding from the recurrent state or KV cache.
        let run = |kind: BackendKind| -> (Vec<f32>, Vec<Vec<f32>>, Vec<f32>, Vec<f32>) {
            let ad = kind.device().unwrap().autodiff();
            let Ok(astro_train::Net::Lm(model)) = initial_net(&config, kind, &ad) else { panic!("a language model") };
            // Calibrated maps fit ψ, c and A to this device's own queries and keys first.
            let model =
                if attention.contains("saderf") { model.calibrate(tokens(&ad), false).unwrap().0 } else { model };
            let logits = model.forward(tokens(&ad));
            let grads = (logits.clone() * logits.clone()).sum().backward();
            let grads = burn::optim::GradientsParams::from_grads(grads, &model);
            struct Grads<'a>(&'a burn::optim::GradientsParams, Vec<Vec<f32>>);
            impl ModuleVisitor for Grads<'_> {
                fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                    // Fixed parameters (Ω unless learnable) have none: an empty entry, compared as such.
                    let g = self.0.get::<D>(param.id).map(|g| g.into_data().try_into_vec_as::<f32>().unwrap());
                    self.1.push(g.unwrap_or_default());
                }
            }
            let mut g = Grads(&grads, Vec::new());
            model.visit(&mut g);
            let host = |t: Tensor<3>| t.into_data().try_into_vec_as::<f32>().unwrap();
            let valid = model.valid();
            let device = kind.device().unwrap();
            let eval = valid.forward(tokens(&device));
            let all = tokens(&device);
            let mut state = DecodeState::default();
            let mut steps = Vec::new();
            for t in 0..12 {
                let (out, next) = valid.forward_incremental(all.clone().narrow(1, t, 1), state).unwrap();
                steps.push(out);
                state = next;
            }
            (host(logits), g.1, host(eval), host(Tensor::cat(steps, 1)))
        };
        let flex = run(BackendKind::Flex);
        // Decoding token by token equals the parallel form on flex itself.
        assert!(err(&flex.3, &flex.2) < 1e-4, "{attention}: decoding differs from the parallel form");
        for kind in &others {
            let other = run(*kind);
            assert!(err(&other.0, &flex.0) < 1e-4, "{attention}: {kind} logits differ by {}", err(&other.0, &flex.0));
            assert!(flex.1.iter().filter(|g| !g.is_empty()).count() > 5, "the parameters receive gradients");
            for (j, (a, b)) in other.1.iter().zip(&flex.1).enumerate() {
                assert_eq!(a.len(), b.len(), "{attention}: parameter {j} has a gradient on one backend only");
                assert!(err(a, b) < 1e-3, "{attention}: {kind} gradient of parameter {j} differs by {}", err(a, b));
            }
            assert!(err(&other.2, &flex.2) < 1e-4, "{attention}: {kind} eval logits differ");
            assert!(
                err(&other.3, &flex.3) < 1e-4,
                "{attention}: {kind} decoding differs by {}",
                err(&other.3, &flex.3)
            );
        }
    }
}

/// Train and validation losses of each metrics row of a run.
fn run_losses(run_dir: &Path) -> Vec<(f64, Option<f64>)> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let row: astro_train::metrics::MetricsRow = serde_json::from_str(l).unwrap();
            (row.train_loss, row.val_loss)
        })
        .collect()
}

#[test]
fn batch_split_keeps_rows_in_order_and_counts_labelled_positions() {
    let device = BackendKind::Flex.device().unwrap();
    let ids: Vec<i64> = (0..12).collect();
    let inputs = Tensor::<2, Int>::from_data(TensorData::new(ids, [4, 3]), &device);
    // Rows 0–1 have 6 labelled targets, rows 2–3 only 2.
    let targets = vec![1, 2, 3, 4, 5, 6, IGNORE, IGNORE, 9, IGNORE, IGNORE, 12];
    let parts = Batch::Lm { inputs, targets }.split(&[device.clone(), device.clone()]);
    assert_eq!(parts.len(), 2);
    let rows = |b: &Batch| match b {
        Batch::Lm { inputs, targets } => {
            (inputs.clone().into_data().try_into_vec_as::<i64>().unwrap(), targets.clone())
        }
        Batch::Class { .. } => unreachable!(),
    };
    assert_eq!(rows(&parts[0].0), ((0..6).collect::<Vec<i64>>(), vec![1, 2, 3, 4, 5, 6]));
    assert_eq!(rows(&parts[1].0).0, (6..12).collect::<Vec<i64>>());
    assert_eq!((parts[0].1, parts[1].1), (6, 2));
    let labels = vec![0, 1, 1, 0];
    let inputs = Tensor::<2, Int>::zeros([4, 3], &device);
    let parts = Batch::Class { inputs, padding: None, labels }.split(&[device.clone(), device]);
    let Batch::Class { labels, .. } = &parts[1].0 else { unreachable!() };
    assert_eq!((labels.clone(), parts[1].1), (vec![1, 0], 2));
}

#[test]
fn data_parallel_over_two_wgpu_devices_equals_one_device() {
    let _turn = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    // On Mesa's software Vulkan the default adapter and the CPU adapter are two devices (separate
    // clients, memory and queues); elsewhere `$ASTRO_PARALLEL_DEVICES` names them (wgpu:0,wgpu:1 or
    // cuda:0,cuda:1). Skipped when the default pair cannot be opened; a named pair must open.
    let named = std::env::var("ASTRO_PARALLEL_DEVICES").ok();
    let pair = named.clone().unwrap_or_else(|| "wgpu,wgpu:cpu".to_string());
    let specs = astro_model::device::DeviceSpec::parse_list(&pair).unwrap();
    let single = specs[0].to_string();
    if let Some(e) = specs.iter().find_map(|s| s.open().err()) {
        assert!(named.is_none(), "ASTRO_PARALLEL_DEVICES={pair}: {e}");
        eprintln!("skipped: {pair} cannot be opened here ({e})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, devices: &str, accumulation: usize| {
        let mut config = config(dir.path(), name);
        config.optim.grad_accum = accumulation;
        let options = TrainOptions { device: Some(devices.into()), ..TrainOptions::default() };
        train(config, options).unwrap().run_dir
    };
    for accumulation in [1, 2] {
        let one = run(&format!("one-{accumulation}"), &single, accumulation);
        let two = run(&format!("two-{accumulation}"), &pair, accumulation);
        let (a, b) = (run_losses(&one), run_losses(&two));
        assert_eq!(a.len(), 4);
        for (step, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x.0 - y.0).abs() < 1e-5,
                "accumulation {accumulation}, step {}: loss {} vs {}",
                step + 1,
                x.0,
                y.0
            );
            if let (Some(p), Some(q)) = (x.1, y.1) {
                assert!((p - q).abs() < 1e-5, "step {}: val loss {p} vs {q}", step + 1);
            }
        }
        let device = specs[0].open().unwrap();
        let weights = |run: &Path| parameters(&astro_train::Net::load(&run.join("model.bpk"), &device).unwrap());
        let (a, b) = (weights(&one), weights(&two));
        assert!(a.len() > 5);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(err(y, x) < 1e-5, "accumulation {accumulation}: parameter {i} differs by {}", err(y, x));
        }
    }
    // A batch that does not split evenly is refused before anything is written.
    let mut config = config(dir.path(), "uneven");
    config.optim.batch_size = 5;
    let options = TrainOptions { device: Some(pair.clone()), ..TrainOptions::default() };
    let e = train(config, options).unwrap_err().to_string();
    assert!(e.contains("`optim.batch_size` = 5 does not split evenly over 2 devices"), "{e}");
    assert!(!dir.path().join("runs/uneven").exists(), "nothing written");
}
