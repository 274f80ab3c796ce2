//! Tokenised corpora: encoded once into a binary file in the cache (u16 ids when the vocabulary
//! fits, u32 otherwise), memory-mapped for training, split 90/10 like nanoGPT.

use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::corpus::Corpus;
use crate::error::DataError;
use crate::fsutil::{cache_dir, write_atomic};
use crate::tokenizer::Tokenizer;

const MAGIC: &[u8; 8] = b"ASTROTK1";
const HEADER: usize = 24; // magic, id width (1 byte + 7 padding), token count (u64 LE)

/// Token ids of a corpus, memory-mapped from the cache.
pub struct TokenFile {
    map: Mmap,
    width: usize,
    len: usize,
    path: PathBuf,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenFile({}, {} tokens × u{})", self.path.display(), self.len, self.width * 8)
    }
}

impl TokenFile {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Token `i`.
    pub fn get(&self, i: usize) -> u32 {
        let at = HEADER + i * self.width;
        let b = &self.map[at..at + self.width];
        match self.width {
            2 => u16::from_le_bytes([b[0], b[1]]) as u32,
            _ => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }

    /// Appends tokens `range` to `out` as i64 (Burn's Int element).
    pub fn extend_into(&self, range: Range<usize>, out: &mut Vec<i64>) {
        out.extend(range.map(|i| self.get(i) as i64));
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens and validates a token file.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let file = std::fs::File::open(path).map_err(|e| DataError::read(path, e))?;
        // SAFETY: the cache file is written once, atomically, and never modified in place.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::read(path, e))?;
        let bad = |why: &str| DataError::read(path, format!("corrupt token cache ({why}); delete it to rebuild"));
        if map.len() < HEADER || &map[..8] != MAGIC {
            return Err(bad("bad header"));
        }
        let width = map[8] as usize;
        if width != 2 && width != 4 {
            return Err(bad("bad id width"));
        }
        let len = u64::from_le_bytes(map[16..24].try_into().expect("8 bytes")) as usize;
        // Checked: a corrupt count near 2^64 must not wrap around to the file's length.
        if len.checked_mul(width).and_then(|n| n.checked_add(HEADER)) != Some(map.len()) {
            return Err(bad("length does not match"));
        }
        Ok(Self { map, width, len, path: path.to_path_buf() })
    }
}

/// Encodes `corpus` with `tokenizer` once, caching the ids under the cache directory keyed by the
/// corpus's and the tokenizer's digests, and returns the memory-mapped file.
pub fn tokenize_cached(corpus: &Corpus, tokenizer: &dyn Tokenizer) -> Result<TokenFile, DataError> {
    let name = format!("{}-{}.tokens", &corpus.sha256[..16], &tokenizer.fingerprint()[..16]);
    let path = cache_dir().join("tokens").join(name);
    if path.is_file() {
        match TokenFile::open(&path) {
            Ok(t) => return Ok(t),
            Err(e) => tracing::warn!("{e}; re-tokenising"),
        }
    }
    let ids = tokenizer.encode(&corpus.text)?;
    let width = if tokenizer.vocab_size() <= u16::MAX as usize + 1 { 2 } else { 4 };
    let mut bytes = Vec::with_capacity(HEADER + ids.len() * width);
    bytes.extend_from_slice(MAGIC);
    bytes.push(width as u8);
    bytes.extend_from_slice(&[0; 7]);
    bytes.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for id in ids {
        match width {
            2 => bytes.extend_from_slice(&(id as u16).to_le_bytes()),
            _ => bytes.extend_from_slice(&id.to_le_bytes()),
        }
    }
    write_atomic(&path, &bytes)?;
    TokenFile::open(&path)
}

/// Train and validation ranges: the first `1 − val_fraction` of the tokens train, the rest
/// validate (for char-level tinyshakespeare exactly nanoGPT's 1,003,854 / 111,540).
pub fn split(len: usize, val_fraction: f64) -> (Range<usize>, Range<usize>) {
    let train = (len as f64 * (1.0 - val_fraction)) as usize;
    (0..train, train..len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seen while writing the fuzz target for this loader (not found by the fuzzer): a header whose
    /// token count times the id width wraps around to the file's length.
    #[test]
    fn a_token_count_that_overflows_is_corrupt_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tokens");
        let mut bytes = MAGIC.to_vec();
        bytes.extend([2, 0, 0, 0, 0, 0, 0, 0]);
        bytes.extend((1u64 << 63).to_le_bytes()); // × 2 wraps to 0 = the body's length
        std::fs::write(&path, &bytes).unwrap();
        let Err(err) = TokenFile::open(&path) else { panic!("accepted") };
        let err = err.to_string();
        assert!(err.contains("corrupt token cache"), "{err}");
    }

    #[test]
    fn nanogpt_split_of_tinyshakespeare() {
        let (train, val) = split(1_115_394, 0.1);
        assert_eq!(train.len(), 1_003_854);
        assert_eq!(val.len(), 111_540);
    }
}
