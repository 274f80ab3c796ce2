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
    /// layer (`None`: the checkpoint's own softmax).
    pub fn load(dir: &Path, attention: Option<AttentionConfig>, device: &Device) -> Result<Self, EvalError> {
        let encoder = SentenceEncoder::from_hf_bert(dir, attention, device)?;
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
        let mut ids = self.tokenizer.encode_with_special_tokens(text)?;
        if ids.len() > self.max_tokens {
            let last = ids[ids.len() - 1];
            ids.truncate(self.max_tokens);
            ids[self.max_tokens - 1] = last;
        }
        Ok(ids)
    }

    /// Token ids `[batch, seq]` and padding mask `[batch, seq]` of `texts`.
    pub fn batch(&self, texts: &[String], device: &Device) -> Result<(Tensor<2, Int>, Tensor<2, Bool>), EvalError> {
        let rows = texts.iter().map(|t| self.tokens(t)).collect::<Result<Vec<_>, _>>()?;
        let t = rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut ids = Vec::with_capacity(rows.len() * t);
        let mut pad = Vec::with_capacity(rows.len() * t);
        for row in &rows {
            for i in 0..t {
                ids.push(row.get(i).copied().unwrap_or(self.pad) as i64);
                pad.push(i >= row.len());
            }
        }
        let b = rows.len();
        Ok((
            Tensor::from_data(TensorData::new(ids, [b, t]), device),
            Tensor::from_data(TensorData::new(pad, [b, t]), device),
        ))
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
