//! Corpora read in bounded pieces, whatever their size: plain text, gzip- or zstd-compressed text,
//! JSON Lines with a text field, a directory of such files (recursive) or a list of them, and a
//! separate validation file. Nothing here holds more than one piece of text per reader at a time.
//!
//! A corpus is a stream of [`Chunk`]s of about [`CHUNK_BYTES`], each wholly training or wholly
//! validation text:
//!
//! - **Text files** are one stream, concatenated in order (a directory's files sorted by path).
//!   A chunk ends at the last line end within its budget (a line longer than the budget is cut at a
//!   character boundary). Train and validation are split afterwards by position, like nanoGPT: the
//!   last `val_fraction` of the tokens validate.
//! - **JSON Lines** (`.jsonl`, `.ndjson`, or `data.format = "jsonl"`): every line is one document,
//!   its text the string field `data.text_field`. Documents are joined by a blank line; each goes to
//!   validation or training by a fixed hash of its index (about `val_fraction` of them validate), so
//!   the split is by document and the same on every run.
//! - **`data.val_path`**: all of the corpus trains and the files there validate.
//!
//! `.gz` and `.zst`/`.zstd` files are decompressed as they are read (flate2, zstd). Invalid UTF-8 is
//! replaced by U+FFFD and counted; a NUL byte, or a piece that is mostly not UTF-8, is an error.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DataError;

/// The text budget of one chunk.
pub const CHUNK_BYTES: usize = 1 << 20;

/// What documents joined in one stream are separated by.
pub const DOCUMENT_SEPARATOR: &str = "\n\n";

/// How the files of a corpus are read, as written under `[data]` (`format = "jsonl"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// By file name: `.jsonl`/`.ndjson` (before any `.gz`/`.zst`) are JSON Lines, the rest text.
    #[default]
    Auto,
    /// Every file is plain text.
    Text,
    /// Every file is JSON Lines.
    Jsonl,
}

/// What to do with a JSON Lines line that is not a JSON object with the text field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadLines {
    /// Stop with an error naming the file and line.
    #[default]
    Fail,
    /// Skip the line, count it and say how many were skipped.
    Skip,
}

/// How a file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Not at all.
    None,
    /// gzip (`.gz`).
    Gzip,
    /// Zstandard (`.zst`, `.zstd`).
    Zstd,
}

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Plain text.
    Text,
    /// One JSON object per line.
    Jsonl,
}

/// One file of a corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFile {
    /// Its path.
    pub path: PathBuf,
    /// Text or JSON Lines.
    pub kind: FileKind,
    /// Its compression.
    pub compression: Compression,
    /// Size on disk (compressed).
    pub bytes: u64,
    /// Modification time, nanoseconds since the Unix epoch (part of the cache key).
    pub modified_ns: u128,
}

/// Names a file that may hold text: `.txt`, `.text`, `.jsonl`, `.ndjson`, optionally
/// followed by `.gz`, `.zst` or `.zstd`.
fn classify(path: &Path, format: Format) -> Option<(FileKind, Compression)> {
    let name = path.file_name()?.to_string_lossy().to_lowercase();
    let (stem, compression) = if let Some(s) = name.strip_suffix(".gz") {
        (s.to_string(), Compression::Gzip)
    } else if let Some(s) = name.strip_suffix(".zst").or_else(|| name.strip_suffix(".zstd")) {
        (s.to_string(), Compression::Zstd)
    } else {
        (name.clone(), Compression::None)
    };
    let ext = Path::new(&stem).extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
    let kind = match (format, ext.as_str()) {
        (Format::Text, _) => FileKind::Text,
        (Format::Jsonl, _) => FileKind::Jsonl,
        (Format::Auto, "jsonl" | "ndjson") => FileKind::Jsonl,
        (Format::Auto, _) => FileKind::Text,
    };
    Some((kind, compression))
}

/// Whether a directory walk takes this file.
fn looks_like_text(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let stem = ["gz", "zst", "zstd"].iter().find_map(|c| name.strip_suffix(&format!(".{c}"))).unwrap_or(&name);
    ["txt", "text", "jsonl", "ndjson"].iter().any(|e| stem.ends_with(&format!(".{e}")))
}

impl SourceFile {
    /// A file given by name (any name: an explicit file is taken as the format says).
    pub fn new(path: &Path, format: Format) -> Result<Self, DataError> {
        let meta = std::fs::metadata(path).map_err(|e| DataError::read(path, e))?;
        let (kind, compression) = classify(path, format).unwrap_or((FileKind::Text, Compression::None));
        let modified_ns =
            meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        Ok(SourceFile { path: path.to_path_buf(), kind, compression, bytes: meta.len(), modified_ns })
    }

