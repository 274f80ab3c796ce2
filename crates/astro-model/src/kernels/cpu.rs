//! The attention backward on host slices: heads in parallel (rayon), five matrix products per head
//! (the `gemm` crate, which flex itself uses), and the softmax recomputed in cache-resident
//! `[T, S]` tiles with a vectorised exponential.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

/// Sizes of one attention call: `heads` = batch × heads, T queries, S keys, widths D and Dv.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub heads: usize,
    pub t: usize,
    pub s: usize,
    pub d: usize,
    pub dv: usize,
}

/// dQ `[heads, T, D]`, dK `[heads, S, D]`, dV `[heads, S, Dv]`, row-major.
pub(super) struct Grads {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// A row-major matrix view for [`matmul`]: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(super) struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

impl View {
    /// Row-major `[rows, cols]` slice.
    pub(super) fn rows(x: &[f32], cols: usize) -> Self {
        View { ptr: x.as_ptr(), rs: cols as isize, cs: 1 }
    }

    /// The transpose of a row-major `[rows, cols]` slice.
    pub(super) fn transposed(x: &[f32], cols: usize) -> Self {
        View { ptr: x.as_ptr(), rs: 1, cs: cols as isize }
    }

    /// The transpose of this view.
    pub(super) fn t(self) -> Self {
        View { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }

    /// This view without its first `n` rows (the caller keeps within the viewed slice).
    pub(super) fn skip_rows(self, n: usize) -> Self {
        View { ptr: self.ptr.wrapping_offset(n as isize * self.rs), ..self }
    }
}

/// dst `[m, n]` (row-major, overwritten) = `scale` · lhs `[m, k]` · rhs `[k, n]`, on this thread.
pub(super) fn matmul(dst: &mut [f32], m: usize, n: usize, k: usize, lhs: View, rhs: View, scale: f32) {
    matmul_acc(dst, m, n, k, lhs, rhs, None, scale);
}

/// dst `[m, n]` (row-major) = `keep` · dst + `scale` · lhs `[m, k]` · rhs `[k, n]` (`keep` `None`:
/// dst is overwritten), on this thread.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_acc(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: View,
    rhs: View,
    keep: Option<f32>,
    scale: f32,
) {
    product(dst, [m, n, k], lhs, rhs, keep, scale, Parallelism::None);
}

/// Smallest product (M·N·K) [`matmul_par`] splits over threads: flex's own threshold.
pub(super) const PARALLEL_PRODUCT: usize = 192 * 192 * 192;

/// dst `[m, n]` = `keep`·dst + lhs `[m, k]` · rhs `[k, n]` for the dense layers' products: on all
/// of rayon's threads (gemm's own split) from [`PARALLEL_PRODUCT`] on, as flex runs them.
fn matmul_par(dst: &mut [f32], m: usize, n: usize, k: usize, lhs: View, rhs: View, keep: bool) {
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_PRODUCT {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    product(dst, [m, n, k], lhs, rhs, keep.then_some(1.0), 1.0, parallelism);
}

/// `gemm` on a row-major dst `[m, n]` = `keep` · dst + `scale` · lhs `[m, k]` · rhs `[k, n]`.
fn product(
    dst: &mut [f32],
    [m, n, k]: [usize; 3],
    lhs: View,
    rhs: View,
    keep: Option<f32>,
    scale: f32,
    parallelism: Parallelism,
) {
    assert!(dst.len() >= m * n, "matmul destination too small");
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: `dst` holds m·n elements (checked); the views address m·k and k·n elements of
    // slices that outlive the call (built by the `View` constructors from them).
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            keep.is_some(),
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            keep.unwrap_or(0.0),
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A dense layer on rows: x `[n, d_in]` · w `[d_in, d_out]` + b `[d_out]` → `[n, d_out]`. The output
/// starts as the bias rows and the product accumulates onto it (no separate bias pass).
pub(super) fn linear(x: &[f32], w: &[f32], b: &[f32], n: usize, d_in: usize) -> Vec<f32> {
    let d_out = b.len();
    let mut y = b.repeat(n); //                                                     [n, d_out]
    matmul_par(&mut y, n, d_out, d_in, View::rows(x, d_in), View::rows(w, d_out), true);
    y
}

/// Gradients of [`linear`] given the output's gradient g `[n, d_out]`: dx = g·wᵀ `[n, d_in]`,
/// dw = xᵀ·g `[d_in, d_out]`, db = Σ_rows g `[d_out]`.
pub(super) fn linear_backward(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    n: usize,
    d_in: usize,
    d_out: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; n * d_in];
    matmul_par(&mut dx, n, d_in, d_out, View::rows(g, d_out), View::transposed(w, d_out), false);
    let mut dw = vec![0f32; d_in * d_out];
    matmul_par(&mut dw, d_in, d_out, n, View::transposed(x, d_in), View::rows(g, d_out), false);
    let db = g
        .par_chunks(ROWS * d_out.max(1))
        .map(|rows| {
            let mut sum = vec![0f32; d_out];
            for row in rows.chunks_exact(d_out) {
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            sum
        })
        .reduce(
            || vec![0f32; d_out],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    (dx, dw, db)
}

/// Largest `[rows, S]` score strip the attention kernels build per task (1 MiB of f32, L2-sized).
const SCORE_TILE: usize = 256 * 1024;

/// Query rows per score strip: causal attention skips the keys after a strip's last row, so
/// shorter strips skip more of the upper triangle (at T = 256: 4 strips of 64 compute 62.5 % of
/// the square), at the cost of more, smaller products. Long key sequences get shorter strips, so a
/// strip stays within [`SCORE_TILE`] (16 rows at the least).
fn strip_rows(t: usize, s: usize) -> usize {
    const ROWS: usize = 64;
    (SCORE_TILE / s.max(1)).clamp(16, ROWS).min(t.max(1))
}

/// Keys read by query rows `..r1` (all S unless causal: query i reads keys j ≤ i + offset).
fn keys_read(r1: usize, s: usize, offset: usize, causal: bool) -> usize {
    if causal { (r1 + offset).min(s) } else { s }
}

/// P = softmax(scale · q kᵀ) in place over a strip `p` `[rows, S']` whose first row is query
/// `row0` (blocked entries 0): row by row, causal rows only over the keys they read.
fn softmax_rows(p: &mut [f32], s: usize, row0: usize, offset: usize, causal: bool) {
    for (i, row) in p.chunks_exact_mut(s).enumerate() {
        let readable = if causal { (row0 + i + offset + 1).min(s) } else { s };
        let (live, blocked) = row.split_at_mut(readable);
        blocked.fill(0.0);
        let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let inv = 1.0 / exp_shifted(live, max);
        live.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Forward of scaled-dot-product attention for every head: O = softmax(q·kᵀ/√D) · v, in strips
/// of query rows (parallel over heads × strips), each strip's `[rows, S']` probabilities in a
/// reused buffer over only the keys it reads. Returns O `[heads, T, Dv]`.
pub(super) fn attention_forward(q: &[f32], k: &[f32], v: &[f32], dims: Dims, causal: bool) -> Vec<f32> {
    let Dims { heads, t, s, d, dv } = dims;
    let scale = 1.0 / (d as f32).sqrt();
    let offset = s.saturating_sub(t);
    let rows = strip_rows(t, s);
    let mut out = vec![0f32; heads * t * dv];
    out.par_chunks_mut(t * dv).enumerate().for_each(|(head, oh)| {
        let qh = &q[head * t * d..][..t * d];
        let kh = &k[head * s * d..][..s * d];
        let vh = &v[head * s * dv..][..s * dv];
        oh.par_chunks_mut(rows * dv).enumerate().for_each_init(
            || vec![0f32; rows * s],
            |p, (strip, os)| {
                let (r0, n) = (strip * rows, os.len() / dv);
                let sr = keys_read(r0 + n, s, offset, causal);
                let p = &mut p[..n * sr];
                let qs = &qh[r0 * d..][..n * d];
                matmul(p, n, sr, d, View::rows(qs, d), View::transposed(kh, d), scale); //   [n,S']
                softmax_rows(p, sr, r0, offset, causal);
                matmul(os, n, dv, sr, View::rows(p, sr), View::rows(vh, dv), 1.0); //          [n,Dv]
            },
        );
    });
    out
}

/// Backward of causal (or full) scaled-dot-product attention for every head, given the inputs,
/// the forward output `o` and its gradient `go`. Per head (in parallel) and strip of query rows
/// (in order, over the keys the strip reads), with P = softmax(q·kᵀ/√D):
/// dV += Pᵀ·dO, dP = dO·Vᵀ, dS = P ∘ (dP − rowsum(dO ∘ O)) / √D, dQ = dS·K, dK += dSᵀ·Q.
pub(super) fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    go: &[f32],
    dims: Dims,
    causal: bool,
) -> Grads {
    let Dims { heads, t, s, d, dv } = dims;
    let scale = 1.0 / (d as f32).sqrt();
    let mut grads = Grads { q: vec![0.0; heads * t * d], k: vec![0.0; heads * s * d], v: vec![0.0; heads * s * dv] };
    // Query i reads keys j ≤ i + offset when causal (bottom-right aligned, as Burn's mask).
    let offset = s.saturating_sub(t);
    let rows = strip_rows(t, s);
    grads
        .q
        .par_chunks_mut(t * d)
        .zip(grads.k.par_chunks_mut(s * d))
        .zip(grads.v.par_chunks_mut(s * dv))
        .enumerate()
        .for_each_init(
            || (vec![0f32; rows * s], vec![0f32; rows * s]),
            |(p, dp), (head, ((dq, dk), dvh))| {
                let qh = &q[head * t * d..][..t * d];
                let kh = &k[head * s * d..][..s * d];
                let vh = &v[head * s * dv..][..s * dv];
                let oh = &o[head * t * dv..][..t * dv];
                let goh = &go[head * t * dv..][..t * dv];
                // Keys no strip reads keep zero gradients (dK, dV start at zero).
                let mut written = 0;
                for r0 in (0..t).step_by(rows) {
                    let n = rows.min(t - r0);
                    let sr = keys_read(r0 + n, s, offset, causal);
                    let (p, dp) = (&mut p[..n * sr], &mut dp[..n * sr]);
                    let (qs, os, gos) = (&qh[r0 * d..][..n * d], &oh[r0 * dv..][..n * dv], &goh[r0 * dv..][..n * dv]);
                    // Accumulate into the keys an earlier strip already wrote; overwrite the rest.
                    let (old, fresh) = (written.min(sr), sr - written.min(sr));
                    // P = softmax(scale · q kᵀ), row by row:                              [n,S']
                    matmul(p, n, sr, d, View::rows(qs, d), View::transposed(kh, d), scale);
                    softmax_rows(p, sr, r0, offset, causal);
                    // dV += Pᵀ dO:                                                         [S',Dv]
                    let pt = View::transposed(p, sr);
                    matmul_acc(&mut dvh[..old * dv], old, dv, n, pt, View::rows(gos, dv), Some(1.0), 1.0);
                    matmul(&mut dvh[old * dv..sr * dv], fresh, dv, n, pt.skip_rows(old), View::rows(gos, dv), 1.0);
                    // dP = dO Vᵀ:                                                          [n,S']
                    matmul(dp, n, sr, dv, View::rows(gos, dv), View::transposed(vh, dv), 1.0);
                    // dS = P ∘ (dP − δ) · scale, δ_i = Σ_c dO_ic O_ic (stored over dP).
                    for i in 0..n {
                        let delta = dot(&gos[i * dv..][..dv], &os[i * dv..][..dv]);
                        let (pr, dr) = (&p[i * sr..][..sr], &mut dp[i * sr..][..sr]);
                        dr.iter_mut().zip(pr).for_each(|(g, &pv)| *g = pv * (*g - delta) * scale);
                    }
                    // dQ = dS K,  dK += dSᵀ Q:                                             [n,D], [S',D]
                    matmul(&mut dq[r0 * d..][..n * d], n, d, sr, View::rows(dp, sr), View::rows(kh, d), 1.0);
                    let dst = View::transposed(dp, sr);
                    matmul_acc(&mut dk[..old * d], old, d, n, dst, View::rows(qs, d), Some(1.0), 1.0);
                    matmul(&mut dk[old * d..sr * d], fresh, d, n, dst.skip_rows(old), View::rows(qs, d), 1.0);
                    written = written.max(sr);
                }
            },
        );
    grads
}

/// x ← exp(x − shift) in place; returns Σ x. Vectorised (AVX2 + FMA where the CPU has them).
pub(super) fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn wide(x: &mut [f32], shift: f32) -> f32 {
            exp_shifted_portable(x, shift)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled for (checked here).
            return unsafe { wide(x, shift) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { exp_shifted_avx2(x, shift) };
        }
    }
    exp_shifted_portable(x, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(x: &mut [f32], shift: f32) -> f32 {
    exp_shifted_portable(x, shift)
}

#[inline(always)]
fn exp_shifted_portable(x: &mut [f32], shift: f32) -> f32 {
    for v in x.iter_mut() {
        *v = exp_approx(*v - shift);
    }
    // Eight partial sums, so the reduction vectorises.
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// e^x for f32 without a libm call (branch-free, so loops over it vectorise): x = n·ln2 + r with
/// |r| ≤ ln2/2, e^r by its degree-6 Taylor polynomial (relative error < 2e-7), 2^n from the
/// exponent bits. Inputs below −87 give 0 (libm gives denormals down to −103.9, then 0), above 88
/// saturate near f32::MAX; NaN stays NaN.
#[inline(always)]
pub(super) fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    let xc = x.clamp(-87.0, 88.0);
    let shifted = xc * LOG2E + ROUND; // 1.5·2²³ + n with n = round(x·log2 e)
    let n = shifted - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n from the low mantissa bits of `shifted`, which hold n in two's complement (its ulp is 1):
    // integer arithmetic only, because a saturating float→int cast (`as i32`) does not vectorise.
    let scale = f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23);
    let y = if x < -87.0 { 0.0 } else { p * scale };
    if x.is_nan() { x } else { y }
}

/// Σ a_i b_i with eight partial sums, so the loop vectorises (a plain `sum` of products stays scalar:
/// float addition is not reassociated). AVX2 + FMA where the CPU has them.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for (checked above).
        return unsafe { dot_avx2(a, b) };
    }
    dot_inline(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_inline(a, b)
}

/// Explicit AVX2 + FMA products for the decoding step, where the vectors are a few hundred floats
/// and a call per row would cost more than the arithmetic: the compiler's vectorisation of
/// [`dot_inline`] keeps 4-wide partial sums with shuffles here, so these are written with the
/// intrinsics (no crate offers short fused dot products; `gemm` is for matrices).
#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    /// The sum of the eight lanes.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// Σ a_i b_i over the shorter of the two.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::kernels) fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads 8 floats at i + 8j with i + 8j + 8 ≤ n ≤ both lengths.
        unsafe {
            while i + 32 <= n {
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), _mm256_loadu_ps(pb.add(i + 8 * j)), *a);
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
                i += 8;
            }
        }
        let mut s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        for (x, y) in a[i..n].iter().zip(&b[i..n]) {
            s += x * y;
        }
        s
    }

