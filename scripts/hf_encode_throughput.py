"""Hugging Face `tokenizers`' own encode throughput, for scripts/corpus_scale.sh.

    python hf_encode_throughput.py TOKENIZER_JSON CORPUS [--piece-bytes N] [--batch N]

Reads CORPUS as astro does (pieces of about 1 MB cut at the last line end), encodes them with
`Tokenizer.encode_batch` in batches (the library's parallel path, on every core) and prints one
JSON object: MB/s, tokens, seconds, threads. The same library astro calls from Rust, so the ratio
of the two measures astro's own overhead.
"""

import argparse
import json
import os
import time

from tokenizers import Tokenizer


def pieces(path, size):
    """The file's text in pieces of about `size` bytes, each ending at a line end where possible."""
    carry = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(size)
            if not block:
                break
            block = carry + block
            cut = block.rfind(b"\n")
            if cut + 1 >= len(block) // 2:
                block, carry = block[: cut + 1], block[cut + 1 :]
            else:
                carry = b""
            yield block.decode("utf-8", errors="replace")
    if carry:
        yield carry.decode("utf-8", errors="replace")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("tokenizer")
    p.add_argument("corpus")
    p.add_argument("--piece-bytes", type=int, default=1 << 20)
    p.add_argument("--batch", type=int, default=2 * (os.cpu_count() or 1))
    a = p.parse_args()
    tok = Tokenizer.from_file(a.tokenizer)
    total_bytes = tokens = 0
    t0 = time.perf_counter()
    batch = []
    for piece in pieces(a.corpus, a.piece_bytes):
        batch.append(piece)
        if len(batch) == a.batch:
            tokens += sum(len(e.ids) for e in tok.encode_batch(batch, add_special_tokens=False))
            total_bytes += sum(len(x.encode()) for x in batch)
            batch = []
    if batch:
        tokens += sum(len(e.ids) for e in tok.encode_batch(batch, add_special_tokens=False))
        total_bytes += sum(len(x.encode()) for x in batch)
    secs = time.perf_counter() - t0
    print(json.dumps({"mb_per_s": total_bytes / 1e6 / secs, "tokens": tokens, "seconds": secs,
                      "bytes": total_bytes, "threads": os.cpu_count()}))


if __name__ == "__main__":
    main()
