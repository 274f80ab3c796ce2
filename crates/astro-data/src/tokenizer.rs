//! Tokenizers: character-level (nanoGPT's `shakespeare_char`), byte-level BPE trained offline with
//! Hugging Face's `tokenizers`, and any existing `tokenizer.json`.
//!
//! Every tokenizer saves to one `tokenizer.json`: Hugging Face's format for BPE and loaded files,
//! and a small astro format (`{"astro_char_tokenizer": …}`) for the character vocabulary;
//! [`load_tokenizer`] tells them apart.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::error::DataError;

/// Which tokenizer to use, as written under `[data]`: `tokenizer = { kind = "char" }`,
/// `{ kind = "bpe", vocab_size = 2048 }` or `{ kind = "file", path = "tokenizer.json" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TokenizerSpec {
    /// One token per character; the vocabulary is the corpus's sorted character set.
    #[default]
    Char,
    /// Byte-level BPE trained on a sample of the training corpus.
    Bpe {
        /// Vocabulary size (at least 256 + 1: the byte alphabet and one merge).
        vocab_size: usize,
        /// Text the vocabulary is trained on: pieces of about 1 MB of the training text drawn
        /// uniformly (reservoir sampling) until this many bytes; all of it when it is smaller.
        #[serde(default = "default_sample_bytes")]
        sample_bytes: u64,
        /// Seed of that draw (the same corpus and seed give the same vocabulary).
        #[serde(default)]
        sample_seed: u64,
    },
    /// An existing Hugging Face `tokenizer.json`.
    File {
        /// Its path.
        path: std::path::PathBuf,
    },
}

/// The default BPE training sample: 100 MB (about a minute of training on 2 cores).
pub const DEFAULT_BPE_SAMPLE_BYTES: u64 = 100_000_000;

fn default_sample_bytes() -> u64 {
    DEFAULT_BPE_SAMPLE_BYTES
}

/// Text ↔ token ids.
pub trait Tokenizer: Send + Sync {
    /// Number of distinct token ids.
    fn vocab_size(&self) -> usize;
    /// Token ids of `text`; errors name the first character that cannot be encoded.
    fn encode(&self, text: &str) -> Result<Vec<u32>, DataError>;
    /// Text of `ids` (ids outside the vocabulary are an error).
    fn decode(&self, ids: &[u32]) -> Result<String, DataError>;
    /// Writes the tokenizer to `path` (a `tokenizer.json`).
    fn save(&self, path: &Path) -> Result<(), DataError>;
    /// One-line description, e.g. `char (65 symbols)`.
    fn describe(&self) -> String;
    /// A digest of the vocabulary: equal digests encode equally (keys the token cache and checks
    /// that a checkpoint and a tokenizer belong together).
    fn fingerprint(&self) -> String;
}

/// Character-level tokenizer: ids are the ranks of the characters in sorted order (nanoGPT).
#[derive(Debug, Clone, PartialEq)]
pub struct CharTokenizer {
    chars: Vec<char>,
    /// The id of each ASCII character (`u32::MAX` when not in the vocabulary): most text is ASCII,
    /// and a table lookup encodes it several times faster than a search.
    ascii: [u32; 128],
}

#[derive(Serialize, Deserialize)]
struct CharFile {
    astro_char_tokenizer: CharBody,
}

#[derive(Serialize, Deserialize)]
struct CharBody {
    chars: String,
}

impl CharTokenizer {
    /// The sorted set of characters of `text`.
    pub fn from_text(text: &str) -> Self {
        let set: BTreeSet<char> = text.chars().collect();
        Self::from_chars(set)
    }

    /// The vocabulary of a set of characters (sorted: ids are their ranks).
    pub fn from_chars(set: BTreeSet<char>) -> Self {
        let chars: Vec<char> = set.into_iter().collect();
        let mut ascii = [u32::MAX; 128];
        for (id, &c) in chars.iter().enumerate() {
            if c.is_ascii() {
                ascii[c as usize] = id as u32;
            }
        }
        Self { chars, ascii }
    }

