//! Numerical behaviour of the astrocytic layer: convergence to softmax, the astrocyte response,
//! stability at large norms, and gradients.

mod common;

use astro_model::attention::{AstrocyticConfig, AttentionMask, FeatureMap, InnerAttention, SoftmaxConfig};
use burn::tensor::{DType, Tensor, TensorData};
use common::{all_finite, device, host, normal4, rel_err};

/// Least-squares slope of log(err) against log(m).
fn loglog_slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (xs, ys): (Vec<f64>, Vec<f64>) = points.iter().map(|&(m, e)| (m.ln(), e.ln())).unzip();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    cov / var
}

/// Small-norm queries and keys (‖q̃‖ ≈ 0.6; 2 × 4 heads, T = 32, D = 16), values, and the exact
/// bidirectional softmax output.
fn small_norm_problem(dev: &burn::tensor::Device) -> ([Tensor<4>; 3], Tensor<4>) {
    let shape = [2, 4, 32, 16];
    let q = normal4(shape, 0.3, 1, DType::F32, dev);
    let k = normal4(shape, 0.3, 2, DType::F32, dev);
    let v = normal4(shape, 1.0, 3, DType::F32, dev);
    let exact = SoftmaxConfig::default().init().forward_reference(
        q.clone(),
        k.clone(),
        v.clone(),
        &AttentionMask::bidirectional(),
    );
    ([q, k, v], exact)
}

#[test]
fn converges_to_softmax_as_hidden_neurons_grow() {
    // Error of the output relative to exact softmax, averaged over four draws of Ω per m, must fall
    // like m^{-1/2} and be below 0.05 at m = 4096.
    let dev = device();
    let ([q, k, v], exact) = small_norm_problem(&dev);
    let mask = AttentionMask::bidirectional();
    let mut points = Vec::new();
    for m in [64, 128, 256, 512, 1024, 2048, 4096] {
        let err: f64 = (0..4)
            .map(|seed| {
                let attn = AstrocyticConfig { features: m, seed, ..AstrocyticConfig::default() }.init(4, 16, 0, &dev);
                let y = attn.forward(q.clone(), k.clone(), v.clone(), &mask);
                frobenius_rel(&y, &exact)
            })
            .sum::<f64>()
            / 4.0;
        points.push((m as f64, err));
    }
    let slope = loglog_slope(&points);
    eprintln!("relative error by m: {points:?}; log-log slope {slope:.3}");
    assert!((-0.65..=-0.35).contains(&slope), "slope {slope} not near -1/2: {points:?}");
    assert!(points.last().unwrap().1 < 0.05, "error at m = 4096 too large: {points:?}");
    assert!(points[0].1 > points.last().unwrap().1 * 4.0, "error must shrink with m: {points:?}");
}

