//! # astro-train
//!
//! Trains astro-transformers on text: the run configuration ([`config`]), the loop
//! ([`trainer`]), learning-rate schedule, checkpoints with exact resume, metrics and progress.

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod distill;
pub mod error;
pub mod interrupt;
pub mod metrics;
pub mod net;
pub mod optim;
pub mod parallel;
pub mod progress;
pub mod schedule;
pub mod source;
pub mod status;
pub mod trainer;

pub use config::RunConfig;
pub use error::TrainError;
pub use interrupt::{EXIT_INTERRUPTED, Interrupt, StopSignal};
pub use net::Net;
pub use trainer::{TrainOptions, TrainSummary, train};