    /// The vocabulary in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }
}

impl Tokenizer for CharTokenizer {
    fn vocab_size(&self) -> usize {
        self.chars.len()
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        let mut ids = Vec::with_capacity(text.len());
        for (position, ch) in text.chars().enumerate() {
            let id = match self.ascii.get(ch as usize) {
                Some(&id) if id != u32::MAX => Some(id),
                Some(_) => None,
                None => self.chars.binary_search(&ch).ok().map(|i| i as u32),
            };
            ids.push(id.ok_or_else(|| DataError::UnknownCharacter {
                ch,
                code: ch as u32,
                position,
                hint: "; the character-level vocabulary is the training corpus's character set".to_string(),
            })?);
        }
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        ids.iter()
            .map(|&id| self.chars.get(id as usize).copied().ok_or(DataError::BadToken { id, vocab: self.chars.len() }))
            .collect()
    }

    fn save(&self, path: &Path) -> Result<(), DataError> {
        let file = CharFile { astro_char_tokenizer: CharBody { chars: self.chars.iter().collect() } };
        let json = serde_json::to_string_pretty(&file).map_err(|e| DataError::write(path, e))?;
        crate::fsutil::write_atomic(path, json.as_bytes())
    }

    fn describe(&self) -> String {
        format!("char ({} symbols)", self.chars.len())
    }

    fn fingerprint(&self) -> String {
        digest(self.chars.iter().collect::<String>().as_bytes())
    }
}

/// A Hugging Face tokenizer (byte-level BPE trained here, or any loaded `tokenizer.json`).
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    json: String,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HfTokenizer({})", self.describe())
    }
}

impl HfTokenizer {
    /// Trains a byte-level BPE with `vocab_size` tokens on `text` (any bytes: the byte alphabet
    /// is always in the vocabulary, so every input can be encoded).
    pub fn train_bpe(text: &str, vocab_size: usize) -> Result<Self, DataError> {
        Self::train_bpe_on(text.lines(), vocab_size)
    }

    /// Trains a byte-level BPE with `vocab_size` tokens on `lines`.
    pub fn train_bpe_on<'a>(lines: impl Iterator<Item = &'a str> + Send, vocab_size: usize) -> Result<Self, DataError> {
        let alphabet = ByteLevel::alphabet();
        if vocab_size <= alphabet.len() {
            return Err(DataError::Config {
                field: "data.tokenizer.vocab_size".into(),
                reason: format!(
                    "a byte-level BPE needs more than the {} byte symbols, got {vocab_size}",
                    alphabet.len()
                ),
            });
        }
        let mut tokenizer = tokenizers::Tokenizer::new(ModelWrapper::BPE(BPE::default()));
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(alphabet.into_iter().collect())
            .build()
            .into();
        tokenizer.train(&mut trainer, lines).map_err(|e| DataError::Tokenize(e.to_string()))?;
        Self::from_tokenizer(tokenizer)
    }

    fn from_tokenizer(inner: tokenizers::Tokenizer) -> Result<Self, DataError> {
        // The model's embedding has `vocab_size` rows, so ids must be exactly 0..vocab_size−1:
        // a file with a repeated or too-large id (found by fuzzing) would index past the table.
        let n = inner.get_vocab_size(true);
        let mut seen = vec![false; n];
        let mut vocab: Vec<(String, u32)> = inner.get_vocab(true).into_iter().collect();
        vocab.sort_by_key(|(_, id)| *id);
        for (token, id) in &vocab {
            match seen.get_mut(*id as usize) {
                Some(s) if !*s => *s = true,
                Some(_) => {
                    return Err(DataError::Tokenize(format!(
                        "token id {id} is used twice (again by {token:?}); ids must be 0..{} once each",
                        n.saturating_sub(1)
                    )));
                }
                None => {
                    return Err(DataError::Tokenize(format!(
                        "token {token:?} has id {id}, outside the vocabulary of {n} tokens; ids must be 0..{} once each",
                        n.saturating_sub(1)
                    )));
                }
            }
        }
        let json = inner.to_string(false).map_err(|e| DataError::Tokenize(e.to_string()))?;
        Ok(Self { inner, json })
    }

    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::read(path, e))?;
        Self::from_json(&text).map_err(|reason| DataError::Tokenizer { path: path.into(), reason })
    }

    /// Token ids of `text` with the tokenizer's special tokens added by its post-processor
    /// (BERT's `[CLS] … [SEP]`), as encoders trained with them expect.
    pub fn encode_with_special_tokens(&self, text: &str) -> Result<Vec<u32>, DataError> {
        let encoding = self.inner.encode(text, true).map_err(|e| DataError::Tokenize(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The tokenizer without the padding and truncation its `tokenizer.json` may configure
    /// (BERT checkpoints pad every input to a fixed length), so that callers batch and truncate.
    pub fn without_padding_and_truncation(mut self) -> Self {
        self.inner.with_padding(None);
        // Removing truncation cannot fail (only setting a too-short one can).
        let _ = self.inner.with_truncation(None);
        self
    }

    /// The id of a token such as `[PAD]`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn from_json(text: &str) -> Result<Self, String> {
        // tokenizers 0.23 panics (`expect("Helper")` in its decoder deserializer) on some malformed
        // JSON instead of returning an error (found by fuzzing): check the syntax first, and turn any
        // other panic inside the library into an error.
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let parsed = std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>())
            .map_err(|_| "the tokenizers library could not read this file (it panicked; see above)".to_string())?;
        let inner = parsed.map_err(|e: tokenizers::Error| e.to_string())?;
        Self::from_tokenizer(inner).map_err(|e| e.to_string())
    }
}

