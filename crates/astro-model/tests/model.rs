//! The Transformers: causality, incremental decoding, save/load, config validation.

mod common;

use astro_model::attention::{AstrocyticConfig, Attention, AttentionConfig, FeatureMap, LinearConfig, SoftmaxConfig};
use astro_model::transformer::{ClassifierConfig, DecodeState, NormPlacement, Pooling, Positions};
use astro_model::{ConfigError, EncoderClassifier, LanguageModel, ModelError, TransformerConfig};
use burn::module::Param;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::{device, host, rel_err};

fn variants() -> Vec<(&'static str, AttentionConfig)> {
    vec![
        ("softmax", AttentionConfig::Softmax(SoftmaxConfig::default())),
        (
            "astrocytic",
            AttentionConfig::Astrocytic(AstrocyticConfig {
                features: 32,
                chunk_size: Some(4),
                ..AstrocyticConfig::default()
            }),
        ),
        (
            "astrocytic-cosine-decay",
            AttentionConfig::Astrocytic(AstrocyticConfig {
                features: 32,
                feature_map: FeatureMap::Cosine,
                decay: 0.9,
                orthogonal: true,
                chunk_size: Some(3),
                ..AstrocyticConfig::default()
            }),
        ),
        (
            "astrocytic-shifted-saderf",
            AttentionConfig::Astrocytic(AstrocyticConfig {
                features: 32,
                feature_map: FeatureMap::ShiftedSaderf,
                chunk_size: Some(4),
                ..AstrocyticConfig::default()
            }),
        ),
        ("linear", AttentionConfig::Linear(LinearConfig { chunk_size: Some(4) })),
    ]
}

fn small(attention: AttentionConfig, positions: Positions) -> TransformerConfig {
    TransformerConfig {
        vocab_size: Some(23),
        block_size: 32,
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        positions,
        bias: true,
        attention,
        ..TransformerConfig::default()
    }
}

fn tokens(values: &[i64], batch: usize, dev: &burn::tensor::Device) -> Tensor<2, Int> {
    let t = values.len() / batch;
    Tensor::from_data(TensorData::new(values.to_vec(), [batch, t]), dev)
}

fn sequence(len: usize, salt: i64) -> Vec<i64> {
    (0..len as i64).map(|i| (i * 7 + salt * 3 + i * i) % 23).collect()
}

#[test]
fn changing_future_tokens_never_changes_past_logits() {
    let dev = device();
    for (name, attention) in variants() {
        for (positions, short_conv) in [(Positions::Learned, 0), (Positions::Rotary, 0), (Positions::Learned, 3)] {
            let config = TransformerConfig { short_conv, ..small(attention.clone(), positions) };
            let model = LanguageModel::new(&config, &dev).unwrap();
            let a = sequence(20, 1);
            let mut b = a.clone();
            let t = 11;
            for (i, x) in b.iter_mut().enumerate().skip(t + 1) {
                *x = (*x + 5 + i as i64) % 23;
            }
            let la = model.forward(tokens(&a, 1, &dev)).narrow(1, 0, t + 1);
            let lb = model.forward(tokens(&b, 1, &dev)).narrow(1, 0, t + 1);
            let e = rel_err(&la, &lb);
            assert!(e <= 1e-5, "{name} {positions:?}: logits up to {t} changed by {e:e}");
            // and the changed tokens do change later logits (the test can fail)
            let la = model.forward(tokens(&a, 1, &dev)).narrow(1, t + 2, 1);
            let lb = model.forward(tokens(&b, 1, &dev)).narrow(1, t + 2, 1);
            assert!(rel_err(&la, &lb) > 1e-4, "{name}: future tokens had no effect at all");
        }
    }
}

