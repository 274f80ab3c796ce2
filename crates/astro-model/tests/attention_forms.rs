//! Every execution form of every attention variant computes the same function.
//!
//! Error measure: normwise relative error max|a − b| / max|b| against the reference (quadratic)
//! path; ≤ 1e-5 in f32 and ≤ 1e-11 in f64.

mod common;

use astro_model::attention::{
    AstrocyticConfig, AttentionMask, AttentionState, FeatureMap, InnerAttention, LinearConfig, SoftmaxConfig,
};
use burn::tensor::{DType, Tensor};
use common::{device, normal4, padding, rel_err};

const MAPS: [FeatureMap; 11] = FeatureMap::ALL;

struct Case {
    map: FeatureMap,
    batch: usize,
    heads: usize,
    seq: usize,
    head_dim: usize,
    features: usize,
    decay: f64,
    padded: bool,
    dtype: DType,
    seed: u64,
    window: Option<usize>,
}

impl Case {
    fn new(map: FeatureMap) -> Self {
        Case {
            map,
            batch: 2,
            heads: 3,
            seq: 13,
            head_dim: 8,
            features: 32,
            decay: 1.0,
            padded: false,
            dtype: DType::F32,
            seed: 1,
            window: None,
        }
    }

    fn tolerance(&self) -> f64 {
        if self.dtype == DType::F64 { 1e-11 } else { 1e-5 }
    }

    fn label(&self) -> String {
        format!(
            "{:?} b{} h{} t{} d{} m{} γ{} pad={} {:?} window={:?}",
            self.map,
            self.batch,
            self.heads,
            self.seq,
            self.head_dim,
            self.features,
            self.decay,
            self.padded,
            self.dtype,
            self.window
        )
    }

    fn run(&self) {
        let dev = device();
        let config = AstrocyticConfig {
            features: self.features,
            feature_map: self.map,
            decay: self.decay,
            orthogonal: self.seed.is_multiple_of(2),
            seed: self.seed,
            window: self.window,
            ..AstrocyticConfig::default()
        };
        let attn = config.init(self.heads, self.head_dim, 0, &dev);
        let shape = [self.batch, self.heads, self.seq, self.head_dim];
        let q = normal4(shape, 0.7, self.seed * 10 + 1, self.dtype, &dev);
        let k = normal4(shape, 0.7, self.seed * 10 + 2, self.dtype, &dev);
        // An offset gives the calibrated maps' key shift something to do.
        let k = if self.map.is_calibrated() { k.add_scalar(0.3) } else { k };
        let v = normal4(shape, 1.0, self.seed * 10 + 3, self.dtype, &dev);
        let pad = self.padded.then(|| padding(self.batch, self.seq, 0.3, self.seed, &dev));
        // Calibrated maps get non-trivial ψ, c and A from these very queries and keys.
        // (`fallback`: with fewer tokens than dimensions the full map's covariances are singular.)
        let (attn, _) = attn.calibrate(q.clone(), k.clone(), pad.clone(), 0, true).expect("calibrates");
        let with_pad = |m: AttentionMask| match &pad {
            Some(p) => m.with_padding(p.clone()),
            None => m,
        };
        let tol = self.tolerance();
        let label = self.label();

        // Causal.
        let mask = with_pad(AttentionMask::causal());
        let reference = attn.forward_reference(q.clone(), k.clone(), v.clone(), &mask);
        let mech = attn.forward_mechanistic(q.clone(), k.clone(), v.clone(), &mask);
        let e = rel_err(&mech, &reference);
        assert!(e <= tol, "{label}: causal mechanistic vs reference {e:e}");
        for chunk in [1, 3, 4, self.seq, self.seq + 5] {
            let y = attn.forward_chunked(q.clone(), k.clone(), v.clone(), &mask, chunk);
            let e = rel_err(&y, &reference);
            assert!(e <= tol, "{label}: causal chunked({chunk}) vs reference {e:e}");
        }
        let fast = attn.forward(q.clone(), k.clone(), v.clone(), &mask);
        assert!(rel_err(&fast, &reference) <= tol, "{label}: forward vs reference");

        // Bidirectional.
        let mask = with_pad(AttentionMask::bidirectional());
        let reference = attn.forward_reference(q.clone(), k.clone(), v.clone(), &mask);
        let par = attn.forward_parallel(q.clone(), k.clone(), v.clone(), &mask);
        let e = rel_err(&par, &reference);
        assert!(e <= tol, "{label}: bidirectional parallel vs reference {e:e}");
        let mech = attn.forward_mechanistic(q.clone(), k.clone(), v.clone(), &mask);
        let e = rel_err(&mech, &reference);
        assert!(e <= tol, "{label}: bidirectional mechanistic vs reference {e:e}");

        // Incremental decoding (no padding): a prompt, single tokens, then a block, carrying state.
        if !self.padded {
            let reference = attn.forward_reference(q.clone(), k.clone(), v.clone(), &AttentionMask::causal());
            let y = incremental_in_pieces(&attn, &q, &k, &v, &[5, 1, 1, self.seq - 7]);
            let e = rel_err(&y, &reference);
            assert!(e <= tol, "{label}: incremental vs reference {e:e}");
        }
    }
}

