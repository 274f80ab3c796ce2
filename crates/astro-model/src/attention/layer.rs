//! The multi-head attention layer: projections, head split/merge, optional rotary positions; the
//! mixing itself is delegated to the [`Attention`] variant.

use burn::module::{Initializer, Module, Param};
use burn::nn::{Linear, LinearConfig, RotaryEncoding};
use burn::tensor::{Device, Distribution, Tensor};

use super::{Attention, AttentionConfig, AttentionMask, AttentionState, InnerAttention, NormaliserTrace};
use crate::kernels::{self, linear_rows};

/// Multi-head attention with a pluggable inner attention.
#[derive(Module, Debug)]
pub struct AttentionLayer {
    /// Query projection W_Q, d_model → d_model.
    pub q_proj: Linear,
    /// Key projection W_K.
    pub k_proj: Linear,
    /// Value projection W_V.
    pub v_proj: Linear,
    /// Output projection W_O.
    pub o_proj: Linear,
    /// Short causal convolutions on q, k and v (`model.short_conv = K`; absent when 0).
    pub conv: Option<QkvConv>,
    /// The attention variant.
    pub inner: Attention,
    #[module(skip)]
    heads: usize,
}

/// Causal depthwise convolutions of kernel K over time on the q, k and v projections (H3, Based,
/// Zoology's `ShortConvolution`): y_t = Σ_{j<K} w_j ⊙ x_{t−j}, each channel its own kernel. A key
/// then carries the tokens just before it, which is the previous-token step of an induction
/// (associative recall) circuit that a fixed-size state cannot form by itself.
#[derive(Module, Debug)]
pub struct QkvConv {
    /// Kernels of q, k and v side by side, `[3·d, K]`; column j weighs the input j tokens back.
    pub weight: Param<Tensor<2>>,
}

impl QkvConv {
    /// Kernel size K.
    pub fn kernel(&self) -> usize {
        self.weight.dims()[1]
    }

    /// `x` `[batch, seq, 3d]` (q | k | v projections) after `past` `[batch, K−1, 3d]` (the inputs
    /// before `x`; zeros for a fresh sequence) → (`[batch, seq, 3d]`, the last K − 1 inputs).
    pub fn forward(&self, x: Tensor<3>, past: Option<Tensor<3>>) -> (Tensor<3>, Tensor<3>) {
        let [b, t, c] = x.dims();
        let k = self.kernel();
        let past = past.unwrap_or_else(|| Tensor::zeros([b, k - 1, c], &x.device()));
        let full = Tensor::cat(vec![past, x], 1); // [B, K−1+T, 3d]
        let y = crate::kernels::short_conv(full.clone(), self.weight.val()); // [B, T, 3d]
        let tail = full.narrow(1, t, k - 1); // the last K−1 rows: [B, K−1, 3d]
        (y, tail)
    }
}

/// Decoding state of one attention layer: the variant's memory and the short convolutions' last
/// K − 1 inputs.
#[derive(Debug, Clone)]
pub struct LayerState {
    /// (H, p) memory or KV cache.
    pub attention: AttentionState,
    /// The q | k | v projections of the last K − 1 tokens, `[batch, K−1, 3·d]` (with `short_conv`).
    pub conv: Option<Tensor<3>>,
}

impl LayerState {
    /// Tokens summarised.
    pub fn tokens(&self) -> usize {
        self.attention.tokens()
    }

    /// Floats held, for all batch rows.
    pub fn num_floats(&self) -> usize {
        self.attention.num_floats() + self.conv.as_ref().map_or(0, |c| c.shape().num_elements())
    }
}

/// Everything needed to build an [`AttentionLayer`].
#[derive(Debug, Clone)]
pub struct AttentionLayerConfig {
    /// Model width.
    pub d_model: usize,
    /// Number of heads (divides `d_model`).
    pub heads: usize,
    /// Biases on the projections.
    pub bias: bool,
    /// Standard deviation of the input projections' initial weights.
    pub init_std: f64,
    /// Standard deviation of the output projection (GPT-2 scales it by 1/√(2·layers)).
    pub out_init_std: f64,
    /// Which attention.
    pub attention: AttentionConfig,
    /// Layer index (decorrelates random draws between layers).
    pub layer: usize,
    /// Kernel of the short causal convolutions on q, k, v (0: none).
    pub short_conv: usize,
}