    /// dst_j = Σ_i a_{j,i} x_i for the rows of a row-major `a` `[dst.len(), w]`: four rows at a time
    /// with one horizontal reduction for the four.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::kernels) fn rows_dot(dst: &mut [f32], a: &[f32], x: &[f32], w: usize) {
        let n = dst.len();
        assert!(a.len() >= n * w && x.len() >= w, "rows_dot: operands too short");
        let mut j = 0;
        if w.is_multiple_of(8) {
            let (pa, px) = (a.as_ptr(), x.as_ptr());
            while j + 4 <= n {
                let mut acc = [_mm256_setzero_ps(); 4];
                // SAFETY: rows j..j + 4 of a and the w entries of x are in bounds (asserted).
                unsafe {
                    for i in (0..w).step_by(8) {
                        let xv = _mm256_loadu_ps(px.add(i));
                        for (r, a) in acc.iter_mut().enumerate() {
                            *a = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add((j + r) * w + i)), xv, *a);
                        }
                    }
                }
                // [r0, r1, r2, r3 | r0', r1', r2', r3'] partial sums, then the two halves added.
                let h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
                let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
                let mut out = [0f32; 4];
                // SAFETY: `out` holds four floats.
                unsafe { _mm_storeu_ps(out.as_mut_ptr(), s) };
                dst[j..j + 4].copy_from_slice(&out);
                j += 4;
            }
        }
        for (o, row) in dst[j..].iter_mut().zip(a[j * w..].chunks_exact(w)) {
            *o = dot(row, x);
        }
    }
}

