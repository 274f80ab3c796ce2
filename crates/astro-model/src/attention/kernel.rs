//! Execution forms of kernelised ("linear") attention, shared by the astrocytic layer and the
//! elu+1 baseline. All compute
//!
//! ```text
//! y_t = Σ_τ w_tτ v_τ φ(k̃_τ)·φ(q̃_t) / Σ_τ w_tτ φ(k̃_τ)·φ(q̃_t)
//! ```
//!
//! where w_tτ says what query t can read: γ^{t−τ} for τ ≤ t when causal, γ^{T−1−τ} for every τ when
//! bidirectional (γ = calcium decay, 1 in the paper), and 0 for padded keys.
//!
//! - [`quadratic`]: materialises the T×T astrocyte-normalised attention matrix (the specification).
//! - [`mechanistic`]: the explicit network, token by token: `write(k, v)` then `read(q)`.
//! - [`parallel`]: bidirectional, φ(Q)(φ(K)ᵀV) / φ(Q)(φ(K)ᵀ1).
//! - [`chunked`]: causal; masked products inside a chunk, the carried (H, p) across chunks.
//!
//! Numerics: φ(q̃_t) is divided by a per-query constant and φ(k̃_τ) by a constant shared by all keys a
//! query can read (global, per chunk with a running maximum, or per token with rescaling); both
//! cancel in the ratio. Where a denominator's magnitude underflows below [`TINY`] the output is 0
//! with no gradient, so no form ever divides 0 by 0 (see [`safe_div`]).

use burn::tensor::{Bool, Tensor, TensorData};

use super::feature_map::{Features, NEG};
use crate::kernels::KernelMap;

/// Smallest denominator magnitude used; anything below is an underflow, not a real response.
pub(crate) const TINY: f64 = 1.0e-30;

/// One sequence's inputs to a kernelised form.
pub(crate) struct KernelInput {
    /// Query-side hidden activity φ(q̃), `[batch, heads, seq, m]`.
    pub q: Features,
    /// Key-side hidden activity φ(k̃), `[batch, heads, seq, m]`.
    pub k: Features,
    /// Values, `[batch, heads, seq, d_v]`.
    pub v: Tensor<4>,
    /// Padded keys, `[batch, 1, seq, 1]`, true = padding.
    pub pad: Option<Tensor<4, Bool>>,
    /// Calcium decay γ ∈ (0, 1].
    pub decay: f64,
}

impl KernelInput {
    /// Builds the input; padded keys are silenced once here for every form.
    pub(crate) fn new(q: Features, k: Features, v: Tensor<4>, pad: Option<Tensor<4, Bool>>, decay: f64) -> Self {
        let k = match &pad {
            Some(p) => k.mask_tokens(p),
            None => k,
        };
        Self { q, k, v, pad, decay }
    }
}

/// Key activity divided by exp(`c`), with padded keys forced to exactly 0.
fn key_side(k: Features, c: Option<Tensor<4>>, pad: &Option<Tensor<4, Bool>>) -> Tensor<4> {
    let fk = k.key_side(c);
    match pad {
        Some(p) => {
            let p = p.clone().expand(fk.shape());
            fk.mask_fill(p, 0.0)
        }
        None => fk,
    }
}

/// num / den, and 0 where |den| < [`TINY`] (an underflowed response carries no information; those
/// positions pass no gradient). `num`: `[.., d_v]`, `den`: `[.., 1]`.
///
/// Both are first multiplied by s = 1/den (detached; the ratio does not depend on it), so the
/// division's backward squares a number near 1: the plain quotient's −num/den² underflows den² to 0
/// in f32 once |den| < 1e-19, and its gradient becomes inf and then NaN.
pub(crate) fn safe_div(num: Tensor<4>, den: Tensor<4>) -> Tensor<4> {
    let tiny = den.clone().abs().lower_elem(TINY);
    let den = den.mask_fill(tiny.clone(), 1.0);
    let s = den.clone().detach().recip();
    let out = (num * s.clone()) / (den * s);
    let shape = out.shape();
    out.mask_fill(tiny.expand(shape), 0.0)
}

/// A `[1, 1, rows, cols]` constant built on the host.
fn host_matrix(values: Vec<f64>, rows: usize, cols: usize, like: &Tensor<4>) -> Tensor<4> {
    Tensor::<2>::from_data(TensorData::new(values, [rows, cols]), (&like.device(), like.dtype()))
        .unsqueeze_dim::<3>(0)
        .unsqueeze_dim(0)
}

