//! The calibrated hidden-neuron maps (SADERF and shifted SADERF): literal formulas, positivity,
//! unbiasedness on small norms, variance reduction on offset keys, and clear errors.

mod common;

use astro_model::attention::{AstrocyticAttention, AstrocyticConfig, AttentionMask, FeatureMap, InnerAttention};
use burn::tensor::{DType, Tensor};
use common::{device, host, normal4};

fn layer(map: FeatureMap, m: usize, seed: u64, h: usize, d: usize) -> AstrocyticAttention {
    AstrocyticConfig { features: m, feature_map: map, seed, ..AstrocyticConfig::default() }.init(h, d, 0, &device())
}

/// Astrocyte responses a_t and softmax normalisers Z_t (bidirectional), `[h·t]` each.
fn responses(attn: &AstrocyticAttention, q: &Tensor<4>, k: &Tensor<4>) -> (Vec<f64>, Vec<f64>) {
    let trace = attn.normalisers(q.clone(), k.clone(), &AttentionMask::bidirectional());
    let a = host(&trace.astrocyte_log.unwrap()).iter().map(|l| l.exp()).collect();
    let z = host(&trace.softmax_log).iter().map(|l| l.exp()).collect();
    (a, z)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[test]
fn calibrated_response_equals_the_literal_formula() {
    // a_t = Σ_τ φ_q(q̃_t)·φ_k(k̃_τ) · exp(q̃_t·c) with φ_q(x) = GERF(ψx), φ_k(y) = GERF((y − c)/ψ),
    // GERF(x)_μ = (1 − 4A)^{D/4} m^{-1/2} exp(A‖ω_μ‖² + √(1 − 4A) ω_μ·x − ‖x‖²/2), in f64 on the host.
    let dev = device();
    let (h, t, d, m) = (2, 12, 8, 16); // t > d: the full map needs non-singular covariances
    let q = normal4([1, h, t, d], 0.8, 21, DType::F32, &dev);
    let k = normal4([1, h, t, d], 0.8, 22, DType::F32, &dev).add_scalar(0.5);
    for map in [FeatureMap::Saderf, FeatureMap::ShiftedSaderf, FeatureMap::FullSaderf] {
        let (attn, _) = layer(map, m, 3, h, d).calibrate(q.clone(), k.clone(), None, 0, false).unwrap();
        let (a, _) = responses(&attn, &q, &k);
        // The full map rotates both sides first (x̃ U); the diagonal maps have U = I.
        let rotation = attn.rotation.as_ref().map(|u| host(&u.val()));
        assert_eq!(rotation.is_some(), map == FeatureMap::FullSaderf);
        let omega = host(&attn.omega.val());
        let log_psi = host(&attn.log_psi.as_ref().unwrap().val());
        let shift = host(&attn.shift.as_ref().unwrap().val());
        let gerf_a = host(&attn.gerf_a.as_ref().unwrap().val());
        assert!(gerf_a.iter().all(|&x| x < 0.0), "{map:?}: A* < 0 for data with spread: {gerf_a:?}");
        let (qh, kh) = (host(&q), host(&k));
        let scale = (d as f64).powf(-0.25);
        for head in 0..h {
            let aa = gerf_a[head];
            let gerf = |x: &[f64]| -> Vec<f64> {
                let sq: f64 = x.iter().map(|v| v * v).sum();
                (0..m)
                    .map(|mu| {
                        let w = &omega[(head * m + mu) * d..(head * m + mu + 1) * d];
                        let u: f64 = w.iter().zip(x).map(|(a, b)| a * b).sum();
                        let w2: f64 = w.iter().map(|v| v * v).sum();
                        (1.0 - 4.0 * aa).powf(d as f64 / 4.0) / (m as f64).sqrt()
                            * (aa * w2 + (1.0 - 4.0 * aa).sqrt() * u - sq / 2.0).exp()
                    })
                    .collect()
            };
            let token = |x: &[f64], i: usize| -> Vec<f64> {
                let x: Vec<f64> = x[(head * t + i) * d..(head * t + i + 1) * d].iter().map(|v| v * scale).collect();
                match &rotation {
                    // (x U)_c = Σ_r x_r U[r, c]
                    Some(u) => (0..d).map(|c| (0..d).map(|r| x[r] * u[(head * d + r) * d + c]).sum()).collect(),
                    None => x,
                }
            };
            let psi = |l: usize| log_psi[head * d + l].exp();
            let c = |l: usize| shift[head * d + l];
            for i in 0..t {
                let x = token(&qh, i);
                let fq = gerf(&x.iter().enumerate().map(|(l, v)| v * psi(l)).collect::<Vec<_>>());
                let qc: f64 = x.iter().enumerate().map(|(l, v)| v * c(l)).sum();
                let naive: f64 = (0..t)
                    .map(|j| {
                        let y: Vec<f64> = token(&kh, j).iter().enumerate().map(|(l, v)| (v - c(l)) / psi(l)).collect();
                        gerf(&y).iter().zip(&fq).map(|(a, b)| a * b).sum::<f64>()
                    })
                    .sum::<f64>()
                    * qc.exp();
                let ours = a[head * t + i];
                assert!((ours - naive).abs() / naive < 1e-4, "{map:?} head {head} t {i}: ours {ours}, naive {naive}");
            }
        }
    }
}

#[test]
fn calibrated_maps_are_unbiased_on_small_norms() {
    // Averaged over 300 draws of Ω, the astrocyte response equals softmax's normaliser.
    let dev = device();
    let (h, t, d, m) = (1, 8, 4, 8);
    let q = normal4([1, h, t, d], 0.4, 31, DType::F32, &dev);
    let k = normal4([1, h, t, d], 0.4, 32, DType::F32, &dev).add_scalar(0.3);
    for map in [FeatureMap::Saderf, FeatureMap::ShiftedSaderf, FeatureMap::FullSaderf] {
        let draws = 300;
        let mut mean = vec![0.0; h * t];
        let mut z = Vec::new();
        for seed in 0..draws {
            let (attn, _) = layer(map, m, seed, h, d).calibrate(q.clone(), k.clone(), None, 0, false).unwrap();
            let (a, zz) = responses(&attn, &q, &k);
            for (acc, x) in mean.iter_mut().zip(&a) {
                *acc += x / draws as f64;
            }
            z = zz;
        }
        for (i, (a, z)) in mean.iter().zip(&z).enumerate() {
            assert!((a - z).abs() / z < 0.03, "{map:?} query {i}: mean response {a}, softmax normaliser {z}");
        }
    }
}

/// Median relative error of `map`'s calibrated response against Z_t, mean over 4 draws of Ω.
fn mean_median_error(map: FeatureMap, m: usize, q: &Tensor<4>, k: &Tensor<4>) -> f64 {
    let [_, h, _, d] = q.dims();
    let errs: Vec<f64> = (0..4)
        .map(|seed| {
            let (attn, _) = layer(map, m, seed, h, d).calibrate(q.clone(), k.clone(), None, 0, false).unwrap();
            let (a, z) = responses(&attn, q, k);
            median(a.iter().zip(&z).map(|(a, z)| (a - z).abs() / z).collect())
        })
        .collect();
    errs.iter().sum::<f64>() / errs.len() as f64
}

#[test]
fn calibration_lowers_the_error_on_offset_keys() {
    // Trained keys share a large common offset; the shift removes it, SADERF balances the scales.
    let dev = device();
    let (h, t, d, m) = (2, 64, 16, 256);
    let q = normal4([1, h, t, d], 1.0, 41, DType::F32, &dev).mul_scalar(1.5);
    let k = normal4([1, h, t, d], 0.5, 42, DType::F32, &dev).add_scalar(1.5);
    let err = |map: FeatureMap| mean_median_error(map, m, &q, &k);
    let (positive, saderf, shifted) =
        (err(FeatureMap::Positive), err(FeatureMap::Saderf), err(FeatureMap::ShiftedSaderf));
    eprintln!("median relative error: positive {positive:.4}, saderf {saderf:.4}, shifted {shifted:.4}");
    assert!(saderf < positive, "saderf {saderf} should beat positive {positive}");
    assert!(shifted < saderf / 2.0, "shifted {shifted} should beat saderf {saderf} by 2x");
}

#[test]
fn the_full_map_lowers_the_error_on_correlated_heads() {
    // Queries spread along one oblique direction e₁, keys along another, e₂ ⊥ e₁ (trained heads'
    // queries and keys have different principal axes): per coordinate both look alike, so the
    // diagonal Ψ stays near 1; the full map rotates into e₁, e₂ and balances each axis.
    let dev = device();
    let (h, t, d, m) = (1, 64, 8, 256);
    let unit =
        |signs: [f32; 8]| Tensor::<1>::from_floats(signs, &dev).div_scalar((d as f64).sqrt()).reshape([1, 1, 1, d]);
    let (e1, e2) = (unit([1.0; 8]), unit([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0]));
    // 0.3 z + 2.5 (z·e) e: spread 2.8² along e, 0.3² across.
    let along = |x: Tensor<4>, e: &Tensor<4>| {
        x.clone().mul_scalar(0.3) + (x * e.clone()).sum_dim(3).mul_scalar(2.5) * e.clone()
    };
    let q = along(normal4([1, h, t, d], 1.0, 43, DType::F32, &dev), &e1);
    let k = along(normal4([1, h, t, d], 1.0, 44, DType::F32, &dev), &e2).add_scalar(0.7);
    let err = |map: FeatureMap| mean_median_error(map, m, &q, &k);
    let (shifted, full) = (err(FeatureMap::ShiftedSaderf), err(FeatureMap::FullSaderf));
    eprintln!("median relative error: shifted {shifted:.4}, full {full:.4}");
    assert!(full < shifted * 0.8, "full {full} should beat shifted {shifted}");
}

#[test]
fn calibrated_maps_stay_positive_at_large_norms() {
    let dev = device();
    let q = normal4([1, 2, 20, 16], 30.0, 51, DType::F32, &dev);
    let k = normal4([1, 2, 20, 16], 30.0, 52, DType::F32, &dev).add_scalar(50.0);
    for map in [FeatureMap::Saderf, FeatureMap::ShiftedSaderf, FeatureMap::FullSaderf] {
        let (attn, _) = layer(map, 64, 1, 2, 16).calibrate(q.clone(), k.clone(), None, 0, false).unwrap();
        let trace = attn.normalisers(q.clone(), k.clone(), &AttentionMask::causal());
        assert!(host(&trace.astrocyte_sign.unwrap()).iter().all(|&s| s == 1.0), "{map:?}: a_t must be positive");
        assert!(host(&trace.astrocyte_log.unwrap()).iter().all(|x| x.is_finite()));
    }
}

#[test]
fn degenerate_statistics_are_named_and_fall_back_only_when_asked() {
    let dev = device();
    let q = normal4([1, 1, 10, 4], 1.0, 61, DType::F32, &dev);
    // Every key equal: zero variance in every dimension.
    let k = Tensor::<4>::ones([1, 1, 10, 4], &dev);
    let attn = layer(FeatureMap::ShiftedSaderf, 16, 0, 1, 4);
    let err = attn.clone().calibrate(q.clone(), k.clone(), None, 2, false).unwrap_err().to_string();
    assert!(err.contains("layer 2, head 0") && err.contains("keys' variance") && err.contains("--fallback"), "{err}");
    let (_, fallbacks) = attn.calibrate(q, k, None, 2, true).unwrap();
    assert_eq!(fallbacks, 4);
    let nan = Tensor::<4>::full([1, 1, 4, 4], f64::NAN, &dev);
    let err = layer(FeatureMap::Saderf, 8, 0, 1, 4).calibrate(nan.clone(), nan, None, 0, false).unwrap_err();
    assert!(err.to_string().contains("not finite"), "{err}");
}

#[test]
fn uncalibrated_maps_equal_the_positive_map_and_ignore_calibration() {
    let dev = device();
    let q = normal4([1, 2, 9, 8], 0.7, 71, DType::F32, &dev);
    let k = normal4([1, 2, 9, 8], 0.7, 72, DType::F32, &dev);
    let (p, _) = responses(&layer(FeatureMap::Positive, 32, 4, 2, 8), &q, &k);
    let (s, _) = responses(&layer(FeatureMap::ShiftedSaderf, 32, 4, 2, 8), &q, &k);
    for (a, b) in p.iter().zip(&s) {
        assert!((a - b).abs() / a < 1e-5);
    }
    let (same, n) = layer(FeatureMap::Positive, 32, 4, 2, 8).calibrate(q.clone(), k.clone(), None, 0, false).unwrap();
    assert_eq!(n, 0);
    assert!(same.log_psi.is_none());
}
