//! Typed errors of the data crate.

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong while finding, reading, tokenising or sampling a corpus.
#[derive(Debug, Error)]
pub enum DataError {
    /// A named dataset is not in the manifest.
    #[error("unknown dataset `{name}`; known datasets: {known}")]
    UnknownDataset {
        /// The name asked for.
        name: String,
        /// Comma-separated list of known names.
        known: String,
    },
    /// The manifest named by `$ASTRO_DATASETS_MANIFEST` cannot be read or parsed.
    #[error(
        "cannot use the datasets manifest {path} ($ASTRO_DATASETS_MANIFEST): {reason}; it takes entries of the form of datasets/manifest.toml"
    )]
    Manifest {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A named dataset is neither present locally nor downloadable.
    #[error(
        "dataset `{name}` ({file}) is not available offline and could not be downloaded ({reason}).\n\
         Provide it in one of three ways:\n  \
         1. pass its path: `--data /path/to/{file}` (or `path = \"…\"` under [data]);\n  \
         2. put it in a directory named by $ASTRO_DATA_DIR ({data_dir});\n  \
         3. copy it into the cache directory {cache}"
    )]
    NotAvailable {
        /// Dataset name.
        name: String,
        /// Its file name.
        file: String,
        /// Why the download failed.
        reason: String,
        /// The current value of $ASTRO_DATA_DIR, or "unset".
        data_dir: String,
        /// The cache directory.
        cache: PathBuf,
    },
    /// A downloaded or provided file does not have the manifest's checksum.
    #[error(
        "{path} has sha256 {actual}, expected {expected} for dataset `{name}`; the file is corrupt or a different version (delete it to download again)"
    )]
    Checksum {
        /// Dataset name.
        name: String,
        /// The file checked.
        path: PathBuf,
        /// Its digest.
        actual: String,
        /// The manifest's digest.
        expected: String,
    },
    /// The corpus path does not exist or cannot be read.
    #[error("cannot read corpus {path}: {reason}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The corpus holds no text.
    #[error("corpus {path} is empty{detail}")]
    Empty {
        /// The path.
        path: PathBuf,
        /// Extra detail (e.g. "no .txt files in the directory").
        detail: String,
    },
    /// The corpus is not text (NUL bytes, or mostly invalid UTF-8).
    #[error("corpus {path} does not look like text: {why}; give a UTF-8 text file (or a directory of .txt files)")]
    NotText {
        /// The path.
        path: PathBuf,
        /// What gave it away.
        why: String,
    },
    /// A JSON Lines line is not a JSON object.
    #[error(
        "{path}:{line}: not a JSON object ({reason}); fix or remove the line, or set data.bad_lines = \"skip\" to skip such lines"
    )]
    BadJsonLine {
        /// The file.
        path: PathBuf,
        /// The line number (from 1).
        line: u64,
        /// The parser's complaint.
        reason: String,
    },
    /// A JSON Lines line has no string field holding the text.
    #[error(
        "{path}:{line}: no string field `{field}` (the line's string fields: {fields}); name the field that holds the \
         text with data.text_field, or set data.bad_lines = \"skip\" to skip such lines"
    )]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The line number (from 1).
        line: u64,
        /// The field looked for (`data.text_field`).
        field: String,
        /// The line's string fields.
        fields: String,
    },
    /// A compressed file ends early or is corrupt.
    #[error(
        "{path}: the compressed data ends early or is corrupt ({reason}); the file is truncated or damaged: copy or \
         download it again"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The decompressor's complaint.
        reason: String,
    },
    /// A pass over the corpus was stopped (a stop signal); nothing it wrote is kept.
    #[error("stopped while reading the corpus; nothing was written to the cache")]
    Cancelled,
    /// A split is shorter than one training window.
    #[error(
        "the {split} split of {corpus} has {tokens} tokens, fewer than one window of block_size + 1 = {needed}; \
         use a longer corpus, a smaller model.block_size, a larger data.val_fraction, or a data.val_path"
    )]
    TooShort {
        /// `train` or `validation`.
        split: &'static str,
        /// Corpus description.
        corpus: String,
        /// Tokens in the split.
        tokens: usize,
        /// Tokens needed.
        needed: usize,
    },
    /// Text contains a character the character-level vocabulary does not have.
    #[error("character {ch:?} (U+{code:04X}) at position {position} is not in the tokenizer's vocabulary{hint}")]
    UnknownCharacter {
        /// The character.
        ch: char,
        /// Its code point.
        code: u32,
        /// Character offset in the text.
        position: usize,
        /// How to fix it.
        hint: String,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    BadToken {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A tokenizer file is malformed or of an unknown kind.
    #[error("cannot load tokenizer {path}: {reason}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Training or running a BPE tokenizer failed.
    #[error("tokenizer error: {0}")]
    Tokenize(String),
    /// Writing a cache or tokenizer file failed.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A data configuration value is invalid.
    #[error("invalid `{field}`: {reason}")]
    Config {
        /// Dotted key, e.g. `data.val_fraction`.
        field: String,
        /// Why.
        reason: String,
    },
}

impl DataError {
    pub(crate) fn read(path: impl Into<PathBuf>, e: impl ToString) -> Self {
        DataError::Read { path: path.into(), reason: e.to_string() }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, e: impl ToString) -> Self {
        DataError::Write { path: path.into(), reason: e.to_string() }
    }
}
