#!/usr/bin/env bash
# The recall ablation of issue 16 in one command: MQAR at Zoology's easiest setting (sequence 64,
# 4 key–value pairs) over attention × short convolution (configs/ablation/recall.toml, 10 runs), then
# the harder setting (sequence 256, 16 pairs; configs/ablation/recall-hard.toml, 3 runs).
#
#   scripts/recall.sh [OUT_DIR=reports]      # ~2.5 h on 2 cores; resumable: finished runs are skipped
#
# Each grid writes results.md (accuracy, validation loss, decoding state in floats per sequence),
# results.csv, the validation curves (curves.png/svg) and Zoology's picture, accuracy against the
# decoding state (metric_vs_state.png/svg), under OUT_DIR/recall and OUT_DIR/recall-hard.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-reports}
cargo build --release --quiet
ASTRO="${CARGO_TARGET_DIR:-target}/release/astro"
for grid in recall recall-hard; do
  "$ASTRO" ablate --config "configs/ablation/$grid.toml" --out "$OUT/$grid"
done
for grid in recall recall-hard; do
  echo "== $OUT/$grid/results.md"
  cat "$OUT/$grid/results.md"
done
