//! Hidden-neuron nonlinearities φ and the random matrix Ω they read through.
//!
//! Formulas follow `shared/reference/astrocytic-attention.md` §3 and the authors' notebooks
//! (`get_phi` in `ALBERT_Neuron_Astrocyte.ipynb`). Inputs are already scaled, x = q / D^{1/4}.
//!
//! Every map is evaluated in a factored, overflow-free form ([`Features`]): either log φ (positive
//! exponential maps) or a bounded signed part times a per-token log-scale. The attention forms in
//! [`super::kernel`] subtract stabilising constants from these logs before exponentiating; the
//! constants cancel in the ratio H·φ(q̃) / pᵀφ(q̃).

use burn::tensor::activation::{elu, log_softmax, relu};
use burn::tensor::{Bool, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};
use serde::{Deserialize, Serialize};

/// Threshold of the truncated map's saturating firing rate (the notebooks' `thresh = 150`).
pub const TRUNCATION: f64 = 150.0;

/// A large negative log value that stands for "no activity" without producing inf or NaN.
pub(crate) const NEG: f64 = -1.0e30;

/// Nonlinearity of the hidden neurons, φ: R^D → R^m.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FeatureMap {
    /// Positive random features, m^{-1/2} exp(Ωx − ‖x‖²/2): the paper's default (Performer's FAVOR+).
    #[default]
    Positive,
    /// Cosine random features (Rahimi–Recht), (2/m)^{1/2} cos(Ωx + b) exp(‖x‖²/2). Signed.
    Cosine,
    /// Saturating firing rate, m^{-1/2} clip(exp(Ωx), 0, 150) exp(−‖x‖²/2).
    Truncated,
    /// Rectified cosine, max(0, (2/(πm))^{1/2} cos(Ωx + b) exp(‖x‖²/2)).
    PositiveCosine,
    /// First-order expansion of the positive map, 1 + (Ωx − ‖x‖²/2 − ½ log m). Signed.
    Linear,
    /// Deterministic ELU rate on the random projections, elu(Ωx) + 1 (positive).
    Elu,
    /// SADERF (Likhosherstov et al. 2023): the query side reads Ψx, the key side Ψ⁻¹y, through GERF
    /// features (1 − 4A)^{D/4} m^{-1/2} exp(A‖ω‖² + √(1 − 4A) ωᵀx − ‖x‖²/2); Ψ and A calibrated in
    /// closed form from the queries' and keys' statistics ([`super::calibration`]). Positive, unbiased.
    Saderf,
    /// SADERF with the keys shifted by c = ȳ + Ψ²x̄ and Ψ from variances (see [`super::calibration`]):
    /// the estimator's variance then depends on the spread of queries and keys, not on their offset.
    ShiftedSaderf,
    /// Shifted SADERF with a full (non-diagonal) Ψ: queries and keys are first rotated into the
    /// eigenbasis U of P, the matrix geometric mean of Σ_q⁻¹ and Σ_k (P Σ_q P = Σ_k), then read as
    /// ψ ⊙ Uᵀx̃ and (Uᵀk̃ − c)/ψ with ψ² = P's eigenvalues — the transform x ↦ Mx, y ↦ M⁻ᵀy
    /// (q·k unchanged) that minimises the mean ‖Mx + M⁻ᵀ(y − c)‖² over all M, not only diagonal
    /// ones (see [`super::calibration`]). Positive, unbiased.
    FullSaderf,
    /// Second-order Taylor features of exp (Based, Arora et al. 2024) on a projection to r = `features`
    /// dimensions, u = Ωx̃ with Ω `[heads, r, D]` drawn N(0, 1/r): φ(x) = [1, u, c_ij u_i u_j for
    /// i ≤ j] (c_ii = 1/√2, c_ij = 1), so φ(q)·φ(k) = 1 + s + s²/2 with s = u_q·u_k ≈ q·k/√D — always ≥ ½, a sharp
    /// polynomial kernel. Based writes the second order as vec(u uᵀ)/√2 (r² neurons); each product
    /// is kept once here, 1 + r + r(r+1)/2 hidden neurons, the same kernel. Train Ω
    /// (`learnable_omega = true`) as Based trains its projection.
    Taylor,
    /// Hedgehog (Zhang et al. 2024): a trained projection u = Ωx̃ read through both signs and a
    /// softmax over the hidden neurons of each half, φ(x) = [softmax(u), softmax(−u)] — 2m hidden
    /// neurons, positive, each token's activity summing to 2. Ω is always trained (with the model,
    /// end to end; Hedgehog also offers distilling it to softmax's weights, not done here); it starts
    /// as drawn for the positive map (`orthogonal = true` with m = head width: a random rotation, as
    /// Hedgehog's identity start up to a rotation). Hedgehog's bias b in Ωx̃ + b is left out.
    Hedgehog,
}

