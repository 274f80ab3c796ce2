//! Kernelised attention (the astrocyte's random features, elu+1) as one pass over chunks, on host
//! slices: the fused forward and its hand-written backward.
//!
//! Per head (batch × heads in parallel), with φq, φk the hidden activity of queries and keys and
//! w_tτ = γ^{t−τ}·[τ ≤ t] (causal) or γ^{T−1−τ} (bidirectional):
//!
//! ```text
//! y_t = Σ_τ w_tτ (φq_t·φk_τ) v_τ / Σ_τ w_tτ (φq_t·φk_τ)
//! ```
//!
//! Inputs are the log-activities l (exponential maps, φ = e^l: each query row is divided by its
//! largest entry, each chunk of keys by its largest, and the carried memory is kept relative to a
//! running log-scale, as `attention::kernel::chunked` does), the activities themselves, or the raw
//! head vectors x of elu+1 attention (φ = elu(x) + 1, computed here per chunk); for the paper's
//! positive map, the head vectors q, k and Ω, from which l is built per chunk in the forward and
//! again in the backward (`forward_positive`, `backward_positive`), so no `[T, m]` input exists;
//! for the Taylor map, the projections u `[T, r]`, from which φ = [1, u, c_ij u_i u_j] is built the
//! same way (`forward_taylor`, `backward_taylor`).
//! The memory is the synapse matrix H = Σ φk vᵀ and the astrocyte's calcium p = Σ φk, kept apart
//! (numerator and denominator of the read-out). Inside a chunk the masked `[c, c]` scores, across
//! chunks the carried memory.
//!
//! Backward, with g = dL/dy, D_t the denominator, ĝ_t = g_t / D_t, δ_t = ĝ_t·y_t and
//! gx_t·vx_τ = ĝ_t·v_τ − δ_t (the numerators' gradient is ĝ, the denominator's −δ):
//!
//! ```text
//! dφq_t = Σ_τ w_tτ (gx_t·vx_τ) φk_τ     a forward scan: the same memory, read with gx
//! dφk_τ = Σ_t w_tτ (gx_t·vx_τ) φq_t     a reverse scan: the memory of later queries, Σ φq gxᵀ
//! dv_τ  = Σ_t w_tτ (φq_t·φk_τ) ĝ_t
//! ```
//!
//! and dl = dφ ⊙ φ for log inputs, dx = dφ ⊙ min(φ, 1) for elu+1 (elu′(x) = 1 for x > 0, e^x = φ else). Activities are computed once per chunk; nothing `[T, T]` is built.
//! Written by hand: no crate offers chunked linear attention with this normaliser on the CPU.

use rayon::prelude::*;

use super::cpu::{View, dot_inline, exp_approx, exp_sub_block, matmul, matmul_acc, transpose};

/// Denominators below this magnitude are underflows: output 0 and no gradient (as `safe_div`).
const TINY: f32 = 1.0e-30;
/// The log-scale of an empty memory.
const NEG: f32 = -1.0e30;

