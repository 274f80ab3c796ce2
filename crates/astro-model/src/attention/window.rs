//! Exact softmax attention over a short sliding window, the local half of Based's hybrid
//! (Arora et al. 2024): beside the astrocyte, each query also reads the last W keys exactly.
//!
//! The astrocytic layer adds this output to its own (`attention.window = W`); both are normalised
//! separately, as Based sums its linear-attention and sliding-window layers. Causal: query t reads
//! keys t − W + 1 ..= t; bidirectional (encoders): keys within distance W − 1 on either side.
//!
//! Two forms of the same function: [`window_reference`] masks the full `[T, T]` score matrix (the
//! specification), [`window_attention`] builds only the `[T, W]` band from shifted copies of k and
//! v (time and memory linear in T). Decoding keeps the last W − 1 keys and values
//! ([`window_incremental`]).

use burn::tensor::{Bool, Tensor, TensorData};

use super::softmax::KvCache;

/// The offsets o (key = t − o) a query reads: 0..W causal, −(W−1)..W bidirectional.
fn offsets(window: usize, causal: bool) -> Vec<isize> {
    let w = window as isize;
    if causal { (0..w).collect() } else { (-(w - 1)..w).collect() }
}

/// `x` `[B,H,T,D]` shifted along the sequence by `o` (row t holds x[t − o], zeros where t − o is
/// outside 0..T).
fn shifted(x: &Tensor<4>, o: isize) -> Tensor<4> {
    let [b, h, t, d] = x.dims();
    let n = o.unsigned_abs().min(t);
    if n == 0 {
        return x.clone();
    }
    let zeros = Tensor::zeros([b, h, n, d], (&x.device(), x.dtype()));
    if o > 0 {
        Tensor::cat(vec![zeros, x.clone().narrow(2, 0, t - n)], 2)
    } else {
        Tensor::cat(vec![x.clone().narrow(2, n, t - n), zeros], 2)
    }
}

/// Sliding-window softmax attention in its banded form: q, k `[B,H,T,D]`, v `[B,H,T,Dv]`,
/// `padding` `[B,T]` (true = a padded key nobody reads) → `[B,H,T,Dv]`. A query with no readable
/// key in its window (only possible with padding) outputs 0.
pub fn window_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    window: usize,
    causal: bool,
    padding: Option<Tensor<2, Bool>>,
) -> Tensor<4> {
    let [b, _, t, d] = q.dims();
    let device = q.device();
    // Offsets of W ≥ T reach past the sequence for every query: T of them suffice.
    let offsets = offsets(window.min(t), causal);
    let scale = 1.0 / (d as f64).sqrt();
    // Scores of each offset, [B,H,T,1] each → [B,H,T,W'].
    let scores: Vec<Tensor<4>> =
        offsets.iter().map(|&o| (q.clone() * shifted(&k, o)).sum_dim(3).mul_scalar(scale)).collect();
    let scores = Tensor::cat(scores, 3);
    // Offsets that leave the sequence, [1,1,T,W'] (true = blocked).
    let outside: Vec<bool> =
        (0..t as isize).flat_map(|i| offsets.iter().map(move |&o| i - o < 0 || i - o >= t as isize)).collect();
    let mut blocked = Tensor::<4, Bool>::from_data(TensorData::new(outside, [1, 1, t, offsets.len()]), &device);
    if let Some(pad) = padding {
        // The padding of the key each (t, o) reads, [B,1,T,W'].
        let pad = pad.float().unsqueeze_dim::<3>(1).unsqueeze_dim::<4>(3); //            [B,1,T,1]
        let per_offset: Vec<Tensor<4>> = offsets.iter().map(|&o| shifted(&pad, o)).collect();
        let pad = Tensor::cat(per_offset, 3).greater_elem(0.5); //                       [B,1,T,W']
        blocked = blocked.expand([b, 1, t, offsets.len()]).bool_or(pad);
    }
    let p = masked_softmax(scores, blocked); //                                              [B,H,T,W']
    // y_t = Σ_o p_{t,o} v_{t−o}.
    offsets
        .iter()
        .enumerate()
        .map(|(i, &o)| p.clone().narrow(3, i, 1) * shifted(&v, o))
        .reduce(|a, b| a + b)
        .expect("a window of at least one token")
}