/// [`dot`] without the feature check, inlined into its caller (vectorised with the caller's target
/// features: AVX2 + FMA inside a function compiled for them).
#[inline(always)]
pub(super) fn dot_inline(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Elements per parallel task of the element-wise kernels (big enough to amortise rayon).
const GRAIN: usize = 1 << 14;

/// Runs `f` on matching chunks of `out` and `x` (and `g`), in parallel, with AVX2 + FMA when the
/// CPU has them.
macro_rules! elementwise {
    ($name:ident, $avx:ident, |$o:ident, $x:ident $(, $g:ident)?| $body:block) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx($o: &mut [f32], $x: &[f32] $(, $g: &[f32])?) $body

        fn $name($o: &mut [f32], $x: &[f32] $(, $g: &[f32])?) {
            #[cfg(target_arch = "x86_64")]
            {
                // 16 lanes where the CPU has AVX-512 (the same code, compiled for it).
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn wide($o: &mut [f32], $x: &[f32] $(, $g: &[f32])?) $body
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the features the function is compiled for (checked above).
                    return unsafe { wide($o, $x $(, $g)?) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { $avx($o, $x $(, $g)?) };
                }
            }
            $body
        }
    };
}

elementwise!(gelu_chunk, gelu_chunk_avx2, |out, x| {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v * normal_cdf(v);
    }
});