impl FeatureMap {
    /// Every map, in declaration order.
    pub const ALL: [FeatureMap; 11] = [
        FeatureMap::Positive,
        FeatureMap::Cosine,
        FeatureMap::Truncated,
        FeatureMap::PositiveCosine,
        FeatureMap::Linear,
        FeatureMap::Elu,
        FeatureMap::Saderf,
        FeatureMap::ShiftedSaderf,
        FeatureMap::FullSaderf,
        FeatureMap::Taylor,
        FeatureMap::Hedgehog,
    ];

    /// Name as written in configs.
    pub fn name(self) -> &'static str {
        match self {
            FeatureMap::Positive => "positive",
            FeatureMap::Cosine => "cosine",
            FeatureMap::Truncated => "truncated",
            FeatureMap::PositiveCosine => "positive_cosine",
            FeatureMap::Linear => "linear",
            FeatureMap::Elu => "elu",
            FeatureMap::Saderf => "saderf",
            FeatureMap::ShiftedSaderf => "shifted_saderf",
            FeatureMap::FullSaderf => "full_saderf",
            FeatureMap::Taylor => "taylor",
            FeatureMap::Hedgehog => "hedgehog",
        }
    }

    /// Width of φ for `features` = m random projections: m, 1 + r + r(r+1)/2 for the Taylor map, 2m
    /// for Hedgehog.
    pub fn width(self, features: usize) -> usize {
        match self {
            FeatureMap::Taylor => crate::kernels::taylor_width(features),
            FeatureMap::Hedgehog => 2 * features,
            _ => features,
        }
    }

    /// Whether the map has parameters fitted to data (Ψ, c, A): see [`super::calibration`].
    pub fn is_calibrated(self) -> bool {
        matches!(self, FeatureMap::Saderf | FeatureMap::ShiftedSaderf | FeatureMap::FullSaderf)
    }

    /// Whether φ ≥ 0 everywhere, so the astrocyte response pᵀφ(q̃) can never change sign.
    pub fn is_positive(self) -> bool {
        !matches!(self, FeatureMap::Cosine | FeatureMap::Linear | FeatureMap::Taylor)
    }

    /// Whether the map uses the random phases b ~ U[0, 2π).
    pub fn uses_phase(self) -> bool {
        matches!(self, FeatureMap::Cosine | FeatureMap::PositiveCosine)
    }

    /// Hidden-neuron activity for scaled inputs.
    ///
    /// - `x`: `[batch, heads, seq, D]`, already scaled by D^{-1/4}
    /// - `omega`: `[heads, m, D]`
    /// - `phase`: `[heads, m]` (cosine maps only)
    /// - `gerf_a`: GERF's A per head, `[heads]` (calibrated maps only; `None` means A = 0). The
    ///   calibrated maps' Ψ and shift are applied by the caller, which knows the side.
    pub(crate) fn features(
        self,
        x: Tensor<4>,
        omega: Tensor<3>,
        phase: Option<Tensor<2>>,
        gerf_a: Option<Tensor<1>>,
    ) -> Features {
        let m = omega.dims()[1];
        let ln_m = (m as f64).ln();
        let [h, _, d] = omega.dims();
        let dtype = x.dtype();
        let u = projections(x.clone(), omega.clone()); //                                [B,H,T,m]
        // ‖x‖²/2 per token: [B,H,T,1]
        let half_sq = x.square().sum_dim(3).mul_scalar(0.5);
        let with_phase = |u: Tensor<4>| match phase {
            // b: [H,m] -> [1,H,1,m]
            Some(b) => u + b.cast(half_sq.dtype()).unsqueeze_dim::<3>(1).unsqueeze_dim(0),
            None => u,
        };
        match self {
            FeatureMap::Saderf | FeatureMap::ShiftedSaderf | FeatureMap::FullSaderf => {
                let Some(a) = gerf_a else {
                    return Features::Log(u - half_sq.add_scalar(0.5 * ln_m));
                };
                // log φ = √(1 − 4A) ωᵀx + A‖ω‖² − ‖x‖²/2 + (D/4) ln(1 − 4A) − ½ ln m
                let a = a.cast(dtype).reshape([1, h, 1, 1]); //                       [1,H,1,1]
                let one_minus = a.clone().mul_scalar(-4.0).add_scalar(1.0); //       1 − 4A
                let omega_sq = omega.cast(dtype).square().sum_dim(2).reshape([1, h, 1, m]); // ‖ω_μ‖²: [1,H,1,m]
                let log = u * one_minus.clone().sqrt() + omega_sq * a + one_minus.log().mul_scalar(d as f64 / 4.0);
                Features::Log(log - half_sq.add_scalar(0.5 * ln_m))
            }
            // The constant joins the per-token term ([B,H,T,1]): one pass over [B,H,T,m] instead of two.
            FeatureMap::Positive => Features::Log(u - half_sq.add_scalar(0.5 * ln_m)),
            FeatureMap::Truncated => Features::Log(u.clamp_max(TRUNCATION.ln()) - half_sq.add_scalar(0.5 * ln_m)),
            FeatureMap::Cosine => Features::Scaled {
                g: with_phase(u).cos().mul_scalar((2.0 / m as f64).sqrt()),
                log_scale: Some(half_sq),
            },
            FeatureMap::PositiveCosine => Features::Scaled {
                g: relu(with_phase(u).cos()).mul_scalar((2.0 / (std::f64::consts::PI * m as f64)).sqrt()),
                log_scale: Some(half_sq),
            },
            FeatureMap::Linear => Features::Scaled { g: (u - half_sq).add_scalar(1.0 - 0.5 * ln_m), log_scale: None },
            FeatureMap::Elu => Features::Scaled { g: elu(u, 1.0).add_scalar(1.0), log_scale: None },
            FeatureMap::Taylor => Features::Scaled { g: taylor(u), log_scale: None },
            FeatureMap::Hedgehog => Features::Log(hedgehog(u)),
        }
    }
}

