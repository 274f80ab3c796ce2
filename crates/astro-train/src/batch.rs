//! The batch type shared by the model wrapper (`net`) and the data sources (`source`): it lives
//! here so that `source` depends on `net` and not the other way round.

use burn::tensor::{Bool, Int, Tensor};

/// A batch on the device.
// Tensors are handles; boxing would only add an allocation per batch.
#[allow(clippy::large_enum_variant)]
pub enum Batch {
    /// Next-token prediction: inputs `[B,T]`, targets on the host `[B·T]` (with [`IGNORE`](astro_data::tasks::IGNORE)).
    Lm { inputs: Tensor<2, Int>, targets: Vec<i64> },
    /// Classification: inputs `[B,T]`, padding `[B,T]`, labels `[B]`.
    Class { inputs: Tensor<2, Int>, padding: Option<Tensor<2, Bool>>, labels: Vec<i64> },
}

impl Batch {
    /// Number of input tokens (padding included).
    pub fn tokens(&self) -> usize {
        match self {
            Batch::Lm { inputs, .. } | Batch::Class { inputs, .. } => inputs.shape().num_elements(),
        }
    }
}

impl Batch {
    /// Splits the batch by rows into `parts` equal slices (the batch size must divide), each moved
    /// to its device, with the number of labelled positions it scores (the loss is a mean over
    /// them, so a slice's weight in the whole batch's mean is its count over the total).
    pub fn split(self, devices: &[burn::tensor::Device]) -> Vec<(Batch, usize)> {
        let parts = devices.len();
        let rows = |inputs: &Tensor<2, Int>| inputs.dims()[0] / parts;
        match self {
            Batch::Lm { inputs, targets } => {
                let (r, t) = (rows(&inputs), inputs.dims()[1]);
                devices
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        let targets = targets[i * r * t..(i + 1) * r * t].to_vec();
                        let count = targets.iter().filter(|&&y| y != astro_data::tasks::IGNORE).count();
                        (Batch::Lm { inputs: inputs.clone().narrow(0, i * r, r).to_device(d), targets }, count)
                    })
                    .collect()
            }
            Batch::Class { inputs, padding, labels } => {
                let r = rows(&inputs);
                devices
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        let part = Batch::Class {
                            inputs: inputs.clone().narrow(0, i * r, r).to_device(d),
                            padding: padding.as_ref().map(|p| p.clone().narrow(0, i * r, r).to_device(d)),
                            labels: labels[i * r..(i + 1) * r].to_vec(),
                        };
                        (part, r)
                    })
                    .collect()
            }
        }
    }
}