elementwise!(gelu_backward_chunk, gelu_backward_chunk_avx2, |out, x, g| {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((o, &v), &gv) in out.iter_mut().zip(x).zip(g) {
        *o = gv * (normal_cdf(v) + v * INV_SQRT_2PI * exp_approx(-0.5 * v * v));
    }
});

elementwise!(exp_chunk, exp_chunk_avx2, |out, x| {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp_approx(v);
    }
});

/// e^x element-wise in parallel ([`exp_approx`]).
pub(super) fn exp(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(GRAIN).zip(x.par_chunks(GRAIN)).for_each(|(o, x)| exp_chunk(o, x));
    out
}

/// out = e^{x − shift} element-wise (vectorised).
pub(super) fn exp_sub_block(out: &mut [f32], x: &[f32], shift: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn wide(out: &mut [f32], x: &[f32], shift: f32) {
            exp_sub_block_portable(out, x, shift)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled for (checked here).
            return unsafe { wide(out, x, shift) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { exp_sub_block_avx2(out, x, shift) };
        }
    }
    exp_sub_block_portable(out, x, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sub_block_avx2(out: &mut [f32], x: &[f32], shift: f32) {
    exp_sub_block_portable(out, x, shift)
}

#[inline(always)]
fn exp_sub_block_portable(out: &mut [f32], x: &[f32], shift: f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp_approx(v - shift);
    }
}

/// e^{x − shift} where each entry of `shift` applies to one block of `x.len() / shift.len()`
/// consecutive elements (a shift broadcast over trailing axes), in parallel.
pub(super) fn exp_sub(x: &[f32], shift: &[f32]) -> Vec<f32> {
    let block = x.len() / shift.len().max(1);
    let mut out = vec![0f32; x.len()];
    if block == 0 {
        return out;
    }
    out.par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .zip(shift.par_iter())
        .with_min_len((GRAIN / block).max(1))
        .for_each(|((o, x), &c)| exp_sub_block(o, x, c));
    out
}

/// Exact (erf) GELU, x·Φ(x), element-wise in parallel.
pub(super) fn gelu(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(GRAIN).zip(x.par_chunks(GRAIN)).for_each(|(o, x)| gelu_chunk(o, x));
    out
}

/// Gradient of exact GELU: g·(Φ(x) + x·φ(x)).
pub(super) fn gelu_backward(x: &[f32], g: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN))
        .zip(g.par_chunks(GRAIN))
        .for_each(|((o, x), g)| gelu_backward_chunk(o, x, g));
    out
}

