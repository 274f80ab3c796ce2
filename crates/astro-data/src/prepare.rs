//! Preparing a corpus of any size for training, with memory that does not grow with it: the
//! vocabulary (a character set, or a byte-level BPE trained on a bounded sample) and the token
//! cache, each made in one streaming pass and kept in the cache directory for the next run.
//!
//! A pass reads the corpus in chunks of about 1 MB on one thread ([`CorpusFiles::read`]) while the
//! chunks are worked on in parallel batches on every core (rayon) and their results written in
//! order; at most a few batches are in memory at once. A progress bar shows MB/s and the time left.
//! Files are written under temporary names and renamed into place once complete, so an interrupted
//! pass leaves nothing a later run would trust.

use std::collections::BTreeSet;
use std::io::{BufWriter, Seek};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::corpus::warn_replaced;
use crate::error::DataError;
use crate::fsutil::{cache_dir, tempfile_in};
use crate::stream::{CHUNK_BYTES, Chunk, CorpusFiles, Part, ReadStats, Split};
use crate::tokenizer::{CharTokenizer, HfTokenizer, Tokenizer, TokenizerSpec, load_tokenizer};
use crate::tokens::{TokenFile, TokenWriter};

/// Asked between batches: `true` stops a pass with [`DataError::Cancelled`] (a stop signal).
pub type Cancel<'a> = dyn Fn() -> bool + Sync + 'a;

/// A bar on stderr (drawn only on a terminal) over the corpus's bytes on disk.
fn progress(label: &str, total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    bar.set_message(label.to_string());
    bar
}

/// One pass over `files`: `map` runs on every chunk in parallel batches, `sink` takes each chunk
/// and its result in corpus order.
fn par_pass<T: Send>(
    files: &CorpusFiles,
    label: &str,
    cancel: &Cancel<'_>,
    map: impl Fn(&Chunk) -> Result<T, DataError> + Sync,
    mut sink: impl FnMut(Chunk, T) -> Result<(), DataError>,
) -> Result<ReadStats, DataError> {
    let batch = 2 * rayon::current_num_threads().max(1);
    let bar = progress(label, files.total_bytes());
    let outcome = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(batch);
        let reader =
            scope.spawn(move || files.read(CHUNK_BYTES, &mut |c| tx.send(c).map_err(|_| DataError::Cancelled)));
        let worked = (|| {
            while let Ok(first) = rx.recv() {
                let mut chunks = vec![first];
                while chunks.len() < batch {
                    match rx.try_recv() {
                        Ok(c) => chunks.push(c),
                        Err(_) => break,
                    }
                }
                if cancel() {
                    return Err(DataError::Cancelled);
                }
                let results: Vec<Result<T, DataError>> = chunks.par_iter().map(&map).collect();
                for (chunk, result) in chunks.into_iter().zip(results) {
                    bar.set_position(chunk.consumed);
                    sink(chunk, result?)?;
                }
            }
            Ok(())
        })();
        // A reader blocked on the full channel sees it closed and stops.
        drop(rx);
        let read = reader.join().expect("the corpus reader does not panic");
        match (worked, read) {
            (Err(e), _) => Err(e),
            (Ok(()), read) => read,
        }
    });
    bar.finish_and_clear();
    outcome
}

