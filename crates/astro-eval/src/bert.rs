//! A Hugging Face BERT checkpoint directory as a sentence encoder: the encoder (its own softmax or
//! an astro attention variant in every layer), its WordPiece tokenizer, and batching.

use std::path::Path;

use astro_data::tokenizer::HfTokenizer;
use astro_model::SentenceEncoder;
use astro_model::attention::AttentionConfig;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::error::EvalError;

/// A BERT checkpoint's encoder and tokenizer, and the longest input it takes.
pub struct Bert {
    /// The encoder.
    pub encoder: SentenceEncoder,
    /// Its tokenizer (special tokens added; padding and truncation are done here).
    pub tokenizer: HfTokenizer,
    /// Inputs are truncated to this many tokens (sentence-transformers' `max_seq_length`, else
    /// the number of positions).
    pub max_tokens: usize,
    pad: u32,
}

impl Bert {
    /// Loads `dir` (`config.json`, `model.safetensors`, `tokenizer.json`) with `attention` in every
    /// layer (`None`: the checkpoint's own softmax, or a saved astrocytic encoder's own astrocytes).
    pub fn load(dir: &Path, attention: Option<AttentionConfig>, device: &Device) -> Result<Self, EvalError> {
        Self::with_encoder(dir, SentenceEncoder::load(dir, attention, device)?)
    }

    /// The softmax encoder of `dir` (for a saved astrocytic encoder: the checkpoint it was made from).
    pub fn load_softmax(dir: &Path, device: &Device) -> Result<Self, EvalError> {
        Self::with_encoder(dir, SentenceEncoder::load_softmax(dir, device)?)
    }

    /// `encoder` with `dir`'s tokenizer and input limit.
    pub fn with_encoder(dir: &Path, encoder: SentenceEncoder) -> Result<Self, EvalError> {
        let tokenizer = HfTokenizer::from_file(&dir.join("tokenizer.json"))?.without_padding_and_truncation();
        let positions = encoder.config().block_size;
        let max_tokens = std::fs::read_to_string(dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["max_seq_length"].as_u64())
            .map_or(positions, |n| (n as usize).clamp(2, positions));
        let pad = tokenizer.token_id("[PAD]").unwrap_or(0);
        Ok(Self { encoder, tokenizer, max_tokens, pad })
    }

    /// Token ids of `text` with `[CLS] … [SEP]`, truncated to `max_tokens` (keeping the `[SEP]`).
    pub fn tokens(&self, text: &str) -> Result<Vec<u32>, EvalError> {
        self.tokens_up_to(text, self.max_tokens)
    }

    /// [`Self::tokens`] truncated to `max` (≥ 2) tokens instead.
    pub fn tokens_up_to(&self, text: &str, max: usize) -> Result<Vec<u32>, EvalError> {
        let max = max.clamp(2, self.max_tokens);
        let mut ids = self.tokenizer.encode_with_special_tokens(text)?;
        if ids.len() > max {
            let last = ids[ids.len() - 1];
            ids.truncate(max);
            ids[max - 1] = last;
        }
        Ok(ids)
    }

    /// Token ids `[batch, seq]` and padding mask `[batch, seq]` of `texts`.
    pub fn batch(&self, texts: &[String], device: &Device) -> Result<(Tensor<2, Int>, Tensor<2, Bool>), EvalError> {
        let rows = texts.iter().map(|t| self.tokens(t)).collect::<Result<Vec<_>, _>>()?;
        Ok(self.padded(&rows, device))
    }

    /// Token ids `[batch, seq]` and padding mask `[batch, seq]` of tokenised rows (padded to the longest).
    pub fn padded(&self, rows: &[Vec<u32>], device: &Device) -> (Tensor<2, Int>, Tensor<2, Bool>) {
        let t = rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut ids = Vec::with_capacity(rows.len() * t);
        let mut pad = Vec::with_capacity(rows.len() * t);
        for row in rows {
            for i in 0..t {
                ids.push(row.get(i).copied().unwrap_or(self.pad) as i64);
                pad.push(i >= row.len());
            }
        }
        let b = rows.len();
        (
            Tensor::from_data(TensorData::new(ids, [b, t]), device),
            Tensor::from_data(TensorData::new(pad, [b, t]), device),
        )
    }

    /// Unit-length sentence embeddings, one row per text.
    pub fn embed(&self, texts: &[String], device: &Device) -> Result<Vec<Vec<f32>>, EvalError> {
        let (ids, pad) = self.batch(texts, device)?;
        let d = self.encoder.config().n_embd;
        let values: Vec<f32> = self
            .encoder
            .embed(ids, Some(pad))
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| EvalError::Invalid(format!("embedding read-back failed: {e:?}")))?;
        Ok(values.chunks(d).map(<[f32]>::to_vec).collect())
    }
}
