//! The backend extension behind [`super::fused_attention`]: a trait with the forward and the
//! backward as primitive operations, implemented for flex (the kernels in [`super::cpu`]) and for
//! `Autodiff<B>` (which records one graph node whose backward calls the inner backend's kernel).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::{ActivationOps, FloatTensorOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, Dispatch, DispatchDevice, ExtensionType, Flex, TensorMetadata, backend_extension};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bytes, Shape, Tensor, TensorData};

use super::kernelised::{Activation, KernelDims, Memory, StepDims};

/// Gradients of attention with respect to its three inputs, shaped like them.
#[derive(ExtensionType)]
pub struct AttentionGrads<B: Backend> {
    /// dL/dq, `[batch, heads, T, D]`.
    pub q: FloatTensor<B>,
    /// dL/dk, `[batch, heads, T, D]`.
    pub k: FloatTensor<B>,
    /// dL/dv, `[batch, heads, T, Dv]`.
    pub v: FloatTensor<B>,
}

/// Output of one decoding step: the attention output and the updated memory.
#[derive(ExtensionType)]
pub struct DecodeOut<B: Backend> {
    /// y, `[batch, heads, 1, Dv]`.
    pub y: FloatTensor<B>,
    /// Hebbian synapses H / e^{log_scale}, `[batch, heads, Dv, m]`.
    pub synapses: FloatTensor<B>,
    /// Astrocyte calcium p / e^{log_scale}, `[batch, heads, 1, m]`.
    pub processes: FloatTensor<B>,
    /// The memory's log-scale, `[batch, heads, 1, 1]`.
    pub log_scale: FloatTensor<B>,
}

/// Gradients of kernelised attention with the positive map built inside, shaped like its inputs.
#[derive(ExtensionType)]
pub struct PositiveGrads<B: Backend> {
    /// dL/dq, `[batch, heads, T, D]`.
    pub q: FloatTensor<B>,
    /// dL/dk, `[batch, heads, T, D]`.
    pub k: FloatTensor<B>,
    /// dL/dv, `[batch, heads, T, Dv]`.
    pub v: FloatTensor<B>,
    /// dL/dΩ, `[heads, m, D]`.
    pub omega: FloatTensor<B>,
}

/// Gradients of LayerNorm with respect to its input and parameters.
#[derive(ExtensionType)]
pub struct LayerNormGrads<B: Backend> {
    /// dL/dx, shaped like x.
    pub x: FloatTensor<B>,
    /// dL/dγ, `[C]`.
    pub gamma: FloatTensor<B>,
    /// dL/dβ, `[C]`.
    pub beta: FloatTensor<B>,
}

/// Gradients of a dense layer with respect to its input, weight and bias.
#[derive(ExtensionType)]
pub struct LinearGrads<B: Backend> {
    /// dL/dx, `[N, d_in]`.
    pub x: FloatTensor<B>,
    /// dL/dw, `[d_in, d_out]`.
    pub weight: FloatTensor<B>,
    /// dL/db, `[d_out]`.
    pub bias: FloatTensor<B>,
}

/// Gradients of the short convolution with respect to its input and kernels.
#[derive(ExtensionType)]
pub struct ConvGrads<B: Backend> {
    /// dL/d(past inputs, then the sequence's), `[batch, K−1+T, C]`.
    pub full: FloatTensor<B>,
    /// dL/dw, `[C, K]`.
    pub weight: FloatTensor<B>,
}

