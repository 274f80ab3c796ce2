#!/usr/bin/env bash
# CI: `astro ablate --slurm` on a real one-node Slurm (scripts/slurm/one-node.sh), end to end.
#
#   scripts/slurm/ci_test.sh [ASTRO_BINARY]      (default: $CARGO_TARGET_DIR/debug/astro)
#
# 1. A 4-cell grid (2 attention variants × 2 seeds) on the repository's Shakespeare excerpt goes to
#    Slurm as one job array (2 tasks at once) and a report job; its report must equal a local
#    `astro ablate` of the same grid number for number (every column but tokens/s and wall time).
# 2. A one-cell grid's task is sent SIGUSR1 mid-run, as Slurm does before a time limit: it must
#    checkpoint, say `interrupted` in its run directory, requeue itself, resume, and end with the
#    same metrics, step for step, as an uninterrupted local run.
# The daemons are stopped however the test ends. The cluster's tasks run on one thread each
# (`--cpus 1`), the local runs on every core: the numbers must not depend on that.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
ASTRO="${1:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/astro}"
[ -x "$ASTRO" ] || { echo "no astro binary at $ASTRO (build it: cargo build)" >&2; exit 1; }
ASTRO="$(cd "$(dirname "$ASTRO")" && pwd)/$(basename "$ASTRO")"
T="$(mktemp -d)"
START=$SECONDS