/// A file written under a temporary name in the cache, removed unless [`Temp::keep_as`] renames it.
struct Temp {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Temp {
    fn new(dir: &Path, target: &Path) -> Result<Self, DataError> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::write(dir, e))?;
        let (path, file) = tempfile_in(dir, target)?;
        Ok(Temp { path, file: Some(file) })
    }

    fn take(&mut self) -> std::fs::File {
        self.file.take().expect("taken once")
    }

    /// Syncs `file` (this temporary file, written) and moves it to `target`.
    fn keep_as(mut self, file: std::fs::File, target: &Path) -> Result<(), DataError> {
        file.sync_all().map_err(|e| DataError::write(&self.path, e))?;
        drop(file);
        std::fs::rename(&self.path, target).map_err(|e| DataError::write(target, e))?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The tokenizer `spec` describes for `files`: a character vocabulary of the whole corpus, a BPE
/// trained on a sample of its training text, or a `tokenizer.json`. Vocabularies built here are
/// kept in the cache (`tokenizers/`, keyed by the corpus and the spec) for later runs.
pub fn tokenizer_for(
    spec: &TokenizerSpec,
    files: &CorpusFiles,
    cancel: &Cancel<'_>,
) -> Result<Box<dyn Tokenizer>, DataError> {
    tokenizer_in(&cache_dir(), spec, files, cancel)
}

fn tokenizer_in(
    cache: &Path,
    spec: &TokenizerSpec,
    files: &CorpusFiles,
    cancel: &Cancel<'_>,
) -> Result<Box<dyn Tokenizer>, DataError> {
    if let TokenizerSpec::File { path } = spec {
        return load_tokenizer(path);
    }
    let key: String = {
        let mut h = Sha256::new();
        h.update(files.fingerprint());
        h.update(serde_json::to_string(spec).expect("spec serialises"));
        h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
    };
    let path = cache.join("tokenizers").join(format!("{key}.json"));
    if path.is_file() {
        match load_tokenizer(&path) {
            Ok(t) => return Ok(t),
            Err(e) => tracing::warn!("{e}; building the vocabulary again"),
        }
    }
    let tokenizer: Box<dyn Tokenizer> = match spec {
        TokenizerSpec::Char => Box::new(char_vocabulary(files, cancel)?),
        TokenizerSpec::Bpe { vocab_size, sample_bytes, sample_seed } => {
            Box::new(train_bpe(files, *vocab_size, *sample_bytes, *sample_seed, cancel)?)
        }
        TokenizerSpec::File { .. } => unreachable!("loaded above"),
    };
    tokenizer.save(&path)?;
    Ok(tokenizer)
}

/// The sorted character set of every chunk (training and validation, as nanoGPT's vocabulary).
fn char_vocabulary(files: &CorpusFiles, cancel: &Cancel<'_>) -> Result<CharTokenizer, DataError> {
    let mut ascii = [false; 128];
    let mut other = BTreeSet::new();
    let t0 = Instant::now();
    let stats = par_pass(
        files,
        "characters",
        cancel,
        |c| {
            let mut seen = [false; 128];
            let mut rest = BTreeSet::new();
            for &b in c.text.as_bytes().iter().filter(|b| b.is_ascii()) {
                seen[b as usize] = true;
            }
            if !c.text.is_ascii() {
                rest.extend(c.text.chars().filter(|ch| !ch.is_ascii()));
            }
            Ok((seen, rest))
        },
        |_, (seen, rest)| {
            ascii.iter_mut().zip(seen).for_each(|(a, s)| *a |= s);
            other.extend(rest);
            Ok(())
        },
    )?;
    warn_replaced(files, &stats);
    let mut set: BTreeSet<char> = (0u8..128).filter(|&b| ascii[b as usize]).map(char::from).collect();
    set.extend(other);
    if set.is_empty() {
        return Err(empty(files));
    }
    let seconds = t0.elapsed().as_secs_f64();
    eprintln!(
        "read the {} characters of {}: {:.1} MB of text in {seconds:.1} s ({:.1} MB/s)",
        set.len(),
        files.name,
        stats.text_bytes as f64 / 1e6,
        stats.text_bytes as f64 / 1e6 / seconds.max(1e-9)
    );
    Ok(CharTokenizer::from_chars(set))
}

fn empty(files: &CorpusFiles) -> DataError {
    let path = files.main.first().map(|f| f.path.clone()).unwrap_or_default();
    DataError::Empty { path, detail: String::new() }
}

/// A byte-level BPE trained on up to `sample_bytes` of the training text: chunks drawn uniformly
/// with a seeded reservoir (Algorithm R), fed to the trainer in corpus order. For a text stream
/// split by position, the training text is the first `1 − val_fraction` of the bytes when the files
/// are uncompressed (their sizes known in advance); of compressed streams the whole is sampled.
fn train_bpe(
    files: &CorpusFiles,
    vocab_size: usize,
    sample_bytes: u64,
    seed: u64,
    cancel: &Cancel<'_>,
) -> Result<HfTokenizer, DataError> {
    let slots = (sample_bytes as usize).div_ceil(CHUNK_BYTES).max(1);
    let train_bytes = match files.split {
        Split::Position { val_fraction } if files.uncompressed() => {
            Some((files.total_bytes() as f64 * (1.0 - val_fraction)) as u64)
        }
        _ => None,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut reservoir: Vec<(u64, String)> = Vec::with_capacity(slots);
    let (mut seen, mut offset) = (0u64, 0u64);
    let bar = progress("BPE sample", files.total_bytes());
    let t0 = Instant::now();
    let stats = files.read(CHUNK_BYTES, &mut |chunk| {
        bar.set_position(chunk.consumed);
        let start = offset;
        offset += chunk.text.len() as u64;
        if chunk.part != Part::Train || train_bytes.is_some_and(|end| start >= end) {
            return Ok(());
        }
        if cancel() {
            return Err(DataError::Cancelled);
        }
        if reservoir.len() < slots {
            reservoir.push((seen, chunk.text));
        } else {
            let j = rng.random_range(0..=seen) as usize;
            if j < slots {
                reservoir[j] = (seen, chunk.text);
            }
        }
        seen += 1;
        Ok(())
    })?;
    bar.finish_and_clear();
    warn_replaced(files, &stats);
    if reservoir.is_empty() {
        return Err(empty(files));
    }
    reservoir.sort_by_key(|(i, _)| *i);
    let bytes: usize = reservoir.iter().map(|(_, t)| t.len()).sum();
    let tokenizer = HfTokenizer::train_bpe_on(reservoir.iter().flat_map(|(_, t)| t.lines()), vocab_size)?;
    eprintln!(
        "trained a byte-level BPE of {vocab_size} tokens on {:.1} MB of {} ({} of {seen} pieces) in {:.1} s",
        bytes as f64 / 1e6,
        files.name,
        reservoir.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(tokenizer)
}

/// Encodes `files` with `tokenizer` once, in parallel, into a token file in the cache (keyed by the
/// corpus's and the tokenizer's fingerprints), and returns it memory-mapped. Validation text
/// (documents split off, or validation files) follows the training tokens and the file says where
/// it begins.
pub fn tokenize_cached(
    files: &CorpusFiles,
    tokenizer: &dyn Tokenizer,
    cancel: &Cancel<'_>,
) -> Result<TokenFile, DataError> {
    tokenize_in(&cache_dir(), files, tokenizer, cancel)
}

fn tokenize_in(
    cache: &Path,
    files: &CorpusFiles,
    tokenizer: &dyn Tokenizer,
    cancel: &Cancel<'_>,
) -> Result<TokenFile, DataError> {
    let name = format!("{}-{}.tokens", &files.fingerprint()[..16], &tokenizer.fingerprint()[..16]);
    let dir = cache.join("tokens");
    let path = dir.join(&name);
    if path.is_file() {
        match TokenFile::open(&path) {
            Ok(t) => return Ok(t),
            Err(e) => tracing::warn!("{e}; re-tokenising"),
        }
    }
    let t0 = Instant::now();
    let mut main_tmp = Temp::new(&dir, &path)?;
    let mut val_tmp = Temp::new(&dir, &dir.join(format!("{name}.val")))?;
    let werr = |e: std::io::Error| DataError::write(&path, e);
    let mut main =
        TokenWriter::new(BufWriter::with_capacity(1 << 20, main_tmp.take()), tokenizer.vocab_size()).map_err(werr)?;
    let mut val =
        TokenWriter::new(BufWriter::with_capacity(1 << 20, val_tmp.take()), tokenizer.vocab_size()).map_err(werr)?;
    let stats = par_pass(
        files,
        "tokenizing",
        cancel,
        |c| tokenizer.encode(&c.text),
        |c, ids| match c.part {
            Part::Train => main.write(&ids).map_err(werr),
            Part::Val => val.write(&ids).map_err(werr),
        },
    )?;
    warn_replaced(files, &stats);
    let (train_count, val_count) = (main.count(), val.count());
    if train_count + val_count == 0 {
        return Err(empty(files));
    }
    // The validation tokens follow the training ones.
    let written = val.finish(None).map_err(werr)?.into_inner().map_err(|e| DataError::write(&path, e.error()))?;
    drop(written);
    let mut val_file = std::fs::File::open(&val_tmp.path).map_err(werr)?;
    val_file.seek(std::io::SeekFrom::Start(crate::tokens::HEADER_V2 as u64)).map_err(werr)?;
    main.append_raw(&mut val_file, val_count).map_err(werr)?;
    drop(val_file);
    let val_start = match files.split {
        Split::Position { .. } => None,
        Split::Documents { .. } | Split::ValFiles => Some(train_count),
    };
    let file = main.finish(val_start).map_err(werr)?.into_inner().map_err(|e| DataError::write(&path, e.error()))?;
    main_tmp.keep_as(file, &path)?;
    let seconds = t0.elapsed().as_secs_f64();
    eprintln!(
        "tokenized {}: {:.1} MB of text in {seconds:.1} s ({:.1} MB/s, {} threads) → {} tokens{} in {}",
        files.name,
        stats.text_bytes as f64 / 1e6,
        stats.text_bytes as f64 / 1e6 / seconds.max(1e-9),
        rayon::current_num_threads(),
        train_count + val_count,
        if val_start.is_some() { format!(" ({val_count} validation)") } else { String::new() },
        path.display()
    );
    TokenFile::open(&path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CorpusSpec;
    use crate::tokens::split;

    fn all(t: &TokenFile, range: std::ops::Range<usize>) -> Vec<u32> {
        range.map(|i| t.get(i)).collect()
    }

    /// The streamed, parallel, cached tokens of a text file are the whole text's encoding, split
    /// by position exactly as before (the recipe's tokens do not change).
    #[test]
    fn streamed_char_tokens_equal_the_whole_texts_and_are_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let text: String = (0..30_000).map(|i| format!("{i} neurons ünd astrocytes\n")).collect();
        let path = dir.path().join("c.txt");
        std::fs::write(&path, &text).unwrap();
        let files = CorpusSpec::file(&path).files(0.1).unwrap();
        let tokenizer = tokenizer_in(&cache, &TokenizerSpec::Char, &files, &|| false).unwrap();
        let whole = CharTokenizer::from_text(&text);
        assert_eq!(tokenizer.fingerprint(), whole.fingerprint());
        let tokens = tokenize_in(&cache, &files, tokenizer.as_ref(), &|| false).unwrap();
        assert_eq!(all(&tokens, 0..tokens.len()), whole.encode(&text).unwrap());
        assert_eq!(tokens.val_start(), None);
        assert_eq!(tokens.split(0.1), split(tokens.len(), 0.1));
        // The second time both come from the cache, untouched.
        let modified = std::fs::metadata(tokens.path()).unwrap().modified().unwrap();
        let again = tokenize_in(&cache, &files, tokenizer.as_ref(), &|| panic!("no pass")).unwrap();
        assert_eq!(std::fs::metadata(again.path()).unwrap().modified().unwrap(), modified);
        tokenizer_in(&cache, &TokenizerSpec::Char, &files, &|| panic!("no pass")).unwrap();
    }

    #[test]
    fn documents_split_into_training_then_validation_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let docs: Vec<String> = (0..300).map(|i| format!("doc {i} text")).collect();
        let lines: String = docs.iter().map(|d| format!("{{\"text\": {d:?}}}\n")).collect();
        std::fs::write(dir.path().join("d.jsonl"), lines).unwrap();
        let files = CorpusSpec::file(dir.path().join("d.jsonl")).files(0.2).unwrap();
        let tokenizer = tokenizer_in(&cache, &TokenizerSpec::Char, &files, &|| false).unwrap();
        let tokens = tokenize_in(&cache, &files, tokenizer.as_ref(), &|| false).unwrap();
        let (train, val) = tokens.split(0.9);
        assert_eq!(Some(train.end), tokens.val_start(), "the file's boundary, not the fraction");
        let val_text: Vec<String> =
            (0..300).filter(|&i| crate::stream::document_validates(i, 0.2)).map(|i| docs[i as usize].clone()).collect();
        let val_text = val_text.join(crate::stream::DOCUMENT_SEPARATOR);
        assert_eq!(tokenizer.decode(&all(&tokens, val)).unwrap(), val_text);
    }

    #[test]
    fn a_stopped_pass_leaves_nothing_in_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::write(dir.path().join("c.txt"), "abc\n".repeat(1000)).unwrap();
        let files = CorpusSpec::file(dir.path().join("c.txt")).files(0.1).unwrap();
        let tokenizer = tokenizer_in(&cache, &TokenizerSpec::Char, &files, &|| false).unwrap();
        let err = tokenize_in(&cache, &files, tokenizer.as_ref(), &|| true).unwrap_err();
        assert!(matches!(err, DataError::Cancelled), "{err}");
        let left: Vec<_> = std::fs::read_dir(cache.join("tokens")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// BPE trains on a bounded sample of the training text; the same corpus and seed give the same
    /// vocabulary, another seed another sample.
    #[test]
    fn bpe_vocabulary_from_a_bounded_sample_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        // Words of two to four syllables: thousands of distinct words, plenty of merges.
        let syllables = ["as", "tro", "cy", "te", "neu", "ron", "cal", "ci", "um", "syn", "ap", "se", "gli", "a"];
        let mut state = 7u64;
        let mut text = String::new();
        while text.len() < 3 * CHUNK_BYTES {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            for k in 0..2 + (state >> 60) % 3 {
                text.push_str(syllables[(state >> (8 * k + 3)) as usize % syllables.len()]);
            }
            text.push(if state.is_multiple_of(11) { '\n' } else { ' ' });
        }
        std::fs::write(dir.path().join("w.txt"), &text).unwrap();
        let files = CorpusSpec::file(dir.path().join("w.txt")).files(0.1).unwrap();
        let bpe = |seed: u64| {
            let t = train_bpe(&files, 300, CHUNK_BYTES as u64, seed, &|| false).unwrap();
            (t.vocab_size(), t.fingerprint())
        };
        let (a, b, c) = (bpe(1), bpe(1), bpe(2));
        assert_eq!(a, b);
        assert_eq!(a.0, 300);
        assert_ne!(a.1, c.1, "another seed draws another sample");
    }
}