/// Defines `fn $name(args…)` that runs `$body(args…)` (an `#[inline(always)]` function) compiled
/// for AVX-512, else AVX2 + FMA, where the CPU has them, else as built. The crate is built for
/// baseline x86-64, where the element-wise loops between the matrix products (maps, masks,
/// rescaling, row sums) would run four lanes wide and `mul_add` would call libm; inlined into these
/// copies they use the wide registers.
macro_rules! wide {
    ($(#[$doc:meta])* fn $name:ident => $body:ident($($arg:ident: $ty:ty),*)) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the features the function is compiled for (checked above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

/// What the query and key inputs hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activation {
    /// Log-activities l, φ = e^l (the astrocyte's exponential maps).
    Exp,
    /// The activities φ themselves.
    Identity,
    /// Head vectors x, φ = elu(x) + 1 (linear attention).
    EluPlusOne,
}

impl Activation {
    /// The code that crosses the backend-extension boundary (plain integers only), and back.
    pub(super) fn from_code(code: u8) -> Self {
        match code {
            0 => Activation::Exp,
            1 => Activation::Identity,
            _ => Activation::EluPlusOne,
        }
    }
}

/// Sizes and settings of one call.
#[derive(Debug, Clone, Copy)]
pub(super) struct KernelDims {
    /// batch × heads.
    pub heads: usize,
    /// Sequence length T.
    pub t: usize,
    /// Hidden neurons m (features per token).
    pub m: usize,
    /// Value width.
    pub dv: usize,
    /// Tokens per chunk.
    pub chunk: usize,
    /// Calcium decay γ ∈ (0, 1].
    pub decay: f32,
    /// What the inputs are.
    pub map: Activation,
    /// Query t reads keys τ ≤ t (else every key).
    pub causal: bool,
}

impl KernelDims {
    /// (first token, length) of each chunk.
    fn chunks(&self) -> Vec<(usize, usize)> {
        let c = self.chunk.clamp(1, self.t.max(1));
        (0..self.t.div_ceil(c)).map(|j| (j * c, c.min(self.t - j * c))).collect()
    }

    fn chunk_len(&self) -> usize {
        self.chunk.clamp(1, self.t.max(1))
    }
}

/// Gradients of one call: d(l or φ) of queries and keys `[heads, T, m]`, of values `[heads, T, dv]`.
pub(super) struct KernelGrads {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// Per-thread scratch for one chunk of one head, and the head's memory.
///
/// The memory keeps the synapses H and the calcium p apart rather than as one `[m, dv + 1]` matrix
/// with values extended by a column of ones: products with 33 columns ran at 60 GFLOP/s on one
/// core where 32 ran at 83–102 (`gemm` 0.19, AVX-512; its kernels are 6 columns wide), and p's
/// part is a matrix-vector product either way.
struct Work {
    /// Weighted activity for memory writes, `[c, m]`.
    fw: Vec<f32>,
    /// Masked, decayed scores φq·φk inside the chunk, `[c, c]`.
    a: Vec<f32>,
    /// Read-out numerators, `[c, dv]`.
    nx: Vec<f32>,
    /// Read-out denominators (the astrocyte's response), `[c]`.
    den: Vec<f32>,
    /// Scratch `[c, max(m, dv)]`.
    tmp: Vec<f32>,
    /// Synapses H = Σ φk vᵀ relative to e^r, `[m, dv]`.
    h: Vec<f32>,
    /// Calcium p = Σ φk relative to e^r, `[m]`.
    p: Vec<f32>,
    /// log-scale of the memory.
    r: f32,
    /// γ^k for k = 0..=c.
    pow: Vec<f32>,
}

impl Work {
    fn new(d: &KernelDims) -> Self {
        let (c, m, dv) = (d.chunk_len(), d.m, d.dv);
        Work {
            fw: vec![0.0; c * m],
            a: vec![0.0; c * c],
            nx: vec![0.0; c * dv],
            den: vec![0.0; c],
            tmp: vec![0.0; c * m.max(dv)],
            h: vec![0.0; m * dv],
            p: vec![0.0; m],
            r: NEG,
            pow: (0..=c as i32).map(|k| d.decay.powi(k)).collect(),
        }
    }

    /// An empty memory.
    fn reset(&mut self) {
        self.h.fill(0.0);
        self.p.fill(0.0);
        self.r = NEG;
    }
}

/// Query and key activity of one chunk, `[c, m]` each (the forward's; the backward keeps every
/// chunk's).
struct Acts {
    fq: Vec<f32>,
    fk: Vec<f32>,
}

impl Acts {
    fn new(d: &KernelDims) -> Self {
        let n = d.chunk_len() * d.m;
        Acts { fq: vec![0.0; n], fk: vec![0.0; n] }
    }
}

/// Σ x_i with sixteen partial sums, so the loop vectorises (a plain `sum` stays scalar: float
/// addition is not reassociated).
#[inline(always)]
fn sum16(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// y += a·x element-wise.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

/// The largest entry of `x`, or 0 when there is none that is finite (so shifts stay finite).
#[inline(always)]
fn finite_max(x: &[f32]) -> f32 {
    // Sixteen running maxima, so the loop vectorises (a fold over `f32::max` stays scalar); NaN
    // entries are skipped, as `f32::max` skips them.
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let max = acc.iter().chain(chunks.remainder()).copied().fold(f32::NEG_INFINITY, f32::max);
    if max.is_finite() { max } else { 0.0 }
}

/// φ = elu(x) + 1 element-wise.
#[inline(always)]
fn elu_plus_one(dst: &mut [f32], src: &[f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = if x > 0.0 { x + 1.0 } else { exp_approx(x) };
    }
}

/// Query-side activity of rows `[n, m]`: e^{l − max of the row} (log inputs), elu(x) + 1, or a copy.
#[inline(always)]
fn query_activity(dst: &mut [f32], src: &[f32], m: usize, map: Activation) {
    match map {
        Activation::Exp => {
            for (d, s) in dst.chunks_exact_mut(m).zip(src.chunks_exact(m)) {
                exp_sub_block(d, s, finite_max(s));
            }
        }
        Activation::Identity => dst.copy_from_slice(src),
        Activation::EluPlusOne => elu_plus_one(dst, src),
    }
}

/// Key-side activity of a chunk `[n, m]`: e^{l − s}, s its largest log-activity (log inputs), or
/// the activity itself with s = 0. Returns s. Padded keys arrive silenced (log-activity [`NEG`],
/// activity 0): they never set s, and a chunk of nothing but padding writes zeros with s = NEG, so
/// that it neither rescales the memory nor adds to it.
#[inline(always)]
fn key_activity(dst: &mut [f32], src: &[f32], map: Activation) -> f32 {
    match map {
        Activation::Exp => {
            let s = finite_max(src);
            if s <= NEG / 2.0 {
                dst.fill(0.0);
                return NEG;
            }
            exp_sub_block(dst, src, s);
            s
        }
        Activation::Identity => {
            dst.copy_from_slice(src);
            0.0
        }
        Activation::EluPlusOne => {
            elu_plus_one(dst, src);
            0.0
        }
    }
}

/// Keeps the lower triangle (κ ≤ i) of `a` `[n, n]`, weighted by γ^{i−κ}.
#[inline(always)]
fn causal_mask(a: &mut [f32], n: usize, pow: &[f32], decay: bool) {
    for (i, row) in a.chunks_exact_mut(n).enumerate() {
        row[i + 1..].fill(0.0);
        if decay {
            row[..=i].iter_mut().enumerate().for_each(|(k, x)| *x *= pow[i - k]);
        }
    }
}

/// Writes a chunk of keys into the memory: H ← γ^n H + Σ_κ γ^{n−1−κ} φk_κ v_κᵀ (`[m, dv]`) and
/// p ← γ^n p + Σ_κ γ^{n−1−κ} φk_κ, with the chunk's activity `fk` `[n, m]` relative to e^s and the
/// memory rescaled to the larger scale (`w.r` becomes the new scale).
#[inline(always)]
fn write_chunk(w: &mut Work, fk: &[f32], v: &[f32], n: usize, d: &KernelDims, s: f32) {
    let (m, dv) = (d.m, d.dv);
    let aged = w.r + n as f32 * d.decay.ln();
    let r_new = aged.max(s);
    let (keep, scale) = (exp_approx(aged - r_new), exp_approx(s - r_new));
    let weighted = if d.decay < 1.0 {
        for (k, (fw, f)) in w.fw.chunks_exact_mut(m).zip(fk.chunks_exact(m)).take(n).enumerate() {
            let g = w.pow[n - 1 - k];
            fw.iter_mut().zip(f).for_each(|(o, f)| *o = f * g);
        }
        &w.fw[..n * m]
    } else {
        &fk[..n * m]
    };
    // H [m, dv] = keep·H + scale·φkᵀ [m, n] · v [n, dv]
    matmul_acc(&mut w.h, m, dv, n, View::transposed(weighted, m), View::rows(v, dv), Some(keep), scale);
    // p [m] = keep·p + scale·Σ_κ φk_κ
    w.p.iter_mut().for_each(|x| *x *= keep);
    for row in weighted.chunks_exact(m) {
        axpy(&mut w.p, scale, row);
    }
    w.r = r_new;
}

/// Scales of one causal chunk: its keys' log-scale s, the common scale of its read-out and the
/// weights α (memory) and β (inside the chunk) that bring both parts to it.
#[derive(Debug, Clone, Copy)]
struct ChunkScales {
    s: f32,
    common: f32,
    alpha: f32,
    beta: f32,
}

/// Reads one causal chunk (queries `lq`, keys `lk` `[n, m]`, values `v` `[n, dv]`) against the
/// memory before it: activities into `fq`/`fk` `[n, m]`, masked scores into `w.a`, numerators into
/// `w.nx` and denominators into `w.den`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn read_causal(
    w: &mut Work,
    fq: &mut [f32],
    fk: &mut [f32],
    lq: &[f32],
    lk: &[f32],
    v: &[f32],
    n: usize,
    d: &KernelDims,
) -> ChunkScales {
    let (m, dv) = (d.m, d.dv);
    let decay = d.decay < 1.0;
    query_activity(&mut fq[..n * m], lq, m, d.map);
    let s = key_activity(&mut fk[..n * m], lk, d.map);
    let common = w.r.max(s);
    let (alpha, beta) = (exp_approx(w.r - common), exp_approx(s - common));
    // Inside the chunk: A = (φq φkᵀ) ∘ L, nx = β·A·v, den = β·A·1                      [n,n], [n,dv]
    matmul(&mut w.a, n, n, m, View::rows(fq, m), View::transposed(fk, m), 1.0);
    causal_mask(&mut w.a[..n * n], n, &w.pow, decay);
    matmul(&mut w.nx, n, dv, n, View::rows(&w.a, n), View::rows(v, dv), beta);
    for (den, row) in w.den.iter_mut().zip(w.a.chunks_exact(n)).take(n) {
        *den = beta * sum16(row);
    }
    // From the memory: query i reads it aged by γ^{i+1}: nx += α γ^{i+1} φq H, den += α γ^{i+1} φq·p
    if alpha > 0.0 {
        if decay {
            matmul(&mut w.tmp, n, dv, m, View::rows(fq, m), View::rows(&w.h, dv), alpha);
            for (i, (o, t)) in w.nx.chunks_exact_mut(dv).zip(w.tmp.chunks_exact(dv)).take(n).enumerate() {
                axpy(o, w.pow[i + 1], t);
            }
        } else {
            matmul_acc(&mut w.nx, n, dv, m, View::rows(fq, m), View::rows(&w.h, dv), Some(1.0), alpha);
        }
        for (i, (den, f)) in w.den.iter_mut().zip(fq.chunks_exact(m)).take(n).enumerate() {
            let age = if decay { w.pow[i + 1] } else { 1.0 };
            *den += alpha * age * dot_inline(f, &w.p);
        }
    }
    ChunkScales { s, common, alpha, beta }
}

/// Reads the whole memory (bidirectional): numerators φq H into `w.nx`, denominators φq·p into
/// `w.den`, for queries `fq` `[n, m]`.
#[inline(always)]
fn read_memory(w: &mut Work, fq: &[f32], n: usize, d: &KernelDims) {
    let (m, dv) = (d.m, d.dv);
    matmul(&mut w.nx, n, dv, m, View::rows(fq, m), View::rows(&w.h, dv), 1.0);
    for (den, f) in w.den.iter_mut().zip(fq.chunks_exact(m)).take(n) {
        *den = dot_inline(f, &w.p);
    }
}

/// y = numerator / denominator per row (`nx` `[n, dv]`, `den` `[n]`; 0 where the denominator
/// underflowed).
#[inline(always)]
fn divide(nx: &[f32], den: &[f32], y: &mut [f32], n: usize, dv: usize) {
    for ((o, row), &den) in y.chunks_exact_mut(dv).zip(nx.chunks_exact(dv)).zip(den).take(n) {
        if den.abs() < TINY {
            o.fill(0.0);
        } else {
            let inv = 1.0 / den;
            o.iter_mut().zip(row).for_each(|(o, x)| *o = x * inv);
        }
    }
}

/// ĝ = g/den and δ = ĝ·y per row, from the read-out (`nx` `[n, dv]`, `den` `[n]`) and the output
/// gradient `g` `[n, dv]`: the gradient of the numerators is ĝ, of the denominator −δ.
#[inline(always)]
fn output_grad(gh: &mut [f32], delta: &mut [f32], nx: &[f32], den: &[f32], g: &[f32], n: usize, dv: usize) {
    let rows = gh.chunks_exact_mut(dv).zip(delta.iter_mut()).zip(nx.chunks_exact(dv)).zip(den).zip(g.chunks_exact(dv));
    for ((((gh, delta), row), &den), g) in rows.take(n) {
        if den.abs() < TINY {
            gh.fill(0.0);
            *delta = 0.0;
            continue;
        }
        let inv = 1.0 / den;
        gh.iter_mut().zip(g).for_each(|(o, g)| *o = g * inv);
        *delta = dot_inline(gh, row) * inv;
    }
}

/// From dφ to the inputs' gradient in place: dl = dφ ⊙ φ (log inputs), dx = dφ ⊙ min(φ, 1)
/// (elu+1), unchanged for activities.
#[inline(always)]
fn through_map(grad: &mut [f32], activity: &[f32], map: Activation) {
    match map {
        Activation::Exp => grad.iter_mut().zip(activity).for_each(|(g, f)| *g *= f),
        Activation::Identity => {}
        Activation::EluPlusOne => grad.iter_mut().zip(activity).for_each(|(g, f)| *g *= f.min(1.0)),
    }
}

/// Where one head's query and key inputs come from, chunk by chunk.
enum Source<'a> {
    /// Given per token: `lq`, `lk` `[T, m]` (what they hold: [`KernelDims::map`]).
    Given { lq: &'a [f32], lk: &'a [f32], m: usize },
    /// The paper's positive map built here from the head vectors `q`, `k` `[T, D]` and this head's
    /// Ω `[m, D]`: log-activity Ωx̃ − ‖x̃‖²/2 − ½ ln m, x̃ = x / D^{1/4} (see [`positive_rows`]).
    Positive {
        q: &'a [f32],
        k: &'a [f32],
        omega: &'a [f32],
        /// Ωᵀ `[D, m]` (see [`transpose_heads`]).
        omega_t: &'a [f32],
        width: usize,
        m: usize,
        xs: Vec<f32>,
        lq: Vec<f32>,
        lk: Vec<f32>,
    },
    /// The Taylor map's activity built here from the projections `uq`, `uk` `[T, r]` (see
    /// [`taylor_rows`]): m = 1 + r + r(r+1)/2 features per token, one chunk at a time.
    Taylor { uq: &'a [f32], uk: &'a [f32], r: usize, m: usize, fq: Vec<f32>, fk: Vec<f32> },
}

impl<'a> Source<'a> {
    /// Head `head` of the positive map: its rows of `q`, `k` `[heads, T, D]`, and Ω, Ωᵀ of head
    /// `head mod H` from `omega` `[H, m, D]` and `omega_t` `[H, D, m]` (D = `width`).
    fn positive(
        q: &'a [f32],
        k: &'a [f32],
        omega: &'a [f32],
        omega_t: &'a [f32],
        width: usize,
        head: usize,
        d: &KernelDims,
    ) -> Self {
        let (t, m, chunk) = (d.t, d.m, d.chunk_len());
        let per_head = m * width;
        let row = head % (omega.len() / per_head.max(1)).max(1);
        let (xs, lq, lk) = (vec![0.0; chunk * width], vec![0.0; chunk * m], vec![0.0; chunk * m]);
        Source::Positive {
            q: &q[head * t * width..][..t * width],
            k: &k[head * t * width..][..t * width],
            omega: &omega[row * per_head..][..per_head],
            omega_t: &omega_t[row * per_head..][..per_head],
            width,
            m,
            xs,
            lq,
            lk,
        }
    }

    /// Head `head` of the Taylor map: its rows of `uq`, `uk` `[heads, T, r]`.
    fn taylor(uq: &'a [f32], uk: &'a [f32], r: usize, head: usize, d: &KernelDims) -> Self {
        let (t, m, chunk) = (d.t, d.m, d.chunk_len());
        Source::Taylor {
            uq: &uq[head * t * r..][..t * r],
            uk: &uk[head * t * r..][..t * r],
            r,
            m,
            fq: vec![0.0; chunk * m],
            fk: vec![0.0; chunk * m],
        }
    }

    /// Queries (`keys` false) or keys of tokens `t0..t0 + n`, `[n, m]`.
    #[inline(always)]
    fn side(&mut self, t0: usize, n: usize, keys: bool) -> &[f32] {
        match self {
            Source::Given { lq, lk, m } => &(if keys { lk } else { lq })[t0 * *m..][..n * *m],
            Source::Positive { q, k, omega, omega_t, width, m, xs, lq, lk } => {
                let (x, dst) = if keys { (k, lk) } else { (q, lq) };
                positive_rows(&mut dst[..n * *m], &x[t0 * *width..][..n * *width], omega, omega_t, xs, *width);
                &dst[..n * *m]
            }
            Source::Taylor { uq, uk, r, m, fq, fk } => {
                let (u, dst) = if keys { (uk, fk) } else { (uq, fq) };
                taylor_rows(&mut dst[..n * *m], &u[t0 * *r..][..n * *r], *r);
                &dst[..n * *m]
            }
        }
    }

    /// Queries and keys of tokens `t0..t0 + n`, each `[n, m]`.
    #[inline(always)]
    fn both(&mut self, t0: usize, n: usize) -> (&[f32], &[f32]) {
        match self {
            Source::Given { lq, lk, m } => (&lq[t0 * *m..][..n * *m], &lk[t0 * *m..][..n * *m]),
            Source::Positive { q, k, omega, omega_t, width, m, xs, lq, lk } => {
                positive_rows(&mut lq[..n * *m], &q[t0 * *width..][..n * *width], omega, omega_t, xs, *width);
                positive_rows(&mut lk[..n * *m], &k[t0 * *width..][..n * *width], omega, omega_t, xs, *width);
                (&lq[..n * *m], &lk[..n * *m])
            }
            Source::Taylor { uq, uk, r, m, fq, fk } => {
                taylor_rows(&mut fq[..n * *m], &uq[t0 * *r..][..n * *r], *r);
                taylor_rows(&mut fk[..n * *m], &uk[t0 * *r..][..n * *r], *r);
                (&fq[..n * *m], &fk[..n * *m])
            }
        }
    }
}

impl Source<'_> {
    /// Hands the gradient `dl` `[n, m]` of tokens `t0..t0 + n` (queries, or keys when `keys`) to
    /// the inputs: a copy into `out` `[T, m]` for given inputs; for the positive map
    /// l = x̃ Ωᵀ − ‖x̃‖²/2 − ½ ln m, x̃ = x / D^{1/4}:
    /// dx = D^{-1/4} (dl Ω − x̃ Σ_μ dl_μ) into `out` `[T, D]`, and dΩ += dlᵀ x̃ into `omega` `[m, D]`.
    #[inline(always)]
    fn emit(&mut self, t0: usize, n: usize, keys: bool, dl: &[f32], out: &mut [f32], omega: &mut [f32]) {
        match self {
            Source::Given { m, .. } => out[t0 * *m..][..n * *m].copy_from_slice(&dl[..n * *m]),
            Source::Positive { q, k, omega: om, width, m, xs, .. } => {
                let (w, m) = (*width, *m);
                let scale = (w as f32).powf(-0.25);
                let x = &(if keys { k } else { q })[t0 * w..][..n * w];
                let xs = &mut xs[..n * w];
                xs.iter_mut().zip(x).for_each(|(s, v)| *s = v * scale);
                let dx = &mut out[t0 * w..][..n * w];
                matmul(dx, n, w, m, View::rows(dl, m), View::rows(om, w), scale); //            [n,D] s·dl Ω
                for ((row, xr), lr) in dx.chunks_exact_mut(w).zip(xs.chunks_exact(w)).zip(dl.chunks_exact(m)) {
                    let c = scale * sum16(lr);
                    row.iter_mut().zip(xr).for_each(|(o, x)| *o -= c * x);
                }
                // dΩ [m,D] += dlᵀ [m,n] · x̃ [n,D] (where Ω is trained)
                if !omega.is_empty() {
                    matmul_acc(omega, m, w, n, View::transposed(dl, m), View::rows(xs, w), Some(1.0), 1.0);
                }
            }
            Source::Taylor { uq, uk, r, m, .. } => {
                let (r, m) = (*r, *m);
                let u = &(if keys { uk } else { uq })[t0 * r..][..n * r];
                for ((du, ur), df) in
                    out[t0 * r..][..n * r].chunks_exact_mut(r).zip(u.chunks_exact(r)).zip(dl.chunks_exact(m))
                {
                    taylor_row_grad(du, ur, df);
                }
            }
        }
    }
}

/// The Taylor map's activity for rows of projections `u` `[n, r]`: `dst` `[n, 1 + r + r(r+1)/2]`
/// = [1, u, c_ij u_i u_j for i ≤ j] per row, c_ii = 1/√2, c_ij = 1 (pairs in row-major order, as
/// `attention::feature_map`'s composed map), so that φ(q)·φ(k) = 1 + s + s²/2 with s = u_q·u_k.
#[inline(always)]
fn taylor_rows(dst: &mut [f32], u: &[f32], r: usize) {
    let m = super::taylor_width(r);
    for (row, ur) in dst.chunks_exact_mut(m).zip(u.chunks_exact(r)) {
        row[0] = 1.0;
        row[1..=r].copy_from_slice(ur);
        let mut e = 1 + r;
        for (i, &a) in ur.iter().enumerate() {
            row[e] = a * a * std::f32::consts::FRAC_1_SQRT_2;
            row[e + 1..e + r - i].iter_mut().zip(&ur[i + 1..]).for_each(|(o, b)| *o = a * b);
            e += r - i;
        }
    }
}

/// The gradient `du` `[r]` of one token's projection from that of its Taylor activity `df`
/// `[1 + r + r(r+1)/2]` (see [`taylor_rows`]): du_i = df_{1+i} + √2 u_i df_ii + Σ_{j≠i} u_j df_ij.
#[inline(always)]
fn taylor_row_grad(du: &mut [f32], u: &[f32], df: &[f32]) {
    let r = u.len();
    du.copy_from_slice(&df[1..=r]);
    let mut e = 1 + r;
    for i in 0..r {
        let (a, pair) = (u[i], &df[e + 1..e + r - i]);
        // The pairs (i, j > i): u_j df_ij into du_i, u_i df_ij into du_j.
        du[i] += std::f32::consts::SQRT_2 * a * df[e] + dot_inline(pair, &u[i + 1..]);
        du[i + 1..].iter_mut().zip(pair).for_each(|(o, g)| *o += a * g);
        e += r - i;
    }
}

/// Ωᵀ of every head, `[H, D, m]`, from `omega` `[H, m, D]`: built once per call, because the
/// features' product x̃ Ωᵀ with a row-major right operand ran at 85 GFLOP/s on one core against 61
/// through a transposed view of Ω (`gemm` 0.19, 32 × 256 × 32).
fn transpose_heads(omega: &[f32], m: usize, width: usize) -> Vec<f32> {
    transpose(omega, m, width)
}

/// The positive map's log-activity for rows of head vectors `x` `[n, D]` with this head's Ω `[m, D]`
/// (and its transpose `omega_t` `[D, m]`): `dst` `[n, m]` = x̃ Ωᵀ − (‖x̃‖²/2 + ½ ln m) per row,
/// x̃ = x / D^{1/4} (`xs`: scratch ≥ n·D).
#[inline(always)]
fn positive_rows(dst: &mut [f32], x: &[f32], omega: &[f32], omega_t: &[f32], xs: &mut [f32], width: usize) {
    let (n, m) = (x.len() / width.max(1), omega.len() / width.max(1));
    let scale = (width as f32).powf(-0.25);
    let xs = &mut xs[..n * width];
    xs.iter_mut().zip(x).for_each(|(s, v)| *s = v * scale);
    if n == 1 {
        // One token (decoding): m dot products beat a matrix product's setup.
        for (o, row) in dst.iter_mut().zip(omega.chunks_exact(width)) {
            *o = dot_inline(row, xs);
        }
    } else {
        matmul(dst, n, m, width, View::rows(xs, width), View::rows(omega_t, m), 1.0); // [n,m] x̃ Ωᵀ
    }
    let half_ln_m = 0.5 * (m as f32).ln();
    for (row, xr) in dst.chunks_exact_mut(m).zip(xs.chunks_exact(width)) {
        let c = 0.5 * dot_inline(xr, xr) + half_ln_m;
        row.iter_mut().for_each(|l| *l -= c);
    }
}

wide! {
    /// Forward of one head: inputs from `src`, `v` `[T, dv]` → `y` `[T, dv]`.
    fn head_forward => head_forward_body(src: &mut Source, v: &[f32], y: &mut [f32], w: &mut Work, acts: &mut Acts, d: &KernelDims)
}

#[inline(always)]
fn head_forward_body(src: &mut Source, v: &[f32], y: &mut [f32], w: &mut Work, acts: &mut Acts, d: &KernelDims) {
    let (m, dv) = (d.m, d.dv);
    let Acts { fq, fk } = acts;
    w.reset();
    if d.causal {
        for (t0, n) in d.chunks() {
            let (lq, lk) = src.both(t0, n);
            let vc = &v[t0 * dv..][..n * dv];
            let sc = read_causal(w, fq, fk, lq, lk, vc, n, d);
            divide(&w.nx, &w.den, &mut y[t0 * dv..][..n * dv], n, dv);
            write_chunk(w, fk, vc, n, d, sc.s);
        }
        return;
    }
    // Bidirectional: write every key, then read every query against the whole memory.
    for (t0, n) in d.chunks() {
        let s = key_activity(&mut fk[..n * m], src.side(t0, n, true), d.map);
        write_chunk(w, fk, &v[t0 * dv..][..n * dv], n, d, s);
    }
    for (t0, n) in d.chunks() {
        query_activity(&mut fq[..n * m], src.side(t0, n, false), m, d.map);
        read_memory(w, fq, n, d);
        divide(&w.nx, &w.den, &mut y[t0 * dv..][..n * dv], n, dv);
    }
}

/// y `[heads, T, dv]` for `lq`, `lk` `[heads, T, m]` and `v` `[heads, T, dv]`.
pub(super) fn forward(lq: &[f32], lk: &[f32], v: &[f32], d: KernelDims) -> Vec<f32> {
    let (t, m) = (d.t, d.m);
    forward_with(|head| Source::Given { lq: &lq[head * t * m..][..t * m], lk: &lk[head * t * m..][..t * m], m }, v, &d)
}

/// The forward of every head (in parallel), each reading its queries and keys from `source(head)`:
/// y `[heads, T, dv]` for values `v` `[heads, T, dv]`.
fn forward_with<'a>(source: impl Fn(usize) -> Source<'a> + Sync, v: &[f32], d: &KernelDims) -> Vec<f32> {
    let (t, dv) = (d.t, d.dv);
    let mut y = vec![0f32; d.heads * t * dv];
    if t == 0 || dv == 0 {
        return y;
    }
    y.par_chunks_mut(t * dv).enumerate().for_each_init(
        || (Work::new(d), Acts::new(d)),
        |(w, acts), (head, yh)| head_forward(&mut source(head), &v[head * t * dv..][..t * dv], yh, w, acts, d),
    );
    y
}

