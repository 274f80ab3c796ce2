//! The neuron–astrocyte network as an attention layer (Kozachkov, Kastanenka & Krotov, PNAS 2023).
//!
//! Per head: m hidden neurons h = φ(x̃) reading the input through a fixed random matrix Ω, Hebbian
//! synapses H `[d_v, m]` (write: H ← γH + v hᵀ), astrocyte processes p `[m]` (write: p ← γp + h), and
//! the astrocyte response a_t = pᵀφ(q̃_t) that divides the read-out: y_t = H φ(q̃_t) / a_t.
//! Inputs are scaled x̃ = x / D^{1/4}, so that φ(q̃)·φ(k̃) estimates exp(q·k/√D).
//!
//! Choices the paper leaves open (see `shared/reference/astrocytic-attention.md` §4): one hidden
//! population, Ω, H, p and astrocyte subdomain per head; layer ℓ draws Ω from `seed` mixed with ℓ;
//! the decay γ (default 1 = the paper) and a learnable Ω are ablations.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::feature_map::{FeatureMap, Features, sample_omega, sample_phase};
pub use super::kernel::ExecutionForm;
use super::kernel::{self, KernelInput};
use super::{AttentionMask, AttentionState, InnerAttention, NormaliserTrace};
use crate::error::ConfigError;

fn default_features() -> usize {
    256
}
fn default_decay() -> f64 {
    1.0
}
fn default_chunk() -> usize {
    64
}

/// Settings of the astrocytic attention layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AstrocyticConfig {
    /// Number of hidden neurons m per head.
    #[serde(default = "default_features")]
    pub features: usize,
    /// Hidden-neuron nonlinearity φ.
    #[serde(default)]
    pub feature_map: FeatureMap,
    /// Ω from orthogonal blocks with χ-distributed row norms (Performer) instead of i.i.d. N(0, 1).
    #[serde(default)]
    pub orthogonal: bool,
    /// Seed of Ω (and of the cosine maps' phases).
    #[serde(default)]
    pub seed: u64,
    /// Calcium decay γ ∈ (0, 1]: H ← γH + …, p ← γp + … (1 = the paper).
    #[serde(default = "default_decay")]
    pub decay: f64,
    /// Train Ω by gradient descent (astrocyte plasticity ablation); fixed otherwise.
    #[serde(default)]
    pub learnable_omega: bool,
    /// Tokens per chunk in the causal chunked form.
    #[serde(default = "default_chunk")]
    pub chunk_size: usize,
    /// Execution form of `forward`.
    #[serde(default)]
    pub form: ExecutionForm,
}

impl Default for AstrocyticConfig {
    fn default() -> Self {
        Self {
            features: default_features(),
            feature_map: FeatureMap::default(),
            orthogonal: false,
            seed: 0,
            decay: default_decay(),
            learnable_omega: false,
            chunk_size: default_chunk(),
            form: ExecutionForm::default(),
        }
    }
}

