"""astro_torch.py: astro's Transformer in PyTorch, loading an `astro export` directory.

    python scripts/astro_torch.py EXPORT_DIR [EXPORT_DIR ...] [--tolerance 1e-4]

For each export: builds the model from config.json, loads model.safetensors, runs the token batch
of reference.safetensors and compares the logits with astro's (printed: max |difference|); exits 1
if any export differs by more than the tolerance. As a library:

    from astro_torch import load
    model = load("exports/shakespeare")        # a torch.nn.Module
    logits = model(torch.tensor([[0, 1, 2]]))  # [batch, seq, vocab] (classifiers: [batch, classes])

The attention variants are those of crates/astro-model/src/attention: softmax; astrocytic, y_t = Σ_τ w_tτ v_τ / Σ_τ w_tτ
with w_tτ = γ^(t−τ) φ(q̃_t)·φ(k̃_τ), x̃ = x / D^(1/4); elu+1 linear attention. Each is written as
its quadratic (T×T) form in float64, the slow path that doubles as the specification.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

TRUNCATION = 150.0  # the truncated map's firing-rate ceiling


def gerf_logs(x, omega, gerf_a):
    """SADERF's GERF features in log space (Likhosherstov et al.): x̃ [B,H,T,D] already through Ψ / shift.

    log φ = √(1−4A) ωᵀx − ‖x‖²/2 + A‖ω‖² + (D/4) ln(1−4A) − ½ ln m, A per head.
    """
    m, d = omega.shape[1], omega.shape[2]
    a = gerf_a[None, :, None, None]  # [1,H,1,1]
    u = torch.einsum("bhtd,hmd->bhtm", x, omega)
    half_sq = 0.5 * (x * x).sum(-1, keepdim=True)
    omega_sq = (omega * omega).sum(-1)[None, :, None, :]  # ‖ω_μ‖²: [1,H,1,m]
    logs = torch.sqrt(1 - 4 * a) * u + a * omega_sq + (d / 4) * torch.log(1 - 4 * a) - half_sq - 0.5 * math.log(m)
    return torch.ones_like(u), logs


def feature_logs(x, omega, phase, kind):
    """Hidden-neuron activity φ(x̃) of x̃ [B,H,T,D] (already scaled) as (g, log_scale): φ = g·exp(log_scale).

    log_scale [B,H,T,1] carries the exponential part so that callers can remove a constant per
    query (it cancels in the ratio) and one constant over all keys.
    """
    m = omega.shape[1]
    u = torch.einsum("bhtd,hmd->bhtm", x, omega)  # Ωx̃: [B,H,T,m]
    half_sq = 0.5 * (x * x).sum(-1, keepdim=True)  # ‖x̃‖²/2: [B,H,T,1]
    if phase is not None:
        u_b = u + phase[None, :, None, :]  # Ωx̃ + b
    if kind == "positive":  # m^(-1/2) exp(Ωx̃ − ‖x̃‖²/2), in log space
        return torch.ones_like(u), u - half_sq - 0.5 * math.log(m)
    if kind == "truncated":
        return torch.ones_like(u), u.clamp(max=math.log(TRUNCATION)) - half_sq - 0.5 * math.log(m)
    if kind == "cosine":  # (2/m)^(1/2) cos(Ωx̃ + b) exp(‖x̃‖²/2)
        return math.sqrt(2.0 / m) * torch.cos(u_b), half_sq
    if kind == "positive_cosine":
        return math.sqrt(2.0 / (math.pi * m)) * torch.relu(torch.cos(u_b)), half_sq
    if kind == "linear":  # first-order expansion of the positive map
        return u - half_sq + 1.0 - 0.5 * math.log(m), torch.zeros_like(half_sq)
    if kind == "elu":
        return F.elu(u) + 1.0, torch.zeros_like(half_sq)
    if kind == "taylor":  # [1, u, vec(u uᵀ)/√2] with u = Ωx̃ (Based): φ(q)·φ(k) = 1 + s + s²/2
        second = (u.unsqueeze(-1) * u.unsqueeze(-2)).flatten(-2) / math.sqrt(2.0)
        return torch.cat([torch.ones_like(u[..., :1]), u, second], -1), torch.zeros_like(half_sq)
    if kind == "hedgehog":  # [softmax(u), softmax(−u)] over the hidden neurons (Hedgehog), in log space
        logs = torch.cat([torch.log_softmax(u, -1), torch.log_softmax(-u, -1)], -1)
        return torch.ones_like(logs), logs
    raise ValueError(f"unknown feature map {kind!r}")


def kernel_attention(gq, lq, gk, lk, v, causal, decay):
    """Quadratic kernel attention: [B,H,T,*] features → [B,H,T,Dv]."""
    t = v.shape[2]
    # Per-query constant (max over hidden neurons) and one constant for all keys: both cancel.
    fq = gq * torch.exp(lq - lq.amax(dim=3, keepdim=True))
    fk = gk * torch.exp(lk - lk.amax(dim=(2, 3), keepdim=True))
    scores = fq @ fk.transpose(2, 3)  # φ(q̃_t)·φ(k̃_τ): [B,H,T,T]
    rows = torch.arange(t, dtype=torch.float64)
    if causal:  # γ^(t−τ) for τ ≤ t
        age = rows[:, None] - rows[None, :]
        memory = torch.where(age >= 0, decay ** age.clamp(min=0), torch.zeros(()))
    else:  # bidirectional: the memory after the whole sequence, γ^(T−1−τ)
        memory = (decay ** (t - 1 - rows))[None, :].expand(t, t)
    scores = scores * memory
    response = scores.sum(-1, keepdim=True)  # the astrocyte response a_t (up to the constants)
    response = torch.where(response.abs() < 1e-30, torch.full_like(response, 1e-30), response)
    return (scores / response) @ v


class Inner(nn.Module):
    """The attention variant of one layer: softmax, astrocytic or linear (elu+1)."""

    def __init__(self, spec, heads, head_dim):
        super().__init__()
        self.kind = spec["kind"]
        self.spec = spec
        if self.kind == "astrocytic":
            m = spec.get("features", 256)
            self.omega = nn.Parameter(torch.zeros(heads, m, head_dim), requires_grad=False)
            if spec.get("feature_map", "positive") in ("cosine", "positive_cosine"):
                self.phase = nn.Parameter(torch.zeros(heads, m), requires_grad=False)
            else:
                self.phase = None
            if spec.get("feature_map") in ("saderf", "shifted_saderf", "full_saderf"):  # calibrated: ψ, c, A
                self.log_psi = nn.Parameter(torch.zeros(heads, head_dim), requires_grad=False)
                self.shift = nn.Parameter(torch.zeros(heads, head_dim), requires_grad=False)
                self.gerf_a = nn.Parameter(torch.zeros(heads), requires_grad=False)
            if spec.get("feature_map") == "full_saderf":  # the rotation U: both sides read x̃ U
                self.rotation = nn.Parameter(torch.zeros(heads, head_dim, head_dim), requires_grad=False)

    def forward(self, q, k, v, causal):  # [B,H,T,D] each → [B,H,T,D]
        if self.kind == "softmax":
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # softmax(qkᵀ/√D) v
        dtype = q.dtype
        q, k, v = q.double(), k.double(), v.double()
        if self.kind == "linear":
            gq, gk = F.elu(q) + 1.0, F.elu(k) + 1.0
            zq, zk = torch.zeros_like(q[..., :1]), torch.zeros_like(k[..., :1])
            return kernel_attention(gq, zq, gk, zk, v, causal, 1.0).to(dtype)
        scale = q.shape[-1] ** -0.25  # x̃ = x / D^(1/4)
        kind = self.spec.get("feature_map", "positive")
        omega = self.omega.double()
        phase = None if self.phase is None else self.phase.double()
        if kind in ("saderf", "shifted_saderf", "full_saderf"):
            psi = self.log_psi.double().exp()[None, :, None, :]  # [1,H,1,D]
            c = self.shift.double()[None, :, None, :]
            qs, ks = q * scale, k * scale
            if kind == "full_saderf":  # rotate both sides: x̃ U  ([B,H,T,D] @ [1,H,D,D])
                u = self.rotation.double()[None]
                qs, ks = qs @ u, ks @ u
            gq, lq = gerf_logs(qs * psi, omega, self.gerf_a.double())  # query side: ψ ⊙ q̃
            gk, lk = gerf_logs((ks - c) / psi, omega, self.gerf_a.double())  # key side: (k̃ − c) / ψ
        else:
            gq, lq = feature_logs(q * scale, omega, phase, kind)
            gk, lk = feature_logs(k * scale, omega, phase, kind)
        decay = float(self.spec.get("decay", 1.0))
        y = kernel_attention(gq, lq, gk, lk, v, causal, decay)
        window = self.spec.get("window")
        if window:  # exact softmax over the last W tokens (|t − s| < W for encoders), added to the astrocyte's output
            t = q.shape[2]
            pos = torch.arange(t)
            offset = pos[:, None] - pos[None, :]  # t − s
            band = (offset >= 0) & (offset < window) if causal else offset.abs() < window
            scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
            y = y + torch.softmax(scores.masked_fill(~band, float("-inf")), dim=-1) @ v
        return y.to(dtype)


def rotary(x, start=0):
    """RoFormer rotation of interleaved pairs (x₂ᵢ, x₂ᵢ₊₁) by pos·10000^(−2i/D): [B,H,T,D] → same."""
    _, _, t, d = x.shape
    inv = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # [D/2]
    angle = torch.arange(start, start + t, dtype=torch.float32)[:, None] * inv  # [T,D/2]
    cos, sin = angle.cos(), angle.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)


class AttentionLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, self.heads = cfg["n_embd"], cfg["n_head"]
        bias = cfg.get("bias", False)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=bias) for _ in range(4))
        self.inner = Inner(cfg["attention"], self.heads, d // self.heads)
        # Short causal depthwise convolutions on q | k | v: weight [3d, K], column j = j tokens back.
        kernel = cfg.get("short_conv", 0)
        self.conv = nn.Module() if kernel else None
        if kernel:
            self.conv.weight = nn.Parameter(torch.zeros(3 * d, kernel))

    def forward(self, x, causal, rope):  # [B,T,d] → [B,T,d]
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # [B,H,T,D]
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], -1)  # [B,T,3d]
        if self.conv is not None:
            w = self.conv.weight  # [3d, K]; as Conv1d(groups=3d) with the kernel flipped in time
            kernel = w.shape[1]
            padded = nn.functional.pad(qkv.transpose(1, 2), (kernel - 1, 0))  # [B,3d,K−1+T], causal
            qkv = nn.functional.conv1d(padded, w.flip(1).unsqueeze(1), groups=3 * d).transpose(1, 2)
        q, k, v = (split(y) for y in qkv.split(d, -1))
        if rope:
            q, k = rotary(q), rotary(k)
        y = self.inner(q, k, v, causal)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, d, hidden, bias):
        super().__init__()
        self.fc, self.proj = nn.Linear(d, hidden, bias=bias), nn.Linear(hidden, d, bias=bias)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))  # exact (erf) GELU, as Burn's


def layer_norm(cfg):
    return nn.LayerNorm(cfg["n_embd"], eps=cfg.get("layer_norm_eps", 1e-5), bias=cfg.get("bias", False))


class Block(nn.Module):
    """Pre-LN: x + attn(ln₁ x), then x + mlp(ln₂ x); post-LN (BERT): ln₁(x + attn x), then
    ln₂(x + mlp x). No MLP when mlp_ratio = 0."""

    def __init__(self, cfg):
        super().__init__()
        d, bias, ratio = cfg["n_embd"], cfg.get("bias", False), cfg.get("mlp_ratio", 4)
        self.post = cfg.get("norm", "pre") == "post"
        self.ln_1 = layer_norm(cfg)
        self.attn = AttentionLayer(cfg)
        if ratio > 0:
            self.ln_2 = layer_norm(cfg)
            self.mlp = Mlp(d, ratio * d, bias)
        else:
            self.ln_2 = self.mlp = None

    def forward(self, x, causal, rope):
        if self.post:
            x = self.ln_1(x + self.attn(x, causal, rope))
            return x if self.mlp is None else self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), causal, rope)
        return x if self.mlp is None else x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """An astro language model (tied head) or encoder classifier (pooling + linear head)."""

    def __init__(self, architecture):
        super().__init__()
        cfg = architecture["config"]
        self.kind = architecture["model"]  # "language_model" | "encoder_classifier"
        d = cfg["n_embd"]
        self.positions = cfg.get("positions", "learned")
        self.wte = nn.Embedding(cfg["vocab_size"], d)
        self.wpe = nn.Embedding(cfg["block_size"], d) if self.positions == "learned" else None
        types = cfg.get("type_vocab_size", 0)
        self.wtt = nn.Embedding(types, d) if types > 0 else None  # token types (all type 0)
        self.ln_emb = layer_norm(cfg) if cfg.get("embedding_norm", False) else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg["n_layer"]))
        self.ln_f = layer_norm(cfg) if cfg.get("norm", "pre") == "pre" else None
        if self.kind == "encoder_classifier":
            self.pooling = architecture["classifier"].get("pooling", "mean")
            self.head = nn.Linear(d, architecture["classifier"]["classes"], bias=True)

    def forward(self, tokens):  # [B,T] → [B,T,V] (LM) or [B,classes]
        x = self.wte(tokens)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(tokens.shape[1]))[None]
        if self.wtt is not None:
            x = x + self.wtt.weight[0]
        if self.ln_emb is not None:
            x = self.ln_emb(x)
        causal = self.kind == "language_model"
        for block in self.blocks:
            x = block(x, causal, self.positions == "rotary")
        if self.ln_f is not None:
            x = self.ln_f(x)
        if self.kind == "language_model":
            return x @ self.wte.weight.T
        pooled = x[:, 0] if self.pooling == "cls" else x.mean(1)
        return self.head(pooled)


def load(export_dir):
    """The model of an export directory, with its weights (strict: every tensor must match)."""
    export_dir = Path(export_dir)
    config = json.loads((export_dir / "config.json").read_text())
    if config.get("format") != "astro":
        raise ValueError(f"{export_dir}/config.json is not an astro export")
    model = Transformer(config["architecture"])
    model.load_state_dict(load_file(export_dir / "model.safetensors"), strict=True)
    return model.eval()


def check(export_dir, tolerance):
    model = load(export_dir)
    reference = load_file(Path(export_dir) / "reference.safetensors")
    with torch.no_grad():
        logits = model(reference["tokens"])
    diff = (logits - reference["logits"]).abs().max().item()
    ok = diff <= tolerance
    kind = model.blocks[0].attn.inner.kind if len(model.blocks) else "?"
    print(f"{'ok  ' if ok else 'FAIL'} {export_dir}: {kind}, logits {tuple(logits.shape)}, max |torch − astro| = {diff:.2e}")
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", help="directories written by `astro export`")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = [check(d, args.tolerance) for d in args.exports]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
