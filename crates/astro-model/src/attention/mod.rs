//! Attention variants behind one inner-attention contract.
//!
//! [`InnerAttention`] takes per-head queries, keys and values and mixes the values; every variant
//! implements it: [`SoftmaxAttention`] (exact), [`AstrocyticAttention`] (the neuron–astrocyte
//! network) and [`LinearAttention`] (elu+1). [`AttentionLayer`] owns the projections and
//! the heads and holds one variant as the enum module [`Attention`]; which variant is data
//! ([`AttentionConfig`]).

pub mod astrocytic;
pub mod calibration;
pub mod feature_map;
pub(crate) mod kernel;
pub mod layer;
pub mod linear;
pub mod softmax;
pub mod window;

use burn::module::Module;
use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

pub use astrocytic::{AstrocyticAttention, AstrocyticConfig, ExecutionForm};
pub use feature_map::FeatureMap;
pub use kernel::{RecurrentState, auto_chunk};
pub use layer::AttentionLayer;
pub use linear::{LinearAttention, LinearConfig};
pub use softmax::{KvCache, SoftmaxAttention, SoftmaxConfig};

use crate::error::ConfigError;

/// Which keys each query may read.
#[derive(Debug, Clone, Default)]
pub struct AttentionMask {
    /// Query t reads keys τ ≤ t only (decoder); otherwise every key (encoder).
    pub causal: bool,
    /// `[batch, seq]`, true where the token is padding: its key is ignored by every query.
    pub key_padding: Option<Tensor<2, Bool>>,
}

impl AttentionMask {
    /// Decoder masking: query t reads keys 0..=t.
    pub fn causal() -> Self {
        Self { causal: true, key_padding: None }
    }

    /// Encoder masking: every query reads every key.
    pub fn bidirectional() -> Self {
        Self { causal: false, key_padding: None }
    }

    /// Adds a key padding mask `[batch, seq]` (true = padding).
    pub fn with_padding(mut self, key_padding: Tensor<2, Bool>) -> Self {
        self.key_padding = Some(key_padding);
        self
    }

    /// The padding mask as `[batch, 1, seq, 1]` (for key-side features).
    pub(crate) fn key_padding_column(&self) -> Option<Tensor<4, Bool>> {
        self.key_padding.clone().map(|p| p.unsqueeze_dim::<3>(1).unsqueeze_dim(3))
    }
}

/// Memory a layer carries between incremental decoding calls.
// Tensors are handles; boxing the larger variant would only add an allocation per decoding step.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum AttentionState {
    /// Constant-size (H, p) memory of astrocytic and linear attention.
    Recurrent(RecurrentState),
    /// Keys and values of every token so far (softmax attention).
    KvCache(KvCache),
    /// Astrocytic attention with a sliding window (`attention.window`): the (H, p) memory and the
    /// keys and values of the last W − 1 tokens (none for W = 1).
    Windowed(RecurrentState, Option<KvCache>),
}

impl AttentionState {
    /// Tokens summarised by this state.
    pub fn tokens(&self) -> usize {
        match self {
            AttentionState::Recurrent(s) | AttentionState::Windowed(s, _) => s.tokens,
            AttentionState::KvCache(c) => c.keys.dims()[2],
        }
    }

    /// Number of floats held, for all batch rows and heads.
    pub fn num_floats(&self) -> usize {
        match self {
            AttentionState::Recurrent(s) => {
                s.synapses.shape().num_elements()
                    + s.processes.shape().num_elements()
                    + s.log_scale.shape().num_elements()
            }
            AttentionState::KvCache(c) => c.keys.shape().num_elements() + c.values.shape().num_elements(),
            AttentionState::Windowed(s, c) => {
                AttentionState::Recurrent(s.clone()).num_floats()
                    + c.as_ref().map_or(0, |c| AttentionState::KvCache(c.clone()).num_floats())
            }
        }
    }
}

/// Per-query normalisers, for comparing the astrocyte with softmax (paper, Fig. 3).
#[derive(Debug, Clone)]
pub struct NormaliserTrace {
    /// log Σ_τ exp(q_t·k_τ/√D) over the keys query t reads, `[batch, heads, seq]`.
    pub softmax_log: Tensor<3>,
    /// log |a_t| with a_t = pᵀφ(q̃_t), the astrocyte response, `[batch, heads, seq]`;
    /// `None` for variants without an astrocyte (softmax).
    pub astrocyte_log: Option<Tensor<3>>,
    /// sign of a_t, `[batch, heads, seq]` (−1 only possible for signed maps).
    pub astrocyte_sign: Option<Tensor<3>>,
}

