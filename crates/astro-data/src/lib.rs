//! # astro-data
//!
//! Tokenizers, corpora and batch sampling for training astro-transformers on text.
//!
//! - [`tokenizer`]: character-level, byte-level BPE (Hugging Face `tokenizers`), any `tokenizer.json`.
//! - [`corpus`]: files, directories, lists and named datasets (manifest, offline resolution, download).
//! - [`stream`]: corpora of any size read in bounded pieces: text, JSON Lines, gzip and zstd.
//! - [`prepare`]: the vocabulary and the token cache, made in streaming passes on every core.
//! - [`tokens`]: the tokenised corpus cached as a memory-mapped binary file; the split.
//! - [`sampler`]: seeded, resumable batch sampling.
//! - [`tasks`]: synthetic sequence tasks (MQAR, copy, induction heads, ListOps).

pub mod corpus;
pub mod error;
pub mod fsutil;
pub mod prepare;
pub mod sampler;
pub mod stream;
pub mod tasks;
pub mod tokenizer;
pub mod tokens;

pub use corpus::{Corpus, CorpusSpec};
pub use error::DataError;
pub use prepare::{tokenize_cached, tokenizer_for};
pub use sampler::{Batch, BatchSampler, Sampling};
pub use stream::{BadLines, CorpusFiles, Format};
pub use tokenizer::{DecodeStream, Tokenizer, TokenizerSpec, build_tokenizer, load_tokenizer};
pub use tokens::{TokenFile, split};