/// y `[heads, T, dv]` with the paper's positive map built inside from the head vectors `q`, `k`
/// `[heads, T, D]` and Ω `[H, m, D]` (head i uses Ω of head i mod H): no `[T, m]` activity is
/// materialised beyond one chunk. Its backward: [`backward_positive`].
pub(super) fn forward_positive(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    omega: &[f32],
    width: usize,
    d: KernelDims,
) -> Vec<f32> {
    if d.m * width == 0 {
        return vec![0f32; d.heads * d.t * d.dv];
    }
    let omega_t = transpose_heads(omega, d.m, width);
    forward_with(|head| Source::positive(q, k, omega, &omega_t, width, head, &d), v, &d)
}

/// y `[heads, T, dv]` with the Taylor map's activity (`d.m` = 1 + r + r(r+1)/2 features, `d.map`
/// Identity) built inside, chunk by chunk, from the projections `uq`, `uk` `[heads, T, r]`
/// ([`taylor_rows`]): no `[T, m]` activity is materialised. Its backward: [`backward_taylor`].
pub(super) fn forward_taylor(uq: &[f32], uk: &[f32], v: &[f32], r: usize, d: KernelDims) -> Vec<f32> {
    forward_with(|head| Source::taylor(uq, uk, r, head, &d), v, &d)
}

