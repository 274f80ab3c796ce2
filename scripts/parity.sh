#!/usr/bin/env bash
# Export → PyTorch parity: trains tiny models of every attention variant (and an encoder
# classifier), exports them with `astro export`, and checks that scripts/astro_torch.py reproduces
# astro's logits on each export's reference batch to within 1e-4.
#
#   scripts/parity.sh [WORK_DIR]
#
# Needs tiny Shakespeare offline ($ASTRO_DATA_DIR, default ../shared/datasets) and a Python venv
# with torch + safetensors ($ASTRO_VENV, default ~/.cache/astro/venv; created if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
export ASTRO_DATA_DIR=${ASTRO_DATA_DIR:-$(cd .. && pwd)/shared/datasets}
VENV=${ASTRO_VENV:-$HOME/.cache/astro/venv}
if ! "$VENV/bin/python" -c "import torch, safetensors" 2>/dev/null; then
  echo "parity: creating $VENV (torch from PyPI, a few minutes the first time)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch>=2.1,<3" "safetensors>=0.4" numpy
fi
cargo build --release --quiet
ASTRO=${CARGO_TARGET_DIR:-target}/release/astro
TINY=(--set model.n_layer=2 --set model.n_head=2 --set model.n_embd=32 --set model.block_size=32
      --set optim.batch_size=8 --set optim.lr=3e-3 --set train.max_iters=200 --set train.eval_interval=200 --set train.eval_iters=2
      --set train.sample_tokens=0 --set "run.out_dir=\"$WORK/runs\"")
train() { # name, extra args...
  local name=$1; shift
  rm -rf "$WORK/runs/$name" "$WORK/exports/$name"
  "$ASTRO" train "${TINY[@]}" --name "$name" "$@" >"$WORK/$name.log" 2>&1 || { cat "$WORK/$name.log" >&2; exit 1; }
  "$ASTRO" export --run "$WORK/runs/$name" --out "$WORK/exports/$name" >/dev/null
}
train softmax --set 'model.attention={ kind = "softmax" }'
train astrocytic --set 'model.attention={ kind = "astrocytic", features = 64 }'
train astrocytic-cosine-rotary --set 'model.attention={ kind = "astrocytic", features = 64, feature_map = "cosine", orthogonal = true, decay = 0.95 }' \
  --set 'model.positions="rotary"' --set model.bias=true
train linear --set 'model.attention={ kind = "linear" }'
train astrocytic-short-conv --set 'model.attention={ kind = "astrocytic", features = 64 }' --set model.short_conv=4
train astrocytic-taylor --set 'model.attention={ kind = "astrocytic", features = 8, feature_map = "taylor", learnable_omega = true }'
train astrocytic-hedgehog --set 'model.attention={ kind = "astrocytic", features = 16, feature_map = "hedgehog" }' --set model.short_conv=2
train astrocytic-window --set 'model.attention={ kind = "astrocytic", features = 64, window = 4 }'
train shifted-saderf --set 'model.attention={ kind = "astrocytic", features = 64, feature_map = "shifted_saderf" }' \
  --set train.calibrate_every=50
train full-saderf --set 'model.attention={ kind = "astrocytic", features = 64, feature_map = "full_saderf" }' \
  --set train.calibrate_every=50
train bert-layout --set 'model.attention={ kind = "astrocytic", features = 64 }' --set 'model.norm="post"' \
  --set model.type_vocab_size=2 --set model.embedding_norm=true --set model.layer_norm_eps=1e-12 --set model.bias=true
train listops-encoder --task listops --set task.max_length=32 --set task.min_length=16 --set 'model.attention={ kind = "astrocytic", features = 32 }'
"$VENV/bin/python" scripts/astro_torch.py "$WORK"/exports/*
