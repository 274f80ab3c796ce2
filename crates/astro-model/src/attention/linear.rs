//! elu+1 linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"): the same kernelised
//! forms as the astrocytic layer with the deterministic map φ(x) = elu(x) + 1 on the raw head vectors.

use burn::module::Module;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::feature_map::elu_plus_one;
use super::kernel::{self, ExecutionForm, KernelInput};
use super::{AttentionMask, AttentionState, InnerAttention, NormaliserTrace};
use crate::error::ConfigError;
use crate::kernels::{KernelMap, KernelisedOptions, kernelised_attention};

/// Settings of elu+1 linear attention.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearConfig {
    /// Tokens per chunk in the causal chunked form; unset: [`crate::attention::auto_chunk`] (measured rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<usize>,
}

impl LinearConfig {
    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.chunk_size == Some(0) {
            return Err(ConfigError::invalid("attention.chunk_size", 0, "chunks must hold at least 1 token"));
        }
        Ok(())
    }

    /// Builds the (parameter-free) variant.
    pub fn init(&self) -> LinearAttention {
        LinearAttention { chunk_size: self.chunk_size }
    }
}

/// elu+1 linear attention.
#[derive(Module, Debug)]
pub struct LinearAttention {
    #[module(skip)]
    chunk_size: Option<usize>,
}

impl LinearAttention {
    /// Tokens per chunk for values `v` `[batch, heads, seq, head_dim]` (elu+1 has m = head_dim features).
    fn chunk(&self, v: &Tensor<4>) -> usize {
        let [_, _, t, d] = v.dims();
        self.chunk_size.unwrap_or_else(|| kernel::auto_chunk(t, d))
    }

    fn input(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> KernelInput {
        KernelInput::new(elu_plus_one(q), elu_plus_one(k), v, mask.key_padding_column(), 1.0)
    }
}

impl InnerAttention for LinearAttention {
    fn forward(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        // The fused operation computes elu(x) + 1 itself, chunk by chunk (flex, f32, no padding).
        let chunk = self.chunk(&v);
        let (q, k, v) = if mask.key_padding.is_none() {
            let options = KernelisedOptions { chunk, decay: 1.0, map: KernelMap::EluPlusOne, causal: mask.causal };
            match kernelised_attention(q, k, v, options) {
                Ok(y) => return y,
                Err(inputs) => inputs,
            }
        } else {
            (q, k, v)
        };
        kernel::forward(ExecutionForm::Fast, self.input(q, k, v, mask), mask.causal, chunk)
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
        let chunk = self.chunk(&v);
        kernel::incremental(self.input(q, k, v, &AttentionMask::causal()), chunk, state)
    }

    fn attention_weights(&self, q: Tensor<4>, k: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        let like = q.clone();
        kernel::weights(elu_plus_one(q), elu_plus_one(k), &like, mask, 1.0)
    }

    fn normalisers(&self, q: Tensor<4>, k: Tensor<4>, mask: &AttentionMask) -> NormaliserTrace {
        kernel::normalisers(elu_plus_one(q.clone()), elu_plus_one(k.clone()), q, k, mask, 1.0)
    }

    fn state_floats(&self, heads: usize, head_dim: usize, _context: usize) -> usize {
        heads * (head_dim * head_dim + head_dim + 1)
    }
}