/// Per-thread buffers of the backward beyond [`Work`].
struct BackWork {
    work: Work,
    /// Key activity of every chunk, `[T, m]`.
    fk_all: Vec<f32>,
    /// Query activity of every chunk, `[T, m]`.
    fq_all: Vec<f32>,
    /// ĝ = g / den of every query, `[T, dv]`.
    gh_all: Vec<f32>,
    /// δ = ĝ·y of every query, `[T]`.
    delta_all: Vec<f32>,
    /// Masked gradient of the scores inside a chunk, `[c, c]`.
    b: Vec<f32>,
    /// Memory of later queries Σ φq ĝᵀ, `[m, dv]`.
    gs: Vec<f32>,
    /// Its denominator part −Σ φq δ, `[m]`.
    gp: Vec<f32>,
    /// Scratch `[c, dv]`.
    tmp2: Vec<f32>,
    /// Gradient of the query inputs of one chunk, `[c, m]`.
    dlq: Vec<f32>,
    /// Gradient of the key inputs of every chunk, `[T, m]`.
    dlk: Vec<f32>,
}

impl BackWork {
    fn new(d: &KernelDims) -> Self {
        let (c, m, dv) = (d.chunk_len(), d.m, d.dv);
        BackWork {
            work: Work::new(d),
            fk_all: vec![0.0; d.t * m],
            fq_all: vec![0.0; d.t * m],
            gh_all: vec![0.0; d.t * dv],
            delta_all: vec![0.0; d.t],
            b: vec![0.0; c * c],
            gs: vec![0.0; m * dv],
            gp: vec![0.0; m],
            tmp2: vec![0.0; c * dv],
            dlq: vec![0.0; c * m],
            dlk: vec![0.0; d.t * m],
        }
    }
}

