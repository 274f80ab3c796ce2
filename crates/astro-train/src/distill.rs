//! Astrocyte plasticity: fitting one astrocytic layer's hidden-neuron weights so that its attention
//! matches softmax's, without touching the model's other weights.
//!
//! In the spirit of Hedgehog (Zhang, Bhatia, Kumbong & Ré, "The Hedgehog & the Porcupine:
//! Expressive Linear Attentions with Softmax Mimicry", ICLR 2024): per layer, on the softmax
//! model's own queries and keys, minimise the cross-entropy between softmax's attention rows p_t and
//! the astrocytic rows w_t = φ_q(q̃_t)·φ_k(k̃_τ) / Σ_τ' φ_q(q̃_t)·φ_k(k̃_τ'), i.e. the KL divergence
//! KL(p_t ‖ w_t) averaged over queries. Trained: Ω and, for the calibrated maps, ψ, the key shift c
//! and the full map's U (started from their closed form); A stays at its closed-form value. Fitted layers are no longer
//! unbiased random-feature estimators: they are learned kernels, and held-out data is what tells.

use astro_model::attention::{AstrocyticAttention, AttentionMask, InnerAttention, SoftmaxConfig};
use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use serde::Serialize;

use crate::error::TrainError;

/// Settings of a layer fit.
#[derive(Debug, Clone)]
pub struct DistillOptions {
    /// Adam steps.
    pub steps: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Sequences per step (drawn in turn from the fitting set).
    pub batch: usize,
}

impl Default for DistillOptions {
    fn default() -> Self {
        Self { steps: 300, lr: 5e-3, batch: 16 }
    }
}

/// Queries and keys of one layer, `[batch, heads, seq, head_dim]` each, with their mask.
#[derive(Debug, Clone)]
pub struct AttentionInputs {
    /// Queries.
    pub q: Tensor<4>,
    /// Keys.
    pub k: Tensor<4>,
    /// What each query reads.
    pub mask: AttentionMask,
}

/// What one layer's fit achieved: KL(softmax ‖ astrocytic) in nats per query, mean over heads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerFit {
    /// Block index.
    pub layer: usize,
    /// On the fitting data, before.
    pub fit_before: f64,
    /// On the fitting data, after.
    pub fit_after: f64,
    /// On held-out data, before.
    pub held_out_before: f64,
    /// On held-out data, after.
    pub held_out_after: f64,
    /// The step whose layer was kept (early stopping; `steps` without it, 0 = the starting point).
    pub best_step: usize,
}

/// Mean over queries of KL(p_t ‖ w_t), as a `[1]` tensor (differentiable in `attn`'s parameters).
/// Padded keys carry p = 0 and are skipped; padded queries are counted like the others.
pub fn attention_kl(attn: &AstrocyticAttention, inputs: &AttentionInputs) -> Tensor<1> {
    let p = SoftmaxConfig::default().init().attention_weights(inputs.q.clone(), inputs.k.clone(), &inputs.mask);
    let p = p.detach(); //                                                       [B,H,T,T]
    let w = attn.attention_weights(inputs.q.clone(), inputs.k.clone(), &inputs.mask); // [B,H,T,T]
    let [b, h, t, _] = p.dims();
    let log_ratio = p.clone().clamp_min(1e-30).log() - w.clamp_min(1e-30).log();
    (p * log_ratio).sum().div_scalar((b * h * t) as f64)
}

fn kl_value(attn: &AstrocyticAttention, batches: &[AttentionInputs]) -> f64 {
    let total: f64 = batches.iter().map(|x| attention_kl(attn, x).into_scalar::<f64>()).sum();
    total / batches.len().max(1) as f64
}

/// Splits `[B, …]` inputs into batches of `size` sequences.
fn batches_of(inputs: &AttentionInputs, size: usize) -> Vec<AttentionInputs> {
    let b = inputs.q.dims()[0];
    (0..b)
        .step_by(size.max(1))
        .map(|start| {
            let len = size.min(b - start);
            AttentionInputs {
                q: inputs.q.clone().narrow(0, start, len),
                k: inputs.k.clone().narrow(0, start, len),
                mask: AttentionMask {
                    causal: inputs.mask.causal,
                    key_padding: inputs.mask.key_padding.clone().map(|p| p.narrow(0, start, len)),
                },
            }
        })
        .collect()
}

/// Fits `attn` (layer `layer`) to softmax on `fit`, reporting the KL on `fit` and `held_out` before
/// and after. Ω, ψ and c are trained; the returned layer is on `device` without autodiff, with those
/// parameters fixed again. A non-finite loss stops the fit with an error naming the step.
pub fn distill_layer(
    attn: AstrocyticAttention,
    layer: usize,
    fit: &AttentionInputs,
    held_out: &AttentionInputs,
    options: &DistillOptions,
    device: &Device,
) -> Result<(AstrocyticAttention, LayerFit), TrainError> {
    let schedule = FitSchedule { eval_every: 0, report_batches: usize::MAX };
    distill_layer_batches(
        attn,
        layer,
        &batches_of(fit, options.batch),
        &batches_of(held_out, options.batch),
        options,
        &schedule,
        device,
    )
}

