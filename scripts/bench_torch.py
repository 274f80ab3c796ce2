#!/usr/bin/env python3
"""The models of `astro bench`, in PyTorch, measured the same way.

Same network as astro's benchmark models (nanoGPT's shakespeare-char CPU recipe: 4 layers, width
128, 4 heads, no biases, pre-LayerNorm, learned positions, exact GELU, LM head tied to the token
embedding, vocabulary 65), same shapes, same repeats, and rows with the same keys, so that
`scripts/bench_compare.sh` can divide one by the other. Variants:

- softmax:    torch.nn.functional.scaled_dot_product_attention (fused, causal)
- astrocytic: chunked causal linear attention with positive random features at the same m
              (exp(Ωx − ‖x‖²/2)/√m, x = q·D^(-1/4), stabilised by the row / key maxima)
- linear:     chunked causal linear attention with elu+1 (Katharopoulos et al.)

Chunked attention uses chunks of 32 tokens like astro's rule for heads of width 32 (`--chunk`):
masked products inside a chunk, prefix sums of the chunk states across chunks.

`--only train-long` trains at each of `--lengths` with rotary positions instead of learned ones and
`--long-tokens` tokens per step (batch = tokens / T), as `astro bench --only train-long` does; it is
asked for by name (not in the default sections).

`--compile` runs the train and forward sections through `torch.compile` (inductor; the first calls,
which compile, fall in the warm-up) and leaves the other sections out.

    python scripts/bench_torch.py [--json] [--threads 2] [--repeats 5] [--only train,forward,...] [--compile]
"""

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 65
# The products of a training step (astro's bench.rs MATMUL_SHAPES): (role, batch, m, k, n).
MATMUL_SHAPES = [
    ("projection", 1, 4096, 128, 128),
    ("mlp-up", 1, 4096, 128, 512),
    ("mlp-down", 1, 4096, 512, 128),
    ("weight-grad", 1, 128, 4096, 512),
    ("lm-head", 1, 4096, 128, 65),
    ("scores", 64, 256, 32, 256),
    ("probs-values", 64, 256, 256, 32),
    ("recipe-projection", 1, 768, 128, 128),
    ("recipe-mlp-up", 1, 768, 128, 512),
]
CHUNK = 32


def chunked_causal(fq, fk, v, chunk=None):
    """y_t = Σ_{τ≤t} (fq_t·fk_τ) v_τ / Σ_{τ≤t} fq_t·fk_τ.  fq, fk: [B,H,T,m], v: [B,H,T,e]."""
    B, H, T, m = fq.shape
    e = v.shape[-1]
    c = min(chunk or CHUNK, T)
    n = (T + c - 1) // c
    pad = n * c - T
    if pad:
        fq = F.pad(fq, (0, 0, 0, pad))
        fk = F.pad(fk, (0, 0, 0, pad))
        v = F.pad(v, (0, 0, 0, pad))
    fq = fq.view(B, H, n, c, m)
    fk = fk.view(B, H, n, c, m)
    v = v.view(B, H, n, c, e)
    mask = torch.ones(c, c, dtype=torch.bool, device=fq.device).tril()
    scores = (fq @ fk.transpose(-1, -2)).masked_fill(~mask, 0.0)  # [B,H,n,c,c]
    num = scores @ v  # [B,H,n,c,e]
    den = scores.sum(-1)  # [B,H,n,c]
    kv = fk.transpose(-1, -2) @ v  # [B,H,n,m,e]
    ks = fk.sum(-2)  # [B,H,n,m]
    kv = kv.cumsum(2) - kv  # memory before each chunk
    ks = ks.cumsum(2) - ks
    num = num + fq @ kv
    den = den + (fq * ks.unsqueeze(-2)).sum(-1)
    y = num / den.clamp_min(1e-30).unsqueeze(-1)
    return y.reshape(B, H, n * c, e)[:, :, :T]


