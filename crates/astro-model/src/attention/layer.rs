//! The multi-head attention layer: projections, head split/merge, optional rotary positions; the
//! mixing itself is delegated to the [`Attention`] variant.

use burn::module::{Initializer, Module};
use burn::nn::{Linear, LinearConfig, RotaryEncoding};
use burn::tensor::{Device, Tensor};

use super::{Attention, AttentionConfig, AttentionMask, AttentionState, InnerAttention, NormaliserTrace};

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
    /// The attention variant.
    pub inner: Attention,
    #[module(skip)]
    heads: usize,
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

    /// Per-head q, k, v with rotary positions starting at `start` when `rope` is given.
    /// `x`: `[batch, seq, d_model]` → three `[batch, heads, seq, head_dim]`.
    fn qkv(&self, x: Tensor<3>, rope: Option<&RotaryEncoding>, start: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let q = self.split(self.q_proj.forward(x.clone()));
        let k = self.split(self.k_proj.forward(x.clone()));
        let v = self.split(self.v_proj.forward(x));
        match rope {
            Some(r) => (r.apply(q, start), r.apply(k, start), v),
            None => (q, k, v),
        }
    }

    /// `x`: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>, mask: &AttentionMask, rope: Option<&RotaryEncoding>) -> Tensor<3> {
        let (q, k, v) = self.qkv(x, rope, 0);
        let y = self.inner.forward(q, k, v, mask); // [B,H,T,Dh]
        self.o_proj.forward(Self::merge(y))
    }

    /// Same as [`Self::forward`] through the variant's reference (specification) path.
    pub fn forward_reference(&self, x: Tensor<3>, mask: &AttentionMask, rope: Option<&RotaryEncoding>) -> Tensor<3> {
        let (q, k, v) = self.qkv(x, rope, 0);
        let y = self.inner.forward_reference(q, k, v, mask);
        self.o_proj.forward(Self::merge(y))
    }

    /// Causal attention for new tokens `x` `[batch, seq_new, d_model]` after those in `state`.
    pub fn forward_incremental(
        &self,
        x: Tensor<3>,
        state: Option<AttentionState>,
        rope: Option<&RotaryEncoding>,
    ) -> (Tensor<3>, AttentionState) {
        let start = state.as_ref().map_or(0, |s| s.tokens());
        let (q, k, v) = self.qkv(x, rope, start);
        let (y, state) = self.inner.forward_incremental(q, k, v, state);
        (self.o_proj.forward(Self::merge(y)), state)
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
