//! # astro-eval
//!
//! Sequence tasks, evaluation, generation and ablation reports. A placeholder until the evaluation
//! issue lands: it compiles so the workspace layout is fixed.