    /// The files a path names: itself, or every text file under a directory (recursively, sorted).
    pub fn expand(path: &Path, format: Format) -> Result<Vec<Self>, DataError> {
        let meta = std::fs::metadata(path).map_err(|e| DataError::read(path, e))?;
        if !meta.is_dir() {
            return Ok(vec![Self::new(path, format)?]);
        }
        let mut files = Vec::new();
        for entry in walkdir::WalkDir::new(path).follow_links(true).sort_by_file_name() {
            let entry = entry.map_err(|e| DataError::read(path, e))?;
            if entry.file_type().is_file() && looks_like_text(entry.path()) {
                files.push(Self::new(entry.path(), format)?);
            }
        }
        if files.is_empty() {
            return Err(DataError::Empty {
                path: path.into(),
                detail: " (no text files in the directory or below it: .txt, .text, .jsonl or .ndjson, optionally .gz or .zst)".into(),
            });
        }
        Ok(files)
    }

    /// A reader of the decompressed bytes, counting the file's own bytes read into `consumed`.
    fn open(&self, consumed: Arc<AtomicU64>) -> Result<Box<dyn Read + Send>, DataError> {
        let file = std::fs::File::open(&self.path).map_err(|e| DataError::read(&self.path, e))?;
        let counted = Counting { inner: file, consumed };
        Ok(match self.compression {
            Compression::None => Box::new(counted),
            Compression::Gzip => {
                Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 16, counted)))
            }
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(counted).map_err(|e| DataError::read(&self.path, e))?)
            }
        })
    }

    /// A read error, worded for a compressed file that ends early.
    fn read_error(&self, e: std::io::Error) -> DataError {
        if self.compression != Compression::None {
            DataError::Truncated { path: self.path.clone(), reason: e.to_string() }
        } else {
            DataError::read(&self.path, e)
        }
    }
}

/// Counts the bytes read through it (the progress of a pass over compressed files).
struct Counting<R> {
    inner: R,
    consumed: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// How train and validation text are told apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Split {
    /// One stream; the last `val_fraction` of the tokens validate.
    Position {
        /// The fraction.
        val_fraction: f64,
    },
    /// Documents go to validation by a fixed hash of their index.
    Documents {
        /// About this fraction of the documents validate.
        val_fraction: f64,
    },
    /// The validation files validate; the rest trains.
    ValFiles,
}

/// Which part of the corpus a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Training text (and, for [`Split::Position`], all of the stream).
    Train,
    /// Validation text.
    Val,
}

/// A piece of a corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Training or validation.
    pub part: Part,
    /// The text.
    pub text: String,
    /// Bytes of the corpus's files read so far (compressed), for progress.
    pub consumed: u64,
}

/// Options for reading JSON Lines.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonlOptions {
    /// The string field holding a document's text.
    pub text_field: String,
    /// Lines that are not JSON objects with that field.
    pub bad_lines: BadLines,
}

/// A resolved corpus: its files, how they are read and how they are split.
#[derive(Debug, Clone, PartialEq)]
pub struct CorpusFiles {
    /// Human description.
    pub name: String,
    /// The files that train (and, for [`Split::Position`], validate).
    pub main: Vec<SourceFile>,
    /// The files that validate (`data.val_path`).
    pub val: Vec<SourceFile>,
    /// JSON Lines options.
    pub jsonl: JsonlOptions,
    /// The split.
    pub split: Split,
}

/// splitmix64: a fixed, well-mixed hash of a document index.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Whether document `index` validates under a document split of `val_fraction`.
pub fn document_validates(index: u64, val_fraction: f64) -> bool {
    let unit = (mix(index) >> 11) as f64 / (1u64 << 53) as f64;
    unit < val_fraction
}

impl CorpusFiles {
    /// Bytes of all files on disk (compressed sizes).
    pub fn total_bytes(&self) -> u64 {
        self.main.iter().chain(&self.val).map(|f| f.bytes).sum()
    }

    /// Whether every file is uncompressed (so byte offsets of the text are known in advance).
    pub fn uncompressed(&self) -> bool {
        self.main.iter().chain(&self.val).all(|f| f.compression == Compression::None)
    }

