//! # astro-data
//!
//! Tokenizers, corpora and batch sampling for training astro-transformers on text.
//!
//! - [`tokenizer`]: character-level, byte-level BPE (Hugging Face `tokenizers`), any `tokenizer.json`.
//! - [`corpus`]: files, directories and named datasets (manifest, offline resolution, download).
//! - [`tokens`]: the tokenised corpus cached as a memory-mapped binary file; the 90/10 split.
//! - [`sampler`]: seeded, resumable batch sampling.
//! - [`tasks`]: synthetic sequence tasks (MQAR, copy, induction heads, ListOps).

pub mod corpus;
pub mod error;
pub mod fsutil;
pub mod sampler;
pub mod tasks;
pub mod tokenizer;
pub mod tokens;

pub use corpus::{Corpus, CorpusSpec};
pub use error::DataError;
pub use sampler::{Batch, BatchSampler, Sampling};
pub use tokenizer::{DecodeStream, Tokenizer, TokenizerSpec, build_tokenizer, load_tokenizer};
pub use tokens::{TokenFile, split, tokenize_cached};