/// Feeds the sequence in pieces of the given sizes through `forward_incremental`, carrying state.
fn incremental_in_pieces<A: InnerAttention>(
    attn: &A,
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    pieces: &[usize],
) -> Tensor<4> {
    let mut state: Option<AttentionState> = None;
    let mut start = 0;
    let mut outputs = Vec::new();
    for &len in pieces.iter().filter(|&&l| l > 0) {
        let piece = |x: &Tensor<4>| x.clone().narrow(2, start, len);
        let (y, s) = attn.forward_incremental(piece(q), piece(k), piece(v), state.take());
        assert_eq!(s.tokens(), start + len, "state counts the tokens written");
        outputs.push(y);
        state = Some(s);
        start += len;
    }
    Tensor::cat(outputs, 2)
}

#[test]
fn every_map_agrees_across_forms_f32() {
    for map in MAPS {
        Case::new(map).run();
    }
}

#[test]
fn every_map_agrees_across_forms_f64() {
    for map in MAPS {
        Case { dtype: DType::F64, seed: 2, ..Case::new(map) }.run();
    }
}

#[test]
fn forms_agree_with_padding() {
    for map in MAPS {
        Case { padded: true, seed: 3, ..Case::new(map) }.run();
    }
}

#[test]
fn forms_agree_with_calcium_decay() {
    for (i, map) in MAPS.into_iter().enumerate() {
        Case { decay: 0.8, padded: i % 2 == 0, seed: 4, ..Case::new(map) }.run();
    }
    Case { decay: 0.5, dtype: DType::F64, seed: 6, ..Case::new(FeatureMap::Positive) }.run();
}

#[test]
fn forms_agree_across_shapes() {
    let shapes = [(1, 1, 7, 4, 8), (3, 2, 16, 16, 64), (2, 4, 33, 8, 17), (1, 2, 64, 32, 128)];
    for (i, &(batch, heads, seq, head_dim, features)) in shapes.iter().enumerate() {
        Case { batch, heads, seq, head_dim, features, seed: 10 + i as u64, ..Case::new(FeatureMap::Positive) }.run();
    }
}

#[test]
fn forms_agree_with_a_sliding_window() {
    // Windows of one token, a few, and longer than the sequence; with and without padding.
    for map in [FeatureMap::Positive, FeatureMap::Taylor, FeatureMap::Elu, FeatureMap::Hedgehog] {
        for window in [1, 3, 20] {
            for padded in [false, true] {
                let features = if map == FeatureMap::Taylor { 4 } else { 32 };
                Case { window: Some(window), padded, features, ..Case::new(map) }.run();
            }
        }
    }
}

#[test]
fn the_banded_window_equals_its_specification_with_gradients() {
    use astro_model::attention::window::{window_attention, window_reference};
    let dev = device();
    let ad = dev.clone().autodiff();
    for causal in [true, false] {
        for (window, padded) in [(1, false), (4, false), (4, true), (30, true)] {
            let shape = [2, 2, 11, 4];
            let q = normal4(shape, 1.0, 1, DType::F32, &ad).require_grad();
            let k = normal4(shape, 1.0, 2, DType::F32, &ad).require_grad();
            let v = normal4(shape, 1.0, 3, DType::F32, &ad).require_grad();
            let w = normal4(shape, 1.0, 4, DType::F32, &ad);
            let pad = padded.then(|| padding(2, 11, 0.4, 5, &ad));
            let label = format!("causal={causal} W={window} padded={padded}");
            let run = |banded: bool| {
                let f = if banded { window_attention } else { window_reference };
                let y = f(q.clone(), k.clone(), v.clone(), window, causal, pad.clone());
                let grads = (y.clone() * w.clone()).sum().backward();
                let g = |x: &Tensor<4>| x.grad(&grads).expect("a gradient");
                (y.inner(), g(&q), g(&k), g(&v))
            };
            let (a, b) = (run(true), run(false));
            for (name, x, y) in [("output", &a.0, &b.0), ("dq", &a.1, &b.1), ("dk", &a.2, &b.2), ("dv", &a.3, &b.3)] {
                let e = rel_err(x, y);
                assert!(e < 1e-5, "{label}: banded {name} differs from the reference by {e:e}");
            }
            if window == 1 && !padded {
                // One token: each query reads only its own value.
                assert!(rel_err(&a.0, &v.clone().inner()) < 1e-6, "{label}: W = 1 returns v");
            }
        }
    }
}