    /// A digest of what the stream holds, from the files' paths, sizes and modification times and
    /// the reading options (not their content: hashing gigabytes would cost seconds per run).
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"astro-corpus-v2\0");
        for (tag, files) in [("main", &self.main), ("val", &self.val)] {
            for f in files {
                let path = std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone());
                h.update(format!(
                    "{tag}\0{}\0{}\0{}\0{:?}\0{:?}\0",
                    path.display(),
                    f.bytes,
                    f.modified_ns,
                    f.kind,
                    f.compression
                ));
            }
        }
        let split = match self.split {
            Split::Position { .. } => "position".to_string(),
            Split::Documents { val_fraction } => format!("documents {val_fraction}"),
            Split::ValFiles => "val files".to_string(),
        };
        h.update(format!("{split}\0{}\0{:?}\0", self.jsonl.text_field, self.jsonl.bad_lines));
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads the corpus as chunks of about `budget` bytes of text, in order, handing each to
    /// `emit` (which may stop the reading by returning an error).
    pub fn read(
        &self,
        budget: usize,
        emit: &mut dyn FnMut(Chunk) -> Result<(), DataError>,
    ) -> Result<ReadStats, DataError> {
        let mut reader = Reader {
            corpus: self,
            budget: budget.max(64),
            consumed: Arc::new(AtomicU64::new(0)),
            documents: 0,
            pending: [String::new(), String::new()],
            started: [false, false],
            stats: ReadStats::default(),
            emit,
        };
        let files = self.main.iter().map(|f| (f, Part::Train)).chain(self.val.iter().map(|f| (f, Part::Val)));
        for (file, part) in files {
            match file.kind {
                FileKind::Text => reader.text_file(file, part)?,
                FileKind::Jsonl => reader.jsonl_file(file, part)?,
            }
        }
        for part in [Part::Train, Part::Val] {
            let text = std::mem::take(&mut reader.pending[Reader::slot(part)]);
            if !text.is_empty() {
                reader.send(part, text)?;
            }
        }
        Ok(reader.stats)
    }

    /// Every chunk's text, concatenated (training part first): the whole corpus in memory, for
    /// the commands that work on small texts.
    pub fn read_to_string(&self) -> Result<(String, ReadStats), DataError> {
        let (mut train, mut val) = (String::new(), String::new());
        let stats = self.read(CHUNK_BYTES, &mut |c| {
            match c.part {
                Part::Train => train.push_str(&c.text),
                Part::Val => val.push_str(&c.text),
            }
            Ok(())
        })?;
        train.push_str(&val);
        Ok((train, stats))
    }
}

/// What a pass over a corpus found besides its text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Invalid UTF-8 sequences replaced by U+FFFD.
    pub replaced: u64,
    /// JSON Lines lines skipped (`bad_lines = "skip"`).
    pub skipped_lines: u64,
    /// JSON Lines documents read.
    pub documents: u64,
    /// Text bytes read.
    pub text_bytes: u64,
}

/// One pass over a corpus.
struct Reader<'a, 'e> {
    corpus: &'a CorpusFiles,
    budget: usize,
    consumed: Arc<AtomicU64>,
    /// JSON Lines documents seen (their global index).
    documents: u64,
    /// JSON Lines text gathered per part (train, val) until a chunk is full.
    pending: [String; 2],
    /// Whether a part has had a document.
    started: [bool; 2],
    stats: ReadStats,
    emit: &'e mut dyn FnMut(Chunk) -> Result<(), DataError>,
}

impl Reader<'_, '_> {
    fn slot(part: Part) -> usize {
        match part {
            Part::Train => 0,
            Part::Val => 1,
        }
    }

    fn send(&mut self, part: Part, text: String) -> Result<(), DataError> {
        self.stats.text_bytes += text.len() as u64;
        let chunk = Chunk { part, text, consumed: self.consumed.load(Ordering::Relaxed) };
        (self.emit)(chunk)
    }

    /// Adds a document's text to its part, emitting a chunk when the part's text is full.
    fn document(&mut self, part: Part, text: &str) -> Result<(), DataError> {
        let i = Self::slot(part);
        // Every document but a part's first follows a separator, also at the start of a chunk.
        if self.started[i] {
            self.pending[i].push_str(DOCUMENT_SEPARATOR);
        }
        self.started[i] = true;
        self.pending[i].push_str(text);
        if self.pending[i].len() >= self.budget {
            let text = std::mem::take(&mut self.pending[i]);
            self.send(part, text)?;
        }
        Ok(())
    }

