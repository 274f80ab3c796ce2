//! Corpora: files, directories and lists of them (text, JSON Lines, compressed), or a named dataset
//! from the manifest (`datasets/manifest.toml`), resolved offline first and downloaded only as a
//! last resort. How they are read in bounded pieces is [`crate::stream`].

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::DataError;
use crate::fsutil::{cache_dir, tempfile_in};
use crate::stream::{BadLines, CorpusFiles, Format, JsonlOptions, SourceFile, Split};
use crate::tokenizer::digest;

/// The manifest of named datasets, compiled in.
const MANIFEST: &str = include_str!("../../../datasets/manifest.toml");

/// One named dataset.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetEntry {
    /// File name under `$ASTRO_DATA_DIR` and the cache.
    pub file: String,
    /// Download URL.
    pub url: String,
    /// Member to extract when `url` is a zip archive.
    #[serde(default)]
    pub member: Option<String>,
    /// sha256 of the file itself.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// License of the text.
    pub license: String,
    /// What it is.
    pub description: String,
}

/// The environment variable naming a manifest of one's own (same form as `datasets/manifest.toml`):
/// a lab's corpora on its own mirror, say. Its entries are added to the built-in ones and replace
/// those of the same name.
pub const MANIFEST_ENV: &str = "ASTRO_DATASETS_MANIFEST";

/// All named datasets: the built-in manifest, plus the entries of `$ASTRO_DATASETS_MANIFEST`.
pub fn manifest() -> Result<BTreeMap<String, DatasetEntry>, DataError> {
    let mut all: BTreeMap<String, DatasetEntry> =
        toml::from_str(MANIFEST).expect("datasets/manifest.toml is valid (checked by a test)");
    if let Some(path) = std::env::var_os(MANIFEST_ENV).filter(|p| !p.is_empty()).map(PathBuf::from) {
        let bad = |reason: String| DataError::Manifest { path: path.clone(), reason };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let own: BTreeMap<String, DatasetEntry> = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        all.extend(own);
    }
    Ok(all)
}

/// Where a corpus comes from and how it is read (the `[data]` keys that name it): a named dataset
/// and/or a `path` (a file or a directory, searched recursively), or a list of `paths`; a
/// `val_path` that validates; the format of the files and, for JSON Lines, the text field and what
/// to do with lines that lack it. See [`crate::stream`] for how each form is read and split.
#[derive(Debug, Clone, PartialEq)]
pub struct CorpusSpec {
    /// A named dataset from the manifest.
    pub dataset: Option<String>,
    /// A file or a directory (for a named dataset: its explicit location).
    pub path: Option<PathBuf>,
    /// Several files or directories, read in this order (instead of `path`).
    pub paths: Vec<PathBuf>,
    /// A file or directory that validates (then all of the corpus trains).
    pub val_path: Option<PathBuf>,
    /// Text or JSON Lines (by file name when `auto`).
    pub format: Format,
    /// JSON Lines: the string field holding a document's text.
    pub text_field: String,
    /// JSON Lines: lines that are not JSON objects with that field fail the run or are skipped.
    pub bad_lines: BadLines,
}

impl Default for CorpusSpec {
    fn default() -> Self {
        CorpusSpec {
            dataset: None,
            path: None,
            paths: Vec::new(),
            val_path: None,
            format: Format::Auto,
            text_field: "text".into(),
            bad_lines: BadLines::Fail,
        }
    }
}

/// A corpus read into memory (for the commands that work on small texts; training streams).
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Human description (dataset name or path).
    pub name: String,
    /// The text (invalid UTF-8 replaced by U+FFFD, see [`Corpus::replaced`]; validation files after
    /// the rest).
    pub text: String,
    /// Number of invalid UTF-8 sequences replaced by U+FFFD.
    pub replaced: usize,
}