/// Fused scaled-dot-product attention, element-wise maps and LayerNorm as backend primitives.
#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    /// softmax(q·kᵀ/√D, causal) · v; `q`, `k` `[B,H,T,D]`, `v` `[B,H,T,Dv]` → `[B,H,T,Dv]`.
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self>;

    /// Gradients of attention given its output `out` and the output's gradient `grad` (both
    /// `[B,H,T,Dv]`). The default body composes generic operations (the reference).
    fn fused_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        causal: bool,
    ) -> AttentionGrads<Self> {
        reference_backward::<Self>(q, k, v, out, grad, causal)
    }

    /// Kernelised attention over hidden activity (`kernelised.rs`): `fq`, `fk` `[B,H,T,m]` (what
    /// they hold: `map`, a `KernelMap` code; the Taylor map's projections `[B,H,T,r]`, from which
    /// the kernel builds the activity), `v` `[B,H,T,Dv]` → `[B,H,T,Dv]`, in chunks of
    /// `chunk` tokens, with calcium decay `decay`, causal or bidirectional.
    #[allow(clippy::too_many_arguments)]
    fn fused_kernelised(
        fq: FloatTensor<Self>,
        fk: FloatTensor<Self>,
        v: FloatTensor<Self>,
        chunk: usize,
        decay: f64,
        map: u8,
        causal: bool,
    ) -> FloatTensor<Self>;

    /// Gradients of [`Self::fused_kernelised`] given the output's gradient `grad` `[B,H,T,Dv]`.
    /// Only flex computes it; the public entry point (`kernels::kernelised_attention`) routes
    /// every other backend to the composed chunked form, whose gradients autodiff derives.
    #[allow(clippy::too_many_arguments)]
    fn fused_kernelised_backward(
        fq: FloatTensor<Self>,
        fk: FloatTensor<Self>,
        v: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        chunk: usize,
        decay: f64,
        map: u8,
        causal: bool,
    ) -> AttentionGrads<Self> {
        let _ = (fq, fk, v, grad, chunk, decay, map, causal);
        unreachable!("the fused kernelised backward runs on flex only; callers check `supported_kernelised`")
    }

    /// Kernelised attention with the paper's positive map built inside, chunk by chunk, from the
    /// head vectors `q`, `k` `[B,H,T,D]` and Ω `[H,m,D]` (`kernelised.rs`, `forward_positive`):
    /// → `[B,H,T,Dv]`. Only flex computes it (with or without autodiff).
    #[allow(clippy::too_many_arguments)]
    fn fused_kernelised_positive(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        omega: FloatTensor<Self>,
        chunk: usize,
        decay: f64,
        causal: bool,
    ) -> FloatTensor<Self> {
        let _ = (q, k, v, omega, chunk, decay, causal);
        unreachable!("the fused positive-map attention runs on flex only; callers check `supported_kernelised`")
    }

    /// Gradients of [`Self::fused_kernelised_positive`] given the output's gradient `grad`
    /// `[B,H,T,Dv]`, the activity recomputed chunk by chunk (`kernelised.rs`, `backward_positive`);
    /// dΩ only when `omega_grad` (zeros otherwise).
    #[allow(clippy::too_many_arguments)]
    fn fused_kernelised_positive_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        omega: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        chunk: usize,
        decay: f64,
        causal: bool,
        omega_grad: bool,
    ) -> PositiveGrads<Self> {
        let _ = (q, k, v, omega, grad, chunk, decay, causal, omega_grad);
        unreachable!("the fused positive-map backward runs on flex only; callers check `supported_kernelised`")
    }

    /// One decoding step of kernelised attention (inference only: no gradient): `fq`, `fk`
    /// `[B,H,1,m]` (what they hold: `map`; for the positive map, code 3, the head vectors
    /// `[B,H,1,D]` and `omega` `[H,m,D]`, otherwise `omega` is unused), `v` `[B,H,1,Dv]` and the
    /// memory (`synapses` `[B,H,Dv,m]`, `processes` `[B,H,1,m]`, `log_scale` `[B,H,1,1]`). Only flex (without
    /// autodiff) computes it; `kernels::kernelised_decode_step` routes everything else to the
    /// composed network.
    #[allow(clippy::too_many_arguments)]
    fn fused_decode_step(
        fq: FloatTensor<Self>,
        fk: FloatTensor<Self>,
        v: FloatTensor<Self>,
        synapses: FloatTensor<Self>,
        processes: FloatTensor<Self>,
        log_scale: FloatTensor<Self>,
        omega: FloatTensor<Self>,
        decay: f64,
        map: u8,
    ) -> DecodeOut<Self> {
        let _ = (fq, fk, v, synapses, processes, log_scale, omega, decay, map);
        unreachable!("the fused decoding step runs on flex without autodiff only; callers check `supported_decode`")
    }

    /// LayerNorm over the last axis of `x` `[.., C]` with `gamma`, `beta` `[C]`.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, Some(beta), epsilon)
    }

    /// Gradients of LayerNorm given the output's gradient `grad` (shaped like `x`). The default
    /// body composes generic operations (the reference).
    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> LayerNormGrads<Self> {
        layer_norm_reference_backward::<Self>(x, gamma, grad, epsilon)
    }

    /// e^x element-wise (any shape).
    fn fused_exp(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_exp(x)
    }

    /// e^{x − shift} with `shift` broadcast over trailing axes of `x` (its shape is x's with a
    /// suffix of axes set to 1). No gradient flows to `shift`: callers pass constants.
    fn fused_exp_sub(x: FloatTensor<Self>, shift: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_exp(Self::float_sub(x, shift))
    }

    /// A dense layer on rows: `x` `[N, d_in]` · `weight` `[d_in, d_out]` + `bias` `[d_out]`.
    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear(x, weight, Some(bias))
    }

    /// Gradients of [`FusedOps::fused_linear`] given the output's gradient `grad` `[N, d_out]`. The
    /// default body is Burn's own.
    fn fused_linear_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> LinearGrads<Self> {
        linear_reference_backward::<Self>(x, weight, grad)
    }

    /// Rotary positions on `x` `[.., T, D]` with `freq` `[T, D, 2]` (cos θ, sin θ per position and
    /// dimension: rows of Burn's `RotaryEncoding::freq_complex`); `inverse` rotates by −θ. No
    /// gradient flows to `freq` (a constant). The default body is Burn's own composition.
    fn fused_rotary(x: FloatTensor<Self>, freq: FloatTensor<Self>, inverse: bool) -> FloatTensor<Self> {
        rotary_reference::<Self>(x, freq, inverse)
    }

    /// Exact GELU, x·Φ(x), element-wise (any shape).
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu(x)
    }

    /// `grad`·GELU′(`x`), element-wise.
    fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu_backward(x, grad)
    }

    /// Causal depthwise convolution over time (`cpu::short_conv`): `full` `[B, K−1+T, C]` (the
    /// K − 1 inputs before the sequence, then its T inputs), `weight` `[C, K]` → `[B, T, C]`.
    /// Only flex computes it; the public entry point (`kernels::short_conv`) routes every other
    /// backend to Burn's operations.
    fn fused_short_conv(full: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let _ = (full, weight);
        unreachable!("the fused short convolution runs on flex only; callers check `supported_elementwise`")
    }

    /// Gradients of [`Self::fused_short_conv`] given the output's gradient `grad` `[B, T, C]`.
    fn fused_short_conv_backward(
        full: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> ConvGrads<Self> {
        let _ = (full, weight, grad);
        unreachable!("the fused short convolution runs on flex only; callers check `supported_elementwise`")
    }
}

/// The attention backward written as algebra on generic operations (nanoGPT-style), with
/// P = softmax(S), S = q·kᵀ/√D:
///
/// ```text
/// dV = Pᵀ·dO    dP = dO·Vᵀ    δ_t = Σ_c dO_tc O_tc    dS = P ∘ (dP − δ) / √D    dQ = dS·K    dK = dSᵀ·Q
/// ```
fn reference_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    grad: FloatTensor<B>,
    causal: bool,
) -> AttentionGrads<B> {
    let [_, _, t, d] = q.shape().dims::<4>();
    let s_len = k.shape().dims::<4>()[2];
    let scale = 1.0 / (d as f64).sqrt();
    let scores = B::float_mul_scalar(B::float_matmul(q.clone(), B::float_transpose(k.clone())), scale.into()); // [B,H,T,S]
    let scores = if causal {
        // Additive mask, bottom-right aligned: query t reads keys τ ≤ t + (S − T).
        let offset = s_len - t;
        let blocked: Vec<f32> =
            (0..t).flat_map(|i| (0..s_len).map(move |j| if j > i + offset { -1.0e30 } else { 0.0 })).collect();
        let device = scores.device();
        let mask = B::float_from_data(TensorData::new(blocked, [1, 1, t, s_len]), &device);
        let mask = B::float_cast(mask, scores.dtype().into());
        B::float_add(scores, mask)
    } else {
        scores
    };
    let max = B::float_max_dim(scores.clone(), 3); //                              [B,H,T,1]
    let e = B::float_exp(B::float_sub(scores, max)); //                            [B,H,T,S]
    let p = B::float_div(e.clone(), B::float_sum_dim(e, 3)); //                    [B,H,T,S]
    let dv = B::float_matmul(B::float_transpose(p.clone()), grad.clone()); //       [B,H,S,Dv]
    let dp = B::float_matmul(grad.clone(), B::float_transpose(v)); //               [B,H,T,S]
    let delta = B::float_sum_dim(B::float_mul(grad, out), 3); //                    [B,H,T,1]
    let ds = B::float_mul_scalar(B::float_mul(p, B::float_sub(dp, delta)), scale.into()); // [B,H,T,S]
    let dq = B::float_matmul(ds.clone(), k); //                                     [B,H,T,D]
    let dk = B::float_matmul(B::float_transpose(ds), q); //                         [B,H,S,D]
    AttentionGrads { q: dq, k: dk, v: dv }
}

