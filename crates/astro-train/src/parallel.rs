//! Data-parallel training across devices (`astro train --devices wgpu:0,wgpu:1`).
//!
//! The scheme is burn-train's `ExecutionStrategy::MultiDevice(_, OptimMainDevice)`, which cannot be
//! called from here because it runs only inside burn-train's `Learner` (see the trainer's header):
//! each step the batch is split by rows over the devices, the model is forked to each (same
//! parameter ids), forward and backward run on every device at once (one thread each), the
//! gradients move to the first device and are summed there, and the optimiser steps there. Each
//! slice's loss is weighted by its share of the batch's labelled positions, so the summed gradient
//! is the gradient of the whole batch's mean loss: N devices train the same model as one device
//! with the whole batch (within f32 rounding; dropout masks are drawn per device, so with dropout
//! the runs agree in distribution only). No collectives: Burn 0.22 offers them on its cubecl
//! backends only, and a gather to one device is what `OptimMainDevice` does too.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Device;

use crate::batch::Batch;
use crate::net::Net;
use crate::source::score;

/// Loss of `batch` (its mean, as a number) and the gradients of `loss / accumulation` on
/// `devices[0]`, where `net` lives; with more than one device the work is split over them as the
/// module says.
pub fn backward(net: &Net, batch: Batch, devices: &[Device], accumulation: usize) -> (f64, GradientsParams) {
    let accumulation = accumulation as f64;
    if devices.len() == 1 {
        let loss = score(net, batch, false).loss;
        let value = loss.clone().into_scalar::<f64>();
        return (value, GradientsParams::from_grads(loss.div_scalar(accumulation).backward(), net));
    }
    let parts = batch.split(devices);
    let total: usize = parts.iter().map(|(_, count)| *count).sum::<usize>().max(1);
    // Forks happen here, on the calling thread; each worker owns its replica and slice.
    let work: Vec<(Net, Batch, f64)> = parts
        .into_iter()
        .zip(devices)
        .enumerate()
        .map(|(i, ((part, count), device))| {
            let replica = if i == 0 { net.clone() } else { net.clone().fork(device) };
            (replica, part, count as f64 / total as f64)
        })
        .collect();
    let main = &devices[0];
    let results: Vec<(f64, GradientsParams)> = std::thread::scope(|scope| {
        let handles: Vec<_> = work
            .into_iter()
            .map(|(replica, part, weight)| {
                scope.spawn(move || {
                    let loss = score(&replica, part, false).loss;
                    let value = loss.clone().into_scalar::<f64>() * weight;
                    let grads = GradientsParams::from_grads(
                        loss.mul_scalar(weight).div_scalar(accumulation).backward(),
                        &replica,
                    );
                    (value, grads.to_device(main, &replica))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a device's training thread panicked")).collect()
    });
    let mut accumulator = burn::optim::GradientsAccumulator::<Net>::new();
    let mut value = 0.0;
    for (v, grads) in results {
        value += v;
        accumulator.accumulate(net, grads);
    }
    (value, accumulator.grads())
}