/// The same function as [`window_attention`], written as the full `[T, T]` score matrix with the
/// band (and padding) masked: the specification the banded form is tested against.
pub fn window_reference(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    window: usize,
    causal: bool,
    padding: Option<Tensor<2, Bool>>,
) -> Tensor<4> {
    window_probabilities(q, k, window, causal, padding).matmul(v)
}

/// The window's attention weights `[B,H,T,T]` (zero outside the band and on padded keys).
pub fn window_probabilities(
    q: Tensor<4>,
    k: Tensor<4>,
    window: usize,
    causal: bool,
    padding: Option<Tensor<2, Bool>>,
) -> Tensor<4> {
    let [b, _, t, d] = q.dims();
    let device = q.device();
    let w = window as isize;
    let band: Vec<bool> = (0..t as isize)
        .flat_map(|i| {
            (0..t as isize).map(move |j| {
                let o = i - j;
                !(if causal { (0..w).contains(&o) } else { o.abs() < w })
            })
        })
        .collect();
    let mut blocked = Tensor::<4, Bool>::from_data(TensorData::new(band, [1, 1, t, t]), &device);
    if let Some(pad) = padding {
        let pad = pad.unsqueeze_dim::<3>(1).unsqueeze_dim::<4>(2); //                        [B,1,1,T]
        blocked = blocked.expand([b, 1, t, t]).bool_or(pad.expand([b, 1, t, t]));
    }
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / (d as f64).sqrt()); //   [B,H,T,T]
    masked_softmax(scores, blocked)
}

/// Softmax over the last axis of `scores` with the `blocked` entries (broadcast) excluded; a row
/// with nothing readable gives zeros, not NaN.
fn masked_softmax(scores: Tensor<4>, blocked: Tensor<4, Bool>) -> Tensor<4> {
    let scores = scores.mask_fill(blocked.clone(), f64::NEG_INFINITY);
    let max = scores.clone().max_dim(3).detach();
    let max = max.clone().mask_fill(max.clone().is_inf(), 0.0);
    let e = (scores - max).exp().mask_fill(blocked, 0.0);
    let z = e.clone().sum_dim(3);
    let z = z.clone().mask_fill(z.clone().equal_elem(0.0), 1.0);
    e / z
}

/// Causal window attention for new tokens q, k `[B,H,t,D]`, v `[B,H,t,Dv]` after the cached last
/// keys and values (none: a fresh sequence, or W = 1) → (output `[B,H,t,Dv]`, the last W − 1 keys
/// and values; none for W = 1).
pub fn window_incremental(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    window: usize,
    cache: Option<KvCache>,
) -> (Tensor<4>, Option<KvCache>) {
    let t = q.dims()[2];
    let (keys, values, c) = match cache {
        Some(KvCache { keys, values }) => {
            let c = keys.dims()[2];
            (Tensor::cat(vec![keys, k], 2), Tensor::cat(vec![values, v], 2), c)
        }
        None => (k, v, 0),
    };
    // Queries for the cached positions are zeros; their outputs are dropped.
    let q = if c > 0 {
        let [b, h, _, d] = q.dims();
        Tensor::cat(vec![Tensor::zeros([b, h, c, d], (&q.device(), q.dtype())), q], 2)
    } else {
        q
    };
    let y = window_attention(q, keys.clone(), values.clone(), window, true, None).narrow(2, c, t);
    let total = c + t;
    let keep = window.saturating_sub(1).min(total);
    let cache = (keep > 0)
        .then(|| KvCache { keys: keys.narrow(2, total - keep, keep), values: values.narrow(2, total - keep, keep) });
    (y, cache)
}
