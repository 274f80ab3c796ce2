#!/usr/bin/env bash
# The recall ablations in one command: MQAR at Zoology's easiest setting (sequence 64, 4 key–value
# pairs) over attention × short convolution (configs/ablation/recall.toml, 10 runs), the harder
# setting (sequence 256, 16 pairs; recall-hard.toml, 3 runs), and sequence 1024 with 64 pairs
# (recall-long.toml, 2 runs: softmax and the recall configuration, both with convolutions), then
# recall against the sequence length for those two.
#
#   scripts/recall.sh [OUT_DIR=reports]      # ~4 h on 2 cores; resumable: finished runs are skipped
#
# Each grid writes results.md (accuracy, validation loss, decoding state in floats per sequence),
# results.csv, the validation curves (curves.png/svg) and Zoology's picture, accuracy against the
# decoding state (metric_vs_state.png/svg), under OUT_DIR/recall, OUT_DIR/recall-hard and
# OUT_DIR/recall-long; OUT_DIR/recall-length/final_accuracy_vs_task_seq_len.png/svg is accuracy
# against the length (`astro compare --against task.seq_len`).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-reports}
cargo build --release --quiet
ASTRO="${CARGO_TARGET_DIR:-target}/release/astro"
GRIDS=(recall recall-hard recall-long)
for grid in "${GRIDS[@]}"; do
  "$ASTRO" ablate --config "configs/ablation/$grid.toml" --out "$OUT/$grid"
done
# Softmax and the recall configuration (Taylor map + short convolutions) at each length: cells
# 1 and 5 of recall.toml, 0 and 1 of recall-hard.toml and recall-long.toml.
"$ASTRO" compare --against task.seq_len --out "$OUT/recall-length" \
  "$OUT/recall/runs/cell-001" "$OUT/recall-hard/runs/cell-000" "$OUT/recall-long/runs/cell-000" \
  "$OUT/recall/runs/cell-005" "$OUT/recall-hard/runs/cell-001" "$OUT/recall-long/runs/cell-001" \
  --label "softmax + conv" --label "softmax + conv" --label "softmax + conv" \
  --label "Taylor + conv" --label "Taylor + conv" --label "Taylor + conv"
for grid in "${GRIDS[@]}"; do
  echo "== $OUT/$grid/results.md"
  cat "$OUT/$grid/results.md"
done
