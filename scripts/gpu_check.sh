#!/usr/bin/env bash
# The GPU check, for a machine with a GPU and no network (or with one):
#
#   scripts/gpu_check.sh OUT_DIR
#
# 0. probes what can be built and run: the `cuda` backend needs Burn's LLVM bundle (below), the
#    `wgpu` backend a Vulkan loader; what cannot is said in one line and in summary.json, and its
#    steps are skipped, not failed;
# 1. builds astro once (one feature set, so no crate is compiled twice): the binary, the
#    cross-backend tests and astro-model's tests, with `wgpu` (and `cuda` where it can be built);
# 2. runs the cross-backend tests (crates/astro-train/tests/backends.rs: same initial weights as
#    flex, every attention form's logits, gradients, eval and decoding against flex, a short
#    training run's losses against flex) on each GPU backend, then astro-model's suite on each;
# 3. trains the shakespeare-char recipe with each attention variant for $ITERS iterations
#    (default 500; the README's rows are 2000 on the CPU) and records validation loss and tokens/s;
#    with two or more NVIDIA GPUs and cuda, also data-parallel training over the first two;
# 4. runs `astro bench` on each backend (training, forward, long contexts, generation latency);
# 5. writes OUT_DIR/summary.json (machine, GPU, what was buildable and why not, each step's status
#    and seconds, the training rows, the bench reports) beside each step's log, and prints a table
#    of the steps and their times.
#
# Burn 0.22's CUDA runtime builds `cubecl-llvm`, whose build script downloads an LLVM bundle
# (tracel-llvm, version from Cargo.lock) from GitHub releases into
# ${XDG_DATA_HOME:-~/.local/share}/tracel/ unless it is already there. Without network and without
# that folder, cuda cannot be built: the check says so and runs everything else on wgpu (Vulkan).
# To enable cuda on an offline machine, build once where GitHub is reachable and copy that folder.
#
# Time: every step has its own limit (STEP_LIMIT_S, default 540 s = 9 min) and the whole check a
# budget (BUDGET_S, default 690 s = 11.5 min): a step that would start with less than 30 s left is
# skipped as out of time. Sized for a 16-core machine with one H100/H200-class GPU.
#
# Knobs (environment): ITERS (500), EVAL_ITERS (200, the recipe's), SAMPLE_TOKENS (500), REPEATS (5) and WARMUP (2) of the bench, LENGTHS (1024,4096,16384,65536), CONTEXTS (64,4096),
# PROFILE (release; `dev` reuses a debug build, as CI does on lavapipe), EXTRA_FEATURES (more cargo
# features, e.g. astro-model/ndarray), MODEL_TESTS (1: run astro-model's suite on each GPU backend),
# ASTRO_REQUIRE_BACKENDS (default: the GPU backends built). Corpora: $ASTRO_DATA_DIR
# (tinyshakespeare.txt), else shared/datasets beside the clone, else the download; without any,
# the training steps train on the repository's Shakespeare excerpt (tests/fixtures/).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:?usage: scripts/gpu_check.sh OUT_DIR}"
ITERS="${ITERS:-500}"
EVAL_ITERS="${EVAL_ITERS:-200}"
SAMPLE_TOKENS="${SAMPLE_TOKENS:-500}"
REPEATS="${REPEATS:-5}"
WARMUP="${WARMUP:-2}"
LENGTHS="${LENGTHS:-1024,4096,16384,65536}"
CONTEXTS="${CONTEXTS:-64,4096}"
PROFILE="${PROFILE:-release}"
BUDGET_S="${BUDGET_S:-690}"
STEP_LIMIT_S="${STEP_LIMIT_S:-540}"
MODEL_TESTS="${MODEL_TESTS:-1}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ -z "${ASTRO_DATA_DIR:-}" ] && [ -f "$ROOT/../shared/datasets/tinyshakespeare.txt" ]; then
  export ASTRO_DATA_DIR="$ROOT/../shared/datasets"
fi
STEPS="$OUT/steps.jsonl"
PROBE="$OUT/probe.json"
: > "$STEPS"
START=$SECONDS