impl AttentionLayerConfig {
    /// Builds the layer.
    pub fn init(&self, device: &Device) -> AttentionLayer {
        let linear = |std: f64| {
            LinearConfig::new(self.d_model, self.d_model)
                .with_bias(self.bias)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init(device)
        };
        let head_dim = self.d_model / self.heads;
        AttentionLayer {
            q_proj: linear(self.init_std),
            k_proj: linear(self.init_std),
            v_proj: linear(self.init_std),
            o_proj: linear(self.out_init_std),
            // PyTorch's Conv1d default for a depthwise kernel (fan-in K): U(−1/√K, 1/√K).
            conv: (self.short_conv > 0).then(|| {
                let bound = 1.0 / (self.short_conv as f64).sqrt();
                let w =
                    Tensor::random([3 * self.d_model, self.short_conv], Distribution::Uniform(-bound, bound), device);
                QkvConv { weight: Param::from_tensor(w) }
            }),
            inner: self.attention.init(self.heads, head_dim, self.layer, device),
            heads: self.heads,
        }
    }
}

impl AttentionLayer {
    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// `[batch, seq, d_model]` → `[batch, heads, seq, head_dim]`.
    fn split(&self, x: Tensor<3>) -> Tensor<4> {
        let [b, t, d] = x.dims();
        x.reshape([b, t, self.heads, d / self.heads]).swap_dims(1, 2)
    }

    /// `[batch, heads, seq, head_dim]` → `[batch, seq, d_model]`.
    fn merge(x: Tensor<4>) -> Tensor<3> {
        let [b, h, t, dh] = x.dims();
        x.swap_dims(1, 2).reshape([b, t, h * dh])
    }

    /// Per-head q, k, v with rotary positions starting at `start` when `rope` is given, after the
    /// short convolutions (continuing from `past`, see [`QkvConv::forward`]) when the layer has them.
    /// `x`: `[batch, seq, d_model]` → three `[batch, heads, seq, head_dim]` and the convolutions' tail.
    #[allow(clippy::type_complexity)]
    fn qkv_with(
        &self,
        x: Tensor<3>,
        rope: Option<&RotaryEncoding>,
        start: usize,
        past: Option<Tensor<3>>,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>, Option<Tensor<3>>) {
        let q = linear_rows(&self.q_proj, x.clone()); // [B,T,d]
        let k = linear_rows(&self.k_proj, x.clone());
        let v = linear_rows(&self.v_proj, x);
        let (q, k, v, tail) = match &self.conv {
            Some(conv) => {
                let d = q.dims()[2];
                let (y, tail) = conv.forward(Tensor::cat(vec![q, k, v], 2), past); // [B,T,3d]
                let q = y.clone().narrow(2, 0, d);
                let k = y.clone().narrow(2, d, d);
                let v = y.narrow(2, 2 * d, d);
                (q, k, v, Some(tail))
            }
            None => (q, k, v, None),
        };
        let (q, k, v) = (self.split(q), self.split(k), self.split(v));
        match rope {
            Some(r) => (kernels::rotary(r, q, start), kernels::rotary(r, k, start), v, tail),
            None => (q, k, v, tail),
        }
    }

    /// [`Self::qkv_with`] for a fresh sequence.
    fn qkv(&self, x: Tensor<3>, rope: Option<&RotaryEncoding>, start: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let (q, k, v, _) = self.qkv_with(x, rope, start, None);
        (q, k, v)
    }

