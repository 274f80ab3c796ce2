//! Tokenised corpora: token ids in a binary file in the cache (u16 ids when the vocabulary fits,
//! u32 otherwise), memory-mapped for training. Version 2 files also say where the validation
//! tokens begin (a corpus split by document, or with a validation file); version 1 files (and
//! text streams) are split by position, 90/10 like nanoGPT.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::DataError;

const MAGIC_V1: &[u8; 8] = b"ASTROTK1";
const MAGIC_V2: &[u8; 8] = b"ASTROTK2";
const HEADER_V1: usize = 24; // magic, id width (1 byte + 7 padding), token count (u64 LE)
pub(crate) const HEADER_V2: usize = 32; // the same, then the first validation token (u64 LE; u64::MAX: none)

/// Token ids of a corpus, memory-mapped from the cache.
pub struct TokenFile {
    map: Mmap,
    header: usize,
    width: usize,
    len: usize,
    val_start: Option<usize>,
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
        let at = self.header + i * self.width;
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

    /// Where the validation tokens begin, when the file says (split by document or validation file).
    pub fn val_start(&self) -> Option<usize> {
        self.val_start
    }

    /// Train and validation ranges: as the file says, else the last `val_fraction` validate.
    pub fn split(&self, val_fraction: f64) -> (Range<usize>, Range<usize>) {
        match self.val_start {
            Some(v) => (0..v, v..self.len),
            None => split(self.len, val_fraction),
        }
    }

    /// Opens and validates a token file.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let file = std::fs::File::open(path).map_err(|e| DataError::read(path, e))?;
        // SAFETY: the cache file is written once, atomically, and never modified in place.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::read(path, e))?;
        let bad = |why: &str| DataError::read(path, format!("corrupt token cache ({why}); delete it to rebuild"));
        let header = match map.get(..8) {
            Some(m) if m == MAGIC_V1 => HEADER_V1,
            Some(m) if m == MAGIC_V2 => HEADER_V2,
            _ => return Err(bad("bad header")),
        };
        if map.len() < header {
            return Err(bad("bad header"));
        }
        let width = map[8] as usize;
        if width != 2 && width != 4 {
            return Err(bad("bad id width"));
        }
        let len = u64::from_le_bytes(map[16..24].try_into().expect("8 bytes")) as usize;
        // Checked: a corrupt count near 2^64 must not wrap around to the file's length.
        if len.checked_mul(width).and_then(|n| n.checked_add(header)) != Some(map.len()) {
            return Err(bad("length does not match"));
        }
        let val_start = match header {
            HEADER_V2 => match u64::from_le_bytes(map[24..32].try_into().expect("8 bytes")) {
                u64::MAX => None,
                v if v as usize <= len => Some(v as usize),
                _ => return Err(bad("validation start past the end")),
            },
            _ => None,
        };
        Ok(Self { map, header, width, len, val_start, path: path.to_path_buf() })
    }
}

/// Writes a version 2 token file: ids streamed in, the header completed at the end.
pub(crate) struct TokenWriter<W: Write + std::io::Seek> {
    out: W,
    width: usize,
    count: u64,
    buf: Vec<u8>,
}

impl<W: Write + std::io::Seek> TokenWriter<W> {
    /// A writer of ids of a vocabulary of `vocab` tokens.
    pub(crate) fn new(mut out: W, vocab: usize) -> std::io::Result<Self> {
        let width = if vocab <= u16::MAX as usize + 1 { 2 } else { 4 };
        out.write_all(&[0u8; HEADER_V2])?;
        Ok(Self { out, width, count: 0, buf: Vec::new() })
    }

    /// Appends ids.
    pub(crate) fn write(&mut self, ids: &[u32]) -> std::io::Result<()> {
        self.buf.clear();
        match self.width {
            2 => ids.iter().for_each(|&id| self.buf.extend_from_slice(&(id as u16).to_le_bytes())),
            _ => ids.iter().for_each(|&id| self.buf.extend_from_slice(&id.to_le_bytes())),
        }
        self.count += ids.len() as u64;
        self.out.write_all(&self.buf)
    }

    /// Ids written so far.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Appends `count` ids' bytes copied from `from` (a token file of the same width, positioned
    /// after its header).
    pub(crate) fn append_raw(&mut self, from: &mut impl std::io::Read, count: u64) -> std::io::Result<()> {
        let bytes = count * self.width as u64;
        let copied = std::io::copy(&mut std::io::Read::take(from, bytes), &mut self.out)?;
        if copied != bytes {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "token file cut short"));
        }
        self.count += count;
        Ok(())
    }

    /// Completes the header; returns the writer.
    pub(crate) fn finish(mut self, val_start: Option<u64>) -> std::io::Result<W> {
        let mut header = Vec::with_capacity(HEADER_V2);
        header.extend_from_slice(MAGIC_V2);
        header.push(self.width as u8);
        header.extend_from_slice(&[0; 7]);
        header.extend_from_slice(&self.count.to_le_bytes());
        header.extend_from_slice(&val_start.unwrap_or(u64::MAX).to_le_bytes());
        self.out.flush()?;
        self.out.seek(std::io::SeekFrom::Start(0))?;
        self.out.write_all(&header)?;
        self.out.flush()?;
        Ok(self.out)
    }
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
        let mut bytes = MAGIC_V1.to_vec();
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