/// Which keys each query reads, with calcium decay: `[1, 1, T, T]`, entry (t, τ) =
/// γ^{t−τ}·[τ ≤ t] (causal) or γ^{T−1−τ} (bidirectional: every key was written before any read).
fn memory_matrix(t: usize, causal: bool, decay: f64, like: &Tensor<4>) -> Tensor<4> {
    let mut w = vec![0f64; t * t];
    for row in 0..t {
        for col in 0..t {
            w[row * t + col] = match (causal, col <= row) {
                (true, true) => decay.powi((row - col) as i32),
                (true, false) => 0.0,
                (false, _) => decay.powi((t - 1 - col) as i32),
            };
        }
    }
    host_matrix(w, t, t, like)
}

/// Output of [`quadratic`].
pub(crate) struct Quadratic {
    /// Attention output, `[batch, heads, seq, d_v]`.
    pub output: Tensor<4>,
    /// Astrocyte-normalised attention weights, `[batch, heads, seq, seq]` (rows sum to 1).
    pub weights: Tensor<4>,
    /// log |a_t|, the astrocyte response pᵀφ(q̃_t) of each query, `[batch, heads, seq, 1]`.
    pub log_response: Tensor<4>,
    /// sign of a_t (±1; only cosine-type maps can give −1), `[batch, heads, seq, 1]`.
    pub response_sign: Tensor<4>,
}

/// The specification: the T×T matrix of φ(q̃_t)·φ(k̃_τ), masked, normalised by its row sums
/// (the astrocyte responses a_t), times V. O(T²); for tests and attention maps.
pub(crate) fn quadratic(input: KernelInput, causal: bool) -> Quadratic {
    let KernelInput { q, k, v, pad, decay } = input;
    let t = v.dims()[2];
    // Per-query constant c_t and one constant s for all keys; both cancel row by row.
    let (fq, c) = q.query_side(); //                             [B,H,T,m], [B,H,T,1]
    let s = k.token_log_scale().map(|l| l.max_dim(2)); //        [B,H,1,1]
    let fk = key_side(k, s.clone(), &pad); //                    [B,H,T,m]
    let scores = fq.matmul(fk.swap_dims(2, 3)); //               [B,H,T,T]  ∝ φ(q̃_t)·φ(k̃_τ)
    let scores = scores.clone() * memory_matrix(t, causal, decay, &scores); // what query t reads
    let response = scores.clone().sum_dim(3); //                 [B,H,T,1]  a_t / e^{c_t + s}
    let weights = safe_div(scores, response.clone()); //         [B,H,T,T]
    let output = weights.clone().matmul(v); //                   [B,H,T,Dv]
    // Undo the constants to report a_t itself (in log space: it overflows f32 at large norms).
    let mut log_response = response.clone().abs().clamp_min(TINY).log();
    if let Some(c) = c {
        log_response = log_response + c;
    }
    if let Some(s) = s {
        log_response = log_response + s;
    }
    let sign = response.sign();
    let response_sign = sign.clone().mask_fill(sign.equal_elem(0.0), 1.0);
    Quadratic { output, weights, log_response, response_sign }
}

/// Bidirectional form: write every key, then read every query, as two matrix products.
pub(crate) fn parallel(input: KernelInput) -> Tensor<4> {
    let KernelInput { q, k, v, pad, decay } = input;
    let t = v.dims()[2];
    // Decay: key τ has faded by γ^{T−1−τ} by the time the queries read (a log weight, so that the
    // stabiliser below sees it and long sequences do not underflow).
    let k = if decay < 1.0 {
        let ages: Vec<f64> = (0..t).map(|tau| (t - 1 - tau) as f64 * decay.ln()).collect();
        k.add_log_weight(host_matrix(ages, t, 1, &v))
    } else {
        k
    };
    let s = k.token_log_scale().map(|l| l.max_dim(2)); //   [B,H,1,1] one constant for all keys
    let fk = key_side(k, s, &pad); //                       [B,H,T,m] φ(k̃_τ)/e^s
    let (fq, _) = q.query_side(); //                        [B,H,T,m] φ(q̃_t)/e^{c_t}
    let h = fk.clone().swap_dims(2, 3).matmul(v); //        [B,H,m,Dv] Hᵀ = Σ_τ φ(k̃_τ) v_τᵀ
    let p = fk.sum_dim(2); //                               [B,H,1,m]  pᵀ = Σ_τ φ(k̃_τ)
    let num = fq.clone().matmul(h); //                      [B,H,T,Dv] H φ(q̃_t)
    let den = (fq * p).sum_dim(3); //                       [B,H,T,1]  a_t = pᵀφ(q̃_t)
    safe_div(num, den)
}