/// The hidden neurons' input u = Ωx per token: `x` `[batch, heads, seq, D]`, `omega` `[heads, m, D]`
/// → `[batch, heads, seq, m]`.
pub(crate) fn projections(x: Tensor<4>, omega: Tensor<3>) -> Tensor<4> {
    let [h, m, d] = omega.dims();
    let [b, _, t, _] = x.dims();
    let omega = omega.cast(x.dtype());
    if b * t == 1 {
        // One token (decoding): Ω·x per head, [m, D]·[D, 1], reading Ω in its stored layout;
        // Ωᵀ would be a copy of m·D floats per head to use D + m of them.
        let x_col = x.reshape([1, h, d, 1]); //                                              [1,H,D,1]
        omega.unsqueeze_dim::<4>(0).matmul(x_col).reshape([1, h, 1, m])
    } else {
        x.matmul(omega.swap_dims(1, 2).unsqueeze_dim::<4>(0)) //                    [B,H,T,D]@[1,H,D,m]
    }
}

/// Second-order Taylor features [1, u, (c_ij u_i u_j) for i ≤ j] for `u` `[batch, heads, seq, r]`
/// → `[batch, heads, seq, 1 + r + r(r+1)/2]`, c_ii = 1/√2 and c_ij = 1 for i < j, pairs in
/// row-major order (see [`taylor_pairs`]).
///
/// The products u_i u_j and u_j u_i of vec(u uᵀ)/√2 (Based's features, 1 + r + r² of them) carry
/// the same number; one copy of each with weight 1 gives the same kernel, φ(q)·φ(k) = 1 + s + s²/2
/// (s = u_q·u_k), with 153 instead of 273 hidden neurons at r = 16: a smaller decoding state and
/// less work per token, the function unchanged.
fn taylor(u: Tensor<4>) -> Tensor<4> {
    let [b, h, t, r] = u.dims();
    let (pairs, coefficients): (Vec<i64>, Vec<f32>) = taylor_pairs(r)
        .map(|(i, j)| ((i * r + j) as i64, if i == j { std::f32::consts::FRAC_1_SQRT_2 } else { 1.0 }))
        .unzip();
    let n = pairs.len();
    let device = u.device();
    let outer = u.clone().reshape([b, h, t, r, 1]) * u.clone().reshape([b, h, t, 1, r]); //      [B,H,T,r,r]
    let index = Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(pairs, [n]), &device);
    let weight = Tensor::<1>::from_data(TensorData::new(coefficients, [n]), (&device, u.dtype())).reshape([1, 1, 1, n]);
    let second = outer.reshape([b, h, t, r * r]).select(3, index) * weight; //                  [B,H,T,n]
    let ones = Tensor::<4>::ones([b, h, t, 1], (&device, u.dtype()));
    Tensor::cat(vec![ones, u, second], 3)
}