/// A dense layer's gradients through Burn's own operations: dx = grad·wᵀ, dw = xᵀ·grad, db = Σ grad.
fn linear_reference_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> LinearGrads<B> {
    LinearGrads {
        x: B::linear_x_backward(weight, grad.clone()),
        weight: B::linear_weight_backward(x, grad.clone()),
        bias: B::linear_bias_backward(grad),
    }
}

/// Rotary positions composed as `RotaryEncoding::apply` composes them: each pair (a, b) times
/// [[1, 0, 0, 1], [0, −1, 1, 0]] gives (a, −b, b, a), whose pairs dotted with (cos θ, sin θ) are
/// the rotated pair; the inverse uses [[1, 0, 0, −1], [0, 1, 1, 0]].
fn rotary_reference<B: Backend>(x: FloatTensor<B>, freq: FloatTensor<B>, inverse: bool) -> FloatTensor<B> {
    let shape = x.shape();
    let [t, d, _] = freq.shape().dims::<3>();
    let n = shape.num_elements() / (t * d).max(1);
    let signs: Vec<f32> = if inverse {
        vec![1.0, 0.0, 0.0, -1.0, 0.0, 1.0, 1.0, 0.0]
    } else {
        vec![1.0, 0.0, 0.0, 1.0, 0.0, -1.0, 1.0, 0.0]
    };
    let signs = B::float_from_data(TensorData::new(signs, [1, 1, 2, 4]), &x.device());
    let signs = B::float_cast(signs, x.dtype().into()); //                       [1,1,2,4]
    let pairs = B::float_reshape(x, Shape::new([n, t, d / 2, 2])); //            [N,T,D/2,2]
    let mixed = B::float_reshape(B::float_matmul(pairs, signs), Shape::new([n, t, d, 2])); // [N,T,D,2]
    let out = B::float_mul(mixed, B::float_reshape(freq, Shape::new([1, t, d, 2])));
    B::float_reshape(B::float_sum_dim(out, 3), shape) //                         [.., T, D]
}

/// Whether `shift` is `x`'s shape with a (possibly empty) suffix of axes set to 1.
fn trailing_broadcast(shift: &Shape, x: &Shape) -> bool {
    let rank = x.num_dims();
    if shift.num_dims() != rank {
        return false;
    }
    let split = (0..rank).position(|i| shift[i] != x[i]).unwrap_or(rank);
    (split..rank).all(|i| shift[i] == 1)
}

/// An element-wise map: `kernel` on f32 data, `fallback` (flex's own op) for other dtypes.
fn unary_f32(x: FlexTensor, kernel: fn(&[f32]) -> Vec<f32>, fallback: fn(FlexTensor) -> FlexTensor) -> FlexTensor {
    if x.dtype() != DType::F32 {
        return fallback(x);
    }
    let x = x.to_contiguous();
    f32_tensor(kernel(view(&x)), x.shape())
}

/// `x` as a contiguous f32 tensor that owns all of its storage (so `storage_mut` writes in place):
/// `x` itself when it already is one, else a copy.
fn writable(x: FlexTensor) -> FlexTensor {
    let owns_all = x.is_contiguous()
        && x.layout().start_offset() == 0
        && x.bytes().len() == x.shape().num_elements() * std::mem::size_of::<f32>()
        && x.is_unique();
    if owns_all { x } else { f32_tensor(view(&x.to_contiguous()).to_vec(), x.shape()) }
}

/// A contiguous f32 flex tensor holding `data` in `shape`.
fn f32_tensor(data: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(data), Layout::contiguous(shape), DType::F32)
}

/// The elements of a tensor made contiguous by `to_contiguous` (so the view always exists).
fn view(x: &FlexTensor) -> &[f32] {
    x.as_slice::<f32>().expect("contiguous f32 tensor")
}

/// LayerNorm's backward as algebra on generic operations: x̂ = (x − μ)·r, ĝ = grad·γ,
/// dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)), dγ = Σ_rows grad·x̂, dβ = Σ_rows grad.
fn layer_norm_reference_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    grad: FloatTensor<B>,
    epsilon: f64,
) -> LayerNormGrads<B> {
    let shape = x.shape();
    let c = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / c.max(1);
    let x2 = B::float_reshape(x, Shape::new([rows, c])); //                                  [N,C]
    let g2 = B::float_reshape(grad, Shape::new([rows, c])); //                               [N,C]
    let gamma = B::float_reshape(gamma, Shape::new([1, c])); //                              [1,C]
    let centered = B::float_sub(x2.clone(), B::float_mean_dim(x2, 1));
    let var = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), 1); //      [N,1]
    let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(var, epsilon.into()))); //  [N,1]
    let xhat = B::float_mul(centered, rstd.clone()); //                                      [N,C]
    let gg = B::float_mul(g2.clone(), gamma); //                                             [N,C]
    let m1 = B::float_mean_dim(gg.clone(), 1); //                                            [N,1]
    let m2 = B::float_mean_dim(B::float_mul(gg.clone(), xhat.clone()), 1); //                [N,1]
    let dx = B::float_mul(rstd, B::float_sub(B::float_sub(gg, m1), B::float_mul(xhat.clone(), m2)));
    let dgamma = B::float_reshape(B::float_sum_dim(B::float_mul(g2.clone(), xhat), 0), Shape::new([c]));
    let dbeta = B::float_reshape(B::float_sum_dim(g2, 0), Shape::new([c]));
    LayerNormGrads { x: B::float_reshape(dx, shape), gamma: dgamma, beta: dbeta }
}

fn options(causal: bool) -> AttentionModuleOptions {
    AttentionModuleOptions { scale: None, softcap: None, is_causal: causal }
}