    /// Decodes `bytes` as UTF-8 (after `carry`, the incomplete sequence the last read ended with),
    /// replacing invalid sequences; keeps an incomplete sequence at the end in `carry` unless `last`.
    fn decode(
        &mut self,
        carry: &mut Vec<u8>,
        bytes: &[u8],
        last: bool,
        file: &SourceFile,
        offset: u64,
    ) -> Result<String, DataError> {
        let mut all = std::mem::take(carry);
        all.extend_from_slice(bytes);
        if let Some(at) = all.iter().position(|&b| b == 0) {
            return Err(DataError::NotText {
                path: file.path.clone(),
                why: format!("a NUL byte at offset {}", offset + at as u64),
            });
        }
        let keep = if last { 0 } else { incomplete_tail(&all) };
        let body = &all[..all.len() - keep];
        let (text, replaced) = decode_lossy(body);
        // A piece that is mostly not UTF-8 is not text (a few stray bytes are tolerated).
        if replaced * 10 > body.len() && body.len() >= 16 {
            return Err(DataError::NotText {
                path: file.path.clone(),
                why: format!("{replaced} invalid UTF-8 sequences in {} bytes", body.len()),
            });
        }
        self.stats.replaced += replaced as u64;
        *carry = all[all.len() - keep..].to_vec();
        Ok(text)
    }

    /// A text file: chunks that end at a line end where one is within the budget.
    fn text_file(&mut self, file: &SourceFile, part: Part) -> Result<(), DataError> {
        let mut reader = file.open(Arc::clone(&self.consumed))?;
        let mut buf = vec![0u8; self.budget];
        let mut carry = Vec::new();
        let mut tail = String::new();
        let mut offset = 0u64;
        loop {
            let n = read_full(&mut reader, &mut buf).map_err(|e| file.read_error(e))?;
            let last = n < buf.len();
            let text = self.decode(&mut carry, &buf[..n], last, file, offset)?;
            offset += n as u64;
            let mut piece = std::mem::take(&mut tail);
            piece.push_str(&text);
            if !last {
                // Carry what follows the last line end (unless that would carry most of the piece).
                if let Some(end) = piece.rfind('\n').filter(|&e| e + 1 >= piece.len() / 2) {
                    tail = piece.split_off(end + 1);
                }
            }
            if !piece.is_empty() {
                self.send(part, piece)?;
            }
            if last {
                break;
            }
        }
        Ok(())
    }

    /// A JSON Lines file: one document per non-blank line.
    fn jsonl_file(&mut self, file: &SourceFile, part: Part) -> Result<(), DataError> {
        let reader = file.open(Arc::clone(&self.consumed))?;
        let mut reader = BufReader::with_capacity(1 << 16, reader);
        let field = &self.corpus.jsonl.text_field;
        let skip = self.corpus.jsonl.bad_lines == BadLines::Skip;
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(|e| file.read_error(e))?;
            if n == 0 {
                break;
            }
            number += 1;
            let trimmed = line.trim_ascii();
            if trimmed.is_empty() {
                continue;
            }
            let text = match document_text(trimmed, field) {
                Ok(text) => text,
                Err(_) if skip => {
                    self.stats.skipped_lines += 1;
                    continue;
                }
                Err(problem) => return Err(problem.error(file, number, field)),
            };
            let index = self.documents;
            self.documents += 1;
            self.stats.documents += 1;
            let part = match (part, self.corpus.split) {
                (Part::Train, Split::Documents { val_fraction }) if document_validates(index, val_fraction) => {
                    Part::Val
                }
                (part, _) => part,
            };
            if text.contains('\0') {
                return Err(DataError::NotText {
                    path: file.path.clone(),
                    why: format!("a NUL character on line {number}"),
                });
            }
            self.document(part, &text)?;
        }
        Ok(())
    }
}

/// Why a JSON Lines line gave no document.
enum LineProblem {
    /// Not a JSON object.
    NotJson(String),
    /// No string field of that name (with the fields it has).
    NoField(Vec<String>),
}

impl LineProblem {
    fn error(self, file: &SourceFile, line: u64, field: &str) -> DataError {
        match self {
            LineProblem::NotJson(reason) => DataError::BadJsonLine { path: file.path.clone(), line, reason },
            LineProblem::NoField(fields) => DataError::MissingField {
                path: file.path.clone(),
                line,
                field: field.to_string(),
                fields: if fields.is_empty() { "none".into() } else { fields.join(", ") },
            },
        }
    }
}