/// The neuron–astrocyte state: Hebbian synapses H and astrocyte process calcium p, stored relative
/// to a common running scale exp(`log_scale`) so that neither overflows.
#[derive(Debug, Clone)]
pub struct RecurrentState {
    /// Hebbian synapses H / exp(log_scale), `[batch, heads, d_v, m]`.
    pub synapses: Tensor<4>,
    /// Astrocyte process calcium p / exp(log_scale), `[batch, heads, 1, m]`.
    pub processes: Tensor<4>,
    /// log of the common scale of (H, p), `[batch, heads, 1, 1]`.
    pub log_scale: Tensor<4>,
    /// Number of tokens written so far.
    pub tokens: usize,
}

impl RecurrentState {
    /// An empty memory (nothing written) shaped like `v` `[B,H,·,Dv]` with `m` hidden neurons.
    pub(crate) fn empty(v: &Tensor<4>, m: usize) -> Self {
        let [b, h, _, dv] = v.dims();
        let opts = (&v.device(), v.dtype());
        Self {
            synapses: Tensor::zeros([b, h, dv, m], opts),
            processes: Tensor::zeros([b, h, 1, m], opts),
            log_scale: Tensor::full([b, h, 1, 1], NEG, opts),
            tokens: 0,
        }
    }

    /// The memory for the fused decoding step, and the token count.
    pub(crate) fn into_memory(self) -> (crate::kernels::DecodeMemory, usize) {
        let RecurrentState { synapses, processes, log_scale, tokens } = self;
        (crate::kernels::DecodeMemory { synapses, processes, log_scale }, tokens)
    }

    /// A state from the fused decoding step's memory after `tokens` tokens.
    pub(crate) fn from_memory(memory: crate::kernels::DecodeMemory, tokens: usize) -> Self {
        let crate::kernels::DecodeMemory { synapses, processes, log_scale } = memory;
        RecurrentState { synapses, processes, log_scale, tokens }
    }

    /// Writing phase for one token: H ← γH + v φ(k̃)ᵀ, p ← γp + φ(k̃), rescaled so the largest
    /// log-activity seen so far stays the reference. `k`: one token `[B,H,1,m]`, `v`: `[B,H,1,Dv]`,
    /// `pad`: `[B,1,1,1]`.
    pub(crate) fn write(self, k: Features, v: Tensor<4>, pad: &Option<Tensor<4, Bool>>, decay: f64) -> Self {
        let decayed = self.log_scale.add_scalar(decay.ln()); //          [B,H,1,1]
        let token = k.token_log_scale().unwrap_or_else(|| decayed.zeros_like());
        let log_scale = decayed.clone().max_pair(token); //               running maximum
        let keep = (decayed - log_scale.clone()).exp(); //               ≤ 1: rescales old memory
        let fk = key_side(k, Some(log_scale.clone()), pad); //            [B,H,1,m] φ(k̃)/e^{scale}
        let synapses = self.synapses * keep.clone() + v.swap_dims(2, 3).matmul(fk.clone()); // [B,H,Dv,m]
        let processes = self.processes * keep + fk; //                    [B,H,1,m]
        Self { synapses, processes, log_scale, tokens: self.tokens + 1 }
    }

    /// Reading phase: for query activity `fq` `[B,H,Tq,m]` returns (H φ(q̃) `[B,H,Tq,Dv]`,
    /// a = pᵀφ(q̃) `[B,H,Tq,1]`), both relative to the state's scale.
    pub(crate) fn read(&self, fq: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let num = fq.clone().matmul(self.synapses.clone().swap_dims(2, 3)); // [B,H,Tq,Dv]
        let den = (fq * self.processes.clone()).sum_dim(3); //               [B,H,Tq,1]
        (num, den)
    }
}

