//! Optimiser construction and global gradient-norm clipping.

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

use crate::config::RunConfig;

/// Ids of parameters with fewer than two dimensions (biases, norms): no weight decay (nanoGPT).
#[derive(Default)]
struct NoDecay(Vec<ParamId>);

impl ModuleVisitor for NoDecay {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if D < 2 {
            self.0.push(param.id);
        }
    }
}

/// AdamW in two groups: decoupled weight decay on matrices and embeddings, none on biases and
/// norm gains. Build it after loading weights: groups and state are keyed by parameter id.
pub fn optimizer<M: Module>(config: &RunConfig, model: &M) -> ModuleOptimizer {
    let o = &config.optim;
    let adamw = |wd: f64| {
        AdamWConfig::new()
            .with_beta_1(o.beta1 as f32)
            .with_beta_2(o.beta2 as f32)
            .with_epsilon(o.eps as f32)
            .with_weight_decay(wd as f32)
    };
    let mut no_decay = NoDecay::default();
    model.visit(&mut no_decay);
    let optim = adamw(o.weight_decay).init();
    if no_decay.0.is_empty() {
        optim
    } else {
        optim.with_group(ParamGroup::from_ids(no_decay.0), adamw(0.0).build(), None)
    }
}

/// Σ‖g‖² over all gradients (one device scalar).
struct GradNormSq<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for GradNormSq<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

/// Multiplies every gradient by `scale`.
struct GradScale<'a> {
    grads: &'a mut GradientsParams,
    scale: f64,
}

impl ModuleVisitor for GradScale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.scale));
        }
    }
}

/// Clips the global gradient norm to `max_norm` like `torch.nn.utils.clip_grad_norm_` (Burn's own
/// clipping is per tensor); returns the norm before clipping.
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut norm = GradNormSq { grads, sum: None };
    model.visit(&mut norm);
    let total = norm.sum.map_or(0.0, |s| s.into_scalar::<f64>().sqrt());
    let scale = max_norm / (total + 1e-6);
    if max_norm > 0.0 && scale < 1.0 {
        model.visit(&mut GradScale { grads, scale });
    }
    total
}