class Attention(nn.Module):
    def __init__(self, d, heads, variant, features, rope=None):
        super().__init__()
        self.h, self.e, self.variant = heads, d // heads, variant
        self.rope = rope
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        if variant == "astrocytic":
            self.register_buffer("omega", torch.randn(heads, features, self.e))

    def prf(self, x, rows):
        # x: [B,H,T,e] → log φ = Ωx − ‖x‖²/2 − ½ln m, stabilised by row maxima (queries) or the
        # key maximum (one constant for all keys: it cancels in the ratio).
        x = x * self.e ** -0.25
        log_phi = x @ self.omega.transpose(-1, -2).unsqueeze(0) - 0.5 * (x * x).sum(-1, keepdim=True)
        if rows:
            c = log_phi.detach().amax(-1, keepdim=True)
        else:
            c = log_phi.detach().amax(dim=(-1, -2), keepdim=True)
        return torch.exp(log_phi - c)

    def forward(self, x):
        B, T, d = x.shape
        split = lambda t: t.view(B, T, self.h, self.e).transpose(1, 2)  # [B,H,T,e]
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        if self.rope is not None:
            q, k = rotate(q, *self.rope), rotate(k, *self.rope)
        if self.variant == "softmax":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.variant == "linear":
            y = chunked_causal(F.elu(q) + 1, F.elu(k) + 1, v)
        else:
            y = chunked_causal(self.prf(q, True), self.prf(k, False), v)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, d))


def rope_tables(t, e, base=10000.0):
    """cos, sin [T, e/2] of rotary positions (Burn's RotaryEncoding: base 10⁴, adjacent pairs)."""
    inv = base ** (-torch.arange(0, e, 2, dtype=torch.float32) / e)
    angles = torch.arange(t, dtype=torch.float32)[:, None] * inv[None, :]
    return angles.cos(), angles.sin()


def rotate(x, cos, sin):
    """x [B,H,T,e] with each adjacent pair (x₂ᵢ, x₂ᵢ₊₁) rotated by position·θᵢ."""
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2)


class Block(nn.Module):
    def __init__(self, d, heads, variant, features, rope=None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, bias=False)
        self.attn = Attention(d, heads, variant, features, rope)
        self.ln_2 = nn.LayerNorm(d, bias=False)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class LM(nn.Module):
    def __init__(self, variant, block_size, features=256, layers=4, heads=4, d=128, rotary=False):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, d)
        # Rotary positions (no table of learned ones) when asked, as astro's `positions = "rotary"`.
        self.wpe = None if rotary else nn.Embedding(block_size, d)
        rope = rope_tables(block_size, d // heads) if rotary else None
        self.blocks = nn.ModuleList(Block(d, heads, variant, features, rope) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, bias=False)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x) @ self.wte.weight.t()  # tied head


def stat(samples):
    s = sorted(samples)
    n = len(s)
    med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    return {"median": med, "min": s[0], "max": s[-1]}


def inv(st, k):
    return {"median": k / st["median"], "min": k / st["max"], "max": k / st["min"]}


def timed(warmup, repeats, f):
    for _ in range(warmup):
        f()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        out.append(time.perf_counter() - t0)
    return out


def tokens(batch, t, gen):
    return torch.randint(0, VOCAB, (batch, t), generator=gen)


