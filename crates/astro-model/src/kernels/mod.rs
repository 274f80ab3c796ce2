//! Fused CPU kernels: Burn backend extensions for the operations whose generic composition is the
//! bottleneck on the flex backend.
//!
//! Under autodiff, Burn 0.22 decomposes `attention` into a dozen tensor operations (scale, causal
//! mask, max, exp, sum, divide, two matrix products), each a pass over a `[batch, heads, T, T]`
//! tensor that is also kept for the backward pass. [`fused_attention`] is one operation with a
//! hand-written backward: the forward runs per head gemm → vectorised softmax → gemm in a reused
//! `[T, S]` tile (flex's flash attention beyond 1 MiB per tile), the backward recomputes the
//! probabilities head by head (as FlashAttention does) and runs five matrix products per head
//! (`cpu.rs`). [`layer_norm`] is one pass each way (Burn composes about eight operations each way).
//! [`exp`], [`exp_sub`] and [`gelu`] are single vectorised passes where flex calls scalar libm
//! `expf` / `erff` (the astrocyte's hidden activity is e^{x−c} of a `[batch, heads, T, m]` tensor).
//! [`rotary`] is one pass each way (Burn's is a batched product with K = 2, a product and a sum over
//! a doubled tensor), and in training [`linear_rows`] is one node whose output starts as the bias
//! rows (flex zeroes each product's output and copies it once more to realign it). [`short_conv`],
//! the causal convolution on q, k and v, is one pass each way (Burn composes K shifted views,
//! products and sums, and each view's backward fills a zeroed tensor of the input's size).
//!
//! The extension (`ext.rs`) is compiled for flex only; on other backends, for f64, or where a kernel
//! does not apply, the functions here are Burn's own operations, so every backend computes the same
//! function and the tests compare the two. Written by hand because no crate offers these fused
//! forward/backward pairs for Burn's CPU backends.

#[cfg(feature = "flex")]
mod cpu;
#[cfg(feature = "flex")]
mod ext;
#[cfg(feature = "flex")]
mod kernelised;

use burn::tensor::Tensor;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

/// softmax(q·kᵀ/√D, causal when asked) · v for `q` `[batch, heads, T, D]`, `k` `[batch, heads, T, D]`,
/// `v` `[batch, heads, T, Dv]` → `[batch, heads, T, Dv]` (queries and keys of one sequence).
///
/// On flex (with or without autodiff) this is one fused operation with a fused backward; elsewhere
/// Burn's `attention`.
pub fn fused_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if ext::supported(&q, &k) {
        return ext::fused_attention(q, k, v, causal);
    }
    let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: causal };
    attention(q, k, v, None, None, options)
}

/// What the query and key inputs of [`kernelised_attention`] hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelMap {
    /// Log-activities l of an exponential map: φ = e^l (stabilised inside).
    Exp,
    /// The activities φ themselves.
    Identity,
    /// Head vectors x of elu+1 linear attention: φ = elu(x) + 1.
    EluPlusOne,
    /// Projections u `[.., r]` of the Taylor map: φ = [1, u, c_ij u_i u_j for i ≤ j] (c_ii = 1/√2,
    /// c_ij = 1), 1 + r + r(r+1)/2 hidden neurons built inside, chunk by chunk (full sequences only:
    /// the decoding step takes the activity itself).
    Taylor,
}

impl KernelMap {
    /// The integer that crosses the backend-extension boundary.
    #[cfg_attr(not(feature = "flex"), allow(dead_code))]
    fn code(self) -> u8 {
        match self {
            KernelMap::Exp => 0,
            KernelMap::Identity => 1,
            KernelMap::EluPlusOne => 2,
            KernelMap::Taylor => 3,
        }
    }
}

/// Hidden neurons of the Taylor map on r-dimensional projections: 1 + r + r(r+1)/2 (the constant,
/// u, and each product u_i u_j with i ≤ j once).
pub fn taylor_width(r: usize) -> usize {
    1 + r + r * (r + 1) / 2
}

/// Settings of [`kernelised_attention`].
#[derive(Debug, Clone, Copy)]
pub struct KernelisedOptions {
    /// Tokens per chunk.
    pub chunk: usize,
    /// Calcium decay γ ∈ (0, 1] (1 = none).
    pub decay: f64,
    /// What `fq`, `fk` hold.
    pub map: KernelMap,
    /// Query t reads keys τ ≤ t (else every key).
    pub causal: bool,
}