/// Rows per parallel task of [`rotary`].
const ROTARY_ROWS: usize = 64;

/// Rotary positions on `x` `[n, T, D]`, pairs (x₂ᵢ, x₂ᵢ₊₁) as Burn's `RotaryEncoding` pairs them:
/// at position t, pair i becomes (a·cos θ − b·sin θ, a·sin θ + b·cos θ) with (cos θ, sin θ) =
/// `freq[t, 2i, ..]` (`freq` `[T, D, 2]`, Burn's `freq_complex` rows). `inverse` rotates by −θ:
/// the backward, since a rotation's transpose is its inverse.
pub(super) fn rotary(x: &[f32], freq: &[f32], t: usize, d: usize, inverse: bool) -> Vec<f32> {
    let sign = if inverse { -1.0 } else { 1.0 };
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(ROTARY_ROWS * d).zip(x.par_chunks(ROTARY_ROWS * d)).enumerate().for_each(|(c, (o, x))| {
        for (r, (o, x)) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
            let pos = (c * ROTARY_ROWS + r) % t;
            let f = &freq[pos * 2 * d..(pos + 1) * 2 * d]; // [D, 2]
            for ((o, x), f) in o.chunks_exact_mut(2).zip(x.chunks_exact(2)).zip(f.chunks_exact(4)) {
                let (a, b, cos, sin) = (x[0], x[1], f[0], sign * f[1]);
                o[0] = a * cos - b * sin;
                o[1] = a * sin + b * cos;
            }
        }
    });
    out
}