/// The explicit network. Causal: for each token, write (k_t, v_t) then read q_t. Bidirectional:
/// write all tokens, then read all queries. Continues from `state` when given.
pub(crate) fn mechanistic(
    input: KernelInput,
    causal: bool,
    state: Option<RecurrentState>,
) -> (Tensor<4>, RecurrentState) {
    let KernelInput { q, k, v, pad, decay } = input;
    let t = v.dims()[2];
    let (fq, _) = q.query_side(); //                                    [B,H,T,m]
    let m = fq.dims()[3];
    let mut state = state.unwrap_or_else(|| RecurrentState::empty(&v, m));
    let pad_at = |i: usize| pad.as_ref().map(|p| p.clone().narrow(2, i, 1));
    let mut outputs = Vec::with_capacity(t);
    for i in 0..t {
        state = state.write(k.narrow(i, 1), v.clone().narrow(2, i, 1), &pad_at(i), decay);
        if causal {
            let (num, den) = state.read(fq.clone().narrow(2, i, 1));
            outputs.push(safe_div(num, den)); //                            [B,H,1,Dv]
        }
    }
    let output = if causal {
        Tensor::cat(outputs, 2)
    } else {
        let (num, den) = state.read(fq);
        safe_div(num, den)
    };
    (output, state)
}