/// Inputs of one head's backward: queries and keys from `src`, values `v` and the output's
/// gradient `g` `[T, dv]`.
struct HeadInputs<'a, 'b> {
    src: &'b mut Source<'a>,
    v: &'a [f32],
    g: &'a [f32],
}

/// Gradients of one head, written in place: of the query and key inputs (`[T, m]` given, `[T, D]`
/// head vectors of the positive map), of the values `[T, dv]`, and dΩ `[m, D]` (positive map only,
/// accumulated; empty otherwise).
struct HeadGrads<'a> {
    q: &'a mut [f32],
    k: &'a mut [f32],
    v: &'a mut [f32],
    omega: &'a mut [f32],
}

wide! {
    /// Causal backward of one head: a forward scan for dq and the in-chunk parts, a reverse scan
    /// over the later queries' memory for dk and dv.
    fn head_backward_causal => head_backward_causal_body(x: &mut HeadInputs, out: &mut HeadGrads, bw: &mut BackWork, d: &KernelDims)
}

#[inline(always)]
fn head_backward_causal_body(x: &mut HeadInputs, out: &mut HeadGrads, bw: &mut BackWork, d: &KernelDims) {
    let (m, dv) = (d.m, d.dv);
    let decay = d.decay < 1.0;
    let lg = d.decay.ln();
    let chunks = d.chunks();
    let mut scales = Vec::with_capacity(chunks.len());
    let BackWork { work: w, fk_all, fq_all, gh_all, delta_all, b, gs, gp, tmp2, dlq, dlk } = bw;
    w.reset();
    for &(t0, n) in &chunks {
        let (fq, fk) = (&mut fq_all[t0 * m..][..n * m], &mut fk_all[t0 * m..][..n * m]);
        let (lq, lk) = x.src.both(t0, n);
        let vc = &x.v[t0 * dv..][..n * dv];
        let sc = read_causal(w, fq, fk, lq, lk, vc, n, d);
        let (gh, delta) = (&mut gh_all[t0 * dv..][..n * dv], &mut delta_all[t0..][..n]);
        output_grad(gh, delta, &w.nx, &w.den, &x.g[t0 * dv..][..n * dv], n, dv);
        // B = β·(ĝ vᵀ − δ 1ᵀ) ∘ L: the gradient of the in-chunk scores                       [n,n]
        matmul(b, n, n, dv, View::rows(gh, dv), View::transposed(vc, dv), sc.beta);
        for (row, &dl) in b.chunks_exact_mut(n).zip(delta.iter()) {
            row.iter_mut().for_each(|x| *x -= sc.beta * dl);
        }
        causal_mask(&mut b[..n * n], n, &w.pow, decay);
        // dφq = B φk + α γ^{i+1} (ĝ Hᵀ − δ pᵀ)                                              [n,m]
        let dq = &mut dlq[..n * m];
        matmul(dq, n, m, n, View::rows(b, n), View::rows(fk, m), 1.0);
        if sc.alpha > 0.0 {
            if decay {
                matmul(&mut w.tmp, n, m, dv, View::rows(gh, dv), View::transposed(&w.h, dv), sc.alpha);
                for (i, (o, t)) in dq.chunks_exact_mut(m).zip(w.tmp.chunks_exact(m)).enumerate() {
                    axpy(o, w.pow[i + 1], t);
                    axpy(o, -sc.alpha * w.pow[i + 1] * delta[i], &w.p);
                }
            } else {
                matmul_acc(dq, n, m, dv, View::rows(gh, dv), View::transposed(&w.h, dv), Some(1.0), sc.alpha);
                for (o, &dl) in dq.chunks_exact_mut(m).zip(delta.iter()) {
                    axpy(o, -sc.alpha * dl, &w.p);
                }
            }
        }
        through_map(dq, fq, d.map);
        x.src.emit(t0, n, false, dq, out.q, out.omega);
        // In-chunk parts of the key side: dφk = Bᵀ φq, dv = β Aᵀ ĝ                        [n,m], [n,dv]
        matmul(&mut dlk[t0 * m..][..n * m], n, m, n, View::rows(b, n).t(), View::rows(fq, m), 1.0);
        matmul(&mut out.v[t0 * dv..][..n * dv], n, dv, n, View::rows(&w.a, n).t(), View::rows(gh, dv), sc.beta);
        scales.push(sc);
        write_chunk(w, fk, vc, n, d, sc.s);
    }
    // Reverse scan: [gs | gp] = Σ_{t after the chunk} γ^{t − last} e^{−common_t} φq_t [ĝ_t | −δ_t]ᵀ,
    // relative to e^q.
    gs.fill(0.0);
    gp.fill(0.0);
    let mut q = NEG;
    for (&(t0, n), sc) in chunks.iter().zip(&scales).rev() {
        let (fk, fq) = (&fk_all[t0 * m..][..n * m], &fq_all[t0 * m..][..n * m]);
        let (gh, delta) = (&gh_all[t0 * dv..][..n * dv], &delta_all[t0..][..n]);
        let vc = &x.v[t0 * dv..][..n * dv];
        let dk = &mut dlk[t0 * m..][..n * m];
        if q > NEG / 2.0 {
            // key κ reads the later queries with weight e^{s + q} γ^{n−1−κ}
            matmul(&mut w.tmp, n, m, dv, View::rows(vc, dv), View::transposed(gs, dv), 1.0); // [n,m] v gsᵀ
            matmul(tmp2, n, dv, m, View::rows(fk, m), View::rows(gs, dv), 1.0); //               [n,dv] φk gs
            let dvc = &mut out.v[t0 * dv..][..n * dv];
            for k in 0..n {
                let coef = exp_approx(sc.s + q + (n - 1 - k) as f32 * lg);
                let dkr = &mut dk[k * m..][..m];
                axpy(dkr, coef, &w.tmp[k * m..][..m]);
                axpy(dkr, coef, gp);
                axpy(&mut dvc[k * dv..][..dv], coef, &tmp2[k * dv..][..dv]);
            }
        }
        through_map(dk, fk, d.map);
        x.src.emit(t0, n, true, dk, out.k, out.omega);
        // Add this chunk's queries (query i has weight γ^{i+1} e^{−common} relative to the chunk before).
        // A chunk that has read nothing yet (every key so far padded) has no gradient to pass on.
        if sc.common <= NEG / 2.0 {
            q += n as f32 * lg;
            continue;
        }
        let aged = q + n as f32 * lg;
        let top = -sc.common + lg;
        let q_new = aged.max(top);
        let keep = exp_approx(aged - q_new);
        gp.iter_mut().for_each(|x| *x *= keep);
        for (i, (wrow, frow)) in w.fw.chunks_exact_mut(m).zip(fq.chunks_exact(m)).take(n).enumerate() {
            let scale = exp_approx(-sc.common + (i + 1) as f32 * lg - q_new);
            wrow.iter_mut().zip(frow).for_each(|(o, f)| *o = f * scale);
            axpy(gp, -delta[i], wrow);
        }
        matmul_acc(gs, m, dv, n, View::transposed(&w.fw, m), View::rows(gh, dv), Some(keep), 1.0);
        q = q_new;
    }
}