/// The pairs (i, j), i ≤ j < r, of the Taylor map's second-order features, in their order.
fn taylor_pairs(r: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..r).flat_map(move |i| (i..r).map(move |j| (i, j)))
}

/// Hedgehog's log φ = [u − logsumexp(u), −u − logsumexp(−u)] for `u` `[batch, heads, seq, m]`
/// → `[batch, heads, seq, 2m]` (each half a log-softmax over the hidden neurons).
fn hedgehog(u: Tensor<4>) -> Tensor<4> {
    Tensor::cat(vec![log_softmax(u.clone(), 3), log_softmax(u.neg(), 3)], 3)
}

/// φ for a set of tokens, `[batch, heads, seq, m]`, in a form that never overflows.
// Tensors are handles of equal size; the difference is one Option.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub(crate) enum Features {
    /// log φ (positive exponential maps).
    Log(Tensor<4>),
    /// φ = g · exp(ℓ): bounded part `g` `[B,H,T,m]` and optional per-token log-scale ℓ `[B,H,T,1]`.
    Scaled { g: Tensor<4>, log_scale: Option<Tensor<4>> },
}

/// The deterministic linear-attention map of Katharopoulos et al. (2020): φ(x) = elu(x) + 1,
/// applied to the unscaled head vectors (m = D, no Ω). `x`: `[batch, heads, seq, D]`.
pub(crate) fn elu_plus_one(x: Tensor<4>) -> Features {
    Features::Scaled { g: elu(x, 1.0).add_scalar(1.0), log_scale: None }
}

impl Features {
    /// Per-token log-scale ℓ_τ with φ_τ / exp(ℓ_τ) bounded: max_μ log φ for log maps, `[B,H,T,1]`.
    /// `None` for maps that need no stabiliser. Detached: the constants it feeds cancel exactly.
    pub(crate) fn token_log_scale(&self) -> Option<Tensor<4>> {
        match self {
            Features::Log(l) => Some(l.clone().detach().max_dim(3)),
            Features::Scaled { log_scale, .. } => log_scale.clone().map(|s| s.detach()),
        }
    }

    /// Query-side activity divided by a per-query constant (which cancels in the read-out).
    /// Returns (φ(q̃_t)/exp(c_t) `[B,H,T,m]`, c_t `[B,H,T,1]` or `None` when c_t = 0).
    pub(crate) fn query_side(self) -> (Tensor<4>, Option<Tensor<4>>) {
        match self {
            Features::Log(l) => {
                let c = l.clone().detach().max_dim(3);
                (crate::kernels::exp_sub(l, c.clone()), Some(c))
            }
            Features::Scaled { g, log_scale } => (g, log_scale.map(|s| s.detach())),
        }
    }

