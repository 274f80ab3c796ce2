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