#[test]
fn full_forward_equals_incremental_decoding() {
    let dev = device();
    for (name, attention) in variants() {
        for (positions, short_conv) in
            [(Positions::Learned, 0), (Positions::Rotary, 0), (Positions::None, 0), (Positions::Rotary, 4)]
        {
            let config = TransformerConfig { short_conv, ..small(attention.clone(), positions) };
            let model = LanguageModel::new(&config, &dev).unwrap();
            let seq = [sequence(14, 2), sequence(14, 5)].concat();
            let all = tokens(&seq, 2, &dev);
            let full = model.forward(all.clone());
            // prompt of 5, then one token at a time, then the rest at once
            let mut state = DecodeState::default();
            let mut outputs = Vec::new();
            for (start, len) in [(0, 5), (5, 1), (6, 1), (7, 1), (8, 6)] {
                let (logits, next) = model.forward_incremental(all.clone().narrow(1, start, len), state).unwrap();
                outputs.push(logits);
                state = next;
            }
            assert_eq!(state.position, 14);
            let inc = Tensor::cat(outputs, 1);
            let e = rel_err(&inc, &full);
            assert!(e <= 1e-5, "{name} {positions:?}: incremental vs full {e:e}");
        }
    }
}

/// BERT's layout: post-LN blocks, token-type embeddings, a LayerNorm on the embeddings.
fn bert_style(attention: AttentionConfig) -> TransformerConfig {
    TransformerConfig {
        norm: NormPlacement::Post,
        type_vocab_size: 2,
        embedding_norm: true,
        layer_norm_eps: 1e-12,
        ..small(attention, Positions::Learned)
    }
}

#[test]
fn post_layer_norm_blocks_are_causal_decode_incrementally_and_differ_from_pre_ln() {
    let dev = device();
    for (name, attention) in variants() {
        let post = LanguageModel::new(&bert_style(attention.clone()), &dev).unwrap();
        assert!(post.trunk.ln_f.is_none() && post.trunk.wtt.is_some() && post.trunk.ln_emb.is_some());
        let seq = sequence(12, 3);
        let all = tokens(&seq, 1, &dev);
        let full = post.forward(all.clone());
        let (a, state) = post.forward_incremental(all.clone().narrow(1, 0, 7), DecodeState::default()).unwrap();
        let (b, _) = post.forward_incremental(all.clone().narrow(1, 7, 5), state).unwrap();
        let e = rel_err(&Tensor::cat(vec![a, b], 1), &full);
        assert!(e <= 1e-5, "{name}: post-LN incremental vs full {e:e}");
        // Every position's hidden state is LayerNorm output: mean 0, variance 1 (weights are 1, biases 0).
        let h = host(&post.hidden(all.clone()));
        for row in h.chunks(16) {
            let mean = row.iter().sum::<f64>() / 16.0;
            let var = row.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 16.0;
            assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3, "{name}: mean {mean}, var {var}");
        }
        // The same weights in pre-LN blocks compute something else.
        let pre = LanguageModel::new(&small(attention, Positions::Learned), &dev).unwrap();
        assert!(rel_err(&pre.forward(all), &full) > 1e-2, "{name}: placement must matter");
    }
}

#[test]
fn recurrent_state_size_does_not_grow_with_context() {
    let dev = device();
    let config = small(variants()[1].1.clone(), Positions::Rotary);
    let model = LanguageModel::new(&config, &dev).unwrap();
    let seq = sequence(30, 3);
    let (_, s1) = model.forward_incremental(tokens(&seq[..5], 1, &dev), DecodeState::default()).unwrap();
    let n1 = s1.num_floats();
    let (_, s2) = model.forward_incremental(tokens(&seq[5..30], 1, &dev), s1).unwrap();
    assert_eq!(n1, s2.num_floats(), "astrocytic memory is constant-size");
    let softmax = LanguageModel::new(&small(variants()[0].1.clone(), Positions::Rotary), &dev).unwrap();
    let (_, c1) = softmax.forward_incremental(tokens(&seq[..5], 1, &dev), DecodeState::default()).unwrap();
    let (_, c2) = softmax.forward_incremental(tokens(&seq[5..30], 1, &dev), c1.clone()).unwrap();
    assert_eq!(c2.num_floats(), c1.num_floats() * 6, "the KV cache grows linearly");
}

