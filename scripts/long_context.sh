#!/usr/bin/env bash
# Learning at long context at equal wall clock (issue 30): softmax, the default astrocyte
# (m = 256), the recall configuration (Taylor map r = 16 + short_conv 4) and elu+1 linear attention
# train configs/long-context.toml (block 2048, rotary, 8,192 tokens per step) one at a time, each
# for BUDGET seconds of training.
#
#   ASTRO_DATA_DIR=../shared/datasets scripts/long_context.sh [BUDGET=300] [OUT=runs/long-context]
#
# 1. a 16-step run of each variant measures its training tokens/s (steps 5–16 of metrics.jsonl: the
#    training loop itself; `astro bench --only train-long` at the same shape underestimated the
#    Taylor + conv variant by a quarter, which left it 235 of its 300 seconds);
# 2. each variant gets max_iters = BUDGET × its tokens/s ÷ 8,192 steps, with its cosine schedule
#    (and warm-up, evaluations) scaled to them, so that every run completes its schedule in about the
#    same wall clock (evaluation time is not counted: `elapsed` in metrics.jsonl is training time);
# 3. `astro compare` draws validation loss against seconds and tokens, and writes the table.
# A variant whose run directory exists is not trained again (remove it to re-run).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUDGET="${1:-300}"
OUT="${2:-$ROOT/runs/long-context}"
VARIANTS="${VARIANTS:-softmax astrocytic taylor-conv linear}"
TOKENS=8192
cd "$ROOT"
mkdir -p "$OUT"
cargo build --release -p astro-cli --manifest-path "$ROOT/Cargo.toml" --quiet
ASTRO="${CARGO_TARGET_DIR:-$ROOT/target}/release/astro"

variant_args() {
  case "$1" in
    softmax) echo "--set model.attention.kind=softmax" ;;
    astrocytic) echo "" ;;
    taylor-conv) echo "--set model.attention.features=16 --set model.attention.feature_map=taylor --set model.attention.learnable_omega=true --set model.short_conv=4" ;;
    linear) echo "--set model.attention.kind=linear" ;;
    *) echo "unknown variant $1 (softmax, astrocytic, taylor-conv, linear)" >&2; exit 2 ;;
  esac
}

# Training tokens/s of variant $1 between steps 5 and 16 of a short run of the same config.
calibrate() {
  local name="long-context-calibrate-$1"
  rm -rf "runs/$name"
  # shellcheck disable=SC2046
  "$ASTRO" train --config "$ROOT/configs/long-context.toml" $(variant_args "$1") --name "$name" \
    --set train.max_iters=16 --set train.log_interval=1 --set train.eval_interval=1000 \
    --set train.eval_iters=1 --set train.sample_tokens=0 --set train.checkpoint_interval=1000 > /dev/null 2>&1
  python3 -c 'import json,sys
rows = [json.loads(l) for l in open(sys.argv[1])]
a, b = next(r for r in rows if r["step"] >= 5), rows[-1]
print((b["tokens"] - a["tokens"]) / (b["elapsed"] - a["elapsed"]))' "runs/$name/metrics.jsonl"
  rm -rf "runs/$name"
}

runs=()
for v in $VARIANTS; do
  dir="$OUT/$v"
  if [ -e "$dir" ]; then
    echo "$dir exists: remove it to train $v again" >&2
    runs+=("$dir")
    continue
  fi
  rate=$(calibrate "$v")
  iters=$(python3 -c "print(max(20, int($BUDGET * $rate / $TOKENS)))")
  evals=$(( iters / 6 > 1 ? iters / 6 : 1 ))
  warm=$(( iters / 20 > 1 ? iters / 20 : 1 ))
  echo "$v: $rate tokens/s -> $iters steps in ${BUDGET}s (eval every $evals)" >&2
  # shellcheck disable=SC2046
  "$ASTRO" train --config "$ROOT/configs/long-context.toml" $(variant_args "$v") \
    --set "train.max_iters=$iters" --set "optim.lr_decay_iters=$iters" --set "optim.warmup_iters=$warm" \
    --set "train.eval_interval=$evals" --set "train.checkpoint_interval=$evals" \
    --name "long-context-$v" > "$OUT/$v.log" 2>&1
  mv "$ROOT/runs/long-context-$v" "$dir"
  runs+=("$dir")
done
"$ASTRO" compare "${runs[@]}" --out "$OUT/compare"
echo "table and plots: $OUT/compare" >&2