/// Output rows per parallel task of the short convolution's kernels.
const CONV_ROWS: usize = 64;

/// Every `[rows, cols]` matrix stored one after another in `src` transposed to `[cols, rows]`.
pub(super) fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    if rows * cols == 0 {
        return out;
    }
    for (dst, src) in out.chunks_exact_mut(rows * cols).zip(src.chunks_exact(rows * cols)) {
        for (i, row) in src.chunks_exact(cols).enumerate() {
            for (j, &x) in row.iter().enumerate() {
                dst[j * rows + i] = x;
            }
        }
    }
    out
}

/// Causal depthwise convolution over time: `full` `[b, k − 1 + t, c]` (the k − 1 inputs before the
/// sequence, then its t inputs), `weight` `[c, k]` (column j weighs the input j tokens back) →
/// `[b, t, c]`, y_τ = Σ_j w_j ⊙ full_{τ + k − 1 − j}.
pub(super) fn short_conv(full: &[f32], weight: &[f32], b: usize, t: usize, c: usize, k: usize) -> Vec<f32> {
    // The taps as rows, [k, c]: each tap is an element-wise product over a row.
    let w = transpose(weight, c, k);
    let span = (k - 1 + t) * c;
    let mut out = vec![0f32; b * t * c];
    out.par_chunks_mut(CONV_ROWS * c).enumerate().for_each(|(block, o)| {
        for (r, row) in o.chunks_exact_mut(c).enumerate() {
            let (seq, tau) = ((block * CONV_ROWS + r) / t, (block * CONV_ROWS + r) % t);
            let x = &full[seq * span..][..span];
            for (j, wj) in w.chunks_exact(c).enumerate() {
                let src = &x[(tau + k - 1 - j) * c..][..c];
                row.iter_mut().zip(src).zip(wj).for_each(|((y, x), w)| *y += w * x);
            }
        }
    });
    out
}