/// `astro info`'s decoding-state size is what decoding really holds, short convolutions included.
#[test]
fn reported_state_size_is_the_decoding_state() {
    let dev = device();
    let seq = sequence(12, 4);
    for (name, attention) in variants() {
        for short_conv in [0, 4] {
            let config = TransformerConfig { short_conv, ..small(attention.clone(), Positions::Rotary) };
            let model = LanguageModel::new(&config, &dev).unwrap();
            let (_, state) = model.forward_incremental(tokens(&seq, 1, &dev), DecodeState::default()).unwrap();
            let report = astro_model::info::report(&model, &[12]);
            assert_eq!(report.state_floats, vec![(12, state.num_floats())], "{name}, short_conv {short_conv}");
        }
    }
}

/// Greedy generation past the block (learned positions) equals re-encoding the last `block_size`
/// tokens with a full forward at every step and taking the argmax of the last position.
#[test]
fn generation_past_the_block_re_encodes_the_window() {
    use astro_model::transformer::{SamplingConfig, generate};
    let dev = device();
    for (name, attention) in variants() {
        let config = TransformerConfig { block_size: 8, ..small(attention, Positions::Learned) };
        let model = LanguageModel::new(&config, &dev).unwrap();
        let prompt: Vec<u32> = sequence(5, 2).iter().map(|&x| x as u32).collect();
        let greedy = SamplingConfig { temperature: 0.0, top_k: None, seed: 0 };
        let out = generate(&model, &prompt, 14, &greedy, |_| {}).unwrap();
        let mut context: Vec<i64> = prompt.iter().map(|&x| x as i64).collect();
        for (step, &token) in out.iter().enumerate() {
            let window = &context[context.len().saturating_sub(8)..];
            let logits = host(&model.forward(tokens(window, 1, &dev)).narrow(1, window.len() - 1, 1));
            let best = logits.iter().enumerate().fold((0, f64::MIN), |b, (i, &l)| if l > b.1 { (i, l) } else { b }).0;
            assert_eq!(token as usize, best, "{name}: step {step} (context {})", context.len());
            context.push(token as i64);
        }
    }
}

/// The last-position forward that re-encodes the window past the block equals the last row of the
/// full forward for every variant, pre-LN and post-LN with short convolutions; on a window of 64 rows
/// (× 2 sequences) in a two-thread pool, so that every projection takes `linear_rows`' row split.
#[test]
fn last_logits_equal_the_last_row_of_the_forward() {
    let dev = device();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        for (name, attention) in variants() {
            for (norm, short_conv) in [(NormPlacement::Pre, 0), (NormPlacement::Post, 4)] {
                let config = TransformerConfig {
                    block_size: 64,
                    norm,
                    short_conv,
                    ..small(attention.clone(), Positions::Learned)
                };
                let model = LanguageModel::new(&config, &dev).unwrap();
                let x = tokens(&sequence(128, 5), 2, &dev); // [2, 64]
                let full = model.forward(x.clone()).narrow(1, 63, 1); // [2,1,V]
                let last = model.last_logits(x);
                assert_eq!(last.dims(), [2, 1, 23], "{name}");
                let err = rel_err(&last, &full);
                assert!(err < 1e-5, "{name}, {norm:?}, short_conv {short_conv}: relative error {err}");
            }
        }
    });
}

/// `linear_rows` split over threads equals the one product of a one-thread pool: 80 rows over 2 and
/// 3 threads, and 1000 rows over 64 threads (62 blocks of 17 rows, the last shorter).
#[test]
fn linear_rows_split_over_threads_equals_one_product() {
    let dev = device();
    for (rows, width, pools) in [(40, 48, &[2usize, 3][..]), (500, 8, &[64][..])] {
        let layer = burn::nn::LinearConfig::new(width, width + 3).init(&dev);
        let data: Vec<f32> = (0..2 * rows * width).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let x = Tensor::<3>::from_data(TensorData::new(data, [2, rows, width]), &dev);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| astro_model::kernels::linear_rows(&layer, x.clone()))
        };
        let one = run(1);
        assert_eq!(one.dims(), [2, rows, width + 3]);
        for &threads in pools {
            let err = rel_err(&run(threads), &one);
            assert!(err < 1e-6, "{rows} rows over {threads} threads: relative error {err}");
        }
    }
}