impl FusedOps for Flex {
    fn fused_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor, causal: bool) -> FlexTensor {
        let [b, h, t, d] = q.shape().dims::<4>();
        let [_, _, s, dv] = v.shape().dims::<4>();
        let all_f32 = [&q, &k, &v].iter().all(|x| x.dtype() == DType::F32);
        if !all_f32 {
            return <Flex as ModuleOps<Flex>>::attention(q, k, v, None, None, options(causal));
        }
        let dims = super::cpu::Dims { heads: b * h, t, s, d, dv };
        let (q, k, v) = (q.to_contiguous(), k.to_contiguous(), v.to_contiguous());
        let out = super::cpu::attention_forward(view(&q), view(&k), view(&v), dims, causal);
        f32_tensor(out, Shape::new([b, h, t, dv]))
    }

    fn fused_attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        out: FlexTensor,
        grad: FlexTensor,
        causal: bool,
    ) -> AttentionGrads<Flex> {
        let all_f32 = [&q, &k, &v, &out, &grad].iter().all(|x| x.dtype() == DType::F32);
        if !all_f32 {
            return reference_backward::<Flex>(q, k, v, out, grad, causal);
        }
        let [b, h, t, d] = q.shape().dims::<4>();
        let [_, _, s, dv] = v.shape().dims::<4>();
        let dims = super::cpu::Dims { heads: b * h, t, s, d, dv };
        let (q, k, v, out, grad) =
            (q.to_contiguous(), k.to_contiguous(), v.to_contiguous(), out.to_contiguous(), grad.to_contiguous());
        let grads = super::cpu::attention_backward(view(&q), view(&k), view(&v), view(&out), view(&grad), dims, causal);
        let tensor = |data: Vec<f32>, shape: [usize; 4]| f32_tensor(data, Shape::new(shape));
        AttentionGrads {
            q: tensor(grads.q, [b, h, t, d]),
            k: tensor(grads.k, [b, h, s, d]),
            v: tensor(grads.v, [b, h, s, dv]),
        }
    }

    fn fused_kernelised(
        fq: FlexTensor,
        fk: FlexTensor,
        v: FlexTensor,
        chunk: usize,
        decay: f64,
        map: u8,
        causal: bool,
    ) -> FlexTensor {
        let [b, h, t, width] = fq.shape().dims::<4>();
        let dv = v.shape().dims::<4>()[3];
        let (fq, fk, v) = (fq.to_contiguous(), fk.to_contiguous(), v.to_contiguous());
        let (kernelised, dims) = kernelised_dims(b * h, t, width, dv, chunk, decay, map, causal);
        let y = match kernelised {
            Inputs::Taylor => super::kernelised::forward_taylor(view(&fq), view(&fk), view(&v), width, dims),
            Inputs::Activity => super::kernelised::forward(view(&fq), view(&fk), view(&v), dims),
        };
        f32_tensor(y, Shape::new([b, h, t, dv]))
    }

    fn fused_kernelised_backward(
        fq: FlexTensor,
        fk: FlexTensor,
        v: FlexTensor,
        grad: FlexTensor,
        chunk: usize,
        decay: f64,
        map: u8,
        causal: bool,
    ) -> AttentionGrads<Flex> {
        let [b, h, t, width] = fq.shape().dims::<4>();
        let dv = v.shape().dims::<4>()[3];
        let (fq, fk, v, grad) = (fq.to_contiguous(), fk.to_contiguous(), v.to_contiguous(), grad.to_contiguous());
        let (kernelised, dims) = kernelised_dims(b * h, t, width, dv, chunk, decay, map, causal);
        let g = match kernelised {
            Inputs::Taylor => {
                super::kernelised::backward_taylor(view(&fq), view(&fk), view(&v), view(&grad), width, dims)
            }
            Inputs::Activity => super::kernelised::backward(view(&fq), view(&fk), view(&v), view(&grad), dims),
        };
        AttentionGrads {
            q: f32_tensor(g.q, Shape::new([b, h, t, width])),
            k: f32_tensor(g.k, Shape::new([b, h, t, width])),
            v: f32_tensor(g.v, Shape::new([b, h, t, dv])),
        }
    }

    fn fused_kernelised_positive(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        omega: FlexTensor,
        chunk: usize,
        decay: f64,
        causal: bool,
    ) -> FlexTensor {
        let [b, h, t, width] = q.shape().dims::<4>();
        let dv = v.shape().dims::<4>()[3];
        let m = omega.shape().dims::<3>()[1];
        let dims = KernelDims { heads: b * h, t, m, dv, chunk, decay: decay as f32, map: Activation::Exp, causal };
        let (q, k, v, omega) = (q.to_contiguous(), k.to_contiguous(), v.to_contiguous(), omega.to_contiguous());
        let y = super::kernelised::forward_positive(view(&q), view(&k), view(&v), view(&omega), width, dims);
        f32_tensor(y, Shape::new([b, h, t, dv]))
    }

    fn fused_kernelised_positive_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        omega: FlexTensor,
        grad: FlexTensor,
        chunk: usize,
        decay: f64,
        causal: bool,
        omega_grad: bool,
    ) -> PositiveGrads<Flex> {
        let [b, h, t, width] = q.shape().dims::<4>();
        let dv = v.shape().dims::<4>()[3];
        let omega_shape = omega.shape();
        let m = omega_shape.dims::<3>()[1];
        let dims = KernelDims { heads: b * h, t, m, dv, chunk, decay: decay as f32, map: Activation::Exp, causal };
        let (q, k, v, omega, grad) =
            (q.to_contiguous(), k.to_contiguous(), v.to_contiguous(), omega.to_contiguous(), grad.to_contiguous());
        let (g, domega) = super::kernelised::backward_positive(
            view(&q),
            view(&k),
            view(&v),
            view(&omega),
            view(&grad),
            width,
            omega_grad,
            dims,
        );
        let domega = if omega_grad { domega } else { vec![0f32; omega_shape.num_elements()] };
        PositiveGrads {
            q: f32_tensor(g.q, Shape::new([b, h, t, width])),
            k: f32_tensor(g.k, Shape::new([b, h, t, width])),
            v: f32_tensor(g.v, Shape::new([b, h, t, dv])),
            omega: f32_tensor(domega, omega_shape),
        }
    }

    fn fused_decode_step(
        fq: FlexTensor,
        fk: FlexTensor,
        v: FlexTensor,
        synapses: FlexTensor,
        processes: FlexTensor,
        log_scale: FlexTensor,
        omega: FlexTensor,
        decay: f64,
        map: u8,
    ) -> DecodeOut<Flex> {
        let [b, h, _, width] = fq.shape().dims::<4>();
        let dv = v.shape().dims::<4>()[3];
        let m = processes.shape().dims::<4>()[3];
        let positive = map == POSITIVE_CODE;
        let map = if positive { Activation::Exp } else { Activation::from_code(map) };
        let dims = StepDims { heads: b * h, m, dv, decay: decay as f32, map, width, heads_per_row: h };
        // The memory is updated in place when this step holds its only reference (the usual case:
        // the decoding state moves from step to step), else copied once.
        let (mut synapses, mut processes, mut log_scale) =
            (writable(synapses), writable(processes), writable(log_scale));
        let memory = Memory {
            synapses: synapses.storage_mut::<f32>(),
            processes: processes.storage_mut::<f32>(),
            log_scale: log_scale.storage_mut::<f32>(),
        };
        let (fq, fk, v, omega) = (fq.to_contiguous(), fk.to_contiguous(), v.to_contiguous(), omega.to_contiguous());
        let omega = positive.then(|| view(&omega));
        let y = super::kernelised::decode_step(view(&fq), view(&fk), view(&v), omega, memory, dims);
        DecodeOut { y: f32_tensor(y, Shape::new([b, h, 1, dv])), synapses, processes, log_scale }
    }

    fn fused_layer_norm(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, epsilon: f64) -> FlexTensor {
        if [&x, &gamma, &beta].iter().any(|t| t.dtype() != DType::F32) {
            return Flex::layer_norm(x, gamma, Some(beta), epsilon);
        }
        let (x, gamma, beta) = (x.to_contiguous(), gamma.to_contiguous(), beta.to_contiguous());
        let out = super::cpu::layer_norm(view(&x), view(&gamma), view(&beta), epsilon as f32);
        f32_tensor(out, x.shape())
    }

    fn fused_layer_norm_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        grad: FlexTensor,
        epsilon: f64,
    ) -> LayerNormGrads<Flex> {
        if [&x, &gamma, &grad].iter().any(|t| t.dtype() != DType::F32) || x.shape() != grad.shape() {
            return layer_norm_reference_backward::<Flex>(x, gamma, grad, epsilon);
        }
        let (x, gamma, grad) = (x.to_contiguous(), gamma.to_contiguous(), grad.to_contiguous());
        let (dx, dgamma, dbeta) = super::cpu::layer_norm_backward(view(&x), view(&gamma), view(&grad), epsilon as f32);
        let c = dgamma.len();
        let vector = |data: Vec<f32>| f32_tensor(data, Shape::new([c]));
        LayerNormGrads { x: f32_tensor(dx, x.shape()), gamma: vector(dgamma), beta: vector(dbeta) }
    }

    fn fused_exp(x: FlexTensor) -> FlexTensor {
        unary_f32(x, super::cpu::exp, Flex::float_exp)
    }

    fn fused_exp_sub(x: FlexTensor, shift: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || shift.dtype() != DType::F32 || !trailing_broadcast(&shift.shape(), &x.shape()) {
            return Flex::float_exp(Flex::float_sub(x, shift));
        }
        let (x, shift) = (x.to_contiguous(), shift.to_contiguous());
        let out = super::cpu::exp_sub(view(&x), view(&shift));
        f32_tensor(out, x.shape())
    }

    fn fused_linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let ([n, d_in], [_, d_out]) = (x.shape().dims::<2>(), weight.shape().dims::<2>());
        if [&x, &weight, &bias].iter().any(|t| t.dtype() != DType::F32) {
            return Flex::linear(x, weight, Some(bias));
        }
        let (x, weight, bias) = (x.to_contiguous(), weight.to_contiguous(), bias.to_contiguous());
        f32_tensor(super::cpu::linear(view(&x), view(&weight), view(&bias), n, d_in), Shape::new([n, d_out]))
    }

    fn fused_linear_backward(x: FlexTensor, weight: FlexTensor, grad: FlexTensor) -> LinearGrads<Flex> {
        let ([n, d_in], [_, d_out]) = (x.shape().dims::<2>(), weight.shape().dims::<2>());
        if [&x, &weight, &grad].iter().any(|t| t.dtype() != DType::F32) {
            return linear_reference_backward::<Flex>(x, weight, grad);
        }
        let (x, weight, grad) = (x.to_contiguous(), weight.to_contiguous(), grad.to_contiguous());
        let (dx, dw, db) = super::cpu::linear_backward(view(&x), view(&weight), view(&grad), n, d_in, d_out);
        LinearGrads {
            x: f32_tensor(dx, Shape::new([n, d_in])),
            weight: f32_tensor(dw, Shape::new([d_in, d_out])),
            bias: f32_tensor(db, Shape::new([d_out])),
        }
    }

    fn fused_rotary(x: FlexTensor, freq: FlexTensor, inverse: bool) -> FlexTensor {
        let shape = x.shape();
        let rank = shape.num_dims();
        let [t, d, two] = freq.shape().dims::<3>();
        let fits = rank >= 2 && shape[rank - 2] == t && shape[rank - 1] == d && d % 2 == 0 && two == 2;
        if x.dtype() != DType::F32 || freq.dtype() != DType::F32 || !fits {
            return rotary_reference::<Flex>(x, freq, inverse);
        }
        let (x, freq) = (x.to_contiguous(), freq.to_contiguous());
        f32_tensor(super::cpu::rotary(view(&x), view(&freq), t, d, inverse), shape)
    }

    fn fused_gelu(x: FlexTensor) -> FlexTensor {
        unary_f32(x, super::cpu::gelu, Flex::gelu)
    }

    fn fused_gelu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 || x.shape() != grad.shape() {
            return Flex::gelu_backward(x, grad);
        }
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let out = super::cpu::gelu_backward(view(&x), view(&grad));
        f32_tensor(out, x.shape())
    }

    fn fused_short_conv(full: FlexTensor, weight: FlexTensor) -> FlexTensor {
        let ([b, rows, c], [_, k]) = (full.shape().dims::<3>(), weight.shape().dims::<2>());
        let t = rows + 1 - k;
        let (full, weight) = (full.to_contiguous(), weight.to_contiguous());
        f32_tensor(super::cpu::short_conv(view(&full), view(&weight), b, t, c, k), Shape::new([b, t, c]))
    }

    fn fused_short_conv_backward(full: FlexTensor, weight: FlexTensor, grad: FlexTensor) -> ConvGrads<Flex> {
        let ([b, rows, c], [_, k]) = (full.shape().dims::<3>(), weight.shape().dims::<2>());
        let t = rows + 1 - k;
        let (full, weight, grad) = (full.to_contiguous(), weight.to_contiguous(), grad.to_contiguous());
        let (dfull, dweight) = super::cpu::short_conv_backward(view(&full), view(&weight), view(&grad), b, t, c, k);
        ConvGrads { full: f32_tensor(dfull, Shape::new([b, rows, c])), weight: f32_tensor(dweight, Shape::new([c, k])) }
    }
}