/// Gradients of [`short_conv`] given `grad` `[b, t, c]`: (d`full` `[b, k − 1 + t, c]`, d`weight`
/// `[c, k]`), with d full_s = Σ_j w_j ⊙ grad_{s − (k − 1 − j)} over the outputs that read row s, and
/// dw_j = Σ_τ full_{τ + k − 1 − j} ⊙ grad_τ summed over the batch.
pub(super) fn short_conv_backward(
    full: &[f32],
    weight: &[f32],
    grad: &[f32],
    b: usize,
    t: usize,
    c: usize,
    k: usize,
) -> (Vec<f32>, Vec<f32>) {
    let w = transpose(weight, c, k); //                                                      [k, c]
    let span = k - 1 + t;
    let rows = b * span;
    let mut dfull = vec![0f32; rows * c];
    // d full: each input row s of sequence `seq` is read by outputs τ = s − (k − 1 − j), 0 ≤ τ < t.
    dfull.par_chunks_mut(CONV_ROWS * c).enumerate().for_each(|(block, o)| {
        for (r, row) in o.chunks_exact_mut(c).enumerate() {
            let (seq, s) = ((block * CONV_ROWS + r) / span, (block * CONV_ROWS + r) % span);
            for (j, wj) in w.chunks_exact(c).enumerate() {
                let Some(tau) = (s + j).checked_sub(k - 1).filter(|&tau| tau < t) else { continue };
                let g = &grad[(seq * t + tau) * c..][..c];
                row.iter_mut().zip(g).zip(wj).for_each(|((d, g), w)| *d += w * g);
            }
        }
    });
    // dw: per-task sums over blocks of output rows, then their total, as [k, c] → [c, k].
    let dw_taps = (0..(b * t).div_ceil(CONV_ROWS))
        .into_par_iter()
        .map(|block| {
            let mut acc = vec![0f32; k * c];
            for n in block * CONV_ROWS..((block + 1) * CONV_ROWS).min(b * t) {
                let (seq, tau) = (n / t, n % t);
                let g = &grad[n * c..][..c];
                for (j, a) in acc.chunks_exact_mut(c).enumerate() {
                    let x = &full[(seq * span + tau + k - 1 - j) * c..][..c];
                    a.iter_mut().zip(x).zip(g).for_each(|((a, x), g)| *a += x * g);
                }
            }
            acc
        })
        .reduce(
            || vec![0f32; k * c],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    (dfull, transpose(&dw_taps, k, c))
}

/// Rows per parallel task of the LayerNorm kernels.
const ROWS: usize = 64;

/// Mean and 1/√(var + ε) of one row (biased variance, as LayerNorm and Burn's composition).
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm over the last axis: rows of `x` `[rows, c]` → (x − μ)/√(σ² + ε) · γ + β.
pub(super) fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let c = gamma.len();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(c * ROWS).zip(x.par_chunks(c * ROWS)).for_each(|(o, x)| {
        for (orow, xrow) in o.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            let (mean, rstd) = row_stats(xrow, eps);
            for (((y, &v), &g), &b) in orow.iter_mut().zip(xrow).zip(gamma).zip(beta) {
                *y = (v - mean) * rstd * g + b;
            }
        }
    });
    out
}