wide! {
    /// Bidirectional backward of one head: the memory of all keys, then all queries' [gs | gp].
    fn head_backward_bidirectional => head_backward_bidirectional_body(x: &mut HeadInputs, out: &mut HeadGrads, bw: &mut BackWork, d: &KernelDims)
}

#[inline(always)]
fn head_backward_bidirectional_body(x: &mut HeadInputs, out: &mut HeadGrads, bw: &mut BackWork, d: &KernelDims) {
    let (m, dv) = (d.m, d.dv);
    let lg = d.decay.ln();
    let chunks = d.chunks();
    let mut key_scales = Vec::with_capacity(chunks.len());
    let BackWork { work: w, fk_all, fq_all, gh_all, delta_all, gs, gp, tmp2, dlq, dlk, .. } = bw;
    w.reset();
    for &(t0, n) in &chunks {
        let fk = &mut fk_all[t0 * m..][..n * m];
        let s = key_activity(fk, x.src.side(t0, n, true), d.map);
        write_chunk(w, fk, &x.v[t0 * dv..][..n * dv], n, d, s);
        key_scales.push(s);
    }
    gs.fill(0.0);
    gp.fill(0.0);
    for &(t0, n) in &chunks {
        let fq = &mut fq_all[t0 * m..][..n * m];
        query_activity(fq, x.src.side(t0, n, false), m, d.map);
        read_memory(w, fq, n, d);
        let (gh, delta) = (&mut gh_all[t0 * dv..][..n * dv], &mut delta_all[t0..][..n]);
        output_grad(gh, delta, &w.nx, &w.den, &x.g[t0 * dv..][..n * dv], n, dv);
        let dq = &mut dlq[..n * m];
        matmul(dq, n, m, dv, View::rows(gh, dv), View::transposed(&w.h, dv), 1.0); // [n,m] ĝ Hᵀ − δ pᵀ
        for (o, &dl) in dq.chunks_exact_mut(m).zip(delta.iter()) {
            axpy(o, -dl, &w.p);
        }
        through_map(dq, fq, d.map);
        x.src.emit(t0, n, false, dq, out.q, out.omega);
        matmul_acc(gs, m, dv, n, View::transposed(fq, m), View::rows(gh, dv), Some(1.0), 1.0);
        for (f, &dl) in fq.chunks_exact(m).zip(delta.iter()) {
            axpy(gp, -dl, f);
        }
    }
    let t = d.t;
    for (&(t0, n), &s) in chunks.iter().zip(&key_scales) {
        let fk = &fk_all[t0 * m..][..n * m];
        matmul(&mut w.tmp, n, m, dv, View::rows(&x.v[t0 * dv..][..n * dv], dv), View::transposed(gs, dv), 1.0); // [n,m] v gsᵀ
        matmul(tmp2, n, dv, m, View::rows(fk, m), View::rows(gs, dv), 1.0); //                                 [n,dv] φk gs
        let dk = &mut dlk[t0 * m..][..n * m];
        let dvc = &mut out.v[t0 * dv..][..n * dv];
        for k in 0..n {
            let coef = exp_approx(s - w.r + (t - 1 - t0 - k) as f32 * lg);
            let dkr = &mut dk[k * m..][..m];
            dkr.iter_mut().zip(&w.tmp[k * m..][..m]).zip(gp.iter()).for_each(|((o, t), g)| *o = coef * (t + g));
            dvc[k * dv..][..dv].iter_mut().zip(&tmp2[k * dv..][..dv]).for_each(|(o, t)| *o = coef * t);
        }
        through_map(dk, fk, d.map);
        x.src.emit(t0, n, true, dk, out.k, out.omega);
    }
}