/// One graph node for the whole attention; its backward calls the inner backend's kernel.
#[derive(Debug)]
struct FusedAttentionBackward;

impl<B: FusedOps> Backward<B, 3> for FusedAttentionBackward {
    // Checkpointed q, k, v; the output; causal.
    type State = (NodeId, NodeId, NodeId, FloatTensor<B>, bool);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (q, k, v, out, causal) = ops.state;
        let q: FloatTensor<B> = checkpointer.retrieve_node_output(q);
        let k: FloatTensor<B> = checkpointer.retrieve_node_output(k);
        let v: FloatTensor<B> = checkpointer.retrieve_node_output(v);
        let g = B::fused_attention_backward(q, k, v, out, grad, causal);
        if let Some(node) = node_q {
            grads.register::<B>(node.id, g.q);
        }
        if let Some(node) = node_k {
            grads.register::<B>(node.id, g.k);
        }
        if let Some(node) = node_v {
            grads.register::<B>(node.id, g.v);
        }
    }
}

impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        match FusedAttentionBackward.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let (sq, sk, sv) = (prep.checkpoint(&q), prep.checkpoint(&k), prep.checkpoint(&v));
                let out = B::fused_attention(q.into_primitive(), k.into_primitive(), v.into_primitive(), causal);
                prep.finish((sq, sk, sv, out.clone(), causal), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_attention(q.into_primitive(), k.into_primitive(), v.into_primitive(), causal))
            }
        }
    }

    fn fused_kernelised(
        fq: FloatTensor<Self>,
        fk: FloatTensor<Self>,
        v: FloatTensor<Self>,
        chunk: usize,
        decay: f64,
        map: u8,
        causal: bool,
    ) -> FloatTensor<Self> {
        let settings = KernelisedSettings { chunk, decay, map, causal };
        let run = |fq: FloatTensor<B>, fk: FloatTensor<B>, v: FloatTensor<B>| {
            B::fused_kernelised(fq, fk, v, chunk, decay, map, causal)
        };
        match FusedKernelisedBackward.prepare::<C>([fq.node(), fk.node(), v.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let (sq, sk, sv) = (prep.checkpoint(&fq), prep.checkpoint(&fk), prep.checkpoint(&v));
                let out = run(fq.into_primitive(), fk.into_primitive(), v.into_primitive());
                prep.finish((sq, sk, sv, settings), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(run(fq.into_primitive(), fk.into_primitive(), v.into_primitive())),
        }
    }

    fn fused_kernelised_positive(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        omega: FloatTensor<Self>,
        chunk: usize,
        decay: f64,
        causal: bool,
    ) -> FloatTensor<Self> {
        let settings = KernelisedSettings { chunk, decay, map: POSITIVE_CODE, causal };
        let run = |q: FloatTensor<B>, k: FloatTensor<B>, v: FloatTensor<B>, omega: FloatTensor<B>| {
            B::fused_kernelised_positive(q, k, v, omega, chunk, decay, causal)
        };
        let parents = [q.node(), k.node(), v.node(), omega.node()];
        match FusedPositiveBackward.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let saved = [prep.checkpoint(&q), prep.checkpoint(&k), prep.checkpoint(&v), prep.checkpoint(&omega)];
                let out = run(q.into_primitive(), k.into_primitive(), v.into_primitive(), omega.into_primitive());
                prep.finish((saved, settings), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(run(q.into_primitive(), k.into_primitive(), v.into_primitive(), omega.into_primitive()))
            }
        }
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        match FusedLayerNormBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let (sx, sg) = (prep.checkpoint(&x), prep.checkpoint(&gamma));
                let out =
                    B::fused_layer_norm(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), epsilon);
                prep.finish((sx, sg, epsilon), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_layer_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                epsilon,
            )),
        }
    }

    fn fused_exp(x: FloatTensor<Self>) -> FloatTensor<Self> {
        exp_node::<B, C>(x, B::fused_exp)
    }

    fn fused_exp_sub(x: FloatTensor<Self>, shift: FloatTensor<Self>) -> FloatTensor<Self> {
        // Only x is a parent: the shift is a constant (see the trait).
        let shift = shift.into_primitive();
        exp_node::<B, C>(x, |x| B::fused_exp_sub(x, shift))
    }

    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        match FusedLinearBackward.prepare::<C>([x.node(), weight.node(), bias.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let (sx, sw) = (prep.checkpoint(&x), prep.checkpoint(&weight));
                let out = B::fused_linear(x.into_primitive(), weight.into_primitive(), bias.into_primitive());
                prep.finish((sx, sw), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_linear(x.into_primitive(), weight.into_primitive(), bias.into_primitive()))
            }
        }
    }

    fn fused_rotary(x: FloatTensor<Self>, freq: FloatTensor<Self>, inverse: bool) -> FloatTensor<Self> {
        // Only x is a parent: the frequencies are a constant (see the trait).
        let freq = freq.into_primitive();
        match FusedRotaryBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::fused_rotary(x.into_primitive(), freq.clone(), inverse);
                prep.finish((freq, inverse), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_rotary(x.into_primitive(), freq, inverse)),
        }
    }

    fn fused_short_conv(full: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        match FusedShortConvBackward.prepare::<C>([full.node(), weight.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let (sf, sw) = (prep.checkpoint(&full), prep.checkpoint(&weight));
                let out = B::fused_short_conv(full.into_primitive(), weight.into_primitive());
                prep.finish((sf, sw), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_short_conv(full.into_primitive(), weight.into_primitive()))
            }
        }
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match FusedGeluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::fused_gelu(x.into_primitive()))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_gelu(x.into_primitive())),
        }
    }
}