def row(section, shape, variant, unit, value, **extra):
    r = {"section": section, "shape": shape, "variant": variant, "unit": unit, "value": value}
    r.update({k: v for k, v in extra.items() if v is not None})
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", default="train,forward,long,generate,matmul")
    ap.add_argument("--variants", default="softmax,astrocytic,linear")
    ap.add_argument("--lengths", default="1024,4096,16384")
    ap.add_argument("--contexts", default="64,4096")
    ap.add_argument("--features", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--long-tokens", type=int, default=16384, help="tokens per step of train-long")
    ap.add_argument("--chunk", type=int, default=32, help="tokens per chunk of the kernelised variants")
    ap.add_argument("--compile", action="store_true", help="torch.compile the models (train and forward only)")
    a = ap.parse_args()
    global CHUNK
    CHUNK = a.chunk
    if a.compile:
        # Compilation happens in the first calls: keep at least two of them out of the timings.
        a.warmup = max(a.warmup, 2)
    build = (lambda m: torch.compile(m)) if a.compile else (lambda m: m)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    sections = a.only.split(",")
    variants = a.variants.split(",")
    rows = []

    def emit(r):
        rows.append(r)
        if not a.json:
            print(f"{r['section']:<8} {r['shape']:<9} {r['variant']:<10} {r['value']['median']:>10.1f} {r['unit']}", flush=True)

    for section in sections:
        for v in variants:
            if v not in ("softmax", "astrocytic", "linear"):
                continue  # astro-only variants (taylor-conv): no PyTorch model
            if section in ("train", "train-long"):
                if section == "train":
                    shapes = [("recipe", 64, 12, False), ("b16-t256", 256, 16, False)]
                else:
                    lengths = map(int, a.lengths.split(","))
                    shapes = [(f"T={t} b={max(a.long_tokens // t, 1)}", t, max(a.long_tokens // t, 1), True) for t in lengths]
                for shape, t, batch, rotary in shapes:
                    model = LM(v, t, a.features, rotary=rotary)
                    compiled = build(model)
                    decay = [p for p in model.parameters() if p.dim() >= 2]
                    no_decay = [p for p in model.parameters() if p.dim() < 2]
                    opt = torch.optim.AdamW(
                        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=1e-3, betas=(0.9, 0.99),
                    )
                    x, y = tokens(batch, t, gen), tokens(batch, t, gen)

                    def step():
                        logits = compiled(x)
                        loss = F.cross_entropy(logits.view(-1, VOCAB), y.view(-1))
                        loss.item()
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                        opt.step()

                    # Long softmax steps take seconds: fewer repeats there, as astro does.
                    long = section == "train-long" and t >= 8192
                    s = timed(min(a.warmup, 1) if long else a.warmup, min(a.repeats, 3) if long else a.repeats, step)
                    emit(row(section, shape, v, "tokens/s", inv(stat(s), batch * t)))
            elif section == "forward":
                t, batch = 256, 16
                model = build(LM(v, t, a.features).eval())
                x = tokens(batch, t, gen)
                with torch.inference_mode():
                    s = timed(a.warmup, a.repeats, lambda: model(x).sum().item())
                emit(row("forward", "b16-t256", v, "tokens/s", inv(stat(s), batch * t)))
            elif a.compile:
                continue  # compiled rows: train and forward only
            elif section == "matmul":
                if v != variants[0]:
                    continue  # shapes, not variants: once
                for name, batch, m, k, n in MATMUL_SHAPES:
                    x = torch.randn(batch, m, k)
                    w = torch.randn(batch, k, n)
                    s = timed(a.warmup, max(a.repeats, 3), lambda: torch.bmm(x, w)[0, 0, 0].item())
                    flops = 2.0 * batch * m * k * n
                    emit(row("matmul", f"{batch}x{m}x{k}x{n}", name, "GFLOP/s", inv(stat(s), flops / 1e9)))
            elif section == "long":
                for t in map(int, a.lengths.split(",")):
                    model = LM(v, t, a.features).eval()
                    x = tokens(1, t, gen)
                    reps = min(a.repeats, 3) if t >= 8192 else a.repeats
                    warm = min(a.warmup, 1) if t >= 8192 else a.warmup
                    with torch.inference_mode():
                        s = timed(warm, reps, lambda: model(x).sum().item())
                    st = stat(s)
                    emit(row("long", f"T={t}", v, "ms", {k: x * 1e3 for k, x in st.items()}))
            elif section == "generate":
                # PyTorch has no decoding state in this model: each token re-runs the context, as
                # nanoGPT's generate() does (a KV cache / recurrent state is what astro adds).
                for ctx in map(int, a.contexts.split(",")):
                    model = LM(v, ctx + a.gen_tokens + a.warmup + 1, a.features).eval()
                    ids = tokens(1, ctx, gen)
                    samples = []
                    with torch.inference_mode():
                        for i in range(a.warmup + a.gen_tokens):
                            t0 = time.perf_counter()
                            logits = model(ids)[:, -1]
                            nxt = logits.argmax(-1, keepdim=True)
                            dt = time.perf_counter() - t0
                            ids = torch.cat([ids, nxt], 1)
                            if i >= a.warmup:
                                samples.append(dt * 1e3)
                    emit(row("generate", f"ctx={ctx}", v, "ms/token", stat(samples)))
    report = {
        "implementation": "pytorch",
        "version": torch.__version__,
        "compiled": a.compile,
        "chunk": CHUNK,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    if a.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
