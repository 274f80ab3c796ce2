#!/usr/bin/env bash
# Fuzzes astro's input parsers with cargo-fuzz (libFuzzer): the config parser, the corpus /
# tokenizer / token-cache loaders, and the safetensors import.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET=600] [TARGET ...]
#
# Needs a nightly toolchain (`rustup toolchain install nightly`) and `cargo install cargo-fuzz`.
# Seeds are in fuzz/seeds/TARGET (committed); the growing corpus in fuzz/corpus/TARGET and any
# crashing input in fuzz/artifacts/TARGET (both ignored by git). Replay a crash with
#   cargo +nightly fuzz run -s none TARGET fuzz/artifacts/TARGET/crash-…
# Built without a sanitizer (`-s none`): the targets are safe Rust; a panic is the bug class sought.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_PER_TARGET="${1:-600}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(config data safetensors)
cargo +nightly fuzz build -s none
# The safetensors seed is a valid export of the target's tiny model, written by the target itself
# (weights are not committed).
mkdir -p seeds/safetensors
ASTRO_FUZZ_SEED_DIR=seeds/safetensors cargo +nightly fuzz run -s none safetensors -- -runs=0 >/dev/null 2>&1 || true
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t: ${SECONDS_PER_TARGET} s"
  cargo +nightly fuzz run -s none "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=4096 -timeout=30 -print_final_stats=1 2>&1 \
    | grep -E "^(#[0-9]+ +(INITED|DONE)|stat::|==[0-9]+== ERROR|SUMMARY|thread '.*' panicked|Test unit written)" || true
done