#[test]
fn a_window_of_zero_tokens_is_refused_by_name() {
    let config = AstrocyticConfig { window: Some(0), ..AstrocyticConfig::default() };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("attention.window"), "{err}");
}

#[test]
fn linear_attention_forms_agree() {
    let dev = device();
    let attn = LinearConfig { chunk_size: Some(4) }.init();
    let shape = [2, 3, 11, 8];
    let (q, k, v) = (
        normal4(shape, 1.0, 1, DType::F32, &dev),
        normal4(shape, 1.0, 2, DType::F32, &dev),
        normal4(shape, 1.0, 3, DType::F32, &dev),
    );
    for mask in [
        AttentionMask::causal(),
        AttentionMask::bidirectional(),
        AttentionMask::causal().with_padding(padding(2, 11, 0.3, 5, &dev)),
    ] {
        let r = attn.forward_reference(q.clone(), k.clone(), v.clone(), &mask);
        let y = attn.forward(q.clone(), k.clone(), v.clone(), &mask);
        assert!(rel_err(&y, &r) <= 1e-5, "linear forward vs reference, causal={}", mask.causal);
    }
    let r = attn.forward_reference(q.clone(), k.clone(), v.clone(), &AttentionMask::causal());
    let y = incremental_in_pieces(&attn, &q, &k, &v, &[4, 1, 6]);
    assert!(rel_err(&y, &r) <= 1e-5, "linear incremental vs reference");
}

#[test]
fn softmax_fast_path_equals_reference() {
    let dev = device();
    let attn = SoftmaxConfig::default().init();
    let shape = [2, 3, 19, 8];
    let (q, k, v) = (
        normal4(shape, 1.0, 1, DType::F32, &dev),
        normal4(shape, 1.0, 2, DType::F32, &dev),
        normal4(shape, 1.0, 3, DType::F32, &dev),
    );
    let pad = padding(2, 19, 0.3, 9, &dev);
    for mask in [
        AttentionMask::causal(),
        AttentionMask::bidirectional(),
        AttentionMask::causal().with_padding(pad.clone()),
        AttentionMask::bidirectional().with_padding(pad),
    ] {
        let r = attn.forward_reference(q.clone(), k.clone(), v.clone(), &mask);
        let y = attn.forward(q.clone(), k.clone(), v.clone(), &mask);
        let e = rel_err(&y, &r);
        assert!(e <= 1e-5, "softmax fused vs reference (causal={}): {e:e}", mask.causal);
    }
    let r = attn.forward_reference(q.clone(), k.clone(), v.clone(), &AttentionMask::causal());
    let y = incremental_in_pieces(&attn, &q, &k, &v, &[6, 1, 1, 11]);
    assert!(rel_err(&y, &r) <= 1e-5, "softmax KV-cache decoding vs reference");
}

#[test]
fn padded_keys_contribute_nothing() {
    // Appending padded tokens with arbitrary content must not change the outputs of the real ones.
    let dev = device();
    let attn = AstrocyticConfig { features: 64, ..AstrocyticConfig::default() }.init(2, 8, 0, &dev);
    let (b, t, extra) = (2, 9, 5);
    let shape = [b, 2, t + extra, 8];
    let (q, k, v) = (
        normal4(shape, 0.7, 1, DType::F32, &dev),
        normal4(shape, 0.7, 2, DType::F32, &dev),
        normal4(shape, 1.0, 3, DType::F32, &dev),
    );
    let real = |x: &Tensor<4>| x.clone().narrow(2, 0, t);
    let mut pad = vec![false; b * (t + extra)];
    for row in 0..b {
        for col in t..t + extra {
            pad[row * (t + extra) + col] = true;
        }
    }
    let pad = Tensor::<2, burn::tensor::Bool>::from_data(burn::tensor::TensorData::new(pad, [b, t + extra]), &dev);
    let mask = AttentionMask::bidirectional().with_padding(pad);
    let with_padding = attn.forward(q.clone(), k.clone(), v.clone(), &mask).narrow(2, 0, t);
    let without = attn.forward(real(&q), real(&k), real(&v), &AttentionMask::bidirectional());
    assert!(rel_err(&with_padding, &without) <= 1e-5);
}