/// Settings of a kernelised attention call, kept for its backward.
#[derive(Debug, Clone, Copy)]
struct KernelisedSettings {
    chunk: usize,
    decay: f64,
    map: u8,
    causal: bool,
}

/// One graph node for the whole kernelised attention; its backward recomputes the activity chunk
/// by chunk in the inner backend's kernel.
#[derive(Debug)]
struct FusedKernelisedBackward;

impl<B: FusedOps> Backward<B, 3> for FusedKernelisedBackward {
    // Checkpointed query and key activity and values; the settings.
    type State = (NodeId, NodeId, NodeId, KernelisedSettings);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (sq, sk, sv, s) = ops.state;
        let fq: FloatTensor<B> = checkpointer.retrieve_node_output(sq);
        let fk: FloatTensor<B> = checkpointer.retrieve_node_output(sk);
        let v: FloatTensor<B> = checkpointer.retrieve_node_output(sv);
        let g = B::fused_kernelised_backward(fq, fk, v, grad, s.chunk, s.decay, s.map, s.causal);
        for (node, grad) in [(node_q, g.q), (node_k, g.k), (node_v, g.v)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// One graph node for kernelised attention with the positive map built inside: only the head
/// vectors and Ω are kept (no `[B,H,T,m]` activity); the backward recomputes the activity chunk by
/// chunk in the inner backend's kernel.
#[derive(Debug)]
struct FusedPositiveBackward;

impl<B: FusedOps> Backward<B, 4> for FusedPositiveBackward {
    // Checkpointed q, k, v and Ω; the settings.
    type State = ([NodeId; 4], KernelisedSettings);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let ([sq, sk, sv, so], s) = ops.state;
        let q: FloatTensor<B> = checkpointer.retrieve_node_output(sq);
        let k: FloatTensor<B> = checkpointer.retrieve_node_output(sk);
        let v: FloatTensor<B> = checkpointer.retrieve_node_output(sv);
        let omega: FloatTensor<B> = checkpointer.retrieve_node_output(so);
        let omega_grad = ops.parents[3].is_some();
        let g = B::fused_kernelised_positive_backward(q, k, v, omega, grad, s.chunk, s.decay, s.causal, omega_grad);
        for (node, grad) in ops.parents.into_iter().zip([g.q, g.k, g.v, g.omega]) {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// LayerNorm's graph node: one fused backward pass for x, γ and β.
#[derive(Debug)]
struct FusedLayerNormBackward;

impl<B: FusedOps> Backward<B, 3> for FusedLayerNormBackward {
    // Checkpointed x and γ; ε.
    type State = (NodeId, NodeId, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (sx, sg, epsilon) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(sx);
        let gamma: FloatTensor<B> = checkpointer.retrieve_node_output(sg);
        let g = B::fused_layer_norm_backward(x, gamma, grad, epsilon);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, g.x);
        }
        if let Some(node) = node_gamma {
            grads.register::<B>(node.id, g.gamma);
        }
        if let Some(node) = node_beta {
            grads.register::<B>(node.id, g.beta);
        }
    }
}

/// Records e^(…x…) computed by `forward` on the inner backend as one node with parent `x`, whose
/// backward is grad · output.
fn exp_node<B: FusedOps, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    forward: impl FnOnce(FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    match FusedExpBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let out = forward(x.into_primitive());
            prep.finish(out.clone(), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.into_primitive())),
    }
}

