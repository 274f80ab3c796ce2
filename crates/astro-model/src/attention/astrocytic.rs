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
use burn::tensor::{Bool, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::calibration::{self, HeadStats};
use super::feature_map::{FeatureMap, Features, projections, sample_omega, sample_phase};
pub use super::kernel::ExecutionForm;
use super::kernel::{self, KernelInput};
use super::{AttentionMask, AttentionState, InnerAttention, NormaliserTrace, window};
use crate::error::{CalibrationError, ConfigError};

fn default_features() -> usize {
    256
}
fn default_decay() -> f64 {
    1.0
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
    /// Train Ω by gradient descent (astrocyte plasticity ablation); fixed otherwise (the Hedgehog
    /// map always trains it).
    #[serde(default)]
    pub learnable_omega: bool,
    /// Tokens per chunk in the causal chunked form; unset: [`crate::attention::auto_chunk`] (measured rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<usize>,
    /// Execution form of `forward`.
    #[serde(default)]
    pub form: ExecutionForm,
    /// Exact softmax over the last W tokens beside the astrocyte (Based's hybrid; see
    /// [`super::window`]); unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
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
            chunk_size: None,
            form: ExecutionForm::default(),
            window: None,
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
        if self.feature_map == FeatureMap::Taylor && self.features > 64 {
            return Err(ConfigError::invalid(
                "attention.features",
                self.features,
                "the Taylor map has 1 + r + r(r+1)/2 hidden neurons for a projection to r = features dimensions; \
                 use r ≤ 64 (Based uses 16)",
            ));
        }
        if self.chunk_size == Some(0) {
            return Err(ConfigError::invalid("attention.chunk_size", 0, "chunks must hold at least 1 token"));
        }
        if self.window == Some(0) {
            return Err(ConfigError::invalid(
                "attention.window",
                0,
                "a sliding window must hold at least 1 token; remove the key for no window",
            ));
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

    /// Whether Ω is trained: `learnable_omega`, or a map that is trained by definition (Hedgehog).
    pub fn omega_trained(&self) -> bool {
        self.learnable_omega || self.feature_map == FeatureMap::Hedgehog
    }

    /// The seed of layer `layer`'s Ω: layers must not share hidden neurons.
    pub fn layer_seed(&self, layer: usize) -> u64 {
        self.seed.wrapping_add((layer as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Builds the layer for `heads` heads of width `head_dim`; Ω is drawn from [`Self::layer_seed`].
    pub fn init(&self, heads: usize, head_dim: usize, layer: usize, device: &Device) -> AstrocyticAttention {
        let seed = self.layer_seed(layer);
        let mut omega =
            Tensor::<3>::from_data(sample_omega(heads, self.features, head_dim, self.orthogonal, seed), device);
        if self.feature_map == FeatureMap::Taylor {
            // A Johnson–Lindenstrauss projection: u_q·u_k ≈ q̃·k̃ at the start.
            omega = omega.div_scalar((self.features as f64).sqrt());
        }
        let omega = Param::from_tensor(omega).set_require_grad(self.omega_trained());
        let phase = self.feature_map.uses_phase().then(|| {
            let b = Tensor::<2>::from_data(sample_phase(heads, self.features, seed), device);
            Param::from_tensor(b).set_require_grad(false)
        });
        // Calibrated maps start as the positive map (ψ = 1, c = 0, A = 0) until calibrated.
        let fixed = |t: Tensor<2>| Param::from_tensor(t).set_require_grad(false);
        let calibrated = self.feature_map.is_calibrated();
        let log_psi = calibrated.then(|| fixed(Tensor::zeros([heads, head_dim], device)));
        let shift = calibrated.then(|| fixed(Tensor::zeros([heads, head_dim], device)));
        let gerf_a =
            calibrated.then(|| Param::from_tensor(Tensor::<1>::zeros([heads], device)).set_require_grad(false));
        // The full map starts unrotated (U = I).
        let rotation = (self.feature_map == FeatureMap::FullSaderf).then(|| {
            let eye = Tensor::<2>::eye(head_dim, device).unsqueeze_dim::<3>(0).repeat_dim(0, heads);
            Param::from_tensor(eye).set_require_grad(false)
        });
        AstrocyticAttention { omega, phase, log_psi, shift, gerf_a, rotation, config: self.clone() }
    }
}

/// Astrocytic attention: random-feature attention whose normaliser is the astrocyte response.
#[derive(Module, Debug)]
pub struct AstrocyticAttention {
    /// Hidden-neuron input weights Ω, `[heads, m, head_dim]` (saved; trained only if learnable).
    pub omega: Param<Tensor<3>>,
    /// Phases b of the cosine maps, `[heads, m]`.
    pub phase: Option<Param<Tensor<2>>>,
    /// Calibrated maps: ln ψ, `[heads, head_dim]` (the query side reads ψ ⊙ q̃, the key side (k̃ − c) / ψ).
    pub log_psi: Option<Param<Tensor<2>>>,
    /// Calibrated maps: the key shift c, `[heads, head_dim]`.
    pub shift: Option<Param<Tensor<2>>>,
    /// Calibrated maps: GERF's A per head, `[heads]`.
    pub gerf_a: Option<Param<Tensor<1>>>,
    /// The full map: the rotation U per head, `[heads, head_dim, head_dim]`; both sides read x̃ U
    /// (= Uᵀx̃), and ψ, c are in U's coordinates.
    pub rotation: Option<Param<Tensor<3>>>,
    #[module(skip)]
    config: AstrocyticConfig,
}

impl AstrocyticAttention {
    /// The layer's settings.
    pub fn config(&self) -> &AstrocyticConfig {
        &self.config
    }

    /// Tokens per chunk for values `v` `[batch, heads, seq, head_dim]`: the configured size, else
    /// the measured rule.
    fn chunk(&self, v: &Tensor<4>) -> usize {
        let [_, _, t, d] = v.dims();
        self.config.chunk_size.unwrap_or_else(|| kernel::auto_chunk(t, d))
    }

    /// One decoding token with the paper's positive map as a single fused operation that builds
    /// the hidden activity itself (`kernels::positive_decode_step`); `None` where it does not apply
    /// (other maps, several tokens, a backend without it): the state comes back and
    /// [`kernel::incremental`] runs instead.
    #[allow(clippy::result_large_err)] // the state comes back whole for the composed path
    fn positive_step(
        &self,
        q: &Tensor<4>,
        k: &Tensor<4>,
        v: &Tensor<4>,
        state: Option<AttentionState>,
    ) -> Result<(Tensor<4>, AttentionState), Option<AttentionState>> {
        use kernel::RecurrentState;
        if self.config.feature_map != FeatureMap::Positive || v.dims()[2] != 1 {
            return Err(state);
        }
        let state = match state {
            Some(AttentionState::Recurrent(s)) => s,
            None => RecurrentState::empty(v, self.config.features),
            other => return Err(other),
        };
        let (memory, tokens) = state.into_memory();
        match crate::kernels::positive_decode_step(q, k, v, &self.omega.val(), memory, self.config.decay) {
            Ok((y, memory)) => Ok((y, AttentionState::Recurrent(RecurrentState::from_memory(memory, tokens + 1)))),
            Err(memory) => Err(Some(AttentionState::Recurrent(RecurrentState::from_memory(memory, tokens)))),
        }
    }

    /// x̃ = x / D^{1/4} for `x` `[batch, heads, seq, head_dim]`.
    fn scaled(x: Tensor<4>) -> Tensor<4> {
        let dims = x.dims();
        let d = dims[3] as f64;
        // Per-head q and k arrive as a transposed view of the projections. flex scales a strided
        // tensor one index at a time, on one thread, in both passes (13 % of a Taylor-map training
        // step). Flattening first hands it a contiguous copy; a no-op for contiguous input.
        x.reshape([dims.iter().product::<usize>()]).mul_scalar(d.powf(-0.25)).reshape(dims)
    }

    /// A `[heads, head_dim]` parameter as `[1, heads, 1, head_dim]` in `like`'s dtype.
    fn per_head(p: &Param<Tensor<2>>, like: &Tensor<4>) -> Tensor<4> {
        p.val().cast(like.dtype()).unsqueeze_dim::<3>(1).unsqueeze_dim(0)
    }

    fn map_features(&self, x: Tensor<4>) -> Features {
        self.config.feature_map.features(
            x,
            self.omega.val(),
            self.phase.as_ref().map(|p| p.val()),
            self.gerf_a.as_ref().map(|a| a.val()),
        )
    }

    /// x̃ = x / D^{1/4}, rotated (x̃ U) for the full map: `[batch, heads, seq, head_dim]`.
    fn scaled_rotated(&self, x: Tensor<4>) -> Tensor<4> {
        let x = Self::scaled(x);
        match &self.rotation {
            Some(u) => {
                let u = u.val().cast(x.dtype()).unsqueeze_dim::<4>(0); //           [1,H,D,D]
                x.matmul(u)
            }
            None => x,
        }
    }

    /// Query-side hidden activity φ(ψ ⊙ Uᵀq / D^{1/4}) (ψ = 1, U = I for uncalibrated maps), `q`: `[batch, heads, seq, head_dim]`.
    pub(crate) fn query_features(&self, q: Tensor<4>) -> Features {
        let x = self.scaled_rotated(q);
        let x = match &self.log_psi {
            Some(lp) => {
                let psi = Self::per_head(lp, &x).exp();
                x * psi
            }
            None => x,
        };
        self.map_features(x)
    }

    /// Key-side hidden activity φ((Uᵀk / D^{1/4} − c) / ψ) (c = 0, ψ = 1, U = I for uncalibrated maps).
    pub(crate) fn key_features(&self, k: Tensor<4>) -> Features {
        let x = self.scaled_rotated(k);
        let x = match &self.shift {
            Some(c) => {
                let c = Self::per_head(c, &x);
                x - c
            }
            None => x,
        };
        let x = match &self.log_psi {
            Some(lp) => {
                let inv_psi = Self::per_head(lp, &x).neg().exp();
                x * inv_psi
            }
            None => x,
        };
        self.map_features(x)
    }

    /// log of the factor exp(q̃_t·c) that the key shift takes out of every score of query t,
    /// `[batch, heads, seq]` (`None` without a shift): the astrocyte estimates Z_t·exp(−q̃_t·c).
    fn shift_log_factor(&self, q: Tensor<4>) -> Option<Tensor<3>> {
        self.shift.as_ref().map(|c| {
            let x = self.scaled_rotated(q);
            let c = Self::per_head(c, &x);
            (x * c).sum_dim(3).squeeze_dim(3)
        })
    }

    fn input(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> KernelInput {
        KernelInput::new(self.query_features(q), self.key_features(k), v, mask.key_padding_column(), self.config.decay)
    }

    /// Fits the calibrated map's parameters (ψ, c, A; see [`calibration`]) in closed form to the
    /// statistics of `q`, `k` `[batch, heads, seq, head_dim]` (unscaled, as the layer receives them;
    /// `padding` `[batch, seq]` true = skipped). Other maps are returned unchanged. Returns the layer
    /// and the number of dimensions that fell back to ψ = 1 (only with `fallback`).
    pub fn calibrate(
        self,
        q: Tensor<4>,
        k: Tensor<4>,
        padding: Option<Tensor<2, Bool>>,
        layer: usize,
        fallback: bool,
    ) -> Result<(Self, usize), CalibrationError> {
        if !self.config.feature_map.is_calibrated() {
            return Ok((self, 0));
        }
        let mut stats = Vec::new();
        Self::accumulate(&mut stats, q, k, padding, layer)?;
        self.calibrate_from(&stats, layer, fallback)
    }

    /// Adds the statistics of `q`, `k` `[batch, heads, seq, head_dim]` (padding skipped) to `stats`
    /// (one entry per head, created on first use), so calibration data can arrive in batches.
    pub fn accumulate(
        stats: &mut Vec<HeadStats>,
        q: Tensor<4>,
        k: Tensor<4>,
        padding: Option<Tensor<2, Bool>>,
        layer: usize,
    ) -> Result<(), CalibrationError> {
        let dims = q.dims();
        let [_, heads, _, d] = dims;
        let host = |x: Tensor<4>| x.detach().into_data().convert::<f64>().try_to_vec::<f64>().unwrap_or_default();
        let (qh, kh) = (host(Self::scaled(q)), host(Self::scaled(k)));
        if qh.iter().chain(&kh).any(|x| !x.is_finite()) {
            return Err(CalibrationError::NotFinite { layer, what: "a query or key" });
        }
        let pad = padding.map(|p| p.into_data().try_to_vec::<bool>().unwrap_or_default());
        if stats.is_empty() {
            *stats = vec![HeadStats::new(d); heads];
        }
        calibration::accumulate(stats, &qh, &kh, dims, pad.as_deref());
        Ok(())
    }

    /// Sets ψ, c and A from accumulated statistics (see [`Self::accumulate`]).
    pub fn calibrate_from(
        self,
        stats: &[HeadStats],
        layer: usize,
        fallback: bool,
    ) -> Result<(Self, usize), CalibrationError> {
        if !self.config.feature_map.is_calibrated() {
            return Ok((self, 0));
        }
        let heads = stats.len();
        let d = stats.first().map_or(0, |s| s.q_sum.len());
        let (params, fallbacks) = calibration::closed_form(self.config.feature_map, stats, layer, fallback)?;
        if params.log_psi.iter().chain(&params.shift).chain(&params.gerf_a).any(|x| !x.is_finite()) {
            return Err(CalibrationError::NotFinite { layer, what: "a fitted parameter" });
        }
        Ok((self.with_map_params(&params, heads, d), fallbacks))
    }

    /// Replaces ψ, c, A and U (host values, `[heads, head_dim]`, `[heads, head_dim]`, `[heads]`,
    /// `[heads, head_dim, head_dim]` for the full map), keeping
    /// the parameters' ids and whether they are trained.
    pub fn with_map_params(mut self, params: &calibration::MapParams, heads: usize, d: usize) -> Self {
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        fn set<const D: usize>(p: Param<Tensor<D>>, data: TensorData) -> Param<Tensor<D>> {
            p.map(|old| Tensor::from_data(data, (&old.device(), old.dtype())))
        }
        self.log_psi = self.log_psi.map(|p| set(p, TensorData::new(f32s(&params.log_psi), [heads, d])));
        self.shift = self.shift.map(|p| set(p, TensorData::new(f32s(&params.shift), [heads, d])));
        self.gerf_a = self.gerf_a.map(|p| set(p, TensorData::new(f32s(&params.gerf_a), [heads])));
        if params.rotation.len() == heads * d * d {
            self.rotation = self.rotation.map(|p| set(p, TensorData::new(f32s(&params.rotation), [heads, d, d])));
        }
        self
    }

    /// The astrocyte's output alone (the fast path of `forward`), without the window.
    fn astrocyte_forward(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        let chunk = self.chunk(&v);
        // The paper's map: the hidden activity is built inside the fused operation (and rebuilt
        // in its backward), never materialised as [B,H,T,m].
        if self.config.feature_map == FeatureMap::Positive
            && self.config.form == ExecutionForm::Fast
            && mask.key_padding.is_none()
            && let Some(y) = crate::kernels::positive_kernelised_attention(
                &q,
                &k,
                &v,
                &self.omega.val(),
                chunk,
                self.config.decay,
                mask.causal,
            )
        {
            return y;
        }
        // The Taylor map: the kernel takes the projections u = Ωx̃ `[B,H,T,r]` and builds the
        // 1 + r + r(r+1)/2 features itself (and again in its backward); the product Ωx̃ stays a
        // Burn operation, so Ω's gradient comes from autodiff.
        if self.config.feature_map == FeatureMap::Taylor
            && self.config.form == ExecutionForm::Fast
            && mask.key_padding.is_none()
            && crate::kernels::kernelised_supported(&q)
        {
            let omega = self.omega.val();
            let uq = projections(Self::scaled(q.clone()), omega.clone()); //    [B,H,T,r]
            let uk = projections(Self::scaled(k.clone()), omega); //             [B,H,T,r]
            let options = crate::kernels::KernelisedOptions {
                chunk,
                decay: self.config.decay,
                map: crate::kernels::KernelMap::Taylor,
                causal: mask.causal,
            };
            if let Ok(y) = crate::kernels::kernelised_attention(uq, uk, v.clone(), options) {
                return y;
            }
        }
        kernel::forward(self.config.form, self.input(q, k, v, mask), mask.causal, chunk)
    }

    /// The astrocyte's part of `forward_incremental` (the fused step where it applies).
    fn astrocyte_incremental(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        state: Option<AttentionState>,
    ) -> (Tensor<4>, AttentionState) {
        let state = match self.positive_step(&q, &k, &v, state) {
            Ok(done) => return done,
            Err(state) => state,
        };
        let chunk = self.chunk(&v);
        kernel::incremental(self.input(q, k, v, &AttentionMask::causal()), chunk, state)
    }

    /// The sliding window's output for `q`, `k`, `v` `[batch, heads, seq, ·]` (banded form), if
    /// the layer has a window.
    fn window_part(&self, q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, mask: &AttentionMask) -> Option<Tensor<4>> {
        self.config.window.map(|w| {
            window::window_attention(q.clone(), k.clone(), v.clone(), w, mask.causal, mask.key_padding.clone())
        })
    }

    /// `y` plus the window's output, if any.
    fn plus(y: Tensor<4>, window: Option<Tensor<4>>) -> Tensor<4> {
        match window {
            Some(w) => y + w,
            None => y,
        }
    }

    /// The explicit network, token by token (see [`kernel::mechanistic`]).
    pub fn forward_mechanistic(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        let window = self.window_part(&q, &k, &v, mask);
        Self::plus(kernel::mechanistic(self.input(q, k, v, mask), mask.causal, None).0, window)
    }

    /// Bidirectional parallel form φ(Q)(φ(K)ᵀV) / φ(Q)(φ(K)ᵀ1), ignoring `mask.causal`.
    pub fn forward_parallel(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        let bidirectional = AttentionMask { causal: false, ..mask.clone() };
        let window = self.window_part(&q, &k, &v, &bidirectional);
        Self::plus(kernel::parallel(self.input(q, k, v, mask)), window)
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
        let causal = AttentionMask { causal: true, ..mask.clone() };
        let window = self.window_part(&q, &k, &v, &causal);
        Self::plus(kernel::chunked(self.input(q, k, v, mask), chunk, None).0, window)
    }
}

impl InnerAttention for AstrocyticAttention {
    fn forward(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        let window = self.window_part(&q, &k, &v, mask);
        let y = self.astrocyte_forward(q, k, v, mask);
        Self::plus(y, window)
    }

    fn forward_reference(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        let window = self.config.window.map(|w| {
            window::window_reference(q.clone(), k.clone(), v.clone(), w, mask.causal, mask.key_padding.clone())
        });
        Self::plus(kernel::quadratic(self.input(q, k, v, mask), mask.causal).output, window)
    }

    fn forward_incremental(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        state: Option<AttentionState>,
    ) -> (Tensor<4>, AttentionState) {
        let Some(w) = self.config.window else {
            return self.astrocyte_incremental(q, k, v, state);
        };
        let (memory, cache) = match state {
            None => (None, None),
            Some(AttentionState::Windowed(memory, cache)) => (Some(AttentionState::Recurrent(memory)), cache),
            Some(_) => panic!("windowed astrocytic attention was given a state without its window"),
        };
        let (y_window, cache) = window::window_incremental(q.clone(), k.clone(), v.clone(), w, cache);
        let (y, memory) = self.astrocyte_incremental(q, k, v, memory);
        let AttentionState::Recurrent(memory) = memory else { unreachable!("the astrocyte keeps a recurrent state") };
        (y + y_window, AttentionState::Windowed(memory, cache))
    }

    fn attention_weights(&self, q: Tensor<4>, k: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        let like = q.clone();
        let window = self
            .config
            .window
            .map(|w| window::window_probabilities(q.clone(), k.clone(), w, mask.causal, mask.key_padding.clone()));
        let weights = kernel::weights(self.query_features(q), self.key_features(k), &like, mask, self.config.decay);
        Self::plus(weights, window)
    }

    fn normalisers(&self, q: Tensor<4>, k: Tensor<4>, mask: &AttentionMask) -> NormaliserTrace {
        let mut trace = kernel::normalisers(
            self.query_features(q.clone()),
            self.key_features(k.clone()),
            q.clone(),
            k,
            mask,
            self.config.decay,
        );
        // The shifted map estimates Z_t·exp(−q̃_t·c): multiply the factor back for comparisons with Z_t.
        if let Some(f) = self.shift_log_factor(q) {
            trace.astrocyte_log = trace.astrocyte_log.map(|log| log + f);
        }
        trace
    }

    fn state_floats(&self, heads: usize, head_dim: usize, context: usize) -> usize {
        let m = self.config.feature_map.width(self.config.features);
        // The window keeps the keys and values of the last W − 1 tokens.
        let window = self.config.window.map_or(0, |w| w.saturating_sub(1).min(context));
        heads * (head_dim * m + m + 1 + 2 * window * head_dim)
    }
}