/// Causal chunked form. Inside each chunk of `chunk` tokens: the masked product φ(Q)φ(K)ᵀ; across
/// chunks: the carried (H, p) with a running log-scale. Never materialises per-token prefix states
/// (`[T, m, d_v]`); the per-chunk states are `[T/chunk, m, d_v]`.
pub(crate) fn chunked(input: KernelInput, chunk: usize, state: Option<RecurrentState>) -> (Tensor<4>, RecurrentState) {
    let KernelInput { q, k, v, pad, decay } = input;
    let [b, h, t, dv] = v.dims();
    let (fq, _) = q.query_side(); //                                     [B,H,T,m]
    let m = fq.dims()[3];
    let state = state.unwrap_or_else(|| RecurrentState::empty(&v, m));
    let c = chunk.min(t).max(1);
    let n = t.div_ceil(c);
    let tail = n * c - t; // silent tokens appended so T' = n·c
    let log_decay = decay.ln();

    // Pad to whole chunks. Silent keys write nothing; outputs at silent queries are dropped.
    let pad = match (pad, tail) {
        (pad, 0) => pad,
        (pad, _) => {
            let opts = &v.device();
            let head = pad.unwrap_or_else(|| Tensor::<4, Bool>::full([b, 1, t, 1], false, opts));
            Some(Tensor::cat(vec![head, Tensor::<4, Bool>::full([b, 1, tail, 1], true, opts)], 2))
        }
    };
    let k = k.append_silent(tail);
    let pad_tokens = |x: Tensor<4>| {
        if tail == 0 {
            return x;
        }
        let [b, h, _, w] = x.dims();
        let zeros = Tensor::<4>::zeros([b, h, tail, w], (&x.device(), x.dtype()));
        Tensor::cat(vec![x, zeros], 2)
    };
    let (fq, v) = (pad_tokens(fq), pad_tokens(v));

    // Split the sequence axis into (chunk index, position in chunk): [B,H,T',x] -> [B,H·n,c,x].
    let split = move |x: Tensor<4>| {
        let w = x.dims()[3];
        x.reshape([b, h * n, c, w])
    };
    let fq = split(fq); //                                               [B,Hn,c,m]
    let v = split(v); //                                                 [B,Hn,c,Dv]
    let pad = pad.map(|p| p.expand([b, h, n * c, 1]).reshape([b, h * n, c, 1]));
    let k = k.map(split);
    // One constant per chunk: the largest key log-activity in it (0 for maps without scale).
    let chunk_scale = match k.token_log_scale() {
        Some(l) => l.max_dim(2), //                                      [B,Hn,1,1]
        None => Tensor::zeros([b, h * n, 1, 1], (&v.device(), v.dtype())),
    };
    let fk = key_side(k, Some(chunk_scale.clone()), &pad); //            [B,Hn,c,m] φ(k̃)/e^{c_j}

    // Inside the chunk: decayed causal mask L_iκ = γ^{i−κ}·[κ ≤ i].
    let scores = fq.clone().matmul(fk.clone().swap_dims(2, 3)); //     [B,Hn,c,c]
    let scores = scores.clone() * memory_matrix(c, true, decay, &scores);
    let intra_num = scores.clone().matmul(v.clone()); //                [B,Hn,c,Dv]
    let intra_den = scores.sum_dim(3); //                                [B,Hn,c,1]

    // What each chunk writes, decayed to the chunk's last token: U_j = Σ_κ γ^{c−1−κ} v_κ φ(k̃_κ)ᵀ.
    let (fk_w, fq_r) = if decay < 1.0 {
        let to_end: Vec<f64> = (0..c).map(|i| decay.powi((c - 1 - i) as i32)).collect();
        let from_start: Vec<f64> = (0..c).map(|i| decay.powi((i + 1) as i32)).collect();
        (fk * host_matrix(to_end, c, 1, &v), fq * host_matrix(from_start, c, 1, &v))
    } else {
        (fk, fq)
    };
    let writes_h = v.swap_dims(2, 3).matmul(fk_w.clone()).reshape([b, h, n, dv * m]); // U_l (÷ e^{c_l})
    let writes_p = fk_w.sum_dim(2).reshape([b, h, n, m]); //                           z_l (÷ e^{c_l})

    // Across chunks: the memory before chunk j (j = 0..n; row n is the final state) is
    //   H_j = γ^{jc} H_init + Σ_{l<j} γ^{(j−1−l)c} e^{c_l} U_l,
    // stored relative to e^{r_j}, r_j the largest of its terms' log-scales. All rows at once as one
    // product with the [n+1, n] matrix κ_jl = e^{c_l + (j−1−l)c·ln γ − r_j} (≤ 1, 0 for l ≥ j): no
    // loop over chunks, and no per-chunk slices whose backward would cost O(n) each.
    let RecurrentState { synapses, processes, log_scale: r0, tokens } = state;
    let step = c as f64 * log_decay;
    let ages: Vec<f64> =
        (0..=n).flat_map(|j| (0..n).map(move |l| if l < j { (j - 1 - l) as f64 * step } else { NEG })).collect();
    let scales = chunk_scale.clone().reshape([b, h, 1, n]) + host_matrix(ages, n + 1, n, &chunk_scale); // [B,H,n+1,n]
    let init = r0 + host_matrix((0..=n).map(|j| j as f64 * step).collect(), n + 1, 1, &chunk_scale); //   [B,H,n+1,1]
    let r = scales.clone().max_dim(3).max_pair(init.clone()); //                                [B,H,n+1,1]
    // Chunks l ≥ j are outside row j's memory: masked by 0, not only by the NEG log-weight (when
    // every chunk before j is padding, r_j is NEG too and e^{c_l + NEG − r_j} would round to 1).
    let readable: Vec<f64> = (0..=n).flat_map(|j| (0..n).map(move |l| if l < j { 1.0 } else { 0.0 })).collect();
    let kappa = (scales - r.clone()).exp() * host_matrix(readable, n + 1, n, &chunk_scale); //  [B,H,n+1,n]
    let kappa0 = (init - r.clone()).exp(); //                                                   [B,H,n+1,1]
    let states_h = kappa.clone().matmul(writes_h) + kappa0.clone() * synapses.reshape([b, h, 1, dv * m]);
    let states_p = kappa.matmul(writes_p) + kappa0 * processes.reshape([b, h, 1, m]);

    // What each chunk reads (rows 0..n), decayed further to each query inside the chunk.
    let read_h = states_h.clone().narrow(2, 0, n).reshape([b, h * n, dv, m]); //   [B,Hn,Dv,m]
    let read_p = states_p.clone().narrow(2, 0, n).reshape([b, h * n, 1, m]); //    [B,Hn,1,m]
    let read_r = r.clone().narrow(2, 0, n).reshape([b, h * n, 1, 1]); //           [B,Hn,1,1]
    let inter_num = fq_r.clone().matmul(read_h.swap_dims(2, 3)); //              [B,Hn,c,Dv]
    let inter_den = (fq_r * read_p).sum_dim(3); //                                [B,Hn,c,1]

    // The memory after the last chunk (row n).
    let synapses = states_h.narrow(2, n, 1).reshape([b, h, dv, m]);
    let processes = states_p.narrow(2, n, 1).reshape([b, h, 1, m]);
    let log_scale = r.narrow(2, n, 1);

    // Bring both parts to the larger of the two scales before adding.
    let common = read_r.clone().max_pair(chunk_scale.clone());
    let a = (read_r - common.clone()).exp();
    let bcoef = (chunk_scale - common).exp();
    let num = inter_num * a.clone() + intra_num * bcoef.clone();
    let den = inter_den * a + intra_den * bcoef;
    let output = safe_div(num, den).reshape([b, h, n * c, dv]).narrow(2, 0, t);

    // The silent tail only aged the memory: undo those `tail` decay steps.
    let log_scale = log_scale.sub_scalar(tail as f64 * log_decay);
    (output, RecurrentState { synapses, processes, log_scale, tokens: tokens + t })
}