    /// `x`: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>, mask: &AttentionMask, rope: Option<&RotaryEncoding>) -> Tensor<3> {
        let (q, k, v) = self.qkv(x, rope, 0);
        let y = self.inner.forward(q, k, v, mask); // [B,H,T,Dh]
        linear_rows(&self.o_proj, Self::merge(y))
    }

    /// The last position's row of [`Self::forward`]: `x` `[batch, seq, d_model]` → `[batch, 1, d_model]`
    /// (every position is attended over; only the last one goes through the output projection).
    pub fn forward_last(&self, x: Tensor<3>, mask: &AttentionMask, rope: Option<&RotaryEncoding>) -> Tensor<3> {
        let (q, k, v) = self.qkv(x, rope, 0);
        let y = self.inner.forward(q, k, v, mask); // [B,H,T,Dh]
        let t = y.dims()[2];
        linear_rows(&self.o_proj, Self::merge(y.narrow(2, t - 1, 1))) // [B,1,d]
    }

    /// Same as [`Self::forward`] through the variant's reference (specification) path.
    pub fn forward_reference(&self, x: Tensor<3>, mask: &AttentionMask, rope: Option<&RotaryEncoding>) -> Tensor<3> {
        let (q, k, v) = self.qkv(x, rope, 0);
        let y = self.inner.forward_reference(q, k, v, mask);
        linear_rows(&self.o_proj, Self::merge(y))
    }

    /// Causal attention for new tokens `x` `[batch, seq_new, d_model]` after those in `state`.
    pub fn forward_incremental(
        &self,
        x: Tensor<3>,
        state: Option<LayerState>,
        rope: Option<&RotaryEncoding>,
    ) -> (Tensor<3>, LayerState) {
        let (attention, past) = match state {
            Some(s) => (Some(s.attention), s.conv),
            None => (None, None),
        };
        let start = attention.as_ref().map_or(0, |s| s.tokens());
        let (q, k, v, conv) = self.qkv_with(x, rope, start, past);
        let (y, attention) = self.inner.forward_incremental(q, k, v, attention);
        (linear_rows(&self.o_proj, Self::merge(y)), LayerState { attention, conv })
    }

    /// Per-head queries and keys of `x` `[batch, seq, d_model]` → two `[batch, heads, seq, head_dim]`.
    pub fn queries_keys(&self, x: Tensor<3>, rope: Option<&RotaryEncoding>) -> (Tensor<4>, Tensor<4>) {
        let (q, k, _) = self.qkv(x, rope, 0);
        (q, k)
    }

    /// Per-query normalisers of every head for input `x` `[batch, seq, d_model]`.
    pub fn normalisers(&self, x: Tensor<3>, mask: &AttentionMask, rope: Option<&RotaryEncoding>) -> NormaliserTrace {
        let (q, k, _) = self.qkv(x, rope, 0);
        self.inner.normalisers(q, k, mask)
    }

    /// Attention weights `[batch, heads, seq, seq]` for input `x`.
    pub fn attention_weights(&self, x: Tensor<3>, mask: &AttentionMask, rope: Option<&RotaryEncoding>) -> Tensor<4> {
        let (q, k, _) = self.qkv(x, rope, 0);
        self.inner.attention_weights(q, k, mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn host(t: Tensor<3>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// The convolution against its definition y_t[c] = Σ_j w[c, j] x_{t−j}[c] (x before the
    /// sequence = 0), and a sequence fed in pieces (decoding) against the whole.
    #[test]
    fn short_conv_is_the_causal_depthwise_sum_and_continues_across_pieces() {
        let device = Device::default();
        let (b, t, c, k) = (2, 9, 6, 3);
        let xs: Vec<f32> = (0..b * t * c).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        let ws: Vec<f32> = (0..c * k).map(|i| ((i * 13 % 11) as f32 - 5.0) / 4.0).collect();
        let x = Tensor::<3>::from_data(TensorData::new(xs.clone(), [b, t, c]), &device);
        let conv =
            QkvConv { weight: Param::from_tensor(Tensor::from_data(TensorData::new(ws.clone(), [c, k]), &device)) };
        let (y, _) = conv.forward(x.clone(), None);
        let y = host(y);
        for bi in 0..b {
            for ti in 0..t {
                for ci in 0..c {
                    let want: f32 =
                        (0..k).filter(|&j| j <= ti).map(|j| ws[ci * k + j] * xs[(bi * t + ti - j) * c + ci]).sum();
                    let got = y[(bi * t + ti) * c + ci];
                    assert!((got - want).abs() < 1e-5, "b{bi} t{ti} c{ci}: {got} vs {want}");
                }
            }
        }
        let mut past = None;
        let mut pieces = Vec::new();
        for (start, len) in [(0, 1), (1, 4), (5, 1), (6, 3)] {
            let (y, tail) = conv.forward(x.clone().narrow(1, start, len), past);
            pieces.push(y);
            past = Some(tail);
        }
        let joined = host(Tensor::cat(pieces, 1));
        for (a, w) in joined.iter().zip(&y) {
            assert!((a - w).abs() < 1e-5);
        }
    }
}