    /// Key-side activity divided by exp(`c`), with `c` broadcastable to `[B,H,T,1]`
    /// (`None` means c = 0; ignored by maps without log-scale).
    pub(crate) fn key_side(self, c: Option<Tensor<4>>) -> Tensor<4> {
        match (self, c) {
            (Features::Log(l), Some(c)) => crate::kernels::exp_sub(l, c),
            (Features::Log(l), None) => crate::kernels::exp(l),
            (Features::Scaled { g, log_scale: Some(s) }, Some(c)) => g * (s - c).exp(),
            (Features::Scaled { g, log_scale: Some(s) }, None) => g * s.exp(),
            (Features::Scaled { g, log_scale: None }, Some(c)) => g * c.neg().exp(),
            (Features::Scaled { g, log_scale: None }, None) => g,
        }
    }

    /// Adds a per-token log weight `w` `[.., T, 1]` (e.g. calcium decay γ^{age}).
    pub(crate) fn add_log_weight(self, w: Tensor<4>) -> Features {
        match self {
            Features::Log(l) => Features::Log(l + w),
            Features::Scaled { g, log_scale: Some(s) } => Features::Scaled { g, log_scale: Some(s + w) },
            Features::Scaled { g, log_scale: None } => Features::Scaled { g, log_scale: Some(w) },
        }
    }

    /// Silences padded tokens (`pad`: `[B,1,T,1]`, true = padding): their log activity becomes
    /// [`NEG`] and bounded part 0, so they neither count towards stabilisers nor write anything.
    pub(crate) fn mask_tokens(self, pad: &Tensor<4, Bool>) -> Features {
        match self {
            Features::Log(l) => {
                let shape = l.shape();
                Features::Log(l.mask_fill(pad.clone().expand(shape), NEG))
            }
            Features::Scaled { g, log_scale } => {
                let log_scale = log_scale.map(|s| {
                    let shape = s.shape();
                    s.mask_fill(pad.clone().expand(shape), NEG)
                });
                let shape = g.shape();
                Features::Scaled { g: g.mask_fill(pad.clone().expand(shape), 0.0), log_scale }
            }
        }
    }

    /// Tokens `start..start+len` (dimension 2).
    pub(crate) fn narrow(&self, start: usize, len: usize) -> Features {
        match self {
            Features::Log(l) => Features::Log(l.clone().narrow(2, start, len)),
            Features::Scaled { g, log_scale } => Features::Scaled {
                g: g.clone().narrow(2, start, len),
                log_scale: log_scale.as_ref().map(|s| s.clone().narrow(2, start, len)),
            },
        }
    }

    /// Appends `count` silent tokens (log activity [`NEG`], bounded part 0) at the end of the sequence.
    pub(crate) fn append_silent(self, count: usize) -> Features {
        if count == 0 {
            return self;
        }
        let silent = |x: Tensor<4>, value: f64| {
            let [b, h, _, w] = x.dims();
            let tail = Tensor::<4>::full([b, h, count, w], value, (&x.device(), x.dtype()));
            Tensor::cat(vec![x, tail], 2)
        };
        match self {
            Features::Log(l) => Features::Log(silent(l, NEG)),
            Features::Scaled { g, log_scale } => {
                Features::Scaled { g: silent(g, 0.0), log_scale: log_scale.map(|s| silent(s, NEG)) }
            }
        }
    }

    /// Applies the same reshaping to every part (used to split the sequence into chunks).
    pub(crate) fn map(self, f: impl Fn(Tensor<4>) -> Tensor<4>) -> Features {
        match self {
            Features::Log(l) => Features::Log(f(l)),
            Features::Scaled { g, log_scale } => Features::Scaled { g: f(g), log_scale: log_scale.map(f) },
        }
    }
}

