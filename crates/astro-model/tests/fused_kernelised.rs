//! The fused kernelised attention (`kernels::kernelised_attention`, used by `forward` of the
//! astrocytic and linear layers on flex) computes what the composed chunked and parallel forms
//! compute — outputs and, through autodiff, gradients with respect to q, k, v and a learnable Ω —
//! for every map, with calcium decay, any chunk size and odd lengths.
//!
//! The composed forms (`forward_chunked`, `forward_parallel`) are the reference; they are themselves
//! tested against the quadratic specification in `attention_forms.rs`.

mod common;

use astro_model::attention::{AstrocyticConfig, AttentionMask, FeatureMap, InnerAttention, LinearConfig};
use astro_model::kernels::{KernelMap, KernelisedOptions, kernelised_attention, kernelised_supported};
use burn::tensor::{DType, Device, Tensor};
use common::{all_finite, device, host, normal4};

/// max|a − b| / max(max|b|, 1): relative where the reference is large, absolute near 0 (with one
/// token, dq and dk are exactly 0 in one form and rounding noise in the other).
fn err(a: &Tensor<4>, b: &Tensor<4>) -> f64 {
    let (a, b) = (host(a), host(b));
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    diff / b.iter().map(|y| y.abs()).fold(1.0, f64::max)
}

/// One comparison: shapes and settings.
#[derive(Debug, Clone, Copy)]
struct Case {
    map: FeatureMap,
    seq: usize,
    chunk: usize,
    decay: f64,
    causal: bool,
    features: usize,
    /// Standard deviation of q and k (larger: wider dynamic range of the features).
    spread: f64,
}

impl Case {
    fn new(map: FeatureMap) -> Self {
        Case { map, seq: 37, chunk: 8, decay: 1.0, causal: true, features: 24, spread: 0.8 }
    }
}

/// (output, dq, dk, dv, dΩ) of `sum(attention ∘ w)` through the fused `forward` or the composed form.
fn run(case: Case, fused: bool, dev: &Device) -> Vec<Tensor<4>> {
    let ad = dev.clone().autodiff();
    let (heads, d) = (2, 8);
    let config = AstrocyticConfig {
        features: case.features,
        feature_map: case.map,
        decay: case.decay,
        chunk_size: Some(case.chunk),
        learnable_omega: true,
        seed: 5,
        ..AstrocyticConfig::default()
    };
    let shape = [2, heads, case.seq, d];
    let q = normal4(shape, case.spread, 11, DType::F32, &ad);
    let k = normal4(shape, case.spread, 12, DType::F32, &ad).add_scalar(0.3);
    let v = normal4(shape, 1.0, 13, DType::F32, &ad);
    let w = normal4(shape, 1.0, 14, DType::F32, &ad);
    let attn = config.init(heads, d, 0, &ad);
    let (attn, _) = attn.calibrate(q.clone(), k.clone(), None, 0, false).expect("calibrates");
    let (q, k, v) = (q.require_grad(), k.require_grad(), v.require_grad());
    let mask = if case.causal { AttentionMask::causal() } else { AttentionMask::bidirectional() };
    let out = match (fused, case.causal) {
        (true, _) => attn.forward(q.clone(), k.clone(), v.clone(), &mask),
        (false, true) => attn.forward_chunked(q.clone(), k.clone(), v.clone(), &mask, case.chunk),
        (false, false) => attn.forward_parallel(q.clone(), k.clone(), v.clone(), &mask),
    };
    let grads = (out.clone() * w).sum().backward();
    let g = |x: &Tensor<4>| x.grad(&grads).expect("input receives a gradient");
    let omega = attn.omega.val().grad(&grads).expect("Ω receives a gradient").unsqueeze_dim::<4>(0);
    vec![out.inner(), g(&q), g(&k), g(&v), omega]
}

