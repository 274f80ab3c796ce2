//! Exact softmax attention: a plainly written reference path and Burn's fused kernel.

use burn::module::Module;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use super::{AttentionMask, AttentionState, InnerAttention, NormaliserTrace};

/// Settings of exact softmax attention (none yet; a table keeps the config shape uniform).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftmaxConfig {}

impl SoftmaxConfig {
    /// Builds the (parameter-free) variant.
    pub fn init(&self) -> SoftmaxAttention {
        SoftmaxAttention {}
    }
}

/// softmax(q·kᵀ/√D)·v.
#[derive(Module, Debug)]
pub struct SoftmaxAttention {}

/// Keys and values of every token seen so far, `[batch, heads, seq, dim]`.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Keys, `[batch, heads, seq, head_dim]`.
    pub keys: Tensor<4>,
    /// Values, `[batch, heads, seq, value_dim]`.
    pub values: Tensor<4>,
}

/// Boolean mask `[batch, heads, seq_q, seq_k]`, true where query t must not read key τ
/// (future keys when causal, aligned bottom-right so that the last query sees every key; padding).
pub(crate) fn blocked(q: &Tensor<4>, k: &Tensor<4>, mask: &AttentionMask) -> Option<Tensor<4, Bool>> {
    let [b, h, tq, _] = q.dims();
    let tk = k.dims()[2];
    let device = q.device();
    let causal = mask.causal.then(|| {
        // `tril_mask(offset)` is true where τ > t + offset: the keys after query t (offset tk − tq).
        Tensor::<2, Bool>::tril_mask([tq, tk], tk as i64 - tq as i64, &device)
            .unsqueeze_dim::<3>(0)
            .unsqueeze_dim::<4>(0)
            .expand([b, h, tq, tk])
    });
    let padding =
        mask.key_padding.clone().map(|p| p.unsqueeze_dim::<3>(1).unsqueeze_dim::<4>(1).expand([b, h, tq, tk]));
    match (causal, padding) {
        (Some(c), Some(p)) => Some(c.bool_or(p)),
        (c, p) => c.or(p),
    }
}

/// Scaled scores q·kᵀ/√D with blocked entries at −∞: `[batch, heads, seq_q, seq_k]`.
fn scores(q: Tensor<4>, k: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
    let d = q.dims()[3] as f64;
    let blocked = blocked(&q, &k, mask);
    let scores = q.matmul(k.swap_dims(2, 3)).div_scalar(d.sqrt()); // [B,H,Tq,Tk]
    match blocked {
        Some(b) => scores.mask_fill(b, f64::NEG_INFINITY),
        None => scores,
    }
}

/// Row maxima of scores, with rows that block every key held at 0 instead of −∞: `[B,H,Tq,1]`.
fn row_max(scores: &Tensor<4>) -> Tensor<4> {
    let max = scores.clone().max_dim(3);
    max.clone().mask_fill(max.is_inf(), 0.0)
}

/// log Σ_τ exp(q_t·k_τ/√D) over the readable keys, `[batch, heads, seq]` — the normaliser the
/// astrocyte response estimates.
pub fn log_normaliser(q: Tensor<4>, k: Tensor<4>, mask: &AttentionMask) -> Tensor<3> {
    let scores = scores(q, k, mask); //                    [B,H,T,T]
    let max = row_max(&scores); //                         [B,H,T,1]
    let sum = (scores - max.clone()).exp().sum_dim(3); //  [B,H,T,1]
    (sum.log() + max).squeeze_dim::<3>(3)
}

impl SoftmaxAttention {
    /// The specification, nanoGPT style: weights = softmax(q·kᵀ/√D) with blocked keys at −∞.
    /// `q`, `k`: `[B,H,Tq|Tk,D]` → `[B,H,Tq,Tk]`.
    pub fn weights(&self, q: Tensor<4>, k: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        let scores = scores(q, k, mask); //                     [B,H,Tq,Tk]
        let max = row_max(&scores); //                          [B,H,Tq,1]
        let e = (scores - max).exp(); //                        [B,H,Tq,Tk] (0 where blocked)
        let sum = e.clone().sum_dim(3).clamp_min(f32::MIN_POSITIVE as f64); // [B,H,Tq,1]
        e / sum
    }

    fn fused(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        if mask.key_padding.is_none() && q.dims()[2] == k.dims()[2] {
            // One sequence, no padding: one operation with a fused backward (on flex).
            return crate::kernels::fused_attention(q, k, v, mask.causal);
        }
        let padding = mask.key_padding.as_ref().map(|_| {
            blocked(&q, &k, &AttentionMask { causal: false, key_padding: mask.key_padding.clone() })
                .expect("padding mask present")
        });
        let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: mask.causal };
        attention(q, k, v, padding, None, options)
    }
}

impl InnerAttention for SoftmaxAttention {
    fn forward(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        self.fused(q, k, v, mask)
    }

    fn forward_reference(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        self.weights(q, k, mask).matmul(v) // [B,H,Tq,Tk] @ [B,H,Tk,Dv] -> [B,H,Tq,Dv]
    }

    fn forward_incremental(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        state: Option<AttentionState>,
    ) -> (Tensor<4>, AttentionState) {
        let cache = match state {
            None => KvCache { keys: k, values: v },
            Some(AttentionState::KvCache(c)) => KvCache {
                keys: Tensor::cat(vec![c.keys, k], 2),     // [B,H,T+Tn,D]
                values: Tensor::cat(vec![c.values, v], 2), // [B,H,T+Tn,Dv]
            },
            Some(AttentionState::Recurrent(_) | AttentionState::Windowed(..)) => {
                panic!("softmax attention was given a recurrent state")
            }
        };
        // New queries are the last Tn positions; the causal mask is aligned bottom-right.
        let out = self.fused(q, cache.keys.clone(), cache.values.clone(), &AttentionMask::causal());
        (out, AttentionState::KvCache(cache))
    }

    fn attention_weights(&self, q: Tensor<4>, k: Tensor<4>, mask: &AttentionMask) -> Tensor<4> {
        self.weights(q, k, mask)
    }

    fn normalisers(&self, q: Tensor<4>, k: Tensor<4>, mask: &AttentionMask) -> NormaliserTrace {
        NormaliserTrace { softmax_log: log_normaliser(q, k, mask), astrocyte_log: None, astrocyte_sign: None }
    }

    fn state_floats(&self, heads: usize, head_dim: usize, context: usize) -> usize {
        2 * heads * head_dim * context
    }
}
