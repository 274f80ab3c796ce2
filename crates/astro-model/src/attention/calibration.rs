//! Closed-form parameters of the variance-reduced hidden-neuron maps, from statistics of a head's
//! queries and keys.
//!
//! Sources:
//! - **GERF / OPRF** — Likhosherstov, Choromanski, Dubey, Liu, Sarlos & Weller, "Chefs' Random
//!   Tables: Non-Trigonometric Random Features" (NeurIPS 2022), §3: f(ω, x) = D exp(A‖ω‖² + B ωᵀx
//!   − ‖x‖²/2) with B = √(1 − 4A), D = (1 − 4A)^{d/4} is unbiased for exp(xᵀy) for every A < 1/8;
//!   A = 0 is the positive map. Minimising the mean log second moment over all query–key pairs gives
//!   A* = (1 − 2ρ − √((2ρ + 1)² + 8ρ)) / 16 with ρ = mean‖x_i + y_j‖² / d (derivation below).
//! - **SADERF** — Likhosherstov et al., "FAVOR#: Sharp Attention Kernel Approximations via New
//!   Classes of Positive Random Features" (2023), the simplified asymmetric dense-exponential map:
//!   the query side reads Ψx, the key side Ψ⁻¹y (Ψ diagonal; (Ψx)ᵀ(Ψ⁻¹y) = xᵀy, so it stays unbiased),
//!   with Ψ_l = (Σ_j y_l² / Σ_i x_l²)^{1/4}. [`FeatureMap::Saderf`] is exactly this, plus A*.
//! - **Key shift** (this project's addition, [`FeatureMap::ShiftedSaderf`]): softmax attention is
//!   unchanged when every key moves by one vector c (query t's scores move by the constant q_t·c,
//!   which cancels in the ratio; the astrocyte then estimates Z_t·exp(−q̃_t·c), and reports multiply
//!   it back). The relative variance of GERF depends on the pair only through ‖Ψx + Ψ⁻¹(y − c)‖²,
//!   whose mean over pairs is Σ_l ψ_l² Var x_l + ψ_l⁻² Var y_l + (mean of Ψx + Ψ⁻¹(ȳ − c))²; it is
//!   minimised jointly by c = ȳ + Ψ²x̄ and ψ_l = (Var y_l / Var x_l)^{1/4}, leaving
//!   mean‖·‖² = 2 Σ_l √(Var x_l · Var y_l) — the spread of the data instead of its offset.
//!
//! Derivation of A*: for s = x + y, E[f(ω,x)² f(ω,y)²] = (1 − 4A)^d (1 − 8A)^{−d/2}
//! exp(2(1 − 4A)/(1 − 8A)·‖s‖² − ‖x‖² − ‖y‖²). Setting the A-derivative of its mean logarithm to zero:
//! 4dA(1 − 8A) + 2‖s‖²(1 − 4A) = 0, i.e. 8A² + (2ρ − 1)A − ρ/2 = 0; the root below 1/8 is A*.
//!
//! Statistics are gathered over every (non-padded) query and key of the calibration data, on the
//! scaled inputs x̃ = x / D^{1/4}, in f64 on the host (a few thousand vectors of width D).

use super::feature_map::FeatureMap;
use crate::error::CalibrationError;

/// Running sums of one head's scaled queries and keys: count, Σx, Σx² per dimension, Σxxᵀ.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadStats {
    /// Queries counted.
    pub queries: f64,
    /// Σ q̃ per dimension.
    pub q_sum: Vec<f64>,
    /// Σ q̃² per dimension.
    pub q_sq: Vec<f64>,
    /// Keys counted.
    pub keys: f64,
    /// Σ k̃ per dimension.
    pub k_sum: Vec<f64>,
    /// Σ k̃² per dimension.
    pub k_sq: Vec<f64>,
    /// Σ q̃ q̃ᵀ, `[D, D]` row-major (the full map's covariance).
    pub q_outer: Vec<f64>,
    /// Σ k̃ k̃ᵀ, `[D, D]` row-major.
    pub k_outer: Vec<f64>,
}