impl AstrocyticConfig {
    /// Checks every field; the error names the field (`attention.features`, …).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.features == 0 {
            return Err(ConfigError::invalid(
                "attention.features",
                0,
                "the number of hidden neurons m must be at least 1",
            ));
        }
        if self.chunk_size == 0 {
            return Err(ConfigError::invalid("attention.chunk_size", 0, "chunks must hold at least 1 token"));
        }
        if !(self.decay > 0.0 && self.decay <= 1.0) {
            return Err(ConfigError::invalid(
                "attention.decay",
                self.decay,
                "calcium decay γ must lie in (0, 1]; 1 is the paper's",
            ));
        }
        Ok(())
    }

    /// The seed of layer `layer`'s Ω: layers must not share hidden neurons.
    pub fn layer_seed(&self, layer: usize) -> u64 {
        self.seed.wrapping_add((layer as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Builds the layer for `heads` heads of width `head_dim`; Ω is drawn from [`Self::layer_seed`].
    pub fn init(&self, heads: usize, head_dim: usize, layer: usize, device: &Device) -> AstrocyticAttention {
        let seed = self.layer_seed(layer);
        let omega = Tensor::<3>::from_data(sample_omega(heads, self.features, head_dim, self.orthogonal, seed), device);
        let omega = Param::from_tensor(omega).set_require_grad(self.learnable_omega);
        let phase = self.feature_map.uses_phase().then(|| {
            let b = Tensor::<2>::from_data(sample_phase(heads, self.features, seed), device);
            Param::from_tensor(b).set_require_grad(false)
        });
        AstrocyticAttention { omega, phase, config: self.clone() }
    }
}

/// Astrocytic attention: random-feature attention whose normaliser is the astrocyte response.
#[derive(Module, Debug)]
pub struct AstrocyticAttention {
    /// Hidden-neuron input weights Ω, `[heads, m, head_dim]` (saved; trained only if learnable).
    pub omega: Param<Tensor<3>>,
    /// Phases b of the cosine maps, `[heads, m]`.
    pub phase: Option<Param<Tensor<2>>>,
    #[module(skip)]
    config: AstrocyticConfig,
}

impl AstrocyticAttention {
    /// The layer's settings.
    pub fn config(&self) -> &AstrocyticConfig {
        &self.config
    }

    /// Hidden-neuron activity φ(x / D^{1/4}) for `x` `[batch, heads, seq, head_dim]`.
    pub(crate) fn features(&self, x: Tensor<4>) -> Features {
        let d = x.dims()[3] as f64;
        let scaled = x.mul_scalar(d.powf(-0.25)); // x̃ = x / D^{1/4}
        self.config.feature_map.features(scaled, self.omega.val(), self.phase.as_ref().map(|p| p.val()))
    }

    fn input(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> KernelInput {
        KernelInput::new(self.features(q), self.features(k), v, mask.key_padding_column(), self.config.decay)
    }

    /// The explicit network, token by token (see [`kernel::mechanistic`]).
    pub fn forward_mechanistic(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        kernel::mechanistic(self.input(q, k, v, mask), mask.causal, None).0
    }

    /// Bidirectional parallel form φ(Q)(φ(K)ᵀV) / φ(Q)(φ(K)ᵀ1), ignoring `mask.causal`.
    pub fn forward_parallel(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        kernel::parallel(self.input(q, k, v, mask))
    }

    /// Causal chunked form with chunks of `chunk` tokens, ignoring `mask.causal`.
    pub fn forward_chunked(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        mask: &AttentionMask,
        chunk: usize,
    ) -> Tensor<4> {
        kernel::chunked(self.input(q, k, v, mask), chunk, None).0
    }
}

impl InnerAttention for AstrocyticAttention {
    fn forward(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        kernel::forward(self.config.form, self.input(q, k, v, mask), mask.causal, self.config.chunk_size)
    }

    fn forward_reference(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        kernel::quadratic(self.input(q, k, v, mask), mask.causal).output
    }

    fn forward_incremental(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        state: Option<AttentionState>,
    ) -> (Tensor<4>, AttentionState) {
        kernel::incremental(self.input(q, k, v, &AttentionMask::causal()), self.config.chunk_size, state)
    }

    fn attention_weights(&self, q: Tensor<4>, k: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        let like = q.clone();
        kernel::weights(self.features(q), self.features(k), &like, mask, self.config.decay)
    }

    fn normalisers(&self, q: Tensor<4>, k: Tensor<4>, mask: &AttentionMask) -> NormaliserTrace {
        kernel::normalisers(self.features(q.clone()), self.features(k.clone()), q, k, mask, self.config.decay)
    }

    fn state_floats(&self, heads: usize, head_dim: usize, _context: usize) -> usize {
        heads * (head_dim * self.config.features + self.config.features + 1)
    }
}