/// Draws Ω `[heads, m, D]` from `seed`: i.i.d. N(0, 1) rows, or orthogonal blocks of D rows with
/// norms resampled from the χ_D distribution (Performer's ORF, same marginal row law, lower variance).
pub fn sample_omega(heads: usize, m: usize, d: usize, orthogonal: bool, seed: u64) -> TensorData {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(heads * m * d);
    for _ in 0..heads {
        if orthogonal {
            let mut rows = 0;
            while rows < m {
                let take = (m - rows).min(d);
                let block = orthonormal_rows(d, &mut rng);
                for row in block.chunks(d).take(take) {
                    let norm = chi_sample(d, &mut rng);
                    out.extend(row.iter().map(|&x| (x * norm) as f32));
                }
                rows += take;
            }
        } else {
            out.extend((0..m * d).map(|_| {
                let x: f64 = StandardNormal.sample(&mut rng);
                x as f32
            }));
        }
    }
    TensorData::new(out, [heads, m, d])
}

/// Draws the cosine maps' phases b ~ U[0, 2π), `[heads, m]`. Uses its own stream (`seed` ⊕ a constant)
/// so that Ω is the same whichever map is chosen.
pub fn sample_phase(heads: usize, m: usize, seed: u64) -> TensorData {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15);
    let uniform = Uniform::new(0.0f64, std::f64::consts::TAU).expect("valid range");
    let out: Vec<f32> = (0..heads * m).map(|_| uniform.sample(&mut rng) as f32).collect();
    TensorData::new(out, [heads, m])
}

/// A uniformly random d×d orthogonal matrix, row-major, from Gram–Schmidt on a Gaussian matrix.
///
/// Written by hand: it runs once per head at initialisation on at most d×d host values, and a linear
/// algebra crate (nalgebra, ndarray-linalg) would be a heavy dependency for these dozen lines.
fn orthonormal_rows(d: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut rows: Vec<f64> = (0..d * d).map(|_| StandardNormal.sample(rng)).collect();
    for i in 0..d {
        // Modified Gram–Schmidt: remove the components along the rows already orthonormalised.
        for j in 0..i {
            let dot: f64 = (0..d).map(|c| rows[i * d + c] * rows[j * d + c]).sum();
            for c in 0..d {
                rows[i * d + c] -= dot * rows[j * d + c];
            }
        }
        let norm = (0..d).map(|c| rows[i * d + c].powi(2)).sum::<f64>().sqrt();
        for c in 0..d {
            rows[i * d + c] /= norm;
        }
    }
    rows
}

/// One draw from the χ distribution with `d` degrees of freedom (the norm of a Gaussian d-vector).
fn chi_sample(d: usize, rng: &mut ChaCha8Rng) -> f64 {
    (0..d).map(|_| StandardNormal.sample(rng)).map(|x: f64| x * x).sum::<f64>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orthogonal_blocks_are_orthogonal_with_chi_norms() {
        let (d, m) = (8, 20);
        let data = sample_omega(1, m, d, true, 3).try_to_vec::<f32>().unwrap();
        let row = |i: usize| &data[i * d..(i + 1) * d];
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum::<f64>();
        // rows 0..8 form one block, 8..16 another, 16..20 a partial block
        for block in [0..8, 8..16, 16..20] {
            for i in block.clone() {
                for j in block.clone() {
                    if i != j {
                        let cos = dot(row(i), row(j)) / (dot(row(i), row(i)) * dot(row(j), row(j))).sqrt();
                        assert!(cos.abs() < 1e-5, "rows {i},{j} not orthogonal: {cos}");
                    }
                }
            }
        }
        // row norms are not all equal (they are resampled), and average about sqrt(d)
        let norms: Vec<f64> = (0..m).map(|i| dot(row(i), row(i)).sqrt()).collect();
        let mean = norms.iter().sum::<f64>() / m as f64;
        assert!((mean - (d as f64).sqrt()).abs() < 1.0, "mean norm {mean}");
        assert!(norms.iter().any(|n| (n - norms[0]).abs() > 1e-3));
    }

    #[test]
    fn omega_is_reproducible_from_its_seed() {
        let a = sample_omega(2, 16, 4, false, 7);
        let b = sample_omega(2, 16, 4, false, 7);
        let c = sample_omega(2, 16, 4, false, 8);
        assert_eq!(a.try_to_vec::<f32>().unwrap(), b.try_to_vec::<f32>().unwrap());
        assert_ne!(a.try_to_vec::<f32>().unwrap(), c.try_to_vec::<f32>().unwrap());
    }
}