/// The inner-attention contract: per-head q, k, v in, mixed values out.
///
/// Shapes: `q`, `k`: `[batch, heads, seq, head_dim]`, `v`: `[batch, heads, seq, value_dim]`.
pub trait InnerAttention {
    /// Full-sequence attention with the fast execution path → `[batch, heads, seq, value_dim]`.
    fn forward(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4>;

    /// The slow, explicit specification of the same function (tests compare the fast path with it).
    fn forward_reference(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4>;

    /// Causal attention for `seq` new tokens that follow those summarised by `state`
    /// (none: a fresh sequence) → (output `[batch, heads, seq, value_dim]`, updated state).
    ///
    /// # Panics
    /// If `state` belongs to another variant (a programming error, not a data error).
    fn forward_incremental(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        state: Option<AttentionState>,
    ) -> (Tensor<4>, AttentionState);

    /// Normalised attention weights `[batch, heads, seq, seq]` (rows sum to 1), from the reference path.
    fn attention_weights(&self, q: Tensor<4>, k: Tensor<4>, mask: &AttentionMask) -> Tensor<4>;

    /// Per-query softmax normaliser and, where the variant has one, astrocyte response.
    fn normalisers(&self, q: Tensor<4>, k: Tensor<4>, mask: &AttentionMask) -> NormaliserTrace;

    /// Floats of decoding state per sequence and layer after `context` tokens.
    fn state_floats(&self, heads: usize, head_dim: usize, context: usize) -> usize;
}

/// The attention variant of a layer (an enum module: its weights are saved under the variant name).
// Boxing the astrocytic variant would change every saved module path; the size is a few handles.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Attention {
    /// Exact softmax attention.
    Softmax(SoftmaxAttention),
    /// The neuron–astrocyte network.
    Astrocytic(AstrocyticAttention),
    /// elu+1 linear attention.
    Linear(LinearAttention),
}

macro_rules! dispatch {
    ($self:ident, $inner:ident => $body:expr) => {
        match $self {
            Attention::Softmax($inner) => $body,
            Attention::Astrocytic($inner) => $body,
            Attention::Linear($inner) => $body,
        }
    };
}

impl InnerAttention for Attention {
    fn forward(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        dispatch!(self, a => a.forward(q, k, v, mask))
    }
    fn forward_reference(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        dispatch!(self, a => a.forward_reference(q, k, v, mask))
    }
    fn forward_incremental(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        state: Option<AttentionState>,
    ) -> (Tensor<4>, AttentionState) {
        dispatch!(self, a => a.forward_incremental(q, k, v, state))
    }
    fn attention_weights(&self, q: Tensor<4>, k: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        dispatch!(self, a => a.attention_weights(q, k, mask))
    }
    fn normalisers(&self, q: Tensor<4>, k: Tensor<4>, mask: &AttentionMask) -> NormaliserTrace {
        dispatch!(self, a => a.normalisers(q, k, mask))
    }
    fn state_floats(&self, heads: usize, head_dim: usize, context: usize) -> usize {
        dispatch!(self, a => a.state_floats(heads, head_dim, context))
    }
}

/// Which attention a layer uses, with its settings. In TOML:
/// `attention = { kind = "astrocytic", features = 256, feature_map = "positive" }`,
/// `{ kind = "softmax" }` or `{ kind = "linear" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AttentionConfig {
    /// Exact softmax attention.
    Softmax(SoftmaxConfig),
    /// The neuron–astrocyte network (random-feature attention with an astrocyte normaliser).
    Astrocytic(AstrocyticConfig),
    /// elu+1 linear attention (Katharopoulos et al. 2020).
    Linear(LinearConfig),
}

impl Default for AttentionConfig {
    fn default() -> Self {
        AttentionConfig::Astrocytic(AstrocyticConfig::default())
    }
}

impl AttentionConfig {
    /// The variant's name as written in configs.
    pub fn kind(&self) -> &'static str {
        match self {
            AttentionConfig::Softmax(_) => "softmax",
            AttentionConfig::Astrocytic(_) => "astrocytic",
            AttentionConfig::Linear(_) => "linear",
        }
    }

    /// Checks every field; the error names the offending one (`attention.<field>`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            AttentionConfig::Softmax(_) => Ok(()),
            AttentionConfig::Astrocytic(c) => c.validate(),
            AttentionConfig::Linear(c) => c.validate(),
        }
    }

    /// Builds the variant for `heads` heads of width `head_dim`; `layer` decorrelates random
    /// draws (Ω) between layers.
    pub fn init(&self, heads: usize, head_dim: usize, layer: usize, device: &burn::tensor::Device) -> Attention {
        match self {
            AttentionConfig::Softmax(c) => Attention::Softmax(c.init()),
            AttentionConfig::Astrocytic(c) => Attention::Astrocytic(c.init(heads, head_dim, layer, device)),
            AttentionConfig::Linear(c) => Attention::Linear(c.init()),
        }
    }

    /// One-line human description, e.g. `astrocytic (m = 256, positive map, i.i.d. Ω, γ = 1)`
    /// (with `, softmax window W` when it has one).
    pub fn describe(&self) -> String {
        match self {
            AttentionConfig::Softmax(_) => "softmax".to_string(),
            AttentionConfig::Linear(_) => "linear (elu+1)".to_string(),
            AttentionConfig::Astrocytic(c) => format!(
                "astrocytic (m = {}, {} map, {} Ω{}, γ = {}{})",
                c.features,
                c.feature_map.name(),
                if c.orthogonal { "orthogonal" } else { "i.i.d." },
                if c.omega_trained() { ", learnable" } else { "" },
                c.decay,
                c.window.map_or(String::new(), |w| format!(", softmax window {w}"))
            ),
        }
    }
}
