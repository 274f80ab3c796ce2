//! `astro embed`: sentence embeddings from a Hugging Face BERT checkpoint directory, with its own
//! softmax attention or with an astro variant in every layer (same weights).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use astro_data::tokenizer::HfTokenizer;
use astro_model::SentenceEncoder;
use astro_model::attention::AttentionConfig;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

/// Arguments of `astro embed`.
#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// Hugging Face BERT checkpoint directory: config.json, model.safetensors, tokenizer.json.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// A sentence to embed (repeat for several).
    #[arg(long = "text", value_name = "TEXT")]
    texts: Vec<String>,
    /// A file of sentences, one per line.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Attention for every layer instead of the checkpoint's softmax (weight transfer), as a TOML
    /// inline table, e.g. '{ kind = "astrocytic", features = 4096 }'.
    #[arg(long, value_name = "TABLE")]
    attention: Option<String>,
    /// Print one JSON object with every embedding.
    #[arg(long)]
    json: bool,
}

/// A BERT checkpoint's encoder and tokenizer, and the longest input it takes.
pub struct Bert {
    /// The encoder.
    pub encoder: SentenceEncoder,
    /// Its WordPiece tokenizer.
    pub tokenizer: HfTokenizer,
    /// Inputs are truncated to this many tokens (sentence-transformers' `max_seq_length`).
    pub max_tokens: usize,
    pad: u32,
}

impl Bert {
    /// Loads `dir` with `attention` in every layer (`None`: the checkpoint's own).
    pub fn load(dir: &Path, attention: Option<AttentionConfig>, device: &Device) -> anyhow::Result<Self> {
        let encoder = SentenceEncoder::from_hf_bert(dir, attention, device)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = HfTokenizer::from_file(&tok_path)
            .with_context(|| format!("{} holds no usable tokenizer.json", dir.display()))?
            .without_padding_and_truncation();
        let st_config = dir.join("sentence_bert_config.json");
        let max_tokens = std::fs::read_to_string(&st_config)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["max_seq_length"].as_u64())
            .map_or(encoder.config().block_size, |n| (n as usize).min(encoder.config().block_size));
        let pad = tokenizer.token_id("[PAD]").unwrap_or(0);
        Ok(Self { encoder, tokenizer, max_tokens, pad })
    }

    /// Token ids `[batch, seq]` and padding mask of `texts` (special tokens added, truncated).
    pub fn batch(&self, texts: &[String], device: &Device) -> anyhow::Result<(Tensor<2, Int>, Tensor<2, Bool>)> {
        let mut rows = Vec::with_capacity(texts.len());
        for text in texts {
            let mut ids = self.tokenizer.encode_with_special_tokens(text)?;
            if ids.len() > self.max_tokens {
                // Keep the closing [SEP], as the tokenizers' truncation does.
                let last = ids[ids.len() - 1];
                ids.truncate(self.max_tokens);
                ids[self.max_tokens - 1] = last;
            }
            rows.push(ids);
        }
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
    pub fn embed(&self, texts: &[String], device: &Device) -> anyhow::Result<Vec<Vec<f32>>> {
        let (ids, pad) = self.batch(texts, device)?;
        let d = self.encoder.config().n_embd;
        let values: Vec<f32> = self.encoder.embed(ids, Some(pad)).into_data().try_into_vec_as::<f32>().unwrap_or_default();
        Ok(values.chunks(d).map(<[f32]>::to_vec).collect())
    }
}

/// Parses `--attention` text: a TOML inline table of an attention config.
pub fn parse_attention(text: &str) -> anyhow::Result<AttentionConfig> {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        attention: AttentionConfig,
    }
    let wrapper: Wrapper = toml::from_str(&format!("attention = {text}"))
        .with_context(|| format!("--attention {text:?} is not an attention table such as '{{ kind = \"astrocytic\", features = 4096 }}'"))?;
    wrapper.attention.validate()?;
    Ok(wrapper.attention)
}

pub fn run(args: EmbedArgs, device: Option<&str>) -> anyhow::Result<()> {
    let device = crate::device(device)?;
    let mut texts = args.texts.clone();
    if let Some(file) = &args.file {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        texts.extend(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
    }
    if texts.is_empty() {
        bail!("nothing to embed: give --text TEXT (repeatable) or --file FILE");
    }
    let attention = args.attention.as_deref().map(parse_attention).transpose()?;
    let bert = Bert::load(&args.model, attention, &device)?;
    let embeddings = bert.embed(&texts, &device)?;
    if args.json {
        let out = serde_json::json!({
            "model": args.model.display().to_string(),
            "attention": bert.encoder.config().attention.describe(),
            "texts": texts,
            "tokens": texts.iter().map(|t| bert.tokenizer.encode_with_special_tokens(t)).collect::<Result<Vec<_>, _>>()?,
            "embeddings": embeddings,
        });
        println!("{out}");
    } else {
        println!("{} ({}), {} dimensions", args.model.display(), bert.encoder.config().attention.describe(), embeddings.first().map_or(0, Vec::len));
        for (text, e) in texts.iter().zip(&embeddings) {
            let head: Vec<String> = e.iter().take(6).map(|x| format!("{x:+.4}")).collect();
            println!("  [{} …]  {text}", head.join(" "));
        }
    }
    Ok(())
}