impl Tokenizer for HfTokenizer {
    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        // Without offsets: the ids are the same, for less work.
        let encoding = self.inner.encode_fast(text, false).map_err(|e| DataError::Tokenize(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        let vocab = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(DataError::BadToken { id, vocab });
        }
        self.inner.decode(ids, false).map_err(|e| DataError::Tokenize(e.to_string()))
    }

    fn save(&self, path: &Path) -> Result<(), DataError> {
        crate::fsutil::write_atomic(path, self.json.as_bytes())
    }

    fn describe(&self) -> String {
        let model = match self.inner.get_model() {
            ModelWrapper::BPE(_) => "BPE",
            ModelWrapper::WordPiece(_) => "WordPiece",
            ModelWrapper::WordLevel(_) => "WordLevel",
            ModelWrapper::Unigram(_) => "Unigram",
        };
        format!("{model} ({} tokens)", self.vocab_size())
    }

    fn fingerprint(&self) -> String {
        digest(self.json.as_bytes())
    }
}

/// Incremental detokenisation for streaming generation: the text each new token adds. Byte-level
/// tokens may split a character, so the whole sequence is decoded and only what is new (and
/// complete) is returned.
pub struct DecodeStream<'a> {
    tokenizer: &'a dyn Tokenizer,
    ids: Vec<u32>,
    shown: String,
}

impl<'a> DecodeStream<'a> {
    /// A stream that has shown `prompt`.
    pub fn new(tokenizer: &'a dyn Tokenizer, prompt: &[u32]) -> Result<Self, DataError> {
        Ok(Self { tokenizer, ids: prompt.to_vec(), shown: tokenizer.decode(prompt)? })
    }

    /// The text shown so far.
    pub fn text(&self) -> &str {
        &self.shown
    }

    /// Adds `id`; returns the new text, if it completes any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids).ok()?;
        if text.ends_with('\u{FFFD}') {
            // A character split across tokens: wait for its remaining bytes.
            return None;
        }
        if !text.starts_with(&self.shown) {
            // The decoder rewrote earlier text (e.g. cleaned up spaces); carry on from here.
            self.shown = text;
            return None;
        }
        let new = text[self.shown.len()..].to_string();
        self.shown = text;
        Some(new)
    }
}