impl CorpusSpec {
    /// A text file or directory.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        CorpusSpec { path: Some(path.into()), ..Self::default() }
    }

    /// A named dataset.
    pub fn named(name: impl Into<String>) -> Self {
        CorpusSpec { dataset: Some(name.into()), ..Self::default() }
    }

    /// Finds the corpus's files (named datasets are downloaded if nowhere else) and how they split
    /// into train and validation.
    pub fn files(&self, val_fraction: f64) -> Result<CorpusFiles, DataError> {
        let explicit: Vec<PathBuf> = match (&self.path, self.paths.is_empty()) {
            (Some(_), false) => {
                return Err(DataError::Config {
                    field: "data.paths".into(),
                    reason: "give data.path (one file or directory) or data.paths (a list), not both".into(),
                });
            }
            (Some(p), true) => vec![p.clone()],
            (None, _) => self.paths.clone(),
        };
        let (roots, name) = match (&self.dataset, explicit.is_empty()) {
            (None, true) => {
                return Err(DataError::Config {
                    field: "data.dataset".into(),
                    reason: "set `dataset` (a named corpus), `path` (a file or directory) or `paths` (a list)".into(),
                });
            }
            (Some(name), true) => {
                let mut known = manifest()?;
                let entry = known.remove(name).ok_or_else(|| DataError::UnknownDataset {
                    name: name.clone(),
                    known: known.keys().cloned().collect::<Vec<_>>().join(", "),
                })?;
                (vec![resolve(name, &entry)?], name.clone())
            }
            (Some(name), false) => (explicit, name.clone()),
            (None, false) => (explicit, self.describe()),
        };
        let mut main = Vec::new();
        for root in &roots {
            main.extend(SourceFile::expand(root, self.format)?);
        }
        let val = match &self.val_path {
            Some(p) => SourceFile::expand(p, self.format)?,
            None => Vec::new(),
        };
        let documents = main.iter().any(|f| f.kind == crate::stream::FileKind::Jsonl);
        let split = match (val.is_empty(), documents) {
            (false, _) => Split::ValFiles,
            (true, true) => Split::Documents { val_fraction },
            (true, false) => Split::Position { val_fraction },
        };
        let jsonl = JsonlOptions { text_field: self.text_field.clone(), bad_lines: self.bad_lines };
        Ok(CorpusFiles { name, main, val, jsonl, split })
    }

    /// Finds and reads the whole corpus into memory; named datasets are downloaded if nowhere else.
    pub fn load(&self) -> Result<Corpus, DataError> {
        let files = self.files(0.1)?;
        let (text, stats) = files.read_to_string()?;
        if text.is_empty() {
            let path = files.main.first().map(|f| f.path.clone()).unwrap_or_default();
            return Err(DataError::Empty { path, detail: String::new() });
        }
        warn_replaced(&files, &stats);
        Ok(Corpus { name: files.name, text, replaced: stats.replaced as usize })
    }

    /// One-line description.
    pub fn describe(&self) -> String {
        match (&self.dataset, &self.path, self.paths.as_slice()) {
            (Some(name), _, _) => name.clone(),
            (None, Some(p), _) => p.display().to_string(),
            (None, None, [one]) => one.display().to_string(),
            (None, None, [first, rest @ ..]) if !rest.is_empty() => {
                format!("{} and {} more", first.display(), rest.len())
            }
            _ => "unset".into(),
        }
    }
}

/// Says on stderr how many invalid UTF-8 sequences and skipped lines a pass over `files` met.
pub fn warn_replaced(files: &CorpusFiles, stats: &crate::stream::ReadStats) {
    if stats.replaced > 0 {
        eprintln!(
            "warning: {}: {} invalid UTF-8 sequence(s) replaced by U+FFFD (character-level vocabularies gain one \
             symbol; byte-level BPE encodes it as its three bytes)",
            files.name, stats.replaced
        );
    }
    if stats.skipped_lines > 0 {
        eprintln!(
            "warning: {}: {} JSON Lines line(s) skipped (not JSON objects with a string field `{}`; data.bad_lines = \"skip\")",
            files.name, stats.skipped_lines, files.jsonl.text_field
        );
    }
}

/// Finds a named dataset offline ($ASTRO_DATA_DIR, then the cache) or downloads it into the cache.
pub fn resolve(name: &str, entry: &DatasetEntry) -> Result<PathBuf, DataError> {
    if let Some(dir) = std::env::var_os("ASTRO_DATA_DIR").filter(|d| !d.is_empty()) {
        let path = PathBuf::from(dir).join(&entry.file);
        if path.is_file() {
            return Ok(path);
        }
    }
    let cached = cache_dir().join("datasets").join(&entry.file);
    if cached.is_file() {
        return Ok(cached);
    }
    download(name, entry, &cached).map_err(|reason| DataError::NotAvailable {
        name: name.into(),
        file: entry.file.clone(),
        reason,
        data_dir: std::env::var("ASTRO_DATA_DIR").unwrap_or_else(|_| "unset".into()),
        cache: cached.parent().map(Path::to_path_buf).unwrap_or_default(),
    })?;
    Ok(cached)
}

/// Downloads `entry` to `dest` with a progress bar, extracting the archive member if any, and
/// checks the sha256 before moving the file into place.
fn download(name: &str, entry: &DatasetEntry, dest: &Path) -> Result<(), String> {
    if std::env::var_os("ASTRO_OFFLINE").is_some_and(|v| !v.is_empty() && v != "0") {
        return Err("downloads are disabled ($ASTRO_OFFLINE is set)".into());
    }
    let dir = dest.parent().ok_or("bad cache path")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let url = download_url(entry);
    eprintln!("downloading {name} from {url}");
    fetch(&url, entry, dest)
}