fn compare(case: Case, tol: f64) {
    let dev = device();
    let fused = run(case, true, &dev);
    let reference = run(case, false, &dev);
    for (name, a, b) in
        ["output", "dq", "dk", "dv", "dΩ"].iter().zip(&fused).zip(&reference).map(|((n, a), b)| (n, a, b))
    {
        assert!(all_finite(a), "{case:?}: {name} is not finite");
        let e = err(a, b);
        assert!(e < tol, "{case:?}: {name} differs from the composed form by {e:e}");
    }
}

#[test]
fn every_map_matches_the_composed_forms_with_gradients() {
    for map in FeatureMap::ALL {
        for causal in [true, false] {
            compare(Case { causal, ..Case::new(map) }, 2e-4);
        }
    }
}

#[test]
fn decay_chunk_sizes_and_odd_lengths_match() {
    // 300 tokens: many chunks and a short last one.
    for (seq, chunk) in [(1, 8), (7, 8), (37, 1), (37, 5), (64, 64), (70, 16), (300, 16), (300, 7)] {
        for decay in [1.0, 0.9] {
            for causal in [true, false] {
                let case = Case { seq, chunk, decay, causal, ..Case::new(FeatureMap::Positive) };
                compare(case, 2e-4);
            }
        }
    }
    let case = Case { decay: 0.8, ..Case::new(FeatureMap::ShiftedSaderf) };
    compare(case, 2e-4);
    // The Taylor map's activity is built inside the kernel from the projections (r = 16, Based's).
    for (seq, chunk, decay) in [(1, 8, 1.0), (300, 16, 0.9), (70, 32, 1.0)] {
        for causal in [true, false] {
            let case = Case { seq, chunk, decay, causal, features: 16, ..Case::new(FeatureMap::Taylor) };
            compare(case, 2e-4);
        }
    }
}

#[test]
fn wide_dynamic_range_stays_finite_and_matches() {
    // Long queries and keys: log-activities spread over tens of nats, as in trained heads.
    for causal in [true, false] {
        let case = Case { spread: 3.0, features: 64, causal, ..Case::new(FeatureMap::Positive) };
        compare(case, 1e-3);
    }
}

/// Linear attention (elu+1, activities rather than log-activities) against its composed chunked form.
#[test]
fn linear_attention_matches_its_composed_form() {
    let dev = device();
    let ad = dev.clone().autodiff();
    for causal in [true, false] {
        for seq in [1, 37] {
            let shape = [2, 3, seq, 8];
            let mut outs = Vec::new();
            for chunk in [0usize, 5] {
                // chunk 0 marks the reference: quadratic form via forward_reference.
                let q = normal4(shape, 1.0, 1, DType::F32, &ad).require_grad();
                let k = normal4(shape, 1.0, 2, DType::F32, &ad).require_grad();
                let v = normal4(shape, 1.0, 3, DType::F32, &ad).require_grad();
                let w = normal4(shape, 1.0, 4, DType::F32, &ad);
                let attn = LinearConfig { chunk_size: Some(chunk.max(1)) }.init();
                let mask = if causal { AttentionMask::causal() } else { AttentionMask::bidirectional() };
                let y = if chunk == 0 {
                    attn.forward_reference(q.clone(), k.clone(), v.clone(), &mask)
                } else {
                    attn.forward(q.clone(), k.clone(), v.clone(), &mask)
                };
                let grads = (y.clone() * w).sum().backward();
                let g = |x: &Tensor<4>| x.grad(&grads).expect("gradient");
                outs.push(vec![y.inner(), g(&q), g(&k), g(&v)]);
            }
            for (name, (a, b)) in ["output", "dq", "dk", "dv"].iter().zip(outs[1].iter().zip(&outs[0])) {
                let e = err(a, b);
                assert!(e < 1e-4, "linear causal={causal} seq={seq}: {name} differs by {e:e}");
            }
        }
    }
}