# record NAME STATUS SECONDS [WHY] — one line of steps.jsonl.
record() {
  python3 -c 'import json,sys; print(json.dumps({"step": sys.argv[1], "status": sys.argv[2], "seconds": int(sys.argv[3]), "why": sys.argv[4] or None}))' \
    "$1" "$2" "$3" "${4:-}" >> "$STEPS"
}

# step NAME COMMAND... — runs one step with its log in OUT/NAME.log under the step limit and what
# is left of the budget; records passed/failed/skipped and its time.
step() {
  local name="$1"
  shift
  local left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt 30 ]; then
    echo "== $name: skipped (out of time: ${left}s of the ${BUDGET_S}s budget left)" >&2
    record "$name" skipped 0 "out of time"
    return 1
  fi
  local limit=$((left < STEP_LIMIT_S ? left : STEP_LIMIT_S))
  echo "== $name (limit ${limit}s)" >&2
  local t0=$SECONDS
  # The command runs in a new bash (so that `timeout` can stop it) that knows this script's functions
  # and arrays.
  timeout "$limit" bash -c "$(declare -p PROFILE_ARGS PACKAGES MODEL_TEST_TARGETS); $(declare -f build run_tests); \"\$@\"" \
    _ "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local took=$((SECONDS - t0))
  if [ "$rc" = 0 ]; then
    record "$name" passed "$took"
  else
    local why="exit $rc"
    [ "$rc" = 124 ] && why="timed out after ${limit}s"
    record "$name" failed "$took" "$why"
    echo "   failed ($why): see $OUT/$name.log" >&2
  fi
  return "$rc"
}

# skip NAME WHY — a step that cannot run here.
skip() {
  echo "== $1: skipped ($2)" >&2
  record "$1" skipped 0 "$2"
}

# --- 0. What can be built and run here -------------------------------------------------------
BUNDLE_VERSION=$(awk '/^name = "tracel-llvm-bundler"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
BUNDLE_DIR="${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-$BUNDLE_VERSION"
BUNDLE_URL="https://github.com/tracel-ai/tracel-llvm/releases/download/v$BUNDLE_VERSION/linux-x64.checksums.json"
reachable() {
  if command -v curl > /dev/null; then
    curl -sfIL --max-time 10 -o /dev/null "$1"
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="HEAD"), timeout=10)' "$1" 2> /dev/null
  fi
}
if [ "${ASTRO_GPU_CHECK_CUDA:-auto}" = 0 ]; then
  CUDA=0 CUDA_WHY="cuda: not built (ASTRO_GPU_CHECK_CUDA=0)"
elif [ -f "$BUNDLE_DIR/.tracel-llvm-installed" ]; then
  CUDA=1 CUDA_WHY="cuda: buildable (LLVM bundle tracel-llvm $BUNDLE_VERSION in $BUNDLE_DIR)"
elif reachable "$BUNDLE_URL"; then
  CUDA=1 CUDA_WHY="cuda: buildable (the build downloads LLVM bundle tracel-llvm $BUNDLE_VERSION from github.com)"
else
  CUDA=0
  CUDA_WHY="cuda: not buildable here: Burn's CUDA runtime (cubecl-llvm) needs the LLVM bundle tracel-llvm $BUNDLE_VERSION, which is not in $BUNDLE_DIR and cannot be downloaded (github.com is unreachable); the checks run on wgpu only (to add cuda, build once on a machine with network and copy that folder here)"
fi
# grep reads the whole list (no -q): with pipefail, grep -q leaving early can kill ldconfig with
# SIGPIPE and fail the pipeline even though the loader is there (it did, once, in CI).
if ldconfig -p 2> /dev/null | grep 'libvulkan\.so\.1' > /dev/null; then
  WGPU=1 WGPU_WHY="wgpu: Vulkan loader found"
else
  WGPU=0 WGPU_WHY="wgpu: no Vulkan loader (libvulkan.so.1) on this machine: install libvulkan1 (and a Vulkan driver) to run the wgpu checks"