/// Tokens per chunk when the config leaves `chunk_size` unset, for sequences of `t` tokens and heads
/// of width `head_dim` (the result is the same function for any chunk; only speed and rounding
/// change).
///
/// The rule comes from `astro bench --only chunk` (forward + backward of one layer, 4096 tokens
/// or one sequence beyond, 4 heads, flex, 2 cores; tables in docs/benchmarks.md): 32 tokens was the
/// fastest or within noise of it for every measured shape with heads of width 32 — T ∈ {64, 256,
/// 1024, 4096, 16384} (re-measured 2026-12-06 with the positive map fused into training: at T =
/// 16384, 64 ties with 32 at 263 vs 273 ms, ranges overlapping), m ∈ {64, 256, 1024}, so neither T
/// nor m plays a part — and 64 for width 64, where 16–128 tie. T does not move the optimum because
/// a chunk's cost per token does not depend on T: larger chunks pay for the `[c, c]` products (c·m
/// per token), smaller ones for more, smaller matrix products and more memory reads and writes.
pub fn auto_chunk(t: usize, head_dim: usize) -> usize {
    let chunk = if head_dim >= 64 { 64 } else { 32 };
    chunk.min(t.max(1))
}

/// Which execution form a kernelised layer's `forward` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionForm {
    /// Chunked when causal, parallel when bidirectional (the default).
    #[default]
    Fast,
    /// The explicit token-by-token network (slow; for inspection).
    Mechanistic,
    /// The T×T reference (O(T²) memory; for inspection).
    Quadratic,
}

/// The fused operation ([`crate::kernels::kernelised_attention`]: the chunked or parallel form in
/// one pass with a hand-written backward) where it applies — flex, f32, log-activity (exponential
/// maps) or activity without a log-scale (elu+1); otherwise the input back. Padded keys were
/// silenced by [`KernelInput::new`] (log-activity [`NEG`], activity 0), which the operation honours.
#[allow(clippy::result_large_err)] // the input comes back whole for the composed forms, once per layer
fn fused(input: KernelInput, causal: bool, chunk: usize) -> Result<Tensor<4>, KernelInput> {
    if !crate::kernels::kernelised_supported(&input.v) {
        return Err(input);
    }
    let KernelInput { q, k, v, pad, decay } = input;
    let (fq, fk, map) = match fused_inputs(q, k) {
        Ok(parts) => parts,
        Err((q, k)) => return Err(KernelInput { q, k, v, pad, decay }),
    };
    let options = crate::kernels::KernelisedOptions { chunk, decay, map, causal };
    crate::kernels::kernelised_attention(fq, fk, v, options).map_err(|(fq, fk, v)| KernelInput {
        q: Features::from_fused(fq, map),
        k: Features::from_fused(fk, map),
        v,
        pad,
        decay,
    })
}

/// Query and key activity as the fused operations take it: log-activity (exponential maps) or
/// activity without a log-scale, with the map that says which; the features back for other maps.
#[allow(clippy::result_large_err)] // the features come back whole for the composed forms
fn fused_inputs(q: Features, k: Features) -> Result<(Tensor<4>, Tensor<4>, KernelMap), (Features, Features)> {
    match (q, k) {
        (Features::Log(q), Features::Log(k)) => Ok((q, k, KernelMap::Exp)),
        (Features::Scaled { g: q, log_scale: None }, Features::Scaled { g: k, log_scale: None }) => {
            Ok((q, k, KernelMap::Identity))
        }
        (q, k) => Err((q, k)),
    }
}

impl Features {
    /// The inverse of [`fused_inputs`] for one side.
    fn from_fused(x: Tensor<4>, map: KernelMap) -> Features {
        match map {
            KernelMap::Exp => Features::Log(x),
            _ => Features::Scaled { g: x, log_scale: None },
        }
    }
}