/// Whether [`kernelised_attention`] runs as one fused operation for activity like `fq` (flex, f32).
pub fn kernelised_supported(fq: &Tensor<4>) -> bool {
    #[cfg(feature = "flex")]
    if ext::supported_kernelised(fq) {
        return true;
    }
    let _ = fq;
    false
}

/// y_t = Σ_τ w_tτ (φq_t·φk_τ) v_τ / Σ_τ w_tτ (φq_t·φk_τ) as one operation with a hand-written
/// backward (`kernelised.rs`), for query and key inputs `fq`, `fk` `[batch, heads, T, m]` (what
/// they hold: `options.map`; for [`KernelMap::Taylor`] the projections `[batch, heads, T, r]`) and
/// values `v` `[batch, heads, T, Dv]` → `[batch, heads, T, Dv]`.
///
/// Gives the inputs back where [`kernelised_supported`] is false: the caller then uses the composed
/// forms of `attention::kernel`, which are also the reference this operation is tested against.
#[allow(clippy::type_complexity, clippy::result_large_err)] // inputs come back for the composed forms
pub fn kernelised_attention(
    fq: Tensor<4>,
    fk: Tensor<4>,
    v: Tensor<4>,
    options: KernelisedOptions,
) -> Result<Tensor<4>, (Tensor<4>, Tensor<4>, Tensor<4>)> {
    #[cfg(feature = "flex")]
    if ext::supported_kernelised(&fq) {
        return Ok(ext::kernelised(fq, fk, v, options));
    }
    let _ = options;
    Err((fq, fk, v))
}

/// Kernelised attention with the paper's positive map φ(x) = m^{-1/2} exp(Ωx̃ − ‖x̃‖²/2),
/// x̃ = x / D^{1/4}, built inside the fused operation chunk by chunk from the head vectors `q`, `k`
/// `[batch, heads, T, D]` and Ω `[heads, m, D]`, so that no `[batch, heads, T, m]` activity is
/// materialised (flex, f32, with or without autodiff: the backward recomputes the activity chunk by
/// chunk and gives the gradients of q, k, v and Ω). `v` `[batch, heads, T, Dv]` →
/// `[batch, heads, T, Dv]`; `None` where it does not apply (the caller builds the features).
pub fn positive_kernelised_attention(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    omega: &Tensor<3>,
    chunk: usize,
    decay: f64,
    causal: bool,
) -> Option<Tensor<4>> {
    #[cfg(feature = "flex")]
    if ext::supported_kernelised(q) && omega.dtype() == q.dtype() {
        return Some(ext::kernelised_positive(q.clone(), k.clone(), v.clone(), omega.clone(), chunk, decay, causal));
    }
    let _ = (q, k, v, omega, chunk, decay, causal);
    None
}

/// The memory of kernelised attention between decoding steps: synapses H `[batch, heads, Dv, m]`,
/// calcium p `[batch, heads, 1, m]`, both relative to e^{log_scale} `[batch, heads, 1, 1]`.
#[derive(Debug, Clone)]
pub struct DecodeMemory {
    /// H / e^{log_scale}.
    pub synapses: Tensor<4>,
    /// p / e^{log_scale}.
    pub processes: Tensor<4>,
    /// The common log-scale.
    pub log_scale: Tensor<4>,
}

/// One decoding step of kernelised attention as one operation (flex without autodiff, f32): write
/// the token's key `fk` and value `v` into `memory`, then read with its query `fq` (`fq`, `fk`
/// `[batch, heads, 1, m]`, what they hold: `map`; `v` `[batch, heads, 1, Dv]`). Returns the output
/// `[batch, heads, 1, Dv]` and the new memory, or the inputs back where the fused step does not
/// apply (the caller then runs the composed network, `attention::kernel::mechanistic`).
#[allow(clippy::type_complexity, clippy::result_large_err)] // inputs come back for the composed network
pub fn kernelised_decode_step(
    fq: Tensor<4>,
    fk: Tensor<4>,
    v: Tensor<4>,
    memory: DecodeMemory,
    decay: f64,
    map: KernelMap,
) -> Result<(Tensor<4>, DecodeMemory), (Tensor<4>, Tensor<4>, Tensor<4>, DecodeMemory)> {
    #[cfg(feature = "flex")]
    if ext::supported_decode(&fq) && map != KernelMap::Taylor {
        let DecodeMemory { synapses, processes, log_scale } = memory;
        let (y, synapses, processes, log_scale) =
            ext::decode_step(fq, fk, v, synapses, processes, log_scale, None, decay, map);
        return Ok((y, DecodeMemory { synapses, processes, log_scale }));
    }
    let _ = (decay, map);
    Err((fq, fk, v, memory))
}