/// The text of one JSON Lines line's `field`.
fn document_text(line: &[u8], field: &str) -> Result<String, LineProblem> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(line).map_err(|e| LineProblem::NotJson(e.to_string()))?;
    match object.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        _ => Err(LineProblem::NoField(
            object.iter().filter(|(_, v)| v.is_string()).map(|(k, _)| format!("`{k}`")).collect(),
        )),
    }
}

/// Reads until `buf` is full or the reader ends; the number of bytes read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// UTF-8 text of `bytes`, each invalid sequence replaced by U+FFFD; the count replaced.
pub(crate) fn decode_lossy(bytes: &[u8]) -> (String, usize) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), 0),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len());
            let mut replaced = 0;
            for chunk in bytes.utf8_chunks() {
                out.push_str(chunk.valid());
                if !chunk.invalid().is_empty() {
                    out.push(char::REPLACEMENT_CHARACTER);
                    replaced += 1;
                }
            }
            (out, replaced)
        }
    }
}

/// The length of an incomplete UTF-8 sequence at the end of `bytes` (0 if there is none).
fn incomplete_tail(bytes: &[u8]) -> usize {
    let n = bytes.len();
    for back in 1..=3.min(n) {
        let b = bytes[n - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back for the lead byte
        }
        let need = match b {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if need > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::CorpusSpec;

    /// Every chunk of `spec`'s corpus (split at 10 %) read with a small budget.
    fn chunks(spec: &CorpusSpec, budget: usize) -> Result<Vec<Chunk>, DataError> {
        let files = spec.files(0.1)?;
        let mut out = Vec::new();
        files.read(budget, &mut |c| {
            out.push(c);
            Ok(())
        })?;
        Ok(out)
    }

    fn text_of(chunks: &[Chunk], part: Part) -> String {
        chunks.iter().filter(|c| c.part == part).map(|c| c.text.as_str()).collect()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn text_in_small_chunks_is_the_whole_text_cut_at_line_ends() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..500).map(|i| format!("line {i} — ünïcödé ✓\n")).collect();
        std::fs::write(dir.path().join("a.txt"), &text).unwrap();
        for budget in [64, 100, 1000, 1 << 20] {
            let got = chunks(&CorpusSpec::file(dir.path().join("a.txt")), budget).unwrap();
            assert_eq!(text_of(&got, Part::Train), text, "budget {budget}");
            assert!(got.iter().all(|c| c.part == Part::Train));
            if budget < text.len() {
                assert!(
                    got.len() > 1 && got[..got.len() - 1].iter().all(|c| c.text.ends_with('\n')),
                    "budget {budget}"
                );
            }
        }
    }

    #[test]
    fn gzip_and_zstd_read_as_the_text_and_a_truncated_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..2000).map(|i| format!("the astrocyte {i}\n")).collect();
        std::fs::write(dir.path().join("a.txt.gz"), gzip(text.as_bytes())).unwrap();
        std::fs::write(dir.path().join("b.txt.zst"), zstd::encode_all(text.as_bytes(), 3).unwrap()).unwrap();
        for name in ["a.txt.gz", "b.txt.zst"] {
            let got = chunks(&CorpusSpec::file(dir.path().join(name)), 4096).unwrap();
            assert_eq!(text_of(&got, Part::Train), text, "{name}");
        }
        for name in ["a.txt.gz", "b.txt.zst"] {
            let bytes = std::fs::read(dir.path().join(name)).unwrap();
            let cut = dir.path().join(format!("cut-{name}"));
            std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
            let err = chunks(&CorpusSpec::file(&cut), 4096).unwrap_err();
            assert!(matches!(err, DataError::Truncated { .. }), "{name}: {err}");
            assert!(err.to_string().contains(&format!("cut-{name}")), "{err}");
        }
    }

    #[test]
    fn json_lines_split_by_document_and_bad_lines_fail_or_skip() {
        let dir = tempfile::tempdir().unwrap();
        let docs: Vec<String> = (0..400).map(|i| format!("document {i}")).collect();
        let mut lines: String = docs.iter().map(|d| format!("{{\"id\": 1, \"text\": {d:?}}}\n")).collect();
        lines.push_str("\n   \n");
        std::fs::write(dir.path().join("d.jsonl"), &lines).unwrap();
        let got = chunks(&CorpusSpec::file(dir.path().join("d.jsonl")), 256).unwrap();
        let (train, val) = (text_of(&got, Part::Train), text_of(&got, Part::Val));
        let val_docs: Vec<&str> = val.split(DOCUMENT_SEPARATOR).filter(|d| !d.is_empty()).collect();
        assert!((20..=60).contains(&val_docs.len()), "about 10 % of 400 validate: {}", val_docs.len());
        let every: usize = train.matches("document ").count() + val.matches("document ").count();
        assert_eq!(every, 400, "each document once");
        for (i, d) in docs.iter().enumerate() {
            assert_eq!(val_docs.contains(&d.as_str()), document_validates(i as u64, 0.1), "{d}");
        }
        // A gzip-compressed copy is the same corpus.
        std::fs::write(dir.path().join("g.jsonl.gz"), gzip(lines.as_bytes())).unwrap();
        let gz = chunks(&CorpusSpec::file(dir.path().join("g.jsonl.gz")), 256).unwrap();
        assert_eq!((text_of(&gz, Part::Train), text_of(&gz, Part::Val)), (train, val));

        // Not JSON on line 3: named; skipped on request.
        std::fs::write(
            dir.path().join("bad.jsonl"),
            "{\"text\": \"a\"}\n{\"text\": \"b\"}\nnot json\n{\"body\": \"c\"}\n",
        )
        .unwrap();
        let spec = CorpusSpec::file(dir.path().join("bad.jsonl"));
        let err = chunks(&spec, 256).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:3: not a JSON object") && err.contains("bad_lines"), "{err}");
        let skip = CorpusSpec { bad_lines: BadLines::Skip, ..spec.clone() };
        let files = skip.files(0.5).unwrap();
        let stats = files.read(256, &mut |_| Ok(())).unwrap();
        assert_eq!((stats.documents, stats.skipped_lines), (2, 2));
        // A line without the field names the fields it has.
        std::fs::write(dir.path().join("field.jsonl"), "{\"body\": \"c\", \"n\": 3}\n").unwrap();
        let err = chunks(&CorpusSpec::file(dir.path().join("field.jsonl")), 256).unwrap_err().to_string();
        assert!(err.contains("field.jsonl:1: no string field `text`") && err.contains("`body`"), "{err}");
        let by_field = CorpusSpec { text_field: "body".into(), ..CorpusSpec::file(dir.path().join("field.jsonl")) };
        assert_eq!(
            text_of(&chunks(&by_field, 256).unwrap(), Part::Train)
                + &text_of(&chunks(&by_field, 256).unwrap(), Part::Val),
            "c"
        );
    }

    #[test]
    fn lists_directories_and_a_validation_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("corpus/deeper")).unwrap();
        std::fs::write(root.join("corpus/b.txt"), "bee ").unwrap();
        std::fs::write(root.join("corpus/deeper/a.txt"), "ay ").unwrap();
        std::fs::write(root.join("corpus/skip.csv"), "x,y").unwrap();
        std::fs::write(root.join("extra.txt"), "extra ").unwrap();
        std::fs::write(root.join("val.txt"), "held out").unwrap();
        let spec = CorpusSpec { paths: vec![root.join("corpus"), root.join("extra.txt")], ..CorpusSpec::default() };
        let got = chunks(&spec, 1 << 20).unwrap();
        assert_eq!(text_of(&got, Part::Train), "bee ay extra ");
        assert_eq!(spec.files(0.1).unwrap().split, Split::Position { val_fraction: 0.1 });
        let spec = CorpusSpec { val_path: Some(root.join("val.txt")), ..spec };
        let got = chunks(&spec, 1 << 20).unwrap();
        assert_eq!((text_of(&got, Part::Train), text_of(&got, Part::Val)), ("bee ay extra ".into(), "held out".into()));
        assert_eq!(spec.files(0.1).unwrap().split, Split::ValFiles);
        let both = CorpusSpec { path: Some(root.join("extra.txt")), ..spec };
        assert!(both.files(0.1).unwrap_err().to_string().contains("not both"));
    }

    #[test]
    fn incomplete_utf8_at_a_read_boundary_is_carried() {
        assert_eq!(incomplete_tail("aé".as_bytes()), 0);
        assert_eq!(incomplete_tail(&"aé".as_bytes()[..2]), 1);
        assert_eq!(incomplete_tail(&"a✓".as_bytes()[..3]), 2);
        assert_eq!(incomplete_tail(&"a🦀".as_bytes()[..4]), 3);
        assert_eq!(incomplete_tail(b"abc"), 0);
    }
}