#[test]
fn fused_kernelised_attention_is_causal() {
    let dev = device();
    if !kernelised_supported(&Tensor::<4>::zeros([1, 1, 1, 1], &dev)) {
        return; // other backends have no fused operation; the composed forms are tested elsewhere
    }
    let shape = [1, 2, 11, 6];
    let fq = normal4(shape, 1.0, 1, DType::F32, &dev);
    let fk = normal4(shape, 1.0, 2, DType::F32, &dev);
    let v = normal4(shape, 1.0, 3, DType::F32, &dev);
    let bump = |x: Tensor<4>| {
        let last = x.clone().narrow(2, 10, 1).add_scalar(4.0);
        Tensor::cat(vec![x.narrow(2, 0, 10), last], 2)
    };
    let options = KernelisedOptions { chunk: 4, decay: 1.0, map: KernelMap::Exp, causal: true };
    let run = |fk: Tensor<4>, v: Tensor<4>| match kernelised_attention(fq.clone(), fk, v, options) {
        Ok(y) => y.narrow(2, 0, 10),
        Err(_) => panic!("fused on flex"),
    };
    // The bumped key raises its chunk's stabiliser, which may change rounding, never values.
    let (a, b) = (run(fk.clone(), v.clone()), run(bump(fk), bump(v)));
    let diff = host(&a).iter().zip(host(&b)).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(diff < 1e-5, "a later key changed an earlier output by {diff:e}");
}

/// Inference with the paper's map builds the hidden activity inside the fused operation (no
/// autodiff): it must equal the composed forms, causal and bidirectional, with and without decay.
#[test]
fn inference_with_the_positive_map_matches_the_composed_forms() {
    let dev = device();
    for (seq, chunk, decay) in [(37, 8, 1.0), (70, 32, 0.9), (1, 4, 1.0)] {
        let config =
            AstrocyticConfig { features: 48, chunk_size: Some(chunk), decay, seed: 3, ..AstrocyticConfig::default() };
        let attn = config.init(3, 8, 1, &dev);
        let shape = [2, 3, seq, 8];
        let (q, k, v) = (
            normal4(shape, 1.5, 21, DType::F32, &dev),
            normal4(shape, 1.5, 22, DType::F32, &dev),
            normal4(shape, 1.0, 23, DType::F32, &dev),
        );
        let causal = AttentionMask::causal();
        let e = err(
            &attn.forward(q.clone(), k.clone(), v.clone(), &causal),
            &attn.forward_chunked(q.clone(), k.clone(), v.clone(), &causal, chunk),
        );
        assert!(e < 1e-5, "causal T={seq} c={chunk} γ={decay}: {e:e}");
        let full = AttentionMask::bidirectional();
        let e = err(&attn.forward(q.clone(), k.clone(), v.clone(), &full), &attn.forward_parallel(q, k, v, &full));
        assert!(e < 1e-5, "bidirectional T={seq} c={chunk} γ={decay}: {e:e}");
    }
}

