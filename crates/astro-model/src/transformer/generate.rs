//! Autoregressive sampling from a language model with incremental decoding: astrocytic and linear
//! attention continue from their constant-size (H, p) memory, softmax from a KV cache. When learned
//! positions run out, the context is cropped to the last `block_size` tokens and re-encoded
//! (nanoGPT's behaviour) by one parallel forward that scores only the last position.

use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::lm::{DecodeState, LanguageModel};
use crate::error::ModelError;

/// How next tokens are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature (0 = greedy).
    pub temperature: f64,
    /// Keep only the k most likely tokens (None = all).
    pub top_k: Option<usize>,
    /// Seed of the sampling RNG.
    pub seed: u64,
}

impl Default for SamplingConfig {
    /// nanoGPT's `sample.py` defaults: temperature 0.8, top-k 200.
    fn default() -> Self {
        Self { temperature: 0.8, top_k: Some(200), seed: 1337 }
    }
}

/// Draws one token from `logits` (one row) with temperature and top-k.
pub fn sample_token(logits: &[f32], config: &SamplingConfig, rng: &mut ChaCha8Rng) -> u32 {
    let argmax = || {
        logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &l)| if l > best.1 { (i, l) } else { best }).0
            as u32
    };
    if config.temperature <= 0.0 {
        return argmax();
    }
    let mut scaled: Vec<(usize, f64)> =
        logits.iter().enumerate().map(|(i, &l)| (i, l as f64 / config.temperature)).collect();
    if let Some(k) = config.top_k.filter(|&k| k > 0 && k < scaled.len()) {
        scaled.sort_by(|a, b| b.1.total_cmp(&a.1));
        scaled.truncate(k);
    }
    let max = scaled.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scaled.iter().map(|x| (x.1 - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    if !total.is_finite() || total <= 0.0 {
        return argmax();
    }
    let mut u = rng.random::<f64>() * total;
    for (w, (i, _)) in weights.iter().zip(&scaled) {
        u -= w;
        if u <= 0.0 {
            return *i as u32;
        }
    }
    scaled.last().map_or(0, |x| x.0 as u32)
}

/// Generates `max_new` tokens after `prompt` (non-empty), calling `on_token` with each new token as
/// it is produced; returns the new tokens.
pub fn generate(
    model: &LanguageModel,
    prompt: &[u32],
    max_new: usize,
    config: &SamplingConfig,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>, ModelError> {
    if prompt.is_empty() {
        return Err(
            crate::error::ConfigError::invalid("prompt", "\"\"", "generation needs at least one prompt token").into()
        );
    }
    let device = model.trunk.wte.weight.val().device();
    let limit = model.trunk.max_positions().unwrap_or(usize::MAX);
    let window = model.config().block_size.min(limit);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut context: Vec<u32> = prompt.to_vec();
    let mut out = Vec::with_capacity(max_new);
    let as_tensor = |ids: &[u32]| {
        let data: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        Tensor::<2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &device)
    };
    // Encode the (cropped) prompt once.
    let start = context.len().saturating_sub(window);
    let (mut logits, mut state) = model.forward_incremental(as_tensor(&context[start..]), DecodeState::default())?;
    for _ in 0..max_new {
        let [_, t, v] = logits.dims();
        let last: Vec<f32> =
            logits.narrow(1, t - 1, 1).reshape([v]).into_data().try_into_vec_as::<f32>().unwrap_or_default();
        let token = sample_token(&last, config, &mut rng);
        on_token(token);
        out.push(token);
        context.push(token);
        if state.position + 1 > limit {
            // Positions exhausted: the last `window` tokens through one parallel forward (the fused
            // kernels; no decoding state is built, since the next token re-encodes again), logits
            // of the last position only. `state` keeps its exhausted position.
            let start = context.len() - window;
            logits = model.last_logits(as_tensor(&context[start..]));
        } else {
            (logits, state) = model.forward_incremental(as_tensor(&[token]), state)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_k_sampling() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let logits = [0.1, 3.0, 0.2, 2.9];
        let greedy = SamplingConfig { temperature: 0.0, top_k: None, seed: 0 };
        assert_eq!(sample_token(&logits, &greedy, &mut rng), 1);
        let top2 = SamplingConfig { temperature: 1.0, top_k: Some(2), seed: 0 };
        for _ in 0..200 {
            let t = sample_token(&logits, &top2, &mut rng);
            assert!(t == 1 || t == 3, "top-2 keeps tokens 1 and 3, got {t}");
        }
    }
}