/// [`kernelised_decode_step`] for the paper's positive map, computed inside from the head vectors
/// `q`, `k` `[batch, heads, 1, D]` and Ω `[heads, m, D]` (φ(x) = m^{-1/2} exp(Ωx̃ − ‖x̃‖²/2),
/// x̃ = x / D^{1/4}), so that a decoding step is one operation per layer. The memory comes back
/// where the fused step does not apply; the caller then builds the features with Burn's operations.
#[allow(clippy::result_large_err)] // the memory comes back for the composed path
pub fn positive_decode_step(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    omega: &Tensor<3>,
    memory: DecodeMemory,
    decay: f64,
) -> Result<(Tensor<4>, DecodeMemory), DecodeMemory> {
    #[cfg(feature = "flex")]
    if ext::supported_decode(q) && omega.dtype() == q.dtype() {
        let DecodeMemory { synapses, processes, log_scale } = memory;
        let (y, synapses, processes, log_scale) = ext::decode_step(
            q.clone(),
            k.clone(),
            v.clone(),
            synapses,
            processes,
            log_scale,
            Some(omega.clone()),
            decay,
            KernelMap::Exp,
        );
        return Ok((y, DecodeMemory { synapses, processes, log_scale }));
    }
    let _ = (q, k, v, omega, decay);
    Err(memory)
}

/// `layer` applied to every position of `x` `[batch, seq, d_in]` → `[batch, seq, d_out]` as one
/// `[batch·seq, d_in] @ [d_in, d_out]` product. Burn's `Linear` keeps a `[batch, seq, d]` input
/// batched when `seq` fills its row tiles, and flex then runs `batch` small products that each
/// repack the same weight. One product over all rows trained 6–31 % more tokens/s on both of
/// `astro bench`'s shapes (issue 15, docs/benchmarks.md). The reshapes are views.
///
/// In training on flex the product is one fused node with a hand-written backward (dx, dW, db in
/// one call; the output starts as the bias rows): flex's own product zeroes its output and copies
/// it once more to realign it, and adds the bias in another pass.
///
/// On flex without autodiff (inference), a product of at least [`SPLIT_MIN_ROWS`] rows but below
/// flex's own threshold for a parallel product (M·N·K < 192³, where it runs on one thread) is split
/// into row blocks computed on rayon's threads: re-encoding a 64-token window (generation past
/// learned positions) is such products, and ran them on one of two cores.
pub fn linear_rows(layer: &burn::nn::Linear, x: Tensor<3>) -> Tensor<3> {
    let [b, t, d] = x.dims();
    let rows = x.reshape([b * t, d]); //                  [B·T, d_in]
    #[cfg(feature = "flex")]
    let y = ext::linear_split_rows(layer, rows); //       [B·T, d_out]
    #[cfg(not(feature = "flex"))]
    let y = layer.forward(rows);
    let d_out = y.dims()[1];
    y.reshape([b, t, d_out])
}

/// Fewest rows [`linear_rows`] splits over threads (each thread then gets at least 16 rows).
pub const SPLIT_MIN_ROWS: usize = 32;

/// LayerNorm over the last axis of `x` `[.., C]` with the module's γ, β (β absent: 0) and `epsilon`
/// (`burn::nn::LayerNorm` keeps its ε private, so the caller passes the one it was built with).
///
/// On flex (f32) one pass forward and one backward (Burn composes about eight operations each way).
pub fn layer_norm<const D: usize>(x: Tensor<D>, ln: &burn::nn::LayerNorm, epsilon: f64) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if ext::supported_elementwise(&x) && ln.gamma.val().dtype() == x.dtype() {
        let gamma = ln.gamma.val();
        let beta = match &ln.beta {
            Some(b) => b.val(),
            None => gamma.zeros_like(),
        };
        return ext::layer_norm(x, gamma, beta, epsilon);
    }
    let _ = epsilon;
    ln.forward(x)
}

/// e^x element-wise. On flex (f32) a vectorised polynomial (relative error < 2e-7, 0 below
/// e^−87); elsewhere Burn's `exp`.
pub fn exp<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if ext::supported_elementwise(&x) {
        return ext::exp(x);
    }
    x.exp()
}