impl HeadStats {
    /// Empty sums for width `d`.
    pub fn new(d: usize) -> Self {
        Self {
            queries: 0.0,
            q_sum: vec![0.0; d],
            q_sq: vec![0.0; d],
            keys: 0.0,
            k_sum: vec![0.0; d],
            k_sq: vec![0.0; d],
            q_outer: vec![0.0; d * d],
            k_outer: vec![0.0; d * d],
        }
    }

    /// Covariance `[D, D]` (row-major) from count, Σx and Σxxᵀ.
    fn covariance(n: f64, sum: &[f64], outer: &[f64]) -> Vec<f64> {
        let d = sum.len();
        (0..d * d).map(|i| outer[i] / n - (sum[i / d] / n) * (sum[i % d] / n)).collect()
    }

    fn moments(n: f64, sum: &[f64], sq: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let second: Vec<f64> = sq.iter().map(|s| s / n).collect();
        let var = mean.iter().zip(&second).map(|(m, s)| (s - m * m).max(0.0)).collect();
        (mean, second, var)
    }
}

/// Adds `[batch, heads, seq, D]` scaled queries and keys (row-major host values) to per-head sums;
/// tokens with `pad[b * seq + t]` true are skipped on both sides.
pub fn accumulate(stats: &mut [HeadStats], q: &[f64], k: &[f64], dims: [usize; 4], pad: Option<&[bool]>) {
    let [b, h, t, d] = dims;
    for bi in 0..b {
        for (hi, s) in stats.iter_mut().enumerate().take(h) {
            for ti in 0..t {
                if pad.is_some_and(|p| p[bi * t + ti]) {
                    continue;
                }
                let at = ((bi * h + hi) * t + ti) * d;
                let (x, y) = (&q[at..at + d], &k[at..at + d]);
                for l in 0..d {
                    s.q_sum[l] += x[l];
                    s.q_sq[l] += x[l] * x[l];
                    s.k_sum[l] += y[l];
                    s.k_sq[l] += y[l] * y[l];
                    for j in 0..d {
                        s.q_outer[l * d + j] += x[l] * x[j];
                        s.k_outer[l * d + j] += y[l] * y[j];
                    }
                }
                s.queries += 1.0;
                s.keys += 1.0;
            }
        }
    }
}

/// Parameters of a calibrated map for every head of one layer (host values).
#[derive(Debug, Clone, PartialEq)]
pub struct MapParams {
    /// ln ψ, `[heads, D]`: the query side reads ψ ⊙ x̃, the key side (k̃ − c) / ψ.
    pub log_psi: Vec<f64>,
    /// Key shift c, `[heads, D]` (0 for plain SADERF).
    pub shift: Vec<f64>,
    /// GERF's A per head, `[heads]` (≤ 0).
    pub gerf_a: Vec<f64>,
    /// The full map's rotation U per head, `[heads, D, D]` row-major (x̃ ↦ Uᵀx̃ is `x̃ U` on a row);
    /// empty for the diagonal maps. ψ and c are then in U's coordinates.
    pub rotation: Vec<f64>,
}

/// GERF's optimal A for a mean squared pair norm `mean_sq` (= mean‖x_i + y_j‖²) in width `d`.
pub fn optimal_a(mean_sq: f64, d: usize) -> f64 {
    let rho = mean_sq / d as f64;
    (1.0 - 2.0 * rho - ((2.0 * rho + 1.0).powi(2) + 8.0 * rho).sqrt()) / 16.0
}

/// Relative floor below which a dimension's spread counts as zero.
const DEGENERATE: f64 = 1.0e-12;

