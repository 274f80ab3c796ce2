//! Parameter and decoding-state accounting, as printed by `astro info`.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::transformer::LanguageModel;

/// Parameters of one module path.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    /// Dotted module path, e.g. `trunk.blocks.0.attn.q_proj`.
    pub path: String,
    /// Trainable parameters under it.
    pub trainable: usize,
    /// Saved but frozen parameters (a fixed Ω).
    pub frozen: usize,
}

#[derive(Default)]
struct Collector {
    stack: Vec<String>,
    groups: Vec<ParamGroup>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // Group by the module that owns the parameter (drop the parameter's own name).
        let owner = self.stack[..self.stack.len().saturating_sub(1)].join(".");
        let n = param.lazy_shape().num_elements();
        let trainable = param.val().is_require_grad();
        let group = match self.groups.iter_mut().find(|g| g.path == owner) {
            Some(g) => g,
            None => {
                self.groups.push(ParamGroup { path: owner, trainable: 0, frozen: 0 });
                self.groups.last_mut().expect("just pushed")
            }
        };
        if trainable {
            group.trainable += n;
        } else {
            group.frozen += n;
        }
    }
}

/// Parameters per owning module, in visiting order (trainable = tracked by autodiff).
pub fn parameter_groups<M: Module>(module: &M) -> Vec<ParamGroup> {
    let mut c = Collector::default();
    module.visit(&mut c);
    c.groups
}

/// What `astro info` reports about a language model.
#[derive(Debug, Clone)]
pub struct ModelReport {
    /// Per-module parameter counts.
    pub groups: Vec<ParamGroup>,
    /// Total trainable parameters.
    pub trainable: usize,
    /// Total frozen (saved, not trained) parameters.
    pub frozen: usize,
    /// Decoding state per sequence (floats, all layers) after `context` tokens, for each context given.
    pub state_floats: Vec<(usize, usize)>,
}

/// Counts parameters and decoding state of `model` for the given context lengths. The trainable /
/// frozen split is read from gradient tracking, so build `model` on an autodiff device.
pub fn report(model: &LanguageModel, contexts: &[usize]) -> ModelReport {
    use crate::attention::InnerAttention;
    let groups = parameter_groups(model);
    let trainable = groups.iter().map(|g| g.trainable).sum();
    let frozen = groups.iter().map(|g| g.frozen).sum();
    let config = model.config();
    let state_floats = contexts
        .iter()
        .map(|&ctx| {
            let per_layer: usize = model
                .trunk
                .blocks
                .iter()
                .map(|b| {
                    // The short convolutions keep the q | k | v projections of the last K − 1 tokens.
                    let conv = b.attn.conv.as_ref().map_or(0, |c| 3 * config.n_embd * (c.kernel() - 1));
                    b.attn.inner.state_floats(config.n_head, config.head_dim(), ctx) + conv
                })
                .sum();
            (ctx, per_layer)
        })
        .collect();
    ModelReport { groups, trainable, frozen, state_floats }
}