/// e^{x − shift} with `shift` `[.., 1, …, 1]` broadcast over trailing axes of `x` and treated as a
/// constant (detached: the stabilising maxima of the astrocyte's log-activities, whose gradient
/// cancels). On flex (f32) one vectorised pass instead of a broadcast subtraction and an exp.
pub fn exp_sub<const D: usize>(x: Tensor<D>, shift: Tensor<D>) -> Tensor<D> {
    let shift = shift.detach();
    #[cfg(feature = "flex")]
    if ext::supported_elementwise(&x) {
        return ext::exp_sub(x, shift);
    }
    (x - shift).exp()
}

/// `rope` applied to `x` `[.., seq, head_dim]` at positions `start..start + seq`: each pair
/// (x₂ᵢ, x₂ᵢ₊₁) rotated by its position's angle, exactly as `RotaryEncoding::apply`.
///
/// On flex (f32) one pass forward and one backward (the inverse rotation). Burn composes it as a
/// batched product with K = 2 per pair, a multiplication and a sum over a doubled `[.., seq,
/// head_dim, 2]` tensor, each with its own backward: about 5 % of a training step at T = 4096.
pub fn rotary<const D: usize>(rope: &burn::nn::RotaryEncoding, x: Tensor<D>, start: usize) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if ext::supported_elementwise(&x) && rope.freq_complex.dtype() == x.dtype() {
        let t = x.dims()[D - 2];
        let freq = rope.freq_complex.clone().narrow(0, start, t); // [T, head_dim, 2]
        return ext::rotary(x, freq, false);
    }
    rope.apply(x, start)
}

/// Causal depthwise convolution over time, each channel its own kernel: `full` `[batch, K−1+T, C]`
/// (the K − 1 inputs before the sequence, then its T inputs) and `weight` `[C, K]` (column j weighs
/// the input j tokens back) → `[batch, T, C]`, y_τ = Σ_j w_j ⊙ full_{τ+K−1−j}.
///
/// On flex (f32) one pass forward and one backward (d full and dw in one call); elsewhere, and as
/// the reference the tests compare with, [`short_conv_reference`].
pub fn short_conv(full: Tensor<3>, weight: Tensor<2>) -> Tensor<3> {
    #[cfg(feature = "flex")]
    if ext::supported_elementwise(&full) && weight.dtype() == full.dtype() && weight.dims()[1] >= 1 {
        return ext::short_conv(full, weight);
    }
    short_conv_reference(full, weight)
}

/// [`short_conv`] as Burn operations: K shifted views of `full`, each times its column of `weight`,
/// summed. Autodiff keeps every product's operands, and each view's backward is a zero-filled
/// tensor of `full`'s size with the gradient written into it.
pub fn short_conv_reference(full: Tensor<3>, weight: Tensor<2>) -> Tensor<3> {
    let [_, rows, c] = full.dims();
    let k = weight.dims()[1];
    let t = rows + 1 - k;
    let mut y: Option<Tensor<3>> = None;
    for j in 0..k {
        // x_{τ−j} for τ = 0..T sits at rows K−1−j .. K−1−j+T of `full`.
        let shifted = full.clone().narrow(1, k - 1 - j, t); //                              [B, T, C]
        let wj = weight.clone().narrow(1, j, 1).reshape([1, 1, c]); //                     [1, 1, C]
        let term = shifted * wj;
        y = Some(match y {
            Some(acc) => acc + term,
            None => term,
        });
    }
    y.expect("K ≥ 1")
}

/// Exact GELU, x·Φ(x) with Φ the standard normal CDF (erf form, as PyTorch's default), any shape.
///
/// On flex (f32) one vectorised pass forward and one backward; elsewhere Burn's `gelu`.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if ext::supported_elementwise(&x) {
        return ext::gelu(x);
    }
    burn::tensor::activation::gelu(x)
}

/// Gradients (dq, dk, dv) of `sum(fused_attention(q, k, v, causal) ∘ grad)` through the fused
/// kernel (flex) — exposed so tests can compare the hand-written backward with autodiff's.
/// `grad`: `[batch, heads, T, Dv]`. `None` where the kernel does not apply (other backends, dtypes).
pub fn fused_attention_grads(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    grad: Tensor<4>,
    causal: bool,
) -> Option<(Tensor<4>, Tensor<4>, Tensor<4>)> {
    #[cfg(feature = "flex")]
    if ext::supported(&q, &k) {
        return Some(ext::grads(q, k, v, grad, causal));
    }
    let _ = (q, k, v, grad, causal);
    None
}