#[test]
fn learned_positions_bound_the_context() {
    let dev = device();
    let model = LanguageModel::new(&small(variants()[1].1.clone(), Positions::Learned), &dev).unwrap();
    let seq = sequence(33, 1);
    let err = model.forward_incremental(tokens(&seq, 1, &dev), DecodeState::default()).unwrap_err();
    assert!(matches!(err, ModelError::ContextTooLong { requested: 33, max: 32 }), "{err}");
}

#[test]
fn save_load_round_trip_gives_identical_logits() {
    let dev = device();
    let dir = std::env::temp_dir().join(format!("astro-model-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, attention) in variants() {
        let model = LanguageModel::new(&small(attention, Positions::Learned), &dev).unwrap();
        let path = dir.join(format!("{name}.bpk"));
        model.save(&path).unwrap();
        let loaded = LanguageModel::load(&path, &dev).unwrap();
        let x = tokens(&sequence(12, 4), 1, &dev);
        assert_eq!(host(&model.forward(x.clone())), host(&loaded.forward(x)), "{name}: logits differ after reload");
        if let (Some(a), Some(b)) = (omega(&model), omega(&loaded)) {
            assert_eq!(host(&a), host(&b), "{name}: Ω changed");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn omega(model: &LanguageModel) -> Option<Tensor<3>> {
    match &model.trunk.blocks[0].attn.inner {
        Attention::Astrocytic(a) => Some(a.omega.val()),
        _ => None,
    }
}

#[test]
fn omega_differs_between_layers_and_survives_save_load() {
    let dev = device();
    let dir = std::env::temp_dir().join(format!("astro-model-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = small(variants()[1].1.clone(), Positions::Learned);
    let mut model = LanguageModel::new(&config, &dev).unwrap();
    let layer = |m: &LanguageModel, l: usize| match &m.trunk.blocks[l].attn.inner {
        Attention::Astrocytic(a) => host(&a.omega.val()),
        _ => unreachable!(),
    };
    assert_ne!(layer(&model, 0), layer(&model, 1), "layers draw distinct Ω");
    // Move Ω away from what the seed gives (as a learnable Ω would after training), save, reload
    // into a freshly seeded model: the file's Ω must win.
    if let Attention::Astrocytic(a) = &mut model.trunk.blocks[1].attn.inner {
        a.omega = Param::from_tensor(a.omega.val().add_scalar(0.25)).set_require_grad(false);
    }
    let path = dir.join("m.bpk");
    model.save(&path).unwrap();
    let fresh = LanguageModel::new(&config, &dev).unwrap();
    assert_ne!(layer(&fresh, 1), layer(&model, 1));
    let restored = fresh.load_weights(&path).unwrap();
    assert_eq!(layer(&model, 1), layer(&restored, 1), "Ω restored from the file");
    let x = tokens(&sequence(12, 4), 1, &dev);
    assert_eq!(host(&model.forward(x.clone())), host(&restored.forward(x)));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn loading_weights_of_another_variant_or_size_names_both() {
    let dev = device();
    let dir = std::env::temp_dir().join(format!("astro-model-mismatch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("softmax.bpk");
    LanguageModel::new(&small(variants()[0].1.clone(), Positions::Learned), &dev).unwrap().save(&path).unwrap();
    let astro = LanguageModel::new(&small(variants()[1].1.clone(), Positions::Learned), &dev).unwrap();
    let err = astro.load_weights(&path).unwrap_err().to_string();
    assert!(err.contains("softmax") && err.contains("astrocytic"), "{err}");
    let mut wider = small(variants()[0].1.clone(), Positions::Learned);
    wider.n_embd = 32;
    let err = LanguageModel::new(&wider, &dev).unwrap().load_weights(&path).unwrap_err().to_string();
    assert!(err.contains("width 16") && err.contains("width 32"), "{err}");
    let err = LanguageModel::load(&dir.join("missing.bpk"), &dev).unwrap_err().to_string();
    assert!(err.contains("missing.bpk"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Weights made with another short convolution, feature map or window: the error names the key,
/// even where the one-line descriptions read alike (the window has no weights of its own).
#[test]
fn loading_weights_made_with_another_conv_map_or_window_names_the_key() {
    let dev = device();
    let dir = std::env::temp_dir().join(format!("astro-model-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let astro = |window: Option<usize>, feature_map: FeatureMap| {
        AttentionConfig::Astrocytic(AstrocyticConfig { features: 8, feature_map, window, ..Default::default() })
    };
    let mut saved = small(astro(Some(8), FeatureMap::Positive), Positions::Learned);
    saved.short_conv = 4;
    let path = dir.join("saved.bpk");
    LanguageModel::new(&saved, &dev).unwrap().save(&path).unwrap();
    let load = |config: &TransformerConfig| {
        LanguageModel::new(config, &dev).unwrap().load_weights(&path).unwrap_err().to_string()
    };

    let mut conv = saved.clone();
    conv.short_conv = 2;
    let err = load(&conv);
    assert!(err.contains("`model.short_conv` (saved 4, this model 2)"), "{err}");
    let mut window = saved.clone();
    window.attention = astro(None, FeatureMap::Positive);
    let err = load(&window);
    assert!(err.contains("`model.attention.window` (saved 8, this model unset)"), "{err}");
    let mut map = saved.clone();
    map.attention = astro(Some(8), FeatureMap::Cosine);
    let err = load(&map);
    assert!(err.contains("`model.attention.feature_map` (saved \"positive\", this model \"cosine\")"), "{err}");
    let listed = err.split("they differ in").nth(1).unwrap_or_default();
    assert!(!listed.contains("short_conv") && !listed.contains("window"), "only the differing key: {err}");
    std::fs::remove_dir_all(&dir).ok();
}

fn parse_error(toml: &str) -> ConfigError {
    TransformerConfig::from_toml(toml).unwrap_err()
}

#[test]
fn invalid_configs_return_typed_errors_naming_the_field() {
    let field = |toml: &str| match parse_error(toml) {
        ConfigError::Invalid { field, .. } => field,
        other => panic!("expected an invalid-field error, got {other}"),
    };
    assert_eq!(field(r#"attention = { kind = "astrocytic", features = 0 }"#), "attention.features");
    assert_eq!(field("n_head = 3\nn_embd = 128"), "model.n_head");
    assert_eq!(field(r#"attention = { kind = "astrocytic", chunk_size = 0 }"#), "attention.chunk_size");
    assert_eq!(field(r#"attention = { kind = "linear", chunk_size = 0 }"#), "attention.chunk_size");
    assert_eq!(field(r#"attention = { kind = "astrocytic", decay = 0.0 }"#), "attention.decay");
    assert_eq!(field(r#"attention = { kind = "astrocytic", decay = 1.5 }"#), "attention.decay");
    assert_eq!(field("dropout = 1.0"), "model.dropout");
    assert_eq!(field("vocab_size = 0"), "model.vocab_size");
    let msg = parse_error(r#"attention = { kind = "astrocytic", feature_map = "sigmoid" }"#).to_string();
    assert!(msg.contains("sigmoid") && msg.contains("positive"), "{msg}");
    let msg = parse_error(r#"attention = { kind = "astrocytic", featurs = 64 }"#).to_string();
    assert!(msg.contains("featurs"), "{msg}");
    let msg = parse_error(r#"attention = { kind = "flash" }"#).to_string();
    assert!(msg.contains("flash"), "{msg}");
    let msg = parse_error("n_layers = 4").to_string();
    assert!(msg.contains("n_layers"), "{msg}");
    let msg = parse_error(r#"n_head = "four""#).to_string();
    assert!(msg.contains("n_head"), "{msg}");
}

#[test]
fn attention_config_round_trips_through_toml() {
    for (_, attention) in variants() {
        let config = small(attention, Positions::Rotary);
        let text = toml::to_string(&config).unwrap();
        assert_eq!(TransformerConfig::from_toml(&text).unwrap(), config, "{text}");
    }
}

#[test]
fn encoder_classifier_ignores_padding() {
    let dev = device();
    for (name, attention) in variants() {
        for pooling in [Pooling::Mean, Pooling::Cls] {
            let config = TransformerConfig { block_size: 16, ..small(attention.clone(), Positions::Learned) };
            let model = EncoderClassifier::new(&config, &ClassifierConfig { classes: 3, pooling }, &dev).unwrap();
            let real = sequence(9, 3);
            let logits = model.forward(tokens(&real, 1, &dev), None);
            assert_eq!(logits.dims(), [1, 3]);
            let padded: Vec<i64> = real.iter().copied().chain([4, 9, 1, 0]).collect();
            let pad: Vec<bool> = (0..13).map(|i| i >= 9).collect();
            let pad = Tensor::<2, Bool>::from_data(TensorData::new(pad, [1, 13]), &dev);
            let with_pad = model.forward(tokens(&padded, 1, &dev), Some(pad));
            let e = rel_err(&with_pad, &logits);
            assert!(e <= 1e-5, "{name} {pooling:?}: padding changed the logits by {e:e}");
        }
    }
}

#[test]
fn normaliser_traces_per_layer() {
    let dev = device();
    let x = tokens(&sequence(10, 2), 1, &dev);
    let astro = LanguageModel::new(&small(variants()[1].1.clone(), Positions::Learned), &dev).unwrap();
    let traces = astro.normalisers(x.clone());
    assert_eq!(traces.len(), 2);
    for t in &traces {
        assert_eq!(t.softmax_log.dims(), [1, 2, 10]);
        assert_eq!(t.astrocyte_log.as_ref().expect("astrocyte present").dims(), [1, 2, 10]);
    }
    // The first query reads one key: softmax's normaliser is exp(q·k/√D) exactly, positive and finite.
    assert!(common::all_finite(&traces[0].softmax_log));
    let softmax = LanguageModel::new(&small(variants()[0].1.clone(), Positions::Learned), &dev).unwrap();
    assert!(softmax.normalisers(x).iter().all(|t| t.astrocyte_log.is_none()));
}

#[test]
fn weight_transfer_reuses_everything_but_the_attention() {
    let dev = device();
    let dir = std::env::temp_dir().join(format!("astro-model-transfer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let softmax = LanguageModel::new(&small(variants()[0].1.clone(), Positions::Learned), &dev).unwrap();
    let path = dir.join("softmax.bpk");
    softmax.save(&path).unwrap();
    // A huge-m astrocytic model with the softmax weights approximates the softmax model's logits.
    let astro_cfg = AttentionConfig::Astrocytic(AstrocyticConfig { features: 8192, ..AstrocyticConfig::default() });
    let astro =
        LanguageModel::new(&small(astro_cfg, Positions::Learned), &dev).unwrap().transfer_weights(&path).unwrap();
    let x = tokens(&sequence(12, 4), 1, &dev);
    let (a, s) = (astro.forward(x.clone()), softmax.forward(x));
    let e = rel_err(&a, &s);
    assert!(e < 0.05, "transferred astrocytic logits differ from softmax's by {e}");
    // Architectures that differ elsewhere are refused.
    let mut wider = small(variants()[1].1.clone(), Positions::Learned);
    wider.n_embd = 32;
    let err = LanguageModel::new(&wider, &dev).unwrap().transfer_weights(&path).unwrap_err().to_string();
    assert!(err.contains("weight transfer"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

mod properties {
    //! Config parse → write → parse is the identity.
    use proptest::prelude::*;

    use super::*;

    fn attention() -> impl Strategy<Value = AttentionConfig> {
        prop_oneof![
            Just(AttentionConfig::Softmax(SoftmaxConfig::default())),
            (1usize..5000, 0usize..6, any::<bool>(), any::<u64>(), 0.5f64..=1.0, any::<bool>(), 1usize..512).prop_map(
                |(features, map, orthogonal, seed, decay, learnable_omega, chunk_size)| {
                    AttentionConfig::Astrocytic(AstrocyticConfig {
                        features,
                        feature_map: FeatureMap::ALL[map],
                        orthogonal,
                        seed,
                        decay,
                        learnable_omega,
                        chunk_size: Some(chunk_size),
                        ..AstrocyticConfig::default()
                    })
                }
            ),
            (1usize..512).prop_map(|chunk_size| AttentionConfig::Linear(LinearConfig { chunk_size: Some(chunk_size) })),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn transformer_config_round_trips_through_toml(
            vocab in prop::option::of(1usize..100_000),
            block_size in 1usize..4096,
            n_layer in 1usize..24,
            n_head in 1usize..16,
            head_dim in (1usize..32).prop_map(|h| 2 * h),
            dropout in 0.0f64..0.9,
            bias in any::<bool>(),
            positions in prop_oneof![Just(Positions::Learned), Just(Positions::Rotary), Just(Positions::None)],
            mlp_ratio in 0usize..8,
            attention in attention(),
            post in any::<bool>(),
            type_vocab_size in 0usize..4,
            embedding_norm in any::<bool>(),
            layer_norm_eps in 1e-12f64..1e-3,
            short_conv in 0usize..6,
        ) {
            let config = TransformerConfig {
                vocab_size: vocab,
                block_size,
                n_layer,
                n_head,
                n_embd: n_head * head_dim,
                dropout,
                bias,
                positions,
                mlp_ratio,
                attention,
                norm: if post { NormPlacement::Post } else { NormPlacement::Pre },
                type_vocab_size,
                embedding_norm,
                layer_norm_eps,
                short_conv,
            };
            // Only valid configs parse (odd head widths refuse rotary positions, for one).
            prop_assume!(config.validate().is_ok());
            let text = toml::to_string(&config).unwrap();
            let back = TransformerConfig::from_toml(&text);
            prop_assert!(back.as_ref().is_ok_and(|b| *b == config), "{text}\n→ {back:?}");
        }
    }
}

#[test]
fn calibrated_models_stay_causal_decode_incrementally_and_round_trip() {
    let dev = device();
    let config = small(
        AttentionConfig::Astrocytic(AstrocyticConfig {
            features: 32,
            feature_map: FeatureMap::ShiftedSaderf,
            chunk_size: Some(4),
            ..AstrocyticConfig::default()
        }),
        Positions::Rotary,
    );
    let model = LanguageModel::new(&config, &dev).unwrap();
    let fit: Vec<i64> = (0..6).flat_map(|s| sequence(16, s)).collect();
    let fit = tokens(&fit, 6, &dev);
    let (a, _) = model.clone().calibrate(fit.clone(), false).unwrap();
    // The result does not depend on how many sequences go through at once.
    let (b, _) = model.clone().calibrate(fit.clone(), false).unwrap();
    let inner = |m: &LanguageModel, l: usize| match &m.trunk.blocks[l].attn.inner {
        Attention::Astrocytic(a) => (
            host(&a.log_psi.as_ref().unwrap().val()),
            host(&a.shift.as_ref().unwrap().val()),
            host(&a.gerf_a.as_ref().unwrap().val()),
        ),
        _ => unreachable!(),
    };
    let grouped = {
        let mut m = model.clone();
        let (trunk, _) = m.trunk.calibrate_in_groups(fit, &astro_model::AttentionMask::causal(), false, 1).unwrap();
        m.trunk = trunk;
        m
    };
    for l in 0..2 {
        let (x, y, z) = (inner(&a, l), inner(&b, l), inner(&grouped, l));
        assert_eq!(x, y, "layer {l}: calibration is deterministic");
        for (u, v) in x.0.iter().chain(&x.1).chain(&x.2).zip(z.0.iter().chain(&z.1).chain(&z.2)) {
            assert!((u - v).abs() < 1e-4 * (1.0 + u.abs()), "layer {l}: grouped {v} vs whole {u}");
        }
        assert!(x.0.iter().any(|v| v.abs() > 1e-3), "layer {l}: ψ was fitted");
    }
    // Causal: changing later tokens leaves earlier logits unchanged.
    let x1 = sequence(12, 1);
    let mut x2 = x1.clone();
    x2[8] = (x2[8] + 5) % 23;
    let (l1, l2) = (a.forward(tokens(&x1, 1, &dev)), a.forward(tokens(&x2, 1, &dev)));
    let early = |l: Tensor<3>| host(&l.narrow(1, 0, 8));
    let diff = early(l1.clone()).iter().zip(early(l2)).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
    assert!(diff < 1e-5, "future token changed past logits by {diff}");
    // Incremental decoding equals the full forward.
    let (step1, state) = a.forward_incremental(tokens(&x1[..5], 1, &dev), DecodeState::default()).unwrap();
    let (step2, _) = a.forward_incremental(tokens(&x1[5..], 1, &dev), state).unwrap();
    let inc = Tensor::cat(vec![step1, step2], 1);
    assert!(rel_err(&inc, &l1) < 1e-4, "incremental vs full {}", rel_err(&inc, &l1));
    // Save and load keep the fitted parameters.
    let path = std::env::temp_dir().join(format!("astro-calibrated-{}.bpk", std::process::id()));
    a.save(&path).unwrap();
    let loaded = LanguageModel::load(&path, &dev).unwrap();
    assert_eq!(inner(&a, 1), inner(&loaded, 1));
    assert_eq!(host(&a.forward(tokens(&x1, 1, &dev))), host(&loaded.forward(tokens(&x1, 1, &dev))));
    std::fs::remove_file(&path).ok();
}

/// The memory check counts parameters from the config alone; it must agree with the built models
/// (every variant, with and without biases, learned or rotary positions, BERT-style embeddings, a
/// classifier head).
#[test]
fn analytic_parameter_count_matches_the_built_models() {
    use astro_model::memory::parameter_count;
    for (name, attention) in variants() {
        for (bias, positions, bert, short_conv) in [
            (false, Positions::Learned, false, 0),
            (true, Positions::Rotary, false, 4),
            (true, Positions::Learned, true, 0),
        ] {
            let config = TransformerConfig {
                vocab_size: Some(37),
                block_size: 16,
                n_layer: 2,
                n_head: 2,
                n_embd: 16,
                bias,
                positions,
                attention: attention.clone(),
                type_vocab_size: if bert { 2 } else { 0 },
                embedding_norm: bert,
                norm: if bert { NormPlacement::Post } else { NormPlacement::Pre },
                short_conv,
                ..TransformerConfig::default()
            };
            let total = |groups: Vec<astro_model::info::ParamGroup>| -> u64 {
                groups.iter().map(|g| (g.trainable + g.frozen) as u64).sum()
            };
            let lm = LanguageModel::new(&config, &device()).unwrap();
            let built = total(astro_model::info::parameter_groups(&lm));
            let analytic = parameter_count(&config, 37, 0);
            let slack = 0;
            assert!(
                analytic.abs_diff(built) <= slack,
                "{name} bias={bias} {positions:?}: analytic {analytic}, built {built}"
            );
            let classifier = ClassifierConfig { classes: 3, pooling: Pooling::Mean };
            let enc = EncoderClassifier::new(&config, &classifier, &device()).unwrap();
            let built = total(astro_model::info::parameter_groups(&enc));
            let analytic = parameter_count(&config, 37, 3);
            assert!(analytic.abs_diff(built) <= slack, "{name} encoder: analytic {analytic}, built {built}");
        }
    }
}
