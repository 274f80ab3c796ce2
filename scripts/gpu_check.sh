#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (driver installed; no CUDA toolkit needed):
#
#   scripts/gpu_check.sh OUT_DIR
#
# 1. builds astro in release with the `cuda` and `wgpu` features (and flex, the reference);
# 2. runs the cross-backend tests (crates/astro-train/tests/backends.rs: same initial weights as
#    flex, every attention form's logits, gradients, eval and decoding against flex, a short
#    training run's losses against flex) on CUDA and wgpu, then astro-model's suite with
#    ASTRO_DEVICE=cuda;
# 3. trains the shakespeare-char recipe with each attention variant on CUDA for $ITERS iterations
#    (default 500; the README's rows are 2000 on the CPU) and records validation loss and tokens/s;
#    With two or more GPUs it also checks data-parallel training (cuda:0,cuda:1 equals one device)
#    and trains the astrocytic recipe over both;
# 4. runs `astro bench --device cuda` (training, forward, long contexts up to T = 65536, generation
#    latency at contexts 64 and 4096);
# 5. writes OUT_DIR/summary.json (one object: machine, GPU, each step's status and seconds, the
#    training rows, the bench report) beside each step's log.
#
# Sized for about 10 minutes after the build on one H100/H200-class GPU; every step has its own
# timeout and a failed step is recorded, not fatal. Corpora: $ASTRO_DATA_DIR (tinyshakespeare.txt),
# else shared/datasets beside the clone, else the download.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:?usage: scripts/gpu_check.sh OUT_DIR}"
ITERS="${ITERS:-500}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ -z "${ASTRO_DATA_DIR:-}" ] && [ -f "$ROOT/../shared/datasets/tinyshakespeare.txt" ]; then
  export ASTRO_DATA_DIR="$ROOT/../shared/datasets"
fi
STEPS="$OUT/steps.jsonl"
: > "$STEPS"

# step NAME TIMEOUT_S COMMAND... — runs one step with its log in OUT/NAME.log, records status and time.
step() {
  local name="$1" limit="$2"
  shift 2
  echo "== $name" >&2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '{"step":"%s","rc":%d,"seconds":%d}\n' "$name" "$rc" "$((SECONDS - t0))" >> "$STEPS"
  [ "$rc" = 0 ] || echo "   failed (exit $rc): see $OUT/$name.log" >&2
  return "$rc"
}

step build 1800 cargo build --release -p astro-cli --features cuda,wgpu
ASTRO="$CARGO_TARGET_DIR/release/astro"
ASTRO_REQUIRE_BACKENDS=cuda,wgpu step backends-test 900 \
  cargo test --release -p astro-train --features astro-model/flex,astro-model/cuda,astro-model/wgpu --test backends
ASTRO_DEVICE=cuda step model-tests-cuda 900 cargo test --release -p astro-model --features cuda
for variant in softmax astrocytic linear; do
  step "train-$variant" 600 "$ASTRO" train --device cuda --json --name "gpu-$variant" \
    --set run.out_dir="$OUT/runs" --set train.max_iters="$ITERS" --set model.attention.kind="$variant"
done
# Data-parallel training where the machine has two or more GPUs (one run over the first two).
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  ASTRO_REQUIRE_BACKENDS=cuda ASTRO_PARALLEL_DEVICES=cuda:0,cuda:1 step data-parallel-test 600 \
    cargo test --release -p astro-train --features astro-model/flex,astro-model/cuda --test backends data_parallel
  step train-astrocytic-2gpu 600 "$ASTRO" train --devices cuda:0,cuda:1 --json --name gpu-astrocytic-2gpu \
    --set run.out_dir="$OUT/runs" --set train.max_iters="$ITERS"
fi
step bench 900 "$ASTRO" bench --device cuda --json --lengths 1024,4096,16384,65536 --contexts 64,4096
cp "$OUT/bench.log" "$OUT/bench.json" 2>/dev/null || true

python3 - "$OUT" "$ITERS" <<'PY'
import json, os, platform, subprocess, sys
out, iters = sys.argv[1], int(sys.argv[2])
def lines(path):
    try:
        return open(path).read().splitlines()
    except OSError:
        return []
def last_json(path):
    for line in reversed(lines(path)):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
except (OSError, subprocess.SubprocessError):
    gpu = None
summary = {
    "machine": platform.node(),
    "cpu_cores": os.cpu_count(),
    "gpu": gpu,
    "steps": [json.loads(l) for l in lines(f"{out}/steps.jsonl")],
    "train_iters": iters,
    "train": {v: last_json(f"{out}/train-{v}.log") for v in ("softmax", "astrocytic", "linear", "astrocytic-2gpu")},
    "bench": last_json(f"{out}/bench.json"),
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
failed = [s["step"] for s in summary["steps"] if s["rc"] != 0]
print(f"summary: {out}/summary.json" + (f" (failed: {', '.join(failed)})" if failed else " (all steps passed)"))
PY