fi
GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2> /dev/null | head -n 1)
NGPU=$(nvidia-smi -L 2> /dev/null | wc -l)
echo "$CUDA_WHY" >&2
echo "$WGPU_WHY" >&2
python3 - "$PROBE" "$CUDA" "$CUDA_WHY" "$WGPU" "$WGPU_WHY" "$BUNDLE_DIR" "$GPU" "$NGPU" <<'PY'
import json, sys
path, cuda, cuda_why, wgpu, wgpu_why, bundle, gpu, ngpu = sys.argv[1:]
json.dump({"cuda": {"buildable": cuda == "1", "why": cuda_why, "llvm_bundle": bundle},
           "wgpu": {"runnable": wgpu == "1", "why": wgpu_why},
           "gpu": gpu or None, "nvidia_gpus": int(ngpu or 0)}, open(path, "w"), indent=1)
PY

KINDS=()
[ "$WGPU" = 1 ] && KINDS+=(wgpu)
[ "$CUDA" = 1 ] && KINDS+=(cuda)
FEATURES="astro-cli/wgpu"
[ "$CUDA" = 1 ] && FEATURES="$FEATURES,astro-cli/cuda"
[ -n "${EXTRA_FEATURES:-}" ] && FEATURES="$FEATURES,$EXTRA_FEATURES"
PROFILE_ARGS=()
[ "$PROFILE" = release ] && PROFILE_ARGS=(--release)
[ "$PROFILE" != release ] && [ "$PROFILE" != dev ] && PROFILE_ARGS=(--profile "$PROFILE")
PACKAGES=(-p astro-cli -p astro-train -p astro-model)
MODEL_TEST_TARGETS=()
for f in crates/astro-model/tests/*.rs; do
  MODEL_TEST_TARGETS+=(--test "$(basename "$f" .rs)")
done

# --- 1. One build --------------------------------------------------------------------------------
export EXES="$OUT/executables.tsv" ASTRO_PATH="$OUT/astro-path" FEATURES OUT
# One cargo invocation: a second one with another target selection would unify other features
# (dev-dependencies) and compile Burn again. Selecting an integration test of astro-cli (`cli`)
# builds the `astro` binary too, with the same features.
build() {
  cargo test --no-run "${PROFILE_ARGS[@]}" "${PACKAGES[@]}" --features "$FEATURES" --lib --test backends --test cli \
    "${MODEL_TEST_TARGETS[@]}" --message-format=json-render-diagnostics > "$OUT/build-artifacts.jsonl" &&
    python3 - "$OUT/build-artifacts.jsonl" "$EXES" "$ASTRO_PATH" <<'PY'
import json, os, sys
rows, astro = [], None
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if m["target"]["kind"] == ["bin"] and m["target"]["name"] == "astro" and not m["profile"]["test"]:
        astro = m["executable"]
    elif m["profile"]["test"]:
        package = m["package_id"].split("#")[0].rsplit("/", 1)[-1].split("@")[0]
        rows.append((package, m["target"]["name"], m["executable"], os.path.dirname(m["manifest_path"])))
with open(sys.argv[2], "w") as f:
    for r in rows:
        f.write("\t".join(r) + "\n")
if not astro:
    sys.exit("the build made no astro binary")
open(sys.argv[3], "w").write(astro)
print(f"{len(rows)} test executables; astro: {astro}")
PY
  # A copy of the binary: a later build into the same target directory cannot replace it mid-check.
  cp "$(cat "$ASTRO_PATH")" "$OUT/astro" && echo "$OUT/astro" > "$ASTRO_PATH"
}
if [ "${#KINDS[@]}" = 0 ]; then
  skip build "neither wgpu nor cuda can run here"
else
  step build build
fi
ASTRO="$(cat "$ASTRO_PATH" 2> /dev/null)"
BUILT=0
[ -n "$ASTRO" ] && [ -x "$ASTRO" ] && [ -s "$EXES" ] && BUILT=1

# run_tests PACKAGE [TARGET] — runs the built test executables of PACKAGE (of one TARGET) in the
# package's folder, as cargo test would.
run_tests() {
  local rc=0 package target exe dir
  while IFS=$'\t' read -r package target exe dir; do
    [ "$package" = "$1" ] || continue
    [ -z "${2:-}" ] || [ "$target" = "$2" ] || continue
    echo "-- $package $target" && (cd "$dir" && "$exe") || rc=1
  done < "$EXES"
  return "$rc"
}

# --- 2. Tests on each GPU backend ----------------------------------------------------------------
REQUIRE="${ASTRO_REQUIRE_BACKENDS:-$(IFS=,; echo "${KINDS[*]}")}"
if [ "$BUILT" = 1 ]; then
  ASTRO_REQUIRE_BACKENDS="$REQUIRE" step backends-test run_tests astro-train backends
  for kind in "${KINDS[@]}"; do
    if [ "$MODEL_TESTS" = 1 ]; then
      ASTRO_DEVICE="$kind" step "model-tests-$kind" run_tests astro-model
    else
      skip "model-tests-$kind" "MODEL_TESTS=0"
    fi
  done
elif [ "${#KINDS[@]}" != 0 ]; then
  skip backends-test "the build failed"
fi
[ "$CUDA" = 0 ] && skip cuda-steps "$CUDA_WHY"

# --- 3. Training and 4. bench on each backend ----------------------------------------------------
DATA_ARGS=()
if [ -z "${ASTRO_DATA_DIR:-}" ] || [ ! -f "$ASTRO_DATA_DIR/tinyshakespeare.txt" ]; then
  echo "no tinyshakespeare.txt in \$ASTRO_DATA_DIR: training on tests/fixtures/shakespeare-excerpt.txt" >&2
  DATA_ARGS=(--data "$ROOT/tests/fixtures/shakespeare-excerpt.txt")
fi
for kind in "${KINDS[@]}"; do
  [ "$BUILT" = 1 ] || break
  for variant in softmax astrocytic linear; do
    step "train-$kind-$variant" "$ASTRO" train --device "$kind" --json --name "gpu-$kind-$variant" "${DATA_ARGS[@]}" \
      --set run.out_dir="$OUT/runs" --set train.max_iters="$ITERS" --set model.attention.kind="$variant" \
      --set train.eval_iters="$EVAL_ITERS" --set train.sample_tokens="$SAMPLE_TOKENS"
  done
  if [ "$kind" = cuda ] && [ "$NGPU" -ge 2 ]; then
    ASTRO_REQUIRE_BACKENDS=cuda ASTRO_PARALLEL_DEVICES=cuda:0,cuda:1 step data-parallel-test \
      run_tests astro-train backends
    step train-cuda-astrocytic-2gpu "$ASTRO" train --devices cuda:0,cuda:1 --json --name gpu-astrocytic-2gpu \
      "${DATA_ARGS[@]}" --set run.out_dir="$OUT/runs" --set train.max_iters="$ITERS"
  fi
  step "bench-$kind" "$ASTRO" bench --device "$kind" --json --lengths "$LENGTHS" --contexts "$CONTEXTS" \
    --repeats "$REPEATS" --warmup "$WARMUP"
done

# --- 5. Summary ----------------------------------------------------------------------------------
python3 - "$OUT" "$ITERS" "$((SECONDS - START))" "$BUDGET_S" <<'PY'
import json, os, platform, sys
out, iters, total, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
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
probe = json.load(open(f"{out}/probe.json"))
steps = [json.loads(l) for l in lines(f"{out}/steps.jsonl")]
summary = {
    "machine": platform.node(),
    "cpu_cores": os.cpu_count(),
    **probe,
    "steps": steps,
    "seconds": total,
    "budget_seconds": budget,
    "train_iters": iters,
    "train": {s["step"][len("train-"):]: last_json(f"{out}/{s['step']}.log") for s in steps if s["step"].startswith("train-")},
    "bench": {s["step"][len("bench-"):]: last_json(f"{out}/{s['step']}.log") for s in steps if s["step"].startswith("bench-")},
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(f"{'step':<32} {'status':<8} {'seconds':>7}  why")
for s in steps:
    print(f"{s['step']:<32} {s['status']:<8} {s['seconds']:>7}  {s['why'] or ''}")
print(f"{'total':<32} {'':<8} {total:>7}  (budget {budget})")
failed = [s["step"] for s in steps if s["status"] == "failed"]
print(probe["cuda"]["why"])
print(f"summary: {out}/summary.json" + (f" (failed: {', '.join(failed)})" if failed else " (no step failed)"))
sys.exit(1 if failed else 0)
PY
