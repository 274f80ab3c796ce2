//! Shared helpers for the model tests: device, seeded host-side random tensors, error measures.
#![allow(dead_code)]

use burn::tensor::{Bool, DType, Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// The test device: `$ASTRO_DEVICE` or the first compiled backend (flex by default).
pub fn device() -> Device {
    astro_model::device::default_device().expect("a compiled backend")
}

/// `[b, h, t, d]` tensor of N(0, std²) entries from `seed`, in `dtype`.
pub fn normal4(shape: [usize; 4], std: f64, seed: u64, dtype: DType, device: &Device) -> Tensor<4> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let values: Vec<f64> = (0..n)
        .map(|_| {
            let x: f64 = StandardNormal.sample(&mut rng);
            std * x
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), (device, dtype))
}

/// Random padding mask `[b, t]` with about `fraction` of tokens padded, never a whole row.
pub fn padding(b: usize, t: usize, fraction: f64, seed: u64, device: &Device) -> Tensor<2, Bool> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values = vec![false; b * t];
    for row in 0..b {
        for col in 1..t {
            values[row * t + col] = rand::Rng::random::<f64>(&mut rng) < fraction;
        }
    }
    Tensor::from_data(TensorData::new(values, [b, t]), device)
}

/// Host copy as f64.
pub fn host<const D: usize>(x: &Tensor<D>) -> Vec<f64> {
    x.to_data().try_to_vec_as::<f64>().expect("float data")
}

/// Normwise relative error max|a − b| / max|b|.
pub fn rel_err<const D: usize>(a: &Tensor<D>, b: &Tensor<D>) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let (a, b) = (host(a), host(b));
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max).max(1e-30);
    diff / scale
}

/// Whether every entry is finite.
pub fn all_finite<const D: usize>(x: &Tensor<D>) -> bool {
    host(x).iter().all(|v| v.is_finite())
}