/// Padded keys (right padding, and left padding that leaves whole chunks with nothing but padding)
/// take the fused operation too: outputs and gradients equal the quadratic specification's.
#[test]
fn padded_keys_match_the_composed_forms_with_gradients() {
    use burn::tensor::{Bool, TensorData};
    let dev = device();
    let ad = dev.clone().autodiff();
    let (seq, chunk, heads, d) = (23, 4, 2, 8);
    let mut pad = vec![false; 2 * seq];
    pad[seq - 10..seq].iter_mut().for_each(|p| *p = true); // row 0: the last 10 tokens
    pad[seq..seq + 9].iter_mut().for_each(|p| *p = true); // row 1: the first 9 (two whole chunks)
    let pad = Tensor::<2, Bool>::from_data(TensorData::new(pad, [2, seq]), &ad);
    for map in [FeatureMap::Positive, FeatureMap::ShiftedSaderf, FeatureMap::Linear] {
        for causal in [true, false] {
            let run = |fused: bool| {
                let config = AstrocyticConfig {
                    features: 16,
                    feature_map: map,
                    chunk_size: Some(chunk),
                    seed: 9,
                    ..AstrocyticConfig::default()
                };
                let shape = [2, heads, seq, d];
                let q = normal4(shape, 0.8, 31, DType::F32, &ad);
                let k = normal4(shape, 0.8, 32, DType::F32, &ad).add_scalar(0.3);
                let v = normal4(shape, 1.0, 33, DType::F32, &ad);
                let w = normal4(shape, 1.0, 34, DType::F32, &ad);
                let attn = config.init(heads, d, 0, &ad);
                let (attn, _) = attn.calibrate(q.clone(), k.clone(), Some(pad.clone()), 0, false).expect("calibrates");
                let (q, k, v) = (q.require_grad(), k.require_grad(), v.require_grad());
                let base = if causal { AttentionMask::causal() } else { AttentionMask::bidirectional() };
                let mask = base.with_padding(pad.clone());
                let out = match fused {
                    true => attn.forward(q.clone(), k.clone(), v.clone(), &mask),
                    false => attn.forward_reference(q.clone(), k.clone(), v.clone(), &mask),
                };
                let grads = (out.clone() * w).sum().backward();
                let g = |x: &Tensor<4>| x.grad(&grads).expect("gradient");
                vec![out.inner(), g(&q), g(&k), g(&v)]
            };
            let (a, b) = (run(true), run(false));
            for (name, (x, y)) in ["output", "dq", "dk", "dv"].iter().zip(a.iter().zip(&b)) {
                assert!(all_finite(x), "{map:?} causal={causal}: {name} not finite");
                let e = err(x, y);
                assert!(e < 2e-4, "{map:?} causal={causal}: {name} differs from the specification by {e:e}");
            }
        }
    }
}

/// At T = 4096, the long-context training length: the fused operation (f32, the positive map built
/// inside) gives the output and the gradients of q, k, v and a learnable Ω of the quadratic
/// specification computed in f64, and the composed chunked form in f64 gives them to f64 rounding.
#[test]
fn long_sequences_match_the_quadratic_specification_in_f64() {
    let ad = device().autodiff();
    let (seq, heads, d, chunk) = (4096, 1, 8, 32);
    let config = AstrocyticConfig {
        features: 16,
        chunk_size: Some(chunk),
        learnable_omega: true,
        seed: 9,
        ..AstrocyticConfig::default()
    };
    let attn = config.init(heads, d, 0, &ad);
    let causal = AttentionMask::causal();
    // (output, dq, dk, dv, dΩ) of sum(attention ∘ w) through one form, inputs in `dtype`.
    let run = |dtype: DType, form: &str| -> Vec<Tensor<4>> {
        let shape = [1, heads, seq, d];
        let q = normal4(shape, 0.8, 31, dtype, &ad).require_grad();
        let k = normal4(shape, 0.8, 32, dtype, &ad).add_scalar(0.3).require_grad();
        let v = normal4(shape, 1.0, 33, dtype, &ad).require_grad();
        let w = normal4(shape, 1.0, 34, dtype, &ad);
        let out = match form {
            "fused" => attn.forward(q.clone(), k.clone(), v.clone(), &causal),
            "chunked" => attn.forward_chunked(q.clone(), k.clone(), v.clone(), &causal, chunk),
            _ => attn.forward_reference(q.clone(), k.clone(), v.clone(), &causal),
        };
        let grads = (out.clone() * w).sum().backward();
        let g = |x: &Tensor<4>| x.grad(&grads).expect("input receives a gradient");
        let omega = attn.omega.val().grad(&grads).expect("Ω receives a gradient").unsqueeze_dim::<4>(0);
        vec![out.inner(), g(&q), g(&k), g(&v), omega]
    };
    let reference = run(DType::F64, "quadratic");
    for (form, dtype, tol) in [("chunked", DType::F64, 1e-10), ("fused", DType::F32, 1e-4)] {
        for (name, (a, b)) in ["output", "dq", "dk", "dv", "dΩ"].iter().zip(run(dtype, form).iter().zip(&reference)) {
            let e = err(a, b);
            assert!(e < tol, "T = {seq}, {form} ({dtype:?}): {name} differs from the f64 specification by {e:e}");
        }
    }
}
