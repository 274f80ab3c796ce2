#!/usr/bin/env bash
# Corpora at scale (a benchmark, not part of `cargo test`):
#
#   scripts/corpus_scale.sh [CORPUS] [WORK_DIR]
#
# Without CORPUS it writes WORK_DIR/big.txt, about $MB MB (default 2000): tiny Shakespeare and
# WikiText-2 valid repeated ($ASTRO_DATA_DIR, else ../shared/datasets), or the repository's
# Shakespeare excerpt where those are missing. Then, for the char tokenizer and for a byte-level
# BPE of $VOCAB tokens (default 8192), with an empty cache:
#   1. `astro train --data CORPUS` for 3 steps of the recipe's model: tokenization MB/s (astro's
#      own "tokenized …" line), BPE vocabulary training time, the cache's size, the peak RSS of the
#      whole run (GNU time), and the seconds to the first step;
#   2. the same again with the cache in place: the seconds to the first step;
# and Hugging Face `tokenizers`' own Python `encode_batch` on the same file with the same
# tokenizer.json (pieces of 1 MB cut at line ends, as astro reads it), in a venv
# ($ASTRO_VENV, default ~/.cache/astro/venv). Prints a table and writes WORK_DIR/corpus_scale.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CORPUS=${1:-}
WORK=${2:-$(mktemp -d)}
MB=${MB:-2000}
VOCAB=${VOCAB:-8192}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
VENV=${ASTRO_VENV:-$HOME/.cache/astro/venv}
cargo build --release --quiet
ASTRO=${CARGO_TARGET_DIR:-$ROOT/target}/release/astro
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }

if [ -z "$CORPUS" ]; then
  CORPUS="$WORK/big.txt"
  DATA=${ASTRO_DATA_DIR:-$ROOT/../shared/datasets}
  SEED_FILES=("$DATA/tinyshakespeare.txt" "$DATA/wikitext2_tokens_valid.txt")
  [ -f "${SEED_FILES[0]}" ] && [ -f "${SEED_FILES[1]}" ] || SEED_FILES=("$ROOT/tests/fixtures/shakespeare-excerpt.txt")
  target=$((MB * 1000 * 1000))
  if [ ! -f "$CORPUS" ] || [ "$(stat -c %s "$CORPUS")" -lt "$target" ]; then
    echo "== writing $CORPUS (about $MB MB from ${SEED_FILES[*]})"
    cat "${SEED_FILES[@]}" > "$WORK/seed.txt"
    : > "$CORPUS"
    while [ "$(stat -c %s "$CORPUS")" -lt "$target" ]; do cat "$WORK/seed.txt" "$WORK/seed.txt" "$WORK/seed.txt" "$WORK/seed.txt" >> "$CORPUS"; done
  fi
fi
CORPUS=$(cd "$(dirname "$CORPUS")" && pwd)/$(basename "$CORPUS")
echo "== corpus: $CORPUS ($(stat -c %s "$CORPUS") bytes); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

# run NAME TOKENIZER — one `astro train` of 3 steps, its stderr and GNU time's report in WORK.
run() {
  local name=$1 tokenizer=$2
  /usr/bin/time -v -o "$WORK/$name.time" env ASTRO_CACHE_DIR="$WORK/cache" "$ASTRO" train --json --name "$name" \
    --data "$CORPUS" --set "data.tokenizer=$tokenizer" --set train.max_iters=3 --set train.eval_interval=3 \
    --set train.eval_iters=1 --set train.sample_tokens=0 --set "run.out_dir=\"$WORK/runs\"" \
    > "$WORK/$name.json" 2> "$WORK/$name.log"
}

rm -rf "$WORK/cache" "$WORK/runs"
for kind in char bpe; do
  case $kind in
    char) spec='{kind="char"}' ;;
    bpe) spec="{kind=\"bpe\",vocab_size=$VOCAB}" ;;
  esac
  echo "== $kind: empty cache"
  run "$kind-cold" "$spec"
  echo "== $kind: cache in place"
  run "$kind-warm" "$spec"
done

if ! "$VENV/bin/python" -c "import tokenizers" 2> /dev/null; then
  echo "== installing tokenizers into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check tokenizers
fi
echo "== Hugging Face tokenizers (Python) encode_batch on the same file, the same tokenizer.json"
"$VENV/bin/python" "$ROOT/scripts/hf_encode_throughput.py" "$WORK/runs/bpe-cold/tokenizer.json" "$CORPUS" > "$WORK/hf.json"

python3 - "$WORK" "$CORPUS" << 'PY'
import json, os, re, sys
work, corpus = sys.argv[1], sys.argv[2]
def timed(name):
    t = open(f"{work}/{name}.time").read()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) * 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", t).group(1)
    parts = [float(x) for x in wall.split(":")]
    secs = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    return rss, secs
def tokenized(name):
    log = open(f"{work}/{name}.log").read()
    m = re.search(r"tokenized .*?: ([\d.]+) MB of text in ([\d.]+) s \(([\d.]+) MB/s", log)
    bpe = re.search(r"trained a byte-level BPE of \d+ tokens on ([\d.]+) MB .* in ([\d.]+) s", log)
    return (m and float(m.group(3))), (bpe and float(bpe.group(2))), (bpe and float(bpe.group(1)))
def summary(name):
    return json.load(open(f"{work}/{name}.json"))
cache = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(f"{work}/cache") for f in fs)
hf = json.load(open(f"{work}/hf.json"))
rows = {}
for kind in ("char", "bpe"):
    rss, wall = timed(f"{kind}-cold")
    mbs, bpe_s, bpe_mb = tokenized(f"{kind}-cold")
    rss_w, wall_w = timed(f"{kind}-warm")
    rows[kind] = {
        "tokenize_mb_per_s": mbs, "bpe_train_s": bpe_s, "bpe_sample_mb": bpe_mb,
        "peak_rss_mb_cold": rss / 1e6, "wall_s_cold": wall, "setup_s_cold": summary(f"{kind}-cold")["setup_seconds"],
        "peak_rss_mb_warm": rss_w / 1e6, "setup_s_warm": summary(f"{kind}-warm")["setup_seconds"], "wall_s_warm": wall_w,
    }
out = {"corpus": corpus, "corpus_bytes": os.path.getsize(corpus), "cache_bytes": cache, "rows": rows, "hf": hf,
       "bpe_vs_hf": rows["bpe"]["tokenize_mb_per_s"] / hf["mb_per_s"]}
json.dump(out, open(f"{work}/corpus_scale.json", "w"), indent=1)
print(f"corpus {out['corpus_bytes']/1e9:.2f} GB; cache (both tokenizers) {cache/1e9:.2f} GB")
print(f"{'':6} {'tokenize MB/s':>13} {'BPE train s':>11} {'peak RSS MB':>11} {'first step s (cold)':>19} {'first step s (cached)':>21}")
for k, r in rows.items():
    bpe = f"{r['bpe_train_s']:.1f}" if r["bpe_train_s"] else "—"
    print(f"{k:6} {r['tokenize_mb_per_s']:>13.1f} {bpe:>11} {max(r['peak_rss_mb_cold'], r['peak_rss_mb_warm']):>11.0f} "
          f"{r['setup_s_cold']:>19.1f} {r['setup_s_warm']:>21.2f}")
print(f"HF tokenizers (Python) encode_batch: {hf['mb_per_s']:.1f} MB/s on {hf['threads']} threads; astro BPE / HF = {out['bpe_vs_hf']:.2f}")
PY
