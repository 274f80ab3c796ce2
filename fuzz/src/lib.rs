//! The fuzzed entry points, as plain functions (so a crashing input can be replayed with
//! `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…`). Each must return normally for
//! every input: errors are fine, panics are bugs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use astro_data::Tokenizer;

/// Config text → `RunConfig`; a config that parses must validate or fail cleanly, and writing it
/// back must parse to the same config. The first line is tried as a `--set` override.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (set, body) = text.split_once('\n').unwrap_or(("", text));
    if let Ok(config) = astro_train::RunConfig::from_toml(body, "fuzz") {
        let _ = config.validate();
        let written = config.to_toml();
        let again = astro_train::RunConfig::from_toml(&written, "written")
            .unwrap_or_else(|e| panic!("a written config does not parse: {e}\n{written}"));
        assert_eq!(again, config, "parse → write → parse changed the config");
        if let Ok(c) = config.with_overrides(&[set.to_string()]) {
            let _ = c.validate();
        }
    }
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir")).path()
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, bytes).expect("scratch write");
    path
}

/// First byte selects the loader: 0 = `tokenizer.json` (then encode/decode the rest of the file as
/// text), 1 = a corpus file → character tokenizer → encode → decode is the identity, 2 = a token
/// cache file (header checked, every token readable).
pub fn data(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            let path = write("tokenizer.json", rest);
            // astro catches panics of the `tokenizers` library while loading (it has a few on
            // malformed files); libFuzzer's hook would abort before that catch, so the default
            // unwinding behaviour of the `astro` binary is restored around the load.
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let loaded = astro_data::load_tokenizer(&path);
            std::panic::set_hook(hook);
            if let Ok(tok) = loaded {
                let text = String::from_utf8_lossy(rest);
                if let Ok(ids) = tok.encode(&text) {
                    assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()), "id out of the vocabulary");
                    let _ = tok.decode(&ids);
                }
                let _ = tok.decode(&[0, 1, u32::MAX]);
            }
        }
        1 => {
            let path = write("corpus.txt", rest);
            let spec = astro_data::CorpusSpec { path: Some(path), ..Default::default() };
            if let Ok(corpus) = spec.load() {
                let tok = astro_data::tokenizer::CharTokenizer::from_text(&corpus.text);
                let ids = tok.encode(&corpus.text).expect("the corpus's own characters encode");
                assert_eq!(tok.decode(&ids).expect("own ids decode"), corpus.text);
            }
        }
        _ => {
            let path = write("tokens.bin", rest);
            if let Ok(file) = astro_data::TokenFile::open(&path) {
                let mut sum = 0u64;
                for i in 0..file.len() {
                    sum = sum.wrapping_add(file.get(i) as u64);
                }
                std::hint::black_box(sum);
            }
        }
    }
}

/// The directory of a tiny exported model (config.json etc.), made once.
fn export_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch().join("export");
        let config: astro_model::TransformerConfig = toml::from_str(
            "vocab_size = 11\nblock_size = 8\nn_layer = 1\nn_head = 2\nn_embd = 8\n\
             attention = { kind = \"astrocytic\", features = 4 }\n",
        )
        .expect("tiny config");
        let device = astro_model::device::default_device().expect("CPU device");
        let model = astro_model::LanguageModel::new(&config, &device).expect("tiny model");
        model.export(&dir).expect("export");
        // `ASTRO_FUZZ_SEED_DIR=fuzz/seeds/safetensors` stores the valid file as a seed input.
        if let Some(seeds) = std::env::var_os("ASTRO_FUZZ_SEED_DIR") {
            let _ = std::fs::copy(dir.join("model.safetensors"), PathBuf::from(seeds).join("valid"));
        }
        dir
    })
}

/// The valid `model.safetensors` of the tiny export (the seed input).
pub fn safetensors_seed() -> Vec<u8> {
    std::fs::read(export_dir().join("model.safetensors")).expect("seed")
}

/// Bytes as `model.safetensors` of an export whose config.json is valid: loading must succeed or
/// fail with an error, never panic.
pub fn safetensors(data: &[u8]) {
    let dir = export_dir();
    std::fs::write(dir.join("model.safetensors"), data).expect("scratch write");
    let device = astro_model::device::default_device().expect("CPU device");
    let _ = astro_model::LanguageModel::from_export(dir, &device);
}