#[test]
fn attention_weights_are_causal_and_normalised() {
    let dev = device();
    let attn = AstrocyticConfig { features: 64, ..AstrocyticConfig::default() }.init(2, 8, 0, &dev);
    let shape = [1, 2, 6, 8];
    let (q, k) = (normal4(shape, 0.7, 1, DType::F32, &dev), normal4(shape, 0.7, 2, DType::F32, &dev));
    let w = attn.attention_weights(q, k, &AttentionMask::causal());
    let w = common::host(&w);
    for head in 0..2 {
        for row in 0..6 {
            let r = &w[(head * 6 + row) * 6..(head * 6 + row + 1) * 6];
            assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-5, "row sums to 1");
            assert!(r[row + 1..].iter().all(|&x| x == 0.0), "no weight on future keys");
            assert!(r.iter().all(|&x| x >= 0.0), "positive map gives non-negative weights");
        }
    }
}

mod properties {
    //! The same equivalences over random shapes, maps, decays, padding and seeds.
    use proptest::prelude::*;

    use super::*;

    proptest! {
        // Each case builds and compares five forms; a few dozen keep `cargo test` fast.
        #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn forms_agree_on_random_cases(
            map in 0usize..MAPS.len(),
            batch in 1usize..3,
            heads in 1usize..4,
            seq in 7usize..24,
            head_dim in 1usize..12,
            features in 1usize..40,
            decay in prop_oneof![Just(1.0), 0.5f64..1.0],
            padded in any::<bool>(),
            seed in 0u64..1000,
        ) {
            // Signed maps (cosine, linear) can cancel in the astrocyte's sum, so single precision
            // agrees only as well as that sum is conditioned (the search found 1.5e-5 at m = 6);
            // their cases run in double precision.
            let dtype = if MAPS[map].is_positive() { DType::F32 } else { DType::F64 };
            Case { map: MAPS[map], batch, heads, seq, head_dim, features, decay, padded, seed, dtype, window: None }.run();
        }
    }
}

/// A case the property search found (CI, 2026-12-06): the full map calibrated on 7 tokens of width 9
/// (singular covariances, `fallback`) fitted a non-finite parameter, since the keys' floored spectrum
/// was computed and then not used.
#[test]
fn full_map_with_fewer_tokens_than_dimensions_calibrates_and_agrees() {
    Case {
        map: FeatureMap::FullSaderf,
        batch: 1,
        heads: 1,
        seq: 7,
        head_dim: 9,
        features: 1,
        decay: 1.0,
        padded: false,
        dtype: DType::F32,
        seed: 180,
        window: None,
    }
    .run();
}

/// Left padding that covers whole chunks before the first real key: queries there read nothing
/// (output 0), and no later chunk leaks into their memory. (The chunked form once let it: with every
/// earlier chunk padded, the masked weights e^{c + NEG − NEG} rounded to 1.)
#[test]
fn chunked_form_with_whole_chunks_of_left_padding() {
    use burn::tensor::{Bool, TensorData};
    let dev = device();
    let (seq, chunk) = (12, 4);
    let pad: Vec<bool> = (0..seq).map(|t| t < 5).collect();
    let pad = Tensor::<2, Bool>::from_data(TensorData::new(pad, [1, seq]), &dev);
    let attn =
        AstrocyticConfig { features: 8, chunk_size: Some(chunk), ..AstrocyticConfig::default() }.init(2, 4, 0, &dev);
    let shape = [1, 2, seq, 4];
    let (q, k, v) = (
        normal4(shape, 0.8, 1, DType::F32, &dev),
        normal4(shape, 0.8, 2, DType::F32, &dev),
        normal4(shape, 1.0, 3, DType::F32, &dev),
    );
    let mask = AttentionMask::causal().with_padding(pad);
    let reference = attn.forward_reference(q.clone(), k.clone(), v.clone(), &mask);
    let chunked = attn.forward_chunked(q, k, v, &mask, chunk);
    let e = rel_err(&chunked, &reference);
    assert!(e <= 1e-5, "chunked vs reference with left padding: {e:e}");
}