/// Loads a `tokenizer.json` written by astro (character or Hugging Face format).
pub fn load_tokenizer(path: &Path) -> Result<Box<dyn Tokenizer>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::read(path, e))?;
    if let Ok(file) = serde_json::from_str::<CharFile>(&text) {
        let chars: Vec<char> = file.astro_char_tokenizer.chars.chars().collect();
        if chars.windows(2).any(|w| w[0] >= w[1]) {
            return Err(DataError::Tokenizer {
                path: path.into(),
                reason: "character vocabulary is not sorted and unique".into(),
            });
        }
        return Ok(Box::new(CharTokenizer::from_chars(chars.into_iter().collect())));
    }
    HfTokenizer::from_json(&text)
        .map(|t| Box::new(t) as Box<dyn Tokenizer>)
        .map_err(|reason| DataError::Tokenizer { path: path.into(), reason })
}

/// Builds the tokenizer `spec` describes; char and BPE vocabularies come from `text`.
pub fn build_tokenizer(spec: &TokenizerSpec, text: &str) -> Result<Box<dyn Tokenizer>, DataError> {
    Ok(match spec {
        TokenizerSpec::Char => Box::new(CharTokenizer::from_text(text)),
        TokenizerSpec::Bpe { vocab_size, .. } => Box::new(HfTokenizer::train_bpe(text, *vocab_size)?),
        TokenizerSpec::File { path } => load_tokenizer(path)?,
    })
}

