//! # astro-data
//!
//! Tokenizers, corpora and batch sampling for training astro-transformers on text. The crate is a
//! placeholder until the training issue lands: it compiles so the workspace layout is fixed.