/// exp's (and exp_sub's) graph node: d e^x = e^x dx, from the saved output.
#[derive(Debug)]
struct FusedExpBackward;

impl<B: FusedOps> Backward<B, 1> for FusedExpBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            grads.register::<B>(node.id, B::float_mul(grad, ops.state));
        }
    }
}

/// A dense layer's graph node: one call computes the gradients of x, w and b.
#[derive(Debug)]
struct FusedLinearBackward;

impl<B: FusedOps> Backward<B, 3> for FusedLinearBackward {
    // Checkpointed x and w.
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state.0);
        let weight: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state.1);
        let g = B::fused_linear_backward(x, weight, grad);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, g.x);
        }
        if let Some(node) = node_w {
            grads.register::<B>(node.id, g.weight);
        }
        if let Some(node) = node_b {
            grads.register::<B>(node.id, g.bias);
        }
    }
}

/// Rotary positions' graph node: the backward rotates the gradient back (by −θ).
#[derive(Debug)]
struct FusedRotaryBackward;

impl<B: FusedOps> Backward<B, 1> for FusedRotaryBackward {
    // The frequencies and the direction of the forward rotation.
    type State = (FloatTensor<B>, bool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (freq, inverse) = ops.state;
        if let Some(node) = node {
            grads.register::<B>(node.id, B::fused_rotary(grad, freq, !inverse));
        }
    }
}

/// The short convolution's graph node: one call computes the gradients of the inputs and kernels.
#[derive(Debug)]
struct FusedShortConvBackward;

impl<B: FusedOps> Backward<B, 2> for FusedShortConvBackward {
    // Checkpointed inputs and kernels.
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_full, node_w] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let full: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state.0);
        let weight: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state.1);
        let g = B::fused_short_conv_backward(full, weight, grad);
        for (node, grad) in [(node_full, g.full), (node_w, g.weight)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// GELU's graph node: its backward is one fused pass g·GELU′(x).
#[derive(Debug)]
struct FusedGeluBackward;

impl<B: FusedOps> Backward<B, 1> for FusedGeluBackward {
    type State = NodeId;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state);
        if let Some(node) = node {
            grads.register::<B>(node.id, B::fused_gelu_backward(x, grad));
        }
    }
}

/// Whether `device` is flex, with or without autodiff.
fn on_flex(device: &burn::tensor::Device) -> bool {
    #[allow(unreachable_patterns)]
    match device.as_dispatch() {
        DispatchDevice::Flex(_) => true,
        DispatchDevice::Autodiff(inner) => matches!(**inner, DispatchDevice::Flex(_)),
        _ => false,
    }
}

/// Whether `q`, `k` can take the fused path: flex (with or without autodiff), f32, one sequence
/// (as many queries as keys).
pub(super) fn supported(q: &Tensor<4>, k: &Tensor<4>) -> bool {
    on_flex(&q.device()) && q.dtype() == DType::F32 && q.dims()[2] == k.dims()[2] && q.dims()[3] == k.dims()[3]
}

/// Whether `x` can take the fused element-wise path: flex (with or without autodiff), f32.
pub(super) fn supported_elementwise<const D: usize>(x: &Tensor<D>) -> bool {
    on_flex(&x.device()) && x.dtype() == DType::F32
}

/// Whether `device` is flex under autodiff (training).
fn training_on_flex(device: &burn::tensor::Device) -> bool {
    match device.as_dispatch() {
        DispatchDevice::Autodiff(inner) => matches!(**inner, DispatchDevice::Flex(_)),
        _ => false,
    }
}

/// [`super::linear_rows`]'s product `x` `[N, d_in]` → `[N, d_out]`:
/// - under autodiff on flex (training), f32: one [`FusedOps::fused_linear`] node (flex's own product
///   zeroes its output and copies it once more to realign it, and the bias is a second pass: ~7 %
///   of a T = 4096 training step);
/// - on flex without autodiff, with N ≥ [`super::SPLIT_MIN_ROWS`] and a product below
///   [`super::cpu::PARALLEL_PRODUCT`] (flex's threshold for a parallel product): row blocks on
///   rayon's threads (one per thread, at least 16 rows each) concatenated;
/// - otherwise `layer.forward(x)`.
pub(super) fn linear_split_rows(layer: &burn::nn::Linear, x: Tensor<2>) -> Tensor<2> {
    use rayon::prelude::*;
    let [n, d_in] = x.dims();
    let d_out = layer.weight.dims()[1];
    if training_on_flex(&x.device()) && x.dtype() == DType::F32 && layer.weight.val().dtype() == DType::F32 {
        let bias = match &layer.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([d_out], (&x.device(), x.dtype())),
        };
        return Tensor::from_dispatch(Dispatch::fused_linear(
            x.into_dispatch(),
            layer.weight.val().into_dispatch(),
            bias.into_dispatch(),
        ));
    }
    let threads = rayon::current_num_threads().min(n / 16);
    let small = n.saturating_mul(d_in).saturating_mul(d_out) < super::cpu::PARALLEL_PRODUCT;
    if !(matches!(x.device().as_dispatch(), DispatchDevice::Flex(_))
        && x.dtype() == DType::F32
        && n >= super::SPLIT_MIN_ROWS
        && threads >= 2
        && small)
    {
        return layer.forward(x);
    }
    let per = n.div_ceil(threads); // rows per block; the last block may be shorter
    let parts: Vec<Tensor<2>> = (0..n.div_ceil(per))
        .into_par_iter()
        .map(|i| {
            let start = i * per;
            let len = per.min(n - start);
            layer.forward(x.clone().narrow(0, start, len)) // [len, d_out]
        })
        .collect();
    Tensor::cat(parts, 0) //                                [N, d_out]
}