cleanup() {
  local rc=$?
  scancel --user="$(id -un)" > /dev/null 2>&1 || true
  "$ROOT/scripts/slurm/one-node.sh" stop || true
  if [ "$rc" != 0 ]; then
    echo "--- slurm test failed (exit $rc); logs:" >&2
    tail -n 40 "$T"/*/slurm/*.out 2> /dev/null >&2 || true
  fi
  rm -rf "$T"
}
trap cleanup EXIT

"$ROOT/scripts/slurm/one-node.sh" start

# wait_gone JOB... — until none of the jobs is in the queue (at most 240 s).
wait_gone() {
  local deadline=$((SECONDS + 240))
  # grep without -q reads all of squeue's output: with pipefail, an early exit could SIGPIPE squeue.
  while squeue -h -j "$(IFS=,; echo "$*")" 2> /dev/null | grep . > /dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "jobs $* still queued after 240 s" >&2; squeue >&2; return 1; }
    sleep 1
  done
}

# job_ids OUTPUT — the array and report job ids from `astro ablate --slurm`'s first line.
job_ids() {
  sed -n 's/^submitted job array \([0-9]*\) .* report job \([0-9]*\) after it$/\1 \2/p' <<< "$1"
}

# same_results A.csv B.csv — equal but for tokens/s and wall time.
same_results() {
  python3 - "$1" "$2" << 'PY'
import csv, sys
def rows(path):
    return [{k: v for k, v in r.items() if k not in ("tokens_per_sec", "wall_seconds")} for r in csv.DictReader(open(path))]
a, b = rows(sys.argv[1]), rows(sys.argv[2])
for r in a:
    print("  ", r["cell"], r["status"], r["steps"], r["val_loss"], r["best_val_loss"])
if a != b:
    sys.exit(f"the cluster's report differs from the local one:\n{a}\n{b}")
if len(a) != 4 or any(r["status"] != "ok" for r in a):
    sys.exit(f"expected 4 finished cells: {a}")
print("   the cluster's report equals the local one, number for number")
PY
}

cp "$ROOT/tests/fixtures/shakespeare-excerpt.txt" "$T/corpus.txt"
cat > "$T/base.toml" << EOF
[run]
name = "x"
seed = 1
[data]
path = "$T/corpus.txt"
[model]
block_size = 32
n_layer = 1
n_head = 2
n_embd = 32
[optim]
batch_size = 8
warmup_iters = 5
[train]
max_iters = 40
eval_interval = 20
eval_iters = 2
checkpoint_interval = 20
sample_tokens = 0
EOF
cat > "$T/grid.toml" << 'EOF'
base = "base.toml"
[grid]
"model.attention" = [{ kind = "softmax" }, { kind = "astrocytic", features = 16 }]
"run.seed" = [1, 2]
EOF

echo "== 1. a 4-cell grid as a Slurm job array, and its report against a local run"
out=$("$ASTRO" ablate --config "$T/grid.toml" --out "$T/cluster" --slurm --cpus 1 --max-parallel 2 --time 10:00)
echo "$out"
read -r array report <<< "$(job_ids "$out")"
[ -n "${report:-}" ] || { echo "could not read the job ids" >&2; exit 1; }
wait_gone "$array" "$report"
grep -q "report:" "$T/cluster/slurm/report.out" || { echo "the report job wrote no report" >&2; exit 1; }
"$ASTRO" ablate --config "$T/grid.toml" --out "$T/cluster" --list
"$ASTRO" ablate --config "$T/grid.toml" --out "$T/local" > /dev/null 2>&1
same_results "$T/cluster/results.csv" "$T/local/results.csv"

echo "== 2. a task signalled before its time limit checkpoints, requeues itself and resumes exactly"
sed -e 's/^max_iters = 40/max_iters = 600/' -e 's/^checkpoint_interval = 20/checkpoint_interval = 1000/' \
  -e 's/^eval_interval = 20/eval_interval = 200/' "$T/base.toml" > "$T/long.toml"
echo 'log_interval = 1' >> "$T/long.toml"
cat > "$T/grid1.toml" << 'EOF'
base = "long.toml"
[grid]
"model.attention" = [{ kind = "astrocytic", features = 16 }]
EOF
out=$("$ASTRO" ablate --config "$T/grid1.toml" --out "$T/preempt" --slurm --cpus 1 --time 10:00)
echo "$out"
read -r array report <<< "$(job_ids "$out")"
run="$T/preempt/runs/cell-000"
deadline=$((SECONDS + 120))
until [ -f "$run/metrics.jsonl" ] && [ "$(wc -l < "$run/metrics.jsonl")" -ge 30 ]; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "the task did not start training" >&2; exit 1; }
  sleep 0.2
done
scancel --signal=USR1 --batch "${array}_0"
deadline=$((SECONDS + 60))
until python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))["state"] != "interrupted")' "$run/status.json" 2> /dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "the run never said it was interrupted" >&2; cat "$run/status.json" >&2 || true; exit 1; }
  sleep 0.2
done
echo "   interrupted: $(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["interruptions"])' "$run/status.json")"
ls "$run/checkpoints"
# Requeued tasks wait two minutes before Slurm starts them again; start it now.
deadline=$((SECONDS + 60))
until squeue -h -j "${array}_0" -o '%T' 2> /dev/null | grep PENDING > /dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "the task was not requeued" >&2; squeue >&2; exit 1; }
  sleep 0.5
done
scontrol update JobId="${array}_0" StartTime=now
wait_gone "$array" "$report"
grep -q "interrupted by SIGUSR1" "$T/preempt/slurm/cell-0.out"
grep -q "requeueing task" "$T/preempt/slurm/cell-0.out"
grep -q "resuming from step" "$T/preempt/slurm/cell-0.out"
"$ASTRO" ablate --config "$T/grid1.toml" --out "$T/whole" > /dev/null 2>&1
python3 - "$run" "$T/whole/runs/cell-000" << 'PY'
import json, sys
def rows(run):
    out = []
    for line in open(f"{run}/metrics.jsonl"):
        r = json.loads(line)
        r.pop("tokens_per_sec"); r.pop("elapsed")
        out.append(r)
    return out
resumed, whole = rows(sys.argv[1]), rows(sys.argv[2])
status = json.load(open(f"{sys.argv[1]}/status.json"))
assert status["state"] == "finished" and len(status["interruptions"]) == 1, status
if resumed != whole:
    sys.exit(f"the resumed run's metrics differ from the uninterrupted run's ({len(resumed)} vs {len(whole)} rows)")
print(f"   resumed at step {status['interruptions'][0]['step']}: {len(whole)} metrics rows equal the uninterrupted run's, "
      f"final val loss {whole[-1]['val_loss']}")
PY
echo "== slurm test ok in $((SECONDS - START)) s"
