//! Helpers shared by the end-to-end tests of the `astro` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The offline corpora: $ASTRO_DATA_DIR, or `../shared/datasets` beside the repository.
pub fn shared_datasets() -> PathBuf {
    let dir =
        std::env::var_os("ASTRO_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("../shared/datasets"));
    assert!(
        dir.join("tinyshakespeare.txt").is_file(),
        "offline corpora not found in {}; set ASTRO_DATA_DIR",
        dir.display()
    );
    dir
}

/// `astro` run in `root` with hermetic cache and data directories under it, offline.
pub fn astro(root: &Path) -> Command {
    let mut cmd = Command::cargo_bin("astro").expect("binary built");
    cmd.current_dir(root)
        .env("ASTRO_CACHE_DIR", root.join("cache"))
        .env("ASTRO_DATA_DIR", root.join("no-data"))
        .env("ASTRO_OFFLINE", "1")
        .env_remove("ASTRO_STOP_AFTER");
    cmd
}