/// Whether kernelised attention over `fq` `[B,H,T,m]` can take the fused path: flex (with or
/// without autodiff), f32.
pub(super) fn supported_kernelised(fq: &Tensor<4>) -> bool {
    on_flex(&fq.device()) && fq.dtype() == DType::F32
}

/// [`FusedOps::fused_kernelised`] on tensors.
pub(super) fn kernelised(fq: Tensor<4>, fk: Tensor<4>, v: Tensor<4>, o: super::KernelisedOptions) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::fused_kernelised(
        fq.into_dispatch(),
        fk.into_dispatch(),
        v.into_dispatch(),
        o.chunk,
        o.decay,
        o.map.code(),
        o.causal,
    ))
}

/// The map code of a decoding step that computes the positive map itself from head vectors and Ω.
const POSITIVE_CODE: u8 = 255;

/// What the query and key tensors of a kernelised call hold, as the kernel reads them.
enum Inputs {
    /// Per-token inputs of the map `KernelDims::map` (log-activity, activity, elu+1's head vectors).
    Activity,
    /// The Taylor map's projections u `[.., r]`; the kernel builds the activity.
    Taylor,
}

/// The kernel's sizes for a call on `[heads, t, width]` inputs with map `code`: for the Taylor map
/// (`KernelMap::Taylor`) the activity is 1 + r + r(r+1)/2 wide, built from r = `width` inputs.
#[allow(clippy::too_many_arguments)] // the call's settings, as the operation hands them over
fn kernelised_dims(
    heads: usize,
    t: usize,
    width: usize,
    dv: usize,
    chunk: usize,
    decay: f64,
    code: u8,
    causal: bool,
) -> (Inputs, KernelDims) {
    let decay = decay as f32;
    if code == super::KernelMap::Taylor.code() {
        let m = super::taylor_width(width);
        (Inputs::Taylor, KernelDims { heads, t, m, dv, chunk, decay, map: Activation::Identity, causal })
    } else {
        (
            Inputs::Activity,
            KernelDims { heads, t, m: width, dv, chunk, decay, map: Activation::from_code(code), causal },
        )
    }
}

/// Whether a decoding step on `fq`'s device can take the fused path: flex without autodiff, f32.
pub(super) fn supported_decode(fq: &Tensor<4>) -> bool {
    matches!(fq.device().as_dispatch(), DispatchDevice::Flex(_)) && fq.dtype() == DType::F32
}

/// [`FusedOps::fused_kernelised_positive`] on tensors.
pub(super) fn kernelised_positive(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    omega: Tensor<3>,
    chunk: usize,
    decay: f64,
    causal: bool,
) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::fused_kernelised_positive(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        omega.into_dispatch(),
        chunk,
        decay,
        causal,
    ))
}

/// [`FusedOps::fused_decode_step`] on tensors → (y, synapses, processes, log_scale).
#[allow(clippy::too_many_arguments)]
pub(super) fn decode_step(
    fq: Tensor<4>,
    fk: Tensor<4>,
    v: Tensor<4>,
    synapses: Tensor<4>,
    processes: Tensor<4>,
    log_scale: Tensor<4>,
    omega: Option<Tensor<3>>,
    decay: f64,
    map: super::KernelMap,
) -> (Tensor<4>, Tensor<4>, Tensor<4>, Tensor<4>) {
    let (omega, code) = match omega {
        Some(o) => (o, POSITIVE_CODE),
        None => (Tensor::<3>::zeros([1, 1, 1], (&fq.device(), fq.dtype())), map.code()),
    };
    let out = Dispatch::fused_decode_step(
        fq.into_dispatch(),
        fk.into_dispatch(),
        v.into_dispatch(),
        synapses.into_dispatch(),
        processes.into_dispatch(),
        log_scale.into_dispatch(),
        omega.into_dispatch(),
        decay,
        code,
    );
    (
        Tensor::from_dispatch(out.y),
        Tensor::from_dispatch(out.synapses),
        Tensor::from_dispatch(out.processes),
        Tensor::from_dispatch(out.log_scale),
    )
}

/// [`FusedOps::fused_layer_norm`] on tensors.
pub(super) fn layer_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, epsilon: f64) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::fused_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ))
}

/// [`FusedOps::fused_exp`] on tensors.
pub(super) fn exp<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::fused_exp(x.into_dispatch()))
}

/// [`FusedOps::fused_exp_sub`] on tensors.
pub(super) fn exp_sub<const D: usize>(x: Tensor<D>, shift: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::fused_exp_sub(x.into_dispatch(), shift.into_dispatch()))
}

/// [`FusedOps::fused_rotary`] on tensors.
pub(super) fn rotary<const D: usize>(x: Tensor<D>, freq: Tensor<3>, inverse: bool) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::fused_rotary(x.into_dispatch(), freq.into_dispatch(), inverse))
}

/// [`FusedOps::fused_gelu`] on tensors.
pub(super) fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::fused_gelu(x.into_dispatch()))
}

/// [`FusedOps::fused_short_conv`] on tensors.
pub(super) fn short_conv(full: Tensor<3>, weight: Tensor<2>) -> Tensor<3> {
    Tensor::from_dispatch(Dispatch::fused_short_conv(full.into_dispatch(), weight.into_dispatch()))
}

/// [`FusedOps::fused_attention`] on tensors.
pub(super) fn fused_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::fused_attention(q.into_dispatch(), k.into_dispatch(), v.into_dispatch(), causal))
}

/// [`FusedOps::fused_attention_backward`] on tensors (the output is recomputed here).
pub(super) fn grads(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    grad: Tensor<4>,
    causal: bool,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let out = fused_attention(q.clone(), k.clone(), v.clone(), causal);
    let g = Dispatch::fused_attention_backward(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        out.into_dispatch(),
        grad.into_dispatch(),
        causal,
    );
    (Tensor::from_dispatch(g.q), Tensor::from_dispatch(g.k), Tensor::from_dispatch(g.v))
}