/// Full-sequence attention with the chosen form. `Fast` is the fused operation where it applies,
/// else the composed chunked (causal) or parallel (bidirectional) form.
pub(crate) fn forward(form: ExecutionForm, input: KernelInput, causal: bool, chunk: usize) -> Tensor<4> {
    let input = match form {
        ExecutionForm::Fast => match fused(input, causal, chunk) {
            Ok(y) => return y,
            Err(input) => input,
        },
        _ => input,
    };
    match (form, causal) {
        (ExecutionForm::Fast, true) => chunked(input, chunk, None).0,
        (ExecutionForm::Fast, false) => parallel(input),
        (ExecutionForm::Mechanistic, causal) => mechanistic(input, causal, None).0,
        (ExecutionForm::Quadratic, causal) => quadratic(input, causal).output,
    }
}

/// Causal attention for new tokens after `state`: one token is a single write + read of the
/// network; several (a prompt) go through the chunked form.
pub(crate) fn incremental(
    input: KernelInput,
    chunk: usize,
    state: Option<super::AttentionState>,
) -> (Tensor<4>, super::AttentionState) {
    let state = match state {
        None => None,
        Some(super::AttentionState::Recurrent(s)) => Some(s),
        Some(super::AttentionState::KvCache(_) | super::AttentionState::Windowed(..)) => {
            panic!("kernelised attention was given a KV cache")
        }
    };
    let (output, state) = if input.v.dims()[2] == 1 {
        match fused_step(input, state) {
            Ok(done) => done,
            Err((input, state)) => mechanistic(input, true, state),
        }
    } else {
        chunked(input, chunk, state)
    };
    (output, super::AttentionState::Recurrent(state))
}

/// One token through the fused decoding step ([`crate::kernels::kernelised_decode_step`]: flex
/// without autodiff, f32, log-activity or activity without a log-scale); otherwise the input and
/// state back for [`mechanistic`], which computes the same step as composed operations.
#[allow(clippy::type_complexity, clippy::result_large_err)] // the input comes back for `mechanistic`
fn fused_step(
    input: KernelInput,
    state: Option<RecurrentState>,
) -> Result<(Tensor<4>, RecurrentState), (KernelInput, Option<RecurrentState>)> {
    use crate::kernels::kernelised_decode_step;
    if input.pad.is_some() {
        return Err((input, state));
    }
    let KernelInput { q, k, v, pad, decay } = input;
    let (fq, fk, map) = match fused_inputs(q, k) {
        Ok(parts) => parts,
        Err((q, k)) => return Err((KernelInput { q, k, v, pad, decay }, state)),
    };
    let m = fq.dims()[3];
    let (memory, tokens) = state.unwrap_or_else(|| RecurrentState::empty(&v, m)).into_memory();
    match kernelised_decode_step(fq, fk, v, memory, decay, map) {
        Ok((y, memory)) => Ok((y, RecurrentState::from_memory(memory, tokens + 1))),
        Err((fq, fk, v, memory)) => {
            let (q, k) = (Features::from_fused(fq, map), Features::from_fused(fk, map));
            Err((KernelInput { q, k, v, pad, decay }, Some(RecurrentState::from_memory(memory, tokens))))
        }
    }
}

/// Attention weights `[B,H,T,T]` of the reference form (values are not needed).
pub(crate) fn weights(
    q: Features,
    k: Features,
    like: &Tensor<4>,
    mask: &super::AttentionMask,
    decay: f64,
) -> Tensor<4> {
    let [b, h, t, _] = like.dims();
    let v = Tensor::<4>::zeros([b, h, t, 1], (&like.device(), like.dtype()));
    quadratic(KernelInput::new(q, k, v, mask.key_padding_column(), decay), mask.causal).weights
}

/// Astrocyte responses (from the reference form) next to softmax's exact normaliser of `q_raw`, `k_raw`.
pub(crate) fn normalisers(
    q: Features,
    k: Features,
    q_raw: Tensor<4>,
    k_raw: Tensor<4>,
    mask: &super::AttentionMask,
    decay: f64,
) -> super::NormaliserTrace {
    let [b, h, t, _] = q_raw.dims();
    let v = Tensor::<4>::zeros([b, h, t, 1], (&q_raw.device(), q_raw.dtype()));
    let quad = quadratic(KernelInput::new(q, k, v, mask.key_padding_column(), decay), mask.causal);
    super::NormaliserTrace {
        softmax_log: super::softmax::log_normaliser(q_raw, k_raw, mask),
        astrocyte_log: Some(quad.log_response.squeeze_dim(3)),
        astrocyte_sign: Some(quad.response_sign.squeeze_dim(3)),
    }
}
