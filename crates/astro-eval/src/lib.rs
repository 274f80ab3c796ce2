//! # astro-eval
//!
//! Everything that reads trained runs: evaluation ([`evaluate`]), ablation grids ([`ablate`]),
//! runs side by side ([`compare`]),
//! the attention-fidelity report ([`fidelity`]) and their plots ([`plot`]).

pub mod ablate;
pub mod bench;
pub mod bert;
pub mod compare;
pub mod distill;
pub mod encoder_fit;
pub mod error;
pub mod evaluate;
pub mod fidelity;
pub mod plot;
pub mod replicate;
pub mod run;
pub mod usefulness;

pub use error::EvalError;
pub use run::{Run, Weights};
