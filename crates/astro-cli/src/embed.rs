//! `astro embed`: sentence embeddings from a Hugging Face BERT checkpoint directory, with its own
//! softmax attention or with an astro variant in every layer (same weights).

use std::path::PathBuf;

use anyhow::{Context, bail};
use astro_eval::bert::Bert;
use astro_model::attention::AttentionConfig;

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

/// Parses `--attention` text: a TOML inline table of an attention config.
pub fn parse_attention(text: &str) -> anyhow::Result<AttentionConfig> {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        attention: AttentionConfig,
    }
    let wrapper: Wrapper = toml::from_str(&format!("attention = {text}")).with_context(|| {
        format!("--attention {text:?} is not an attention table such as '{{ kind = \"astrocytic\", features = 4096 }}'")
    })?;
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
        let mut tokens = Vec::with_capacity(texts.len());
        for text in &texts {
            tokens.push(bert.tokens(text)?);
        }
        let out = serde_json::json!({
            "model": args.model.display().to_string(),
            "attention": bert.encoder.config().attention.describe(),
            "texts": texts,
            "tokens": tokens,
            "embeddings": embeddings,
        });
        println!("{out}");
    } else {
        println!(
            "{} ({}), {} dimensions",
            args.model.display(),
            bert.encoder.config().attention.describe(),
            embeddings.first().map_or(0, Vec::len)
        );
        for (text, e) in texts.iter().zip(&embeddings) {
            let head: Vec<String> = e.iter().take(6).map(|x| format!("{x:+.4}")).collect();
            println!("  [{} …]  {text}", head.join(" "));
        }
    }
    Ok(())
}