/// The closed-form parameters of `map` (`saderf` or `shifted_saderf`) for layer `layer`'s heads.
///
/// A dimension where the queries' or keys' spread (second moment for SADERF, variance for the
/// shifted map) is zero leaves ψ undefined: an error naming layer, head and dimension, unless
/// `fallback`, which uses ψ = 1 there (and says how many in the returned count).
pub fn closed_form(
    map: FeatureMap,
    stats: &[HeadStats],
    layer: usize,
    fallback: bool,
) -> Result<(MapParams, usize), CalibrationError> {
    let shifted = match map {
        FeatureMap::Saderf => false,
        FeatureMap::ShiftedSaderf => true,
        FeatureMap::FullSaderf => return full_form(stats, layer, fallback),
        other => return Err(CalibrationError::NotCalibrated { map: other.name() }),
    };
    let d = stats.first().map_or(0, |s| s.q_sum.len());
    let mut out = MapParams { log_psi: Vec::new(), shift: Vec::new(), gerf_a: Vec::new(), rotation: Vec::new() };
    let mut fallbacks = 0;
    for (head, s) in stats.iter().enumerate() {
        if s.queries < 1.0 || s.keys < 1.0 {
            return Err(CalibrationError::NoData { layer, head });
        }
        let (qm, q2, qv) = HeadStats::moments(s.queries, &s.q_sum, &s.q_sq);
        let (km, k2, kv) = HeadStats::moments(s.keys, &s.k_sum, &s.k_sq);
        let (qs, ks) = if shifted { (&qv, &kv) } else { (&q2, &k2) };
        let floor = |v: &[f64]| DEGENERATE * (v.iter().sum::<f64>() / d as f64).max(1e-300);
        let (q_floor, k_floor) = (floor(qs), floor(ks));
        let mut mean_sq = 0.0;
        for l in 0..d {
            let degenerate = if qs[l] <= q_floor {
                Some("queries")
            } else if ks[l] <= k_floor {
                Some("keys")
            } else {
                None
            };
            let psi2 = match degenerate {
                Some(side) if !fallback => {
                    return Err(CalibrationError::Undefined {
                        map: map.name(),
                        layer,
                        head,
                        dim: l,
                        side,
                        statistic: if shifted { "variance" } else { "mean square" },
                    });
                }
                Some(_) => {
                    fallbacks += 1;
                    1.0
                }
                None => (ks[l] / qs[l]).sqrt(),
            };
            out.log_psi.push(0.5 * psi2.ln());
            let c = if shifted { km[l] + psi2 * qm[l] } else { 0.0 };
            out.shift.push(c);
            // mean over pairs of (ψx_l + (y_l − c_l)/ψ)²
            let mean = psi2.sqrt() * qm[l] + (km[l] - c) / psi2.sqrt();
            mean_sq += psi2 * qv[l] + kv[l] / psi2 + mean * mean;
        }
        out.gerf_a.push(optimal_a(mean_sq, d));
    }
    Ok((out, fallbacks))
}

/// A symmetric `[D, D]` matrix's eigenvalues and eigenvectors (columns), by nalgebra.
fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, nalgebra::DMatrix<f64>) {
    let m = nalgebra::DMatrix::from_row_slice(d, d, a);
    let m = (&m + m.transpose()) * 0.5;
    let e = m.symmetric_eigen();
    (e.eigenvalues.iter().copied().collect(), e.eigenvectors)
}

/// V f(Λ) Vᵀ for a symmetric matrix with eigen-decomposition (`values`, `vectors`).
fn spectral(values: &[f64], vectors: &nalgebra::DMatrix<f64>, f: impl Fn(f64) -> f64) -> nalgebra::DMatrix<f64> {
    let diag = nalgebra::DVector::from_iterator(values.len(), values.iter().map(|&v| f(v)));
    vectors * nalgebra::DMatrix::from_diagonal(&diag) * vectors.transpose()
}