/// Gradients of `sum(forward(lq, lk, v) ∘ g)` with respect to `lq`, `lk` `[heads, T, m]` and
/// `v` `[heads, T, dv]`; `g` `[heads, T, dv]`.
pub(super) fn backward(lq: &[f32], lk: &[f32], v: &[f32], g: &[f32], d: KernelDims) -> KernelGrads {
    let (t, m) = (d.t, d.m);
    let source = |head: usize| Source::Given { lq: &lq[head * t * m..][..t * m], lk: &lk[head * t * m..][..t * m], m };
    backward_with(source, m, 0, v, g, &d).0
}

/// Gradients of `sum(forward_taylor(uq, uk, v) ∘ g)` with respect to the projections `uq`, `uk`
/// `[heads, T, r]` and `v` `[heads, T, dv]`; `g` `[heads, T, dv]`. The activity is rebuilt chunk by
/// chunk, as in the forward.
pub(super) fn backward_taylor(uq: &[f32], uk: &[f32], v: &[f32], g: &[f32], r: usize, d: KernelDims) -> KernelGrads {
    backward_with(|head| Source::taylor(uq, uk, r, head, &d), r, 0, v, g, &d).0
}

/// Gradients of `sum(forward_positive(q, k, v, Ω) ∘ g)` with respect to the head vectors `q`, `k`
/// `[heads, T, D]`, the values `v` `[heads, T, dv]` and Ω `[H, m, D]` (summed over the batch; only
/// when `omega_grad`, else empty), with `g` `[heads, T, dv]`. The activity is recomputed chunk by chunk, as in the forward: besides the
/// gradients, each thread holds `[T, m]` buffers for one head at a time, never the whole batch's.
#[allow(clippy::too_many_arguments)] // the kernel's inputs, as the flex operation hands them over
pub(super) fn backward_positive(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    omega: &[f32],
    g: &[f32],
    width: usize,
    omega_grad: bool,
    d: KernelDims,
) -> (KernelGrads, Vec<f32>) {
    let m = d.m;
    let per_head = m * width;
    let rows = (omega.len() / per_head.max(1)).max(1);
    let omega_t = transpose_heads(omega, m, width);
    let source = |head: usize| Source::positive(q, k, omega, &omega_t, width, head, &d);
    let (grads, per_head_omega) = backward_with(source, width, if omega_grad { per_head } else { 0 }, v, g, &d);
    if !omega_grad {
        return (grads, Vec::new());
    }
    // dΩ of head h sums over the batch rows whose heads read Ω_h.
    let mut domega = vec![0f32; omega.len()];
    for (head, part) in per_head_omega.chunks_exact(per_head.max(1)).enumerate() {
        let dst = &mut domega[(head % rows) * per_head..][..per_head];
        dst.iter_mut().zip(part).for_each(|(o, x)| *o += x);
    }
    (grads, domega)
}

/// The backward of every head (in parallel), each reading its queries and keys from `source(head)`:
/// gradients of the query and key inputs `[heads, T, width]`, of the values, and per-head dΩ
/// `[heads, omega_len]` (empty when `omega_len` is 0).
fn backward_with<'a>(
    source: impl Fn(usize) -> Source<'a> + Sync,
    width: usize,
    omega_len: usize,
    v: &[f32],
    g: &[f32],
    d: &KernelDims,
) -> (KernelGrads, Vec<f32>) {
    let (t, dv) = (d.t, d.dv);
    let mut grads = KernelGrads {
        q: vec![0.0; d.heads * t * width],
        k: vec![0.0; d.heads * t * width],
        v: vec![0.0; d.heads * t * dv],
    };
    let mut domega = vec![0f32; d.heads * omega_len];
    if t == 0 || dv == 0 {
        return (grads, domega);
    }
    let omega_chunks: Vec<&mut [f32]> = if omega_len == 0 {
        (0..d.heads).map(|_| &mut [][..]).collect()
    } else {
        domega.chunks_mut(omega_len).collect()
    };
    grads
        .q
        .par_chunks_mut(t * width)
        .zip(grads.k.par_chunks_mut(t * width))
        .zip(grads.v.par_chunks_mut(t * dv))
        .zip(omega_chunks.into_par_iter())
        .enumerate()
        .for_each_init(
            || BackWork::new(d),
            |bw, (head, (((dq, dk), dvh), dom))| {
                let mut src = source(head);
                let mut x =
                    HeadInputs { src: &mut src, v: &v[head * t * dv..][..t * dv], g: &g[head * t * dv..][..t * dv] };
                let mut out = HeadGrads { q: dq, k: dk, v: dvh, omega: dom };
                if d.causal {
                    head_backward_causal(&mut x, &mut out, bw, d);
                } else {
                    head_backward_bidirectional(&mut x, &mut out, bw, d);
                }
            },
        );
    (grads, domega)
}

/// Sizes and settings of one decoding step.
#[derive(Debug, Clone, Copy)]
pub(super) struct StepDims {
    /// batch × heads.
    pub heads: usize,
    /// Hidden neurons m.
    pub m: usize,
    /// Value width.
    pub dv: usize,
    /// Calcium decay γ.
    pub decay: f32,
    /// What the query and key inputs hold (log-activities when `omega` is given to [`decode_step`]).
    pub map: Activation,
    /// Width D of the head vectors (inputs of the positive map).
    pub width: usize,
    /// Heads per batch row H (Ω is per head).
    pub heads_per_row: usize,
}

/// The memory of every head, updated in place: synapses H `[heads, dv, m]`, calcium p `[heads, m]`,
/// both relative to e^{log_scale} `[heads]`.
pub(super) struct Memory<'a> {
    pub synapses: &'a mut [f32],
    pub processes: &'a mut [f32],
    pub log_scale: &'a mut [f32],
}