/// ‖a − b‖_F / ‖b‖_F.
fn frobenius_rel<const D: usize>(a: &Tensor<D>, b: &Tensor<D>) -> f64 {
    let (a, b) = (host(a), host(b));
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

#[test]
fn orthogonal_features_lower_the_error() {
    let dev = device();
    let ([q, k, v], exact) = small_norm_problem(&dev);
    let mask = AttentionMask::bidirectional();
    let mean_err = |orthogonal: bool| {
        (0..8)
            .map(|seed| {
                let attn = AstrocyticConfig { features: 64, orthogonal, seed, ..AstrocyticConfig::default() }
                    .init(4, 16, 0, &dev);
                frobenius_rel(&attn.forward(q.clone(), k.clone(), v.clone(), &mask), &exact)
            })
            .sum::<f64>()
            / 8.0
    };
    let (iid, orf) = (mean_err(false), mean_err(true));
    assert!(orf < iid, "orthogonal Ω should lower the error: iid {iid}, orthogonal {orf}");
}

/// Literal φ from the reference table, on the host in f64. `x`: one token, `omega`: [m × D] row-major.
fn phi_naive(map: FeatureMap, x: &[f64], omega: &[f64], phase: &[f64], m: usize) -> Vec<f64> {
    let d = x.len();
    if map == FeatureMap::Taylor {
        // Based's literal features [1, u, (u_i u_j / √2) for all i, j] with u = Ωx: r² second-order
        // neurons where the layer keeps each product once (1 + r + r(r+1)/2), the same kernel.
        let u: Vec<f64> = (0..m).map(|mu| (0..d).map(|i| omega[mu * d + i] * x[i]).sum()).collect();
        let second = u.iter().flat_map(|a| u.iter().map(move |b| a * b / std::f64::consts::SQRT_2));
        return std::iter::once(1.0).chain(u.iter().copied()).chain(second).collect();
    }
    if map == FeatureMap::Hedgehog {
        // [softmax(u), softmax(−u)] over the m hidden neurons, u = Ωx.
        let u: Vec<f64> = (0..m).map(|mu| (0..d).map(|i| omega[mu * d + i] * x[i]).sum()).collect();
        let softmax = |sign: f64| {
            let z: f64 = u.iter().map(|a| (sign * a).exp()).sum();
            u.iter().map(move |a| (sign * a).exp() / z).collect::<Vec<f64>>()
        };
        return softmax(1.0).into_iter().chain(softmax(-1.0)).collect();
    }
    let sq: f64 = x.iter().map(|v| v * v).sum();
    (0..m)
        .map(|mu| {
            let u: f64 = (0..d).map(|i| omega[mu * d + i] * x[i]).sum();
            match map {
                FeatureMap::Positive => (u - sq / 2.0).exp() / (m as f64).sqrt(),
                FeatureMap::Truncated => u.exp().clamp(0.0, 150.0) * (-sq / 2.0).exp() / (m as f64).sqrt(),
                FeatureMap::Cosine => (2.0 / m as f64).sqrt() * (u + phase[mu]).cos() * (sq / 2.0).exp(),
                FeatureMap::PositiveCosine => {
                    ((2.0 / (std::f64::consts::PI * m as f64)).sqrt() * (u + phase[mu]).cos() * (sq / 2.0).exp())
                        .max(0.0)
                }
                FeatureMap::Linear => 1.0 + (u - sq / 2.0 - 0.5 * (m as f64).ln()),
                FeatureMap::Elu => {
                    if u > 0.0 {
                        u + 1.0
                    } else {
                        u.exp()
                    }
                }
                // Uncalibrated (ψ = 1, c = 0, A = 0): the positive map; calibrated ones in calibrated_maps.rs.
                FeatureMap::Saderf | FeatureMap::ShiftedSaderf | FeatureMap::FullSaderf => {
                    (u - sq / 2.0).exp() / (m as f64).sqrt()
                }
                FeatureMap::Taylor | FeatureMap::Hedgehog => unreachable!("handled above"),
            }
        })
        .collect()
}

#[test]
fn astrocyte_response_equals_naive_sum() {
    // a_t = Σ_{τ≤t} φ(q̃_t)·φ(k̃_τ), with the literal formulas, for every map.
    let dev = device();
    let (h, t, d, m) = (2, 7, 8, 16);
    for map in FeatureMap::ALL {
        let attn = AstrocyticConfig { features: m, feature_map: map, seed: 5, ..AstrocyticConfig::default() }
            .init(h, d, 0, &dev);
        let q = normal4([1, h, t, d], 0.8, 11, DType::F32, &dev);
        let k = normal4([1, h, t, d], 0.8, 12, DType::F32, &dev);
        let trace = attn.normalisers(q.clone(), k.clone(), &AttentionMask::causal());
        let (log_a, sign) = (host(&trace.astrocyte_log.unwrap()), host(&trace.astrocyte_sign.unwrap()));
        let omega = host(&attn.omega.val());
        let phase = attn.phase.as_ref().map(|p| host(&p.val())).unwrap_or_else(|| vec![0.0; h * m]);
        let (qh, kh) = (host(&q), host(&k));
        let scale = (d as f64).powf(-0.25);
        for head in 0..h {
            let tok = |x: &[f64], i: usize| -> Vec<f64> {
                x[(head * t + i) * d..(head * t + i + 1) * d].iter().map(|v| v * scale).collect()
            };
            let om = &omega[head * m * d..(head + 1) * m * d];
            let ph = &phase[head * m..(head + 1) * m];
            for i in 0..t {
                let fq = phi_naive(map, &tok(&qh, i), om, ph, m);
                let naive: f64 = (0..=i)
                    .map(|j| phi_naive(map, &tok(&kh, j), om, ph, m).iter().zip(&fq).map(|(a, b)| a * b).sum::<f64>())
                    .sum();
                let ours = sign[head * t + i] * log_a[head * t + i].exp();
                let err = (ours - naive).abs() / naive.abs().max(1e-3);
                assert!(err < 1e-4, "{map:?} head {head} t {i}: ours {ours} naive {naive}");
            }
        }
    }
}

/// Queries and keys with norm exactly `norm` in random directions: `[b, h, t, d]`.
fn with_norm(shape: [usize; 4], norm: f64, seed: u64, dev: &burn::tensor::Device) -> Tensor<4> {
    let x = normal4(shape, 1.0, seed, DType::F32, dev);
    let n = x.clone().square().sum_dim(3).sqrt();
    x / n * norm
}

#[test]
fn no_nan_or_inf_at_large_norms() {
    // Query/key norms up to 1e5 (exp(q·k/√D) overflows f32 from about 10; ‖q‖² stays in range) in
    // every map and form.
    let dev = device();
    let shape = [2, 2, 40, 32];
    for norm in [1.0, 10.0, 20.0, 30.0, 1000.0, 1.0e5] {
        let q = with_norm(shape, norm, 1, &dev);
        // Mix large- and small-norm keys: the stabilisers must cope with both in one sequence.
        let k = Tensor::cat(vec![with_norm([2, 2, 20, 32], norm, 2, &dev), with_norm([2, 2, 20, 32], 0.5, 3, &dev)], 2);
        let v = normal4(shape, 1.0, 4, DType::F32, &dev);
        for map in FeatureMap::ALL {
            for decay in [1.0, 0.9] {
                let attn = AstrocyticConfig {
                    features: 128,
                    feature_map: map,
                    decay,
                    chunk_size: Some(16),
                    ..AstrocyticConfig::default()
                }
                .init(2, 32, 0, &dev);
                let (attn, _) = attn.calibrate(q.clone(), k.clone(), None, 0, true).expect("calibrates");
                for mask in [AttentionMask::causal(), AttentionMask::bidirectional()] {
                    let y = attn.forward(q.clone(), k.clone(), v.clone(), &mask);
                    assert!(all_finite(&y), "{map:?} norm {norm} γ {decay} causal={}: non-finite output", mask.causal);
                    let r = attn.forward_reference(q.clone(), k.clone(), v.clone(), &mask);
                    assert!(all_finite(&r), "{map:?} norm {norm}: non-finite reference");
                    let trace = attn.normalisers(q.clone(), k.clone(), &mask);
                    assert!(all_finite(&trace.softmax_log) && all_finite(&trace.astrocyte_log.unwrap()));
                }
                let (y, _) = attn.forward_incremental(q.clone(), k.clone(), v.clone(), None);
                assert!(all_finite(&y), "{map:?} norm {norm}: non-finite incremental output");
            }
        }
    }
}

/// Up to norm 1e4 the astrocyte's denominator falls far below 1e-19 for some queries; the plain
/// quotient's backward then squared it to 0 and returned NaN (found by the hostile run of issue 7).
#[test]
fn gradients_are_finite_at_large_norms() {
    let dev = device().autodiff();
    let shape = [1, 2, 24, 16];
    for map in [FeatureMap::Positive, FeatureMap::Truncated, FeatureMap::Cosine, FeatureMap::Linear] {
        let attn = AstrocyticConfig {
            features: 64,
            feature_map: map,
            chunk_size: Some(8),
            learnable_omega: true,
            ..AstrocyticConfig::default()
        }
        .init(2, 16, 0, &dev);
        for norm in [1.0, 30.0, 100.0, 1000.0, 1.0e4] {
            let q = with_norm(shape, norm, 1, &dev).require_grad();
            let k = with_norm(shape, norm, 2, &dev).require_grad();
            let v = normal4(shape, 1.0, 3, DType::F32, &dev).require_grad();
            for mask in [AttentionMask::causal(), AttentionMask::bidirectional()] {
                let y = attn.forward(q.clone(), k.clone(), v.clone(), &mask);
                let grads = y.sum().backward();
                for (name, g) in [("q", q.grad(&grads)), ("k", k.grad(&grads)), ("v", v.grad(&grads))] {
                    let g = g.unwrap_or_else(|| panic!("{map:?}: no gradient for {name}"));
                    assert!(
                        all_finite(&g),
                        "{map:?} norm {norm} causal={}: non-finite gradient of {name}",
                        mask.causal
                    );
                }
                let g_omega = attn.omega.val().grad(&grads).expect("learnable Ω receives a gradient");
                assert!(all_finite(&g_omega), "{map:?} norm {norm}: non-finite gradient of Ω");
            }
        }
    }
}

#[test]
fn chunked_causal_gradient_matches_finite_differences() {
    // f64, several chunks with carried state and decay: analytic vs central differences.
    let dev = device().autodiff();
    let shape = [1, 2, 9, 4];
    let attn = AstrocyticConfig { features: 16, decay: 0.9, chunk_size: Some(3), ..AstrocyticConfig::default() }
        .init(2, 4, 0, &dev);
    let base = [
        normal4(shape, 0.7, 1, DType::F64, &dev),
        normal4(shape, 0.7, 2, DType::F64, &dev),
        normal4(shape, 1.0, 3, DType::F64, &dev),
    ];
    let weights = normal4(shape, 1.0, 4, DType::F64, &dev);
    let loss = |inputs: &[Tensor<4>; 3]| -> Tensor<1> {
        let y =
            attn.forward_chunked(inputs[0].clone(), inputs[1].clone(), inputs[2].clone(), &AttentionMask::causal(), 3);
        (y * weights.clone()).sum()
    };
    let leaves: [Tensor<4>; 3] = base.clone().map(|x| x.require_grad());
    let grads = loss(&leaves).backward();
    let h = 1e-6;
    for (which, leaf) in leaves.iter().enumerate() {
        let analytic = host(&leaf.grad(&grads).expect("gradient"));
        let values = host(&base[which]);
        for idx in [0, 5, 17, 30, 47, 71] {
            let bump = |delta: f64| {
                let mut v = values.clone();
                v[idx] += delta;
                let mut inputs = base.clone();
                inputs[which] = Tensor::from_data(TensorData::new(v, shape), (&dev, DType::F64));
                host(&loss(&inputs))[0]
            };
            let numeric = (bump(h) - bump(-h)) / (2.0 * h);
            let err = (analytic[idx] - numeric).abs() / numeric.abs().max(1e-3);
            assert!(err < 1e-5, "input {which} index {idx}: analytic {} vs numeric {numeric}", analytic[idx]);
        }
    }
}

#[test]
fn frozen_omega_gets_no_gradient() {
    let dev = device().autodiff();
    let attn = AstrocyticConfig { features: 16, ..AstrocyticConfig::default() }.init(2, 8, 0, &dev);
    let q = normal4([1, 2, 5, 8], 0.5, 1, DType::F32, &dev).require_grad();
    let y = attn.forward(q.clone(), q.clone(), q.clone(), &AttentionMask::causal());
    let grads = y.sum().backward();
    assert!(q.grad(&grads).is_some());
    assert!(attn.omega.val().grad(&grads).is_none(), "fixed Ω must not be trained");
}

#[test]
fn relative_error_helper_detects_differences() {
    let dev = device();
    let a = normal4([1, 1, 4, 4], 1.0, 1, DType::F32, &dev);
    assert_eq!(rel_err(&a, &a), 0.0);
    assert!(rel_err(&(a.clone() * 1.01), &a) > 1e-3);
}