/// The full map's closed form ([`FeatureMap::FullSaderf`]). For x ↦ Mx, y ↦ M⁻ᵀ(y − c) (q·k kept
/// up to the shift's per-query factor), the mean over pairs of ‖Mx + M⁻ᵀ(y − c)‖² is
/// tr(P Σ_q) + tr(P⁻¹ Σ_k) + ‖mean‖² with P = MᵀM; it is minimised by c = ȳ + P x̄ and by P with
/// P Σ_q P = Σ_k, i.e. P = Σ_q^{-1/2} (Σ_q^{1/2} Σ_k Σ_q^{1/2})^{1/2} Σ_q^{-1/2}, leaving
/// 2 tr((Σ_q^{1/2} Σ_k Σ_q^{1/2})^{1/2}) — never more than the diagonal map's 2 Σ_l √(Var x_l Var y_l).
/// With P = U diag(ψ²) Uᵀ, M = diag(ψ) Uᵀ: rotate by U, then the diagonal map. A covariance with a
/// zero eigenvalue leaves P undefined: an error naming layer, head and side, unless `fallback`,
/// which adds the floor to that side's spectrum (counted per head and side).
fn full_form(stats: &[HeadStats], layer: usize, fallback: bool) -> Result<(MapParams, usize), CalibrationError> {
    let d = stats.first().map_or(0, |s| s.q_sum.len());
    let mut out = MapParams { log_psi: Vec::new(), shift: Vec::new(), gerf_a: Vec::new(), rotation: Vec::new() };
    let mut fallbacks = 0;
    for (head, s) in stats.iter().enumerate() {
        if s.queries < 1.0 || s.keys < 1.0 {
            return Err(CalibrationError::NoData { layer, head });
        }
        let qc = HeadStats::covariance(s.queries, &s.q_sum, &s.q_outer);
        let kc = HeadStats::covariance(s.keys, &s.k_sum, &s.k_outer);
        // Eigen-decompositions with the spectrum floored (or refused) where it has no spread.
        let mut floored =
            |cov: &[f64], side: &'static str| -> Result<(Vec<f64>, nalgebra::DMatrix<f64>), CalibrationError> {
                let (mut values, vectors) = symmetric_eigen(cov, d);
                let floor = DEGENERATE.sqrt() * (values.iter().sum::<f64>() / d as f64).max(1e-300);
                if let Some(index) = values.iter().position(|&v| v <= floor) {
                    if !fallback {
                        return Err(CalibrationError::Singular {
                            map: FeatureMap::FullSaderf.name(),
                            layer,
                            head,
                            index,
                            side,
                        });
                    }
                    fallbacks += 1;
                    values.iter_mut().for_each(|v| *v = v.max(floor));
                }
                Ok((values, vectors))
            };
        let (qv, qvec) = floored(&qc, "queries")?;
        // Σ_k with its floored spectrum: a singular Σ_k (fewer keys than dimensions) made P singular
        // and ψ² → 0 in its null directions, and the fallback then fitted a non-finite A.
        let (kv, kvec) = floored(&kc, "keys")?;
        let sigma_k = spectral(&kv, &kvec, |v| v); //                          Σ_k
        let q_half = spectral(&qv, &qvec, f64::sqrt); //                      Σ_q^{1/2}
        let q_inv_half = spectral(&qv, &qvec, |v| 1.0 / v.sqrt()); //        Σ_q^{-1/2}
        let inner = &q_half * &sigma_k * &q_half; //                          Σ_q^{1/2} Σ_k Σ_q^{1/2}
        let (iv, ivec) = symmetric_eigen(inner.as_slice(), d); // symmetric, so column- = row-major
        let p = &q_inv_half * spectral(&iv, &ivec, |v| v.max(0.0).sqrt()) * &q_inv_half;
        let (psi2, u) = symmetric_eigen(p.as_slice(), d);
        let q_mean = nalgebra::DVector::from_iterator(d, s.q_sum.iter().map(|x| x / s.queries));
        let k_mean = nalgebra::DVector::from_iterator(d, s.k_sum.iter().map(|x| x / s.keys));
        let c = u.transpose() * (&k_mean + &p * &q_mean); //                   Uᵀ(ȳ + P x̄)
        let sigma_q = nalgebra::DMatrix::from_row_slice(d, d, &qc);
        let (rq, rk) = (u.transpose() * &sigma_q * &u, u.transpose() * &sigma_k * &u);
        let mut mean_sq = 0.0;
        for l in 0..d {
            let psi2 = psi2[l].max(1e-300);
            out.log_psi.push(0.5 * psi2.ln());
            out.shift.push(c[l]);
            mean_sq += psi2 * rq[(l, l)] + rk[(l, l)] / psi2;
        }
        out.gerf_a.push(optimal_a(mean_sq, d));
        for r in 0..d {
            out.rotation.extend((0..d).map(|col| u[(r, col)]));
        }
    }
    Ok((out, fallbacks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(q: &[[f64; 2]], k: &[[f64; 2]]) -> HeadStats {
        let mut s = HeadStats::new(2);
        let flat = |x: &[[f64; 2]]| x.iter().flatten().copied().collect::<Vec<_>>();
        accumulate(std::slice::from_mut(&mut s), &flat(q), &flat(k), [1, 1, q.len(), 2], None);
        s
    }

    #[test]
    fn optimal_a_solves_the_stationarity_condition() {
        for (mean_sq, d) in [(0.0, 4), (1.0, 4), (37.5, 16), (500.0, 32)] {
            let a = optimal_a(mean_sq, d);
            let rho = mean_sq / d as f64;
            assert!(a <= 0.0);
            assert!((8.0 * a * a + (2.0 * rho - 1.0) * a - rho / 2.0).abs() < 1e-9, "{mean_sq} {d}: {a}");
        }
        assert_eq!(optimal_a(0.0, 8), 0.0);
    }

    #[test]
    fn saderf_psi_is_the_fourth_root_of_the_second_moment_ratio() {
        let s = stats_of(&[[1.0, 2.0], [-1.0, 2.0]], &[[4.0, 0.5], [4.0, -0.5]]);
        let (p, n) = closed_form(FeatureMap::Saderf, &[s], 0, false).unwrap();
        assert_eq!(n, 0);
        // E q² = (1, 4), E k² = (16, 0.25): ψ = (16, 1/16)^{1/4} = (2, 0.5)
        assert!((p.log_psi[0] - 2f64.ln()).abs() < 1e-12 && (p.log_psi[1] - 0.5f64.ln()).abs() < 1e-12);
        assert_eq!(p.shift, vec![0.0, 0.0]);
    }

    #[test]
    fn shift_removes_the_offset_and_names_degenerate_dimensions() {
        // Keys all equal along dimension 0: variance 0.
        let s = stats_of(&[[1.0, 2.0], [3.0, 4.0]], &[[5.0, 1.0], [5.0, 3.0]]);
        let err = closed_form(FeatureMap::ShiftedSaderf, std::slice::from_ref(&s), 3, false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("layer 3, head 0") && msg.contains("dimension 0") && msg.contains("keys"), "{msg}");
        assert!(msg.contains("--fallback"), "{msg}");
        let (p, n) = closed_form(FeatureMap::ShiftedSaderf, &[s], 3, true).unwrap();
        assert_eq!(n, 1);
        assert_eq!(p.log_psi[0], 0.0);
        // dimension 1: Var q = 1, Var k = 1 → ψ = 1, c = k̄ + q̄ = 2 + 3
        assert!((p.log_psi[1]).abs() < 1e-12 && (p.shift[1] - 5.0).abs() < 1e-12);
    }

    /// Random correlated queries and offset, correlated keys in width `d`: (queries, keys) row-major.
    fn correlated(n: usize, d: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mix: Vec<f64> = (0..2 * d * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut q = Vec::new();
        let mut k = Vec::new();
        for _ in 0..n {
            let z: Vec<f64> = (0..2 * d).map(|_| rng.random_range(-1.0..1.0)).collect();
            for r in 0..d {
                q.push((0..d).map(|c| mix[r * d + c] * z[c]).sum::<f64>());
                k.push(0.3 * (0..d).map(|c| mix[d * d + r * d + c] * z[d + c]).sum::<f64>() + 2.0 + r as f64);
            }
        }
        (q, k)
    }

    #[test]
    fn full_form_solves_p_sigma_q_p_and_beats_the_diagonal_map() {
        let d = 4;
        let n = 500;
        let (q, k) = correlated(n, d, 7);
        let mut s = vec![HeadStats::new(d)];
        accumulate(&mut s, &q, &k, [1, 1, n, d], None);
        let (full, fallbacks) = closed_form(FeatureMap::FullSaderf, &s, 0, false).unwrap();
        assert_eq!(fallbacks, 0);
        // P = U diag(ψ²) Uᵀ satisfies P Σ_q P = Σ_k, and U is orthogonal.
        let u = nalgebra::DMatrix::from_row_slice(d, d, &full.rotation);
        let psi2 = nalgebra::DVector::from_iterator(d, full.log_psi.iter().map(|l| (2.0 * l).exp()));
        let p = &u * nalgebra::DMatrix::from_diagonal(&psi2) * u.transpose();
        let sq = nalgebra::DMatrix::from_row_slice(d, d, &HeadStats::covariance(n as f64, &s[0].q_sum, &s[0].q_outer));
        let sk = nalgebra::DMatrix::from_row_slice(d, d, &HeadStats::covariance(n as f64, &s[0].k_sum, &s[0].k_outer));
        assert!((&p * &sq * &p - &sk).norm() < 1e-9 * sk.norm(), "P Σq P ≠ Σk");
        assert!((u.transpose() * &u - nalgebra::DMatrix::identity(d, d)).norm() < 1e-9);
        // The mean squared pair norm behind A*: the full map's never exceeds the diagonal one's.
        let (diag, _) = closed_form(FeatureMap::ShiftedSaderf, &s, 0, false).unwrap();
        let rho = |a: f64| {
            // invert A*(ρ): 8A² + (2ρ − 1)A − ρ/2 = 0 → ρ = (A − 8A²)/(2A − 1/2)
            (a - 8.0 * a * a) / (2.0 * a - 0.5)
        };
        let (rf, rd) = (rho(full.gerf_a[0]), rho(diag.gerf_a[0]));
        assert!(rf < rd, "full map's mean ‖·‖² {rf} should be below the diagonal map's {rd} on correlated data");
        // The shift in U's coordinates is Uᵀ(ȳ + P x̄).
        let qm = nalgebra::DVector::from_iterator(d, s[0].q_sum.iter().map(|x| x / n as f64));
        let km = nalgebra::DVector::from_iterator(d, s[0].k_sum.iter().map(|x| x / n as f64));
        let c = u.transpose() * (km + &p * qm);
        for l in 0..d {
            assert!((full.shift[l] - c[l]).abs() < 1e-9);
        }
    }

    #[test]
    fn full_form_names_a_singular_covariance_and_floors_it_only_when_asked() {
        // Keys on a line: rank 1 in width 2.
        let s = stats_of(&[[1.0, 2.0], [3.0, 1.0], [0.0, 0.5]], &[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]);
        let msg = closed_form(FeatureMap::FullSaderf, std::slice::from_ref(&s), 4, false).unwrap_err().to_string();
        assert!(msg.contains("layer 4, head 0") && msg.contains("keys' covariance is singular"), "{msg}");
        assert!(msg.contains("--fallback"), "{msg}");
        let (p, n) = closed_form(FeatureMap::FullSaderf, &[s], 4, true).unwrap();
        assert_eq!(n, 1);
        assert!(p.log_psi.iter().chain(&p.shift).chain(&p.rotation).all(|x| x.is_finite()));
    }

    #[test]
    fn other_maps_are_not_calibrated() {
        let err = closed_form(FeatureMap::Positive, &[HeadStats::new(2)], 0, false).unwrap_err();
        assert!(err.to_string().contains("positive"));
    }
}