/// One decoding step of the network for every head (`lq`, `lk` `[heads, m]`, `v` `[heads, dv]`):
/// write H ← γH + v φkᵀ, p ← γp + φk (rescaled to the larger of the memory's and the token's
/// log-scale), then read y = H φq / pᵀφq. Updates `memory` in place and returns y `[heads, dv]`.
/// With `omega` (`[H, m, D]`), `lq` and `lk` are the head vectors `[heads, D]` and the positive
/// map's log-activity is computed here ([`positive_rows`]).
pub(super) fn decode_step(
    lq: &[f32],
    lk: &[f32],
    v: &[f32],
    omega: Option<&[f32]>,
    memory: Memory,
    d: StepDims,
) -> Vec<f32> {
    let (m, dv, w) = (d.m, d.dv, d.width);
    let mut y = vec![0f32; d.heads * dv];
    let Memory { synapses, processes, log_scale } = memory;
    let inputs = StepInputs { lq, lk, v, omega };
    let iter = y
        .chunks_mut(dv)
        .zip(synapses.chunks_mut(dv * m))
        .zip(processes.chunks_mut(m))
        .zip(log_scale.iter_mut().zip(0..d.heads));
    let step = |scratch: &mut StepScratch, (((yh, hs), ps), (r, head)): StepHead| {
        head_step(HeadMemory { y: yh, synapses: hs, processes: ps, log_scale: r }, head, &inputs, scratch, &d);
    };
    // Parallel over heads only when there is enough work to pay for waking the threads (measured:
    // 4 heads × 32 × 256 run 0.22 ms per token sequentially, 0.37 ms in parallel).
    if d.heads * dv * m >= 1 << 16 {
        let parts: Vec<_> = iter.collect();
        parts.into_par_iter().for_each_init(|| StepScratch::new(m, w), step);
    } else {
        let mut scratch = StepScratch::new(m, w);
        iter.for_each(|head| step(&mut scratch, head));
    }
    y
}

/// One head's output row, synapses, calcium, log-scale and index, as [`decode_step`] splits them.
type StepHead<'a> = (((&'a mut [f32], &'a mut [f32]), &'a mut [f32]), (&'a mut f32, usize));

/// The inputs of every head in one decoding step (see [`decode_step`]).
struct StepInputs<'a> {
    lq: &'a [f32],
    lk: &'a [f32],
    v: &'a [f32],
    omega: Option<&'a [f32]>,
}

/// One head's memory and output row.
struct HeadMemory<'a> {
    y: &'a mut [f32],
    synapses: &'a mut [f32],
    processes: &'a mut [f32],
    log_scale: &'a mut f32,
}

/// Per-thread buffers of the decoding step, reused across heads: φq, φk `[m]`, the positive map's
/// log-activities `[m]` each and the scaled head vector `[D]`.
struct StepScratch {
    fq: Vec<f32>,
    fk: Vec<f32>,
    lq: Vec<f32>,
    lk: Vec<f32>,
    xs: Vec<f32>,
}

impl StepScratch {
    fn new(m: usize, width: usize) -> Self {
        let z = || vec![0f32; m];
        StepScratch { fq: z(), fk: z(), lq: z(), lk: z(), xs: vec![0f32; width] }
    }
}

/// One head of [`decode_step`], compiled for AVX2 + FMA where the CPU has them: every helper it
/// calls is inlined into it, so the m short dot products of the positive map and the memory
/// update vectorise without a call or a feature check each.
fn head_step(mem: HeadMemory, head: usize, x: &StepInputs, s: &mut StepScratch, d: &StepDims) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for (checked above).
        return unsafe { head_step_avx2(mem, head, x, s, d) };
    }
    head_step_portable(mem, head, x, s, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn head_step_avx2(mem: HeadMemory, head: usize, x: &StepInputs, s: &mut StepScratch, d: &StepDims) {
    use super::cpu::avx2;
    head_step_with(mem, head, x, s, d, |a, b| avx2::dot(a, b), |o, a, v, w| avx2::rows_dot(o, a, v, w))
}

fn head_step_portable(mem: HeadMemory, head: usize, x: &StepInputs, s: &mut StepScratch, d: &StepDims) {
    let rows = |dst: &mut [f32], a: &[f32], v: &[f32], w: usize| {
        dst.iter_mut().zip(a.chunks_exact(w)).for_each(|(o, row)| *o = dot_inline(row, v));
    };
    head_step_with(mem, head, x, s, d, dot_inline, rows)
}

/// The body of [`head_step`] with its two products: `dot` (Σ a_i b_i) and `rows` (dst = a x for a
/// row-major `a` `[dst.len(), w]`).
#[inline(always)]
fn head_step_with(
    mem: HeadMemory,
    head: usize,
    x: &StepInputs,
    s: &mut StepScratch,
    d: &StepDims,
    dot: impl Fn(&[f32], &[f32]) -> f32,
    rows: impl Fn(&mut [f32], &[f32], &[f32], usize),
) {
    let (m, dv, w) = (d.m, d.dv, d.width);
    let HeadMemory { y: yh, synapses: hs, processes: ps, log_scale: r } = mem;
    let (lq, lk) = match x.omega {
        Some(om) => {
            // The positive map's log-activity l = Ω x̃ − ‖x̃‖²/2 − ½ ln m, x̃ = x / D^{1/4}.
            let om = &om[(head % d.heads_per_row) * m * w..][..m * w];
            let half_ln_m = 0.5 * (m as f32).ln();
            let scale = (w as f32).powf(-0.25);
            for (src, dst) in [(x.lq, &mut s.lq), (x.lk, &mut s.lk)] {
                s.xs.iter_mut().zip(&src[head * w..][..w]).for_each(|(a, b)| *a = b * scale);
                let c = 0.5 * dot(&s.xs, &s.xs) + half_ln_m;
                rows(&mut dst[..], om, &s.xs, w);
                dst.iter_mut().for_each(|o| *o -= c);
            }
            (&s.lq[..], &s.lk[..])
        }
        None => (&x.lq[head * m..][..m], &x.lk[head * m..][..m]),
    };
    let (fq, fk) = (&mut s.fq, &mut s.fk);
    // Key-side activity, and the memory's rescaling to the larger of its and the token's scale.
    let sk = key_activity(fk, lk, d.map);
    let decayed = *r + d.decay.ln();
    let r_new = decayed.max(sk);
    let (keep, scale) = (exp_approx(decayed - r_new), exp_approx(sk - r_new));
    fk.iter_mut().for_each(|f| *f *= scale);
    ps.iter_mut().zip(fk.iter()).for_each(|(p, f)| *p = keep * *p + f);
    *r = r_new;
    query_activity(fq, lq, m, d.map);
    let den = dot(ps, fq);
    let inv = if den.abs() < TINY { 0.0 } else { 1.0 / den };
    // Write each synapse row and read it back in the same pass: y_c = (γ'H_c + v_c φk)·φq / den.
    let vh = &x.v[head * dv..][..dv];
    for ((row, &vc), o) in hs.chunks_exact_mut(m).zip(vh).zip(yh.iter_mut()) {
        row.iter_mut().zip(fk.iter()).for_each(|(h, f)| *h = keep * *h + vc * f);
        *o = dot(row, fq) * inv;
    }
}
