#!/usr/bin/env bash
# Milliseconds per generated token at a short and a long context, for each attention variant.
#
#   scripts/generation_latency.sh [OUT_DIR] [TEXT_FILE]
#
# Builds three one-step models of the shakespeare-char recipe (softmax, astrocytic m = 256, elu+1
# linear) with rotary positions and block 2048, so a 2048-character prompt fits without cropping —
# per-token time does not depend on the weights — then asks `astro generate --stats` for 65 tokens
# after prompts of 64 and 2048 characters, three times each, interleaved so machine drift cancels.
# Astrocytic and linear attention decode from their constant-size state (flat), softmax from a KV
# cache (grows with the context).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/generation-latency}
TEXT=${2:-${ASTRO_DATA_DIR:-../shared/datasets}/tinyshakespeare.txt}
[ -f "$TEXT" ] || { echo "error: $TEXT not found; pass a text file of at least 2048 characters as the second argument" >&2; exit 1; }
cargo build --release --quiet
ASTRO="${CARGO_TARGET_DIR:-target}/release/astro"
VARIANTS=(softmax astrocytic linear)
for v in "${VARIANTS[@]}"; do
  [ -f "$OUT/$v/model.bpk" ] && continue
  mkdir -p "$OUT"
  "$ASTRO" train --config configs/shakespeare-char.toml --data "$TEXT" --name "$v" \
    --set "run.out_dir=\"$OUT\"" --set "model.attention={ kind = \"$v\" }" \
    --set 'model.positions="rotary"' --set model.block_size=2048 --set optim.batch_size=1 \
    --set train.max_iters=1 --set train.eval_iters=1 --set train.eval_interval=1 >"$OUT/$v-train.log" 2>&1 ||
    { cat "$OUT/$v-train.log" >&2; exit 1; }
done
P64=$(head -c 64 "$TEXT")
P2048=$(head -c 2048 "$TEXT")
for rep in 1 2 3; do
  for v in "${VARIANTS[@]}"; do
    for ctx in 64 2048; do
      if [ "$ctx" = 64 ]; then P=$P64; else P=$P2048; fi
      ms=$("$ASTRO" generate --run "$OUT/$v" --prompt "$P" --tokens 65 --stats 2>&1 >/dev/null |
        sed -n 's/.*; \([0-9.]*\) ms per further token.*/\1/p')
      echo "$v $ctx $ms"
    done
  done
done > "$OUT/latency.txt"
echo "medians of 3 runs (all runs in $OUT/latency.txt):"
echo "| variant | ms/token, context 64 | ms/token, context 2048 |"
echo "|---|---|---|"
for v in "${VARIANTS[@]}"; do
  med() { awk -v v="$v" -v c="$1" '$1 == v && $2 == c { print $3 }' "$OUT/latency.txt" | sort -g | sed -n 2p; }
  echo "| $v | $(med 64) | $(med 2048) |"
done