/// Fetches `url` into `dest` (extracting `entry.member` from a zip archive), verifying the sha256
/// before an atomic move into place.
fn fetch(url: &str, entry: &DatasetEntry, dest: &Path) -> Result<(), String> {
    let dir = dest.parent().ok_or("bad cache path")?;
    let mut response = ureq::get(url).call().map_err(|e| format!("{url}: {e}"))?;
    let total = response.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let bar = indicatif::ProgressBar::new(total.unwrap_or(entry.bytes));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {bar:40} {bytes_per_sec} eta {eta}")
            .expect("valid template"),
    );
    let mut body = Vec::new();
    bar.wrap_read(response.body_mut().as_reader()).read_to_end(&mut body).map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    let bytes = match &entry.member {
        None => body,
        Some(member) => {
            let mut archive = zip::ZipArchive::new(std::io::Cursor::new(body)).map_err(|e| e.to_string())?;
            let mut file = archive.by_name(member).map_err(|e| format!("{member} not in archive: {e}"))?;
            let mut out = Vec::new();
            file.read_to_end(&mut out).map_err(|e| e.to_string())?;
            out
        }
    };
    let actual = digest(&bytes);
    if actual != entry.sha256 {
        return Err(format!("downloaded file has sha256 {actual}, expected {}", entry.sha256));
    }
    let (tmp, mut file) = tempfile_in(dir, dest).map_err(|e| e.to_string())?;
    file.write_all(&bytes).and_then(|_| file.sync_all()).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, dest).map_err(|e| e.to_string())
}

/// The URL to fetch: the manifest's, or the same file name under `$ASTRO_DATASETS_MIRROR`
/// (a local or institutional mirror holding the files under their original names).
fn download_url(entry: &DatasetEntry) -> String {
    match std::env::var("ASTRO_DATASETS_MIRROR").ok().filter(|m| !m.is_empty()) {
        Some(mirror) => {
            let file = entry.url.rsplit('/').next().unwrap_or(&entry.file);
            format!("{}/{file}", mirror.trim_end_matches('/'))
        }
        None => entry.url.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn manifest_parses_and_names_the_shared_files() {
        let m: BTreeMap<String, DatasetEntry> = toml::from_str(MANIFEST).unwrap();
        assert_eq!(m["tinyshakespeare"].bytes, 1_115_394);
        assert!(m.contains_key("wikitext2-valid"));
    }

    /// Serves `body` once on 127.0.0.1.
    fn serve_once(body: Vec<u8>) -> String {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut stream, &mut buf);
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        format!("http://{addr}/archive.zip")
    }

    #[test]
    fn archive_member_is_extracted_and_checked() {
        let member = b"a small corpus inside an archive\n".repeat(10);
        let mut zipped = std::io::Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut zipped);
            let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            w.start_file("corpus/wiki.valid.tokens", opts).unwrap();
            w.write_all(&member).unwrap();
            w.finish().unwrap();
        }
        let entry = DatasetEntry {
            file: "x.txt".into(),
            url: "unused".into(),
            member: Some("corpus/wiki.valid.tokens".into()),
            sha256: digest(&member),
            bytes: member.len() as u64,
            license: "test".into(),
            description: "test".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.txt");
        fetch(&serve_once(zipped.get_ref().clone()), &entry, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), member);
        let wrong = DatasetEntry { sha256: "0".repeat(64), ..entry };
        let err = fetch(&serve_once(zipped.into_inner()), &wrong, &dir.path().join("y.txt")).unwrap_err();
        assert!(err.contains("sha256") && !dir.path().join("y.txt").exists(), "{err}");
    }

    #[test]
    fn invalid_utf8_is_replaced_and_counted() {
        let (text, n) = crate::stream::decode_lossy(b"ab\xffcd\xfe\xfe");
        assert_eq!(text, "ab\u{FFFD}cd\u{FFFD}\u{FFFD}");
        assert_eq!(n, 3);
    }

    #[test]
    fn directories_concatenate_text_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "world").unwrap();
        std::fs::write(dir.path().join("a.txt"), "hello ").unwrap();
        std::fs::write(dir.path().join("c.md"), "ignored").unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/d.txt"), "!").unwrap();
        let c = CorpusSpec::file(dir.path()).load().unwrap();
        assert_eq!(c.text, "hello world!", "sorted by path, recursively");
        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join("notes.csv"), "a,b").unwrap();
        let err = CorpusSpec::file(empty.path()).load().unwrap_err().to_string();
        assert!(err.contains("no text files in the directory"), "{err}");
    }
}