/// Hex sha256 of `bytes`.
pub(crate) fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`fuzz/`, target `data`): a vocabulary with a repeated id has fewer
    /// entries than its largest id, so encoded ids would index past the embedding table.
    #[test]
    fn a_vocabulary_with_a_repeated_id_is_refused() {
        let tok = HfTokenizer::train_bpe(&"the astrocyte and the neuron and the glia ".repeat(50), 300).unwrap();
        let json = tok.inner.to_string(false).unwrap();
        let broken = json.replacen("\"b\":", "\"zz-not-a-token\":0,\"b\":", 1);
        assert_ne!(broken, json);
        let Err(err) = HfTokenizer::from_json(&broken) else { panic!("accepted") };
        assert!(err.contains("used twice") || err.contains("outside the vocabulary"), "{err}");
    }

    /// Found by fuzzing (`fuzz/`, target `data`): tokenizers 0.23 panics while building a BPE
    /// model whose merge result is longer than every vocabulary entry (`bpe/model.rs:267`); astro
    /// turns the panic into an error.
    #[test]
    fn a_panic_inside_the_tokenizers_library_is_an_error() {
        let json = r##"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},"post_processor":null,"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},"model":{"type":"BPE","dro69ut":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,"vocab":{"!":0,"\"":1,"#":2,"$":3,"%":4,"&":5,"'":6,"(":7,")":8,"*":9,"+":10,",":11,"-":12,".":13,"/":14,"0":15,"1":16,"2":17,"3":18,"4":19,"5":20,"6":21,"7":22,"8":23,"9":24,":":25,";":26,"<":27,"=":28,">":29,"?":30,"@":13,"A":32,"B":33,"C":34,"D":35,"E":36,"F":37,"G":38,"H":39,"I":40,"J":41,"K":42,"L":43,"M":44,"N":45,"O":46,"P":47,"Q":48,"R":49,"S":50,"T":51,"U":52,"V":53,"W":54,"X":55,"Y":56,"Z":57,"[":58,"\\":59,"]":60,"^":61,"_":62,"`":63,"a":64,"b":65,"c":65,"d":67,"e":68,"f":69,"g":70,"h":71,"i":72,"j":73,"k":74,"l":75,"m":76,"n":77,"o":78,"p":79,"q":80,"r":259},"merges":[["o","r"],["w","or"],["wor","d"],["Ġ","word"]]}}"##;
        let Err(err) = HfTokenizer::from_json(json) else { panic!("accepted") };
        assert!(err.contains("could not read") || err.contains("used twice"), "{err}");
    }

    /// Found by fuzzing (`fuzz/`, target `data`): tokenizers 0.23 panics on a malformed decoder
    /// entry; astro must return an error.
    #[test]
    fn malformed_tokenizer_json_is_an_error_not_a_panic() {
        let tok = HfTokenizer::train_bpe(&"the astrocyte and the neuron and the glia ".repeat(50), 300).unwrap();
        let json = tok.inner.to_string(false).unwrap();
        let broken = json.replacen("\"decoder\":{\"type\":", "\"decoder\":{\"type :", 1);
        assert_ne!(broken, json, "the decoder entry was found");
        let Err(err) = HfTokenizer::from_json(&broken) else { panic!("accepted") };
        assert!(err.contains("not valid JSON"), "{err}");
    }

    /// Token = byte; decoding is lossy UTF-8, as byte-level BPE decoders are.
    struct Bytes;

    impl Tokenizer for Bytes {
        fn vocab_size(&self) -> usize {
            256
        }
        fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
            Ok(String::from_utf8_lossy(&ids.iter().map(|&i| i as u8).collect::<Vec<_>>()).into_owned())
        }
        fn save(&self, _: &Path) -> Result<(), DataError> {
            Ok(())
        }
        fn describe(&self) -> String {
            "bytes".into()
        }
        fn fingerprint(&self) -> String {
            String::new()
        }
    }

    #[test]
    fn decode_stream_waits_for_split_characters() {
        let ids = Bytes.encode("aé€b").unwrap(); // a, 2 bytes, 3 bytes, b
        let mut stream = DecodeStream::new(&Bytes, &ids[..1]).unwrap();
        let pieces: Vec<Option<String>> = ids[1..].iter().map(|&i| stream.push(i)).collect();
        let s = |t: &str| Some(t.to_string());
        assert_eq!(pieces, vec![None, s("é"), None, None, s("€"), s("b")]);
        assert_eq!(stream.text(), "aé€b");
    }

    #[test]
    fn char_ids_follow_sorted_characters() {
        let t = CharTokenizer::from_text("hello world");
        assert_eq!(t.chars(), &[' ', 'd', 'e', 'h', 'l', 'o', 'r', 'w']);
        assert_eq!(t.encode("hold").unwrap(), vec![3, 5, 4, 1]);
        assert_eq!(t.decode(&[3, 5, 4, 1]).unwrap(), "hold");
        let err = t.encode("hex").unwrap_err().to_string();
        assert!(err.contains("'x'") && err.contains("position 2"), "{err}");
        assert!(t.decode(&[8]).is_err());
    }

    #[test]
    fn tokenizers_round_trip_through_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = "the cat sat on the mat. the cat ate the rat. ".repeat(40);
        let char_tok = CharTokenizer::from_text(&text);
        let bpe = HfTokenizer::train_bpe(&text, 300).unwrap();
        for tok in [&char_tok as &dyn Tokenizer, &bpe] {
            let path = dir.path().join("tokenizer.json");
            tok.save(&path).unwrap();
            let back = load_tokenizer(&path).unwrap();
            assert_eq!(back.fingerprint(), tok.fingerprint());
            assert_eq!(back.vocab_size(), tok.vocab_size());
            let ids = back.encode("the rat sat").unwrap();
            assert_eq!(back.decode(&ids).unwrap(), "the rat sat");
        }
        assert!(bpe.encode("the cat").unwrap().len() < 7, "BPE merges frequent pairs");
    }

    #[test]
    fn bpe_takes_any_text_and_rejects_tiny_vocabularies() {
        let bpe = HfTokenizer::train_bpe("abc abc abd", 260).unwrap();
        let odd = "ünïcødé \u{FFFD} 🙂";
        assert_eq!(bpe.decode(&bpe.encode(odd).unwrap()).unwrap(), odd);
        let err = HfTokenizer::train_bpe("abc", 100).unwrap_err().to_string();
        assert!(err.contains("vocab_size"), "{err}");
    }

    #[test]
    fn malformed_tokenizer_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, "{\"model\": 42}").unwrap();
        let err = load_tokenizer(&path).err().expect("malformed file rejected").to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }
}