/// When [`distill_layer_batches`] measures held-out KL and on how much data it reports.
#[derive(Debug, Clone)]
pub struct FitSchedule {
    /// Measure the held-out KL every this many steps and keep the best layer seen (early
    /// stopping); 0: keep the last.
    pub eval_every: usize,
    /// The KLs before and after (and early stopping's) are measured on at most this many batches
    /// of each set.
    pub report_batches: usize,
}

/// [`distill_layer`] on ready-made batches (each step takes the next fitting batch in turn), with
/// early stopping on the held-out batches as `schedule` says.
pub fn distill_layer_batches(
    attn: AstrocyticAttention,
    layer: usize,
    fit_batches: &[AttentionInputs],
    held_batches: &[AttentionInputs],
    options: &DistillOptions,
    schedule: &FitSchedule,
    device: &Device,
) -> Result<(AstrocyticAttention, LayerFit), TrainError> {
    // Evenly spaced batches (inputs sorted by length are then represented at every length).
    let spread = |b: &[AttentionInputs]| -> Vec<AttentionInputs> {
        let n = b.len().min(schedule.report_batches).max(1).min(b.len());
        (0..n).map(|i| b[i * b.len() / n].clone()).collect()
    };
    let (fit_report, held_report) = (&spread(fit_batches)[..], &spread(held_batches)[..]);
    let (fit_before, held_out_before) = (kl_value(&attn, fit_report), kl_value(&attn, held_report));
    let ad = device.clone().autodiff();
    let mut best: Option<(f64, usize, AstrocyticAttention)> =
        (schedule.eval_every > 0).then(|| (held_out_before, 0, attn.clone()));
    let mut model = attn.fork(&ad);
    // Fresh tracked leaves on the autodiff device (ids kept) for the trained parameters.
    fn tracked<const D: usize>(p: Param<Tensor<D>>, ad: &Device) -> Param<Tensor<D>> {
        Param::initialized(p.id, Tensor::from_data(p.val().into_data(), ad).set_require_grad(true))
    }
    model.omega = tracked(model.omega, &ad);
    model.log_psi = model.log_psi.map(|p| tracked(p, &ad));
    model.shift = model.shift.map(|p| tracked(p, &ad));
    model.rotation = model.rotation.map(|p| tracked(p, &ad));
    let to_ad = |x: &AttentionInputs| AttentionInputs {
        q: x.q.clone().to_device(&ad),
        k: x.k.clone().to_device(&ad),
        mask: AttentionMask {
            causal: x.mask.causal,
            key_padding: x.mask.key_padding.clone().map(|p| p.to_device(&ad)),
        },
    };
    // Back to plain, fixed parameters on `device`.
    fn fixed<const D: usize>(p: Param<Tensor<D>>, device: &Device) -> Param<Tensor<D>> {
        Param::initialized(p.id, Tensor::from_data(p.val().into_data(), device)).set_require_grad(false)
    }
    let plain = |model: &AstrocyticAttention| {
        let mut fitted = model.valid().fork(device);
        fitted.omega = fixed(fitted.omega, device);
        fitted.log_psi = fitted.log_psi.map(|p| fixed(p, device));
        fitted.shift = fitted.shift.map(|p| fixed(p, device));
        fitted.rotation = fitted.rotation.map(|p| fixed(p, device));
        fitted
    };
    let mut optim = AdamConfig::new().init();
    for step in 0..options.steps {
        let batch = to_ad(&fit_batches[step % fit_batches.len()]);
        let loss = attention_kl(&model, &batch);
        let value = loss.clone().into_scalar::<f64>();
        if !value.is_finite() {
            return Err(TrainError::DistillNonFinite { layer, step, loss: value });
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(options.lr, model, grads);
        let done = step + 1;
        if let Some((best_kl, best_step, best_layer)) = best.as_mut()
            && (done % schedule.eval_every == 0 || done == options.steps)
        {
            let current = plain(&model);
            let kl = kl_value(&current, held_report);
            if kl < *best_kl {
                (*best_kl, *best_step, *best_layer) = (kl, done, current);
            }
        }
    }
    let (fitted, best_step) = match best {
        Some((_, step, layer)) => (layer, step),
        None => (plain(&model), options.steps),
    };
    let report = LayerFit {
        layer,
        fit_before,
        fit_after: kl_value(&fitted, fit_report),
        held_out_before,
        held_out_after: kl_value(&fitted, held_report),
        best_step,
    };
    Ok((fitted, report))
}