/// Gradients of LayerNorm given the output's gradient `grad` `[rows, c]`: with x̂ = (x − μ)·r and
/// ĝ = grad·γ, dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)), dγ = Σ_rows grad·x̂, dβ = Σ_rows grad.
pub(super) fn layer_norm_backward(x: &[f32], gamma: &[f32], grad: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = gamma.len();
    let mut dx = vec![0f32; x.len()];
    // Per task: partial dγ, dβ; summed afterwards (in task order, so the result is deterministic).
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(c * ROWS)
        .zip(x.par_chunks(c * ROWS))
        .zip(grad.par_chunks(c * ROWS))
        .map(|((dx, x), g)| {
            let (mut dgamma, mut dbeta) = (vec![0f32; c], vec![0f32; c]);
            let mut xhat = vec![0f32; c];
            for ((dxrow, xrow), grow) in dx.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(g.chunks_exact(c)) {
                let (mean, rstd) = row_stats(xrow, eps);
                let (mut m1, mut m2) = (0f32, 0f32);
                for i in 0..c {
                    xhat[i] = (xrow[i] - mean) * rstd;
                    let gg = grow[i] * gamma[i];
                    m1 += gg;
                    m2 += gg * xhat[i];
                    dgamma[i] += grow[i] * xhat[i];
                    dbeta[i] += grow[i];
                }
                let (m1, m2) = (m1 / c as f32, m2 / c as f32);
                for i in 0..c {
                    dxrow[i] = rstd * (grow[i] * gamma[i] - m1 - xhat[i] * m2);
                }
            }
            (dgamma, dbeta)
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0f32; c], vec![0f32; c]);
    for (pg, pb) in partials {
        dgamma.iter_mut().zip(pg).for_each(|(a, b)| *a += b);
        dbeta.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    (dx, dgamma, dbeta)
}

/// Standard normal CDF Φ(x) = ½·erfc(−x/√2), branch-free (so loops vectorise). erfc by the
/// Chebyshev fit of Press et al., Numerical Recipes §6.2 (`erfcc`, fractional error < 1.2e−7 for
/// every z ≥ 0), evaluated at |x|/√2; the negative side uses erfc directly, so Φ keeps its relative
/// precision in the left tail.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204 + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let half_erfc = 0.5 * t * exp_approx(-z * z + poly);
    if x >= 0.0 { 1.0 - half_erfc } else { half_erfc }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_products_match_the_scalar_sums() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            return;
        }
        let value = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 25.0;
        // Lengths around the 8- and 32-float steps; rows of widths that are and are not multiples
        // of 8, in counts that are and are not multiples of 4.
        for n in [0, 1, 7, 8, 9, 31, 32, 33, 70, 256] {
            let (a, b): (Vec<f32>, Vec<f32>) = (0..n).map(|i| (value(i), value(i + 3))).unzip();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let got = unsafe { avx2::dot(&a, &b) } as f64;
            assert!((got - exact).abs() < 1e-4 * (1.0 + exact.abs()), "dot of {n}: {got} vs {exact}");
        }
        for (rows, w) in [(7, 32), (8, 32), (5, 12), (4, 8), (1, 40), (0, 8)] {
            let a: Vec<f32> = (0..rows * w).map(value).collect();
            let x: Vec<f32> = (0..w).map(|i| value(i + 11)).collect();
            let mut got = vec![f32::NAN; rows];
            // SAFETY: as above.
            unsafe { avx2::rows_dot(&mut got, &a, &x, w) };
            for (j, g) in got.iter().enumerate() {
                let exact: f64 = (0..w).map(|i| a[j * w + i] as f64 * x[i] as f64).sum();
                assert!((*g as f64 - exact).abs() < 1e-4 * (1.0 + exact.abs()), "row {j} of [{rows}, {w}]");
            }
        }
    }

    #[test]
    fn exp_approx_matches_libm() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_approx(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_approx(-1.0e30), 0.0);
        assert!(exp_approx(f32::NAN).is_nan());
        assert_eq!(exp_approx(0.0), 1.0);
    }

    #[test]
    fn exp_shifted_sums_what_it_writes() {
        let mut x: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 3.0).collect();
        let expected: Vec<f32> = x.iter().map(|v| (v - 1.5).exp()).collect();
        let sum = exp_shifted(&mut x, 1.5);
        for (a, b) in x.iter().zip(&expected) {
            assert!((a - b).abs() <= 4e-7 * b, "{a} vs {b}");
        }
        assert!((sum - expected.iter().sum::<f32>()).abs() < 1e-5 * sum);
    }

    #[test]
    fn gelu_matches_the_erf_definition() {
        let xs: Vec<f32> = (0..4001).map(|i| (i as f32 - 2000.0) * 0.005).chain([-30.0, 30.0, 0.0]).collect();
        let y = gelu(&xs);
        let ones = vec![1f32; xs.len()];
        let dy = gelu_backward(&xs, &ones);
        for ((&x, &a), &da) in xs.iter().zip(&y).zip(&dy) {
            let x64 = x as f64;
            let cdf = 0.5 * (1.0 + erf64(x64 / std::f64::consts::SQRT_2));
            let b = x64 * cdf;
            let db = cdf + x64 * (-0.5 * x64 * x64).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!((a as f64 - b).abs() <= 4e-6 * b.abs().max(1e-3), "gelu({x}) = {a}, expected {b}");
            assert!((da as f64 - db).abs() <= 2e-6, "gelu'({x}) = {da}, expected {db}");
        }
    }

    /// erf in f64 as the oracle: erf'(t) = 2/√π·e^{−t²} integrated by Simpson's rule.
    fn erf64(x: f64) -> f64 {
        let n = 2000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut sum = f(0.0) + f(x);
        for i in 1..n {
            sum += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        sum * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }
}
