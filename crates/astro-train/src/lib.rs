//! # astro-train
//!
//! The training loop (config, optimiser, checkpoints, resume). A placeholder until the training
//! issue lands: it compiles so the workspace layout is fixed.
