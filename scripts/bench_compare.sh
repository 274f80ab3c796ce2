#!/usr/bin/env bash
# astro vs PyTorch on this machine, interleaved (astro, PyTorch, astro, PyTorch, …) so that drift
# in the machine's speed hits both alike; prints one table of ratios.
#
#   scripts/bench_compare.sh [ROUNDS=3] [extra args for both, e.g. --only train --variants softmax]
#
# Each round runs `astro bench --json`, `scripts/bench_torch.py --json` (eager) and, unless
# COMPILE=0, `scripts/bench_torch.py --json --compile` (torch.compile, inductor: train and forward
# rows) with the same shapes, repeats and thread count (2 unless $THREADS). The table shows, per
# figure, the median over rounds of each side's median and the ratios: tokens/s ours ÷ PyTorch,
# times PyTorch ÷ ours — above 1 means astro is faster either way. Raw JSON goes to $OUT (default
# reports/bench-<date>).
# PyTorch comes from the venv of scripts/parity.sh (~/.cache/astro/venv), created if missing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS="${1:-3}"
shift || true
THREADS="${THREADS:-2}"
COMPILE="${COMPILE:-1}"
OUT="${OUT:-$ROOT/reports/bench-$(date +%Y%m%d-%H%M%S)}"
VENV="${ASTRO_VENV:-$HOME/.cache/astro/venv}"
mkdir -p "$OUT"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet torch
fi
cargo build --release -p astro-cli --manifest-path "$ROOT/Cargo.toml" --quiet
ASTRO="${CARGO_TARGET_DIR:-$ROOT/target}/release/astro"
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS: astro" >&2
  "$ASTRO" bench --json "$@" > "$OUT/astro-$r.json"
  echo "round $r/$ROUNDS: pytorch" >&2
  "$VENV/bin/python" "$ROOT/scripts/bench_torch.py" --json --threads "$THREADS" "$@" > "$OUT/torch-$r.json"
  if [ "$COMPILE" != 0 ]; then
    echo "round $r/$ROUNDS: pytorch, torch.compile" >&2
    "$VENV/bin/python" "$ROOT/scripts/bench_torch.py" --json --compile --threads "$THREADS" "$@" > "$OUT/compiled-$r.json"
  fi
done
"$VENV/bin/python" - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys, platform, datetime, os
out, rounds = sys.argv[1], int(sys.argv[2])
def load(prefix):
    figs, rep = {}, None
    for r in range(1, rounds + 1):
        path = f"{out}/{prefix}-{r}.json"
        if not os.path.exists(path):
            return {}, None
        rep = json.load(open(path))
        for row in rep["rows"]:
            figs.setdefault((row["section"], row["shape"], row["variant"], row["unit"]), []).append(row)
    return figs, rep
ours, a = load("astro")
theirs, b = load("torch")
compiled, _ = load("compiled")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print(f"astro ({a['backend']}) vs PyTorch {b['version']}, {b['threads']} threads, {rounds} interleaved rounds, "
      f"{datetime.date.today()}, {cpu}, {os.cpu_count()} cores\n")
print("| section | shape | variant | unit | astro | PyTorch eager | astro faster by | torch.compile | astro faster by | astro peak MiB |")
print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
def ratio(key, med, pt):
    if pt is None:
        return ""
    return f"{med / pt:.2f}×" if key[3] in ("tokens/s", "GFLOP/s") else f"{pt / med:.2f}×"
def median_of(figs, key):
    rows = figs.get(key)
    return statistics.median(r["value"]["median"] for r in rows) if rows else None
for key, rows in ours.items():
    med = statistics.median(r["value"]["median"] for r in rows)
    peak = statistics.median(r["peak_mib"] for r in rows) if rows[0].get("peak_mib") is not None else None
    pt, pc = median_of(theirs, key), median_of(compiled, key)
    fmt = lambda x: "" if x is None else (f"{x:.0f}" if x >= 100 else f"{x:.3g}")
    print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {fmt(med)} | {fmt(pt)} | {ratio(key, med, pt)} "
          f"| {fmt(pc)} | {ratio(key, med, pc)} | {fmt(peak)} |")
PY
echo "raw results: $OUT" >&2
