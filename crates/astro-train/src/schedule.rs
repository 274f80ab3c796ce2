//! Learning-rate schedule: linear warmup, then cosine decay to `min_lr`, then constant.
//!
//! Written out (rather than Burn's stateful schedulers) because it must equal nanoGPT's `get_lr`
//! step for step and, being a pure function of the step, needs no state in checkpoints.

/// Learning rate of 0-based step `it` (nanoGPT's `get_lr(it)`).
pub fn learning_rate(it: usize, lr: f64, min_lr: f64, warmup: usize, decay_iters: usize) -> f64 {
    if it < warmup {
        return lr * (it + 1) as f64 / (warmup + 1) as f64;
    }
    if it > decay_iters {
        return min_lr;
    }
    let span = decay_iters.saturating_sub(warmup).max(1) as f64;
    let ratio = (it - warmup) as f64 / span;
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
    min_lr + coeff * (lr - min_lr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_nanogpt_get_lr() {
        let f = |it| learning_rate(it, 1e-3, 1e-4, 100, 2000);
        assert!((f(0) - 1e-3 / 101.0).abs() < 1e-15);
        assert!((f(99) - 1e-3 * 100.0 / 101.0).abs() < 1e-15);
        assert!((f(100) - 1e-3).abs() < 1e-15);
        assert!((f(1050) - 5.5e-4).abs() < 1e-12); // halfway: min + (max − min)/2
        assert!((f(2000) - 1e-4).abs() < 1e-15);
        assert_eq!(f(2500), 1e-4);
    }
}
