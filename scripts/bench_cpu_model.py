#!/usr/bin/env python3
"""PyTorch eager twin of stp-train's CPU training-step benchmark (tests/model/bench_model.cpp).

Reads the JSON lines the C++ bench prints (one per config, with the shapes), builds the same
decoder in PyTorch (GPT: LayerNorm, tanh-GELU, learned positions, MHA, biases; Qwen2: RMSNorm,
SwiGLU, rotate_half RoPE, GQA, q/k/v bias), times the same training step -- forward, mean
cross-entropy, backward, clip_grad_norm_(1.0), AdamW(betas 0.9/0.95) -- on one micro-batch of the
same (batch, seq), and prints one JSON line per config with both timings and the ratio
stp-train tokens/s / PyTorch tokens/s.

Usage: bench_cpu_model.py STP_JSONL [--threads 2] [--steps 7] [--tag TEXT] [--attn explicit|sdpa]
(--tag labels the thread environment the caller set: OMP_NUM_THREADS, OPENBLAS_NUM_THREADS.
--attn sdpa uses F.scaled_dot_product_attention(is_causal=True), PyTorch >= 2.0's fused kernel;
explicit is q@k^T, masked softmax, @v, the only choice on 1.13.)
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, c, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Block(nn.Module):
    def __init__(self, c, sdpa):
        super().__init__()
        self.sdpa = sdpa
        gpt = c["arch"] == "gpt"
        C, NH = c["hidden"], c["heads"]
        self.NH, self.NKV, self.HD = NH, c["kv_heads"] or NH, C // NH
        self.gpt = gpt
        norm = (lambda: nn.LayerNorm(C, eps=1e-5)) if gpt else (lambda: RMSNorm(C, 1e-6))
        self.n1, self.n2 = norm(), norm()
        self.qkv = nn.Linear(C, (self.NH + 2 * self.NKV) * self.HD, bias=True)
        self.o = nn.Linear(self.NH * self.HD, C, bias=gpt)
        f = c["ffn"]
        self.fc1 = nn.Linear(C, f if gpt else 2 * f, bias=gpt)
        self.fc2 = nn.Linear(f, C, bias=gpt)

    def forward(self, x, mask, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(self.n1(x)).split(
            [self.NH * self.HD, self.NKV * self.HD, self.NKV * self.HD], dim=-1)
        q = q.view(B, T, self.NH, self.HD).transpose(1, 2)
        k = k.view(B, T, self.NKV, self.HD).transpose(1, 2)
        v = v.view(B, T, self.NKV, self.HD).transpose(1, 2)
        if cos is not None:
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if self.NKV != self.NH:
            k = k.repeat_interleave(self.NH // self.NKV, dim=1)
            v = v.repeat_interleave(self.NH // self.NKV, dim=1)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.HD))
            y = att.masked_fill(mask, float("-inf")).softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(B, T, self.NH * self.HD)
        x = x + self.o(y)
        u = self.fc1(self.n2(x))
        if self.gpt:
            a = F.gelu(u, approximate="tanh")
        else:
            g, up = u.chunk(2, dim=-1)
            a = F.silu(g) * up
        return x + self.fc2(a)


class Model(nn.Module):
    def __init__(self, c, sdpa):
        super().__init__()
        self.c = c
        C, V, T = c["hidden"], c["vocab"], c["seq"]
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C) if c["arch"] == "gpt" else None
        self.blocks = nn.ModuleList(Block(c, sdpa) for _ in range(c["layers"]))
        self.norm = nn.LayerNorm(C, eps=1e-5) if c["arch"] == "gpt" else RMSNorm(C, 1e-6)
        self.head = nn.Linear(C, V, bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
        self.register_buffer("mask", torch.triu(torch.ones(T, T, dtype=torch.bool), 1))
        if c["arch"] == "gpt":
            self.cos = self.sin = None
        else:
            HD = C // c["heads"]
            inv = 1.0 / (1e6 ** (torch.arange(0, HD, 2).float() / HD))
            ang = torch.outer(torch.arange(T).float(), inv)
            emb = torch.cat((ang, ang), dim=-1)
            self.cos, self.sin = emb.cos(), emb.sin()

    def forward(self, idx, targets):
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe.weight[: idx.shape[1]]
        for b in self.blocks:
            x = b(x, self.mask, self.cos, self.sin)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def bench(c, steps, sdpa):
    torch.manual_seed(0)
    m = Model(c, sdpa)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    B, T, V = c["batch"], c["seq"], c["vocab"]
    times = []
    for i in range(steps + 2):
        idx = torch.randint(0, V, (B, T))
        tgt = torch.randint(0, V, (B, T))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = m(idx, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        dt = (time.perf_counter() - t0) * 1000
        if i >= 2:
            times.append(dt)
    med = statistics.median(times)
    return med, B * T / (med / 1000), float(loss.detach())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stp_jsonl")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--tag", default="")
    ap.add_argument("--attn", choices=("explicit", "sdpa"), default="explicit")
    a = ap.parse_args()
    sdpa = a.attn == "sdpa"
    if sdpa and not hasattr(F, "scaled_dot_product_attention"):
        sys.exit(f"bench_cpu_model.py: --attn sdpa needs PyTorch >= 2.0, this is {torch.__version__}")
    torch.set_num_threads(a.threads)
    with open(a.stp_jsonl) as f:
        cases = [json.loads(l) for l in f if l.startswith("{")]
    for c in cases:
        ms, tps, loss = bench(c, a.steps, sdpa)
        out = {"name": c["name"], "threads": a.threads, "torch": torch.__version__, "env": a.tag, "attn": a.attn,
               "stp_step_ms": c["step_ms_median"], "torch_step_ms": round(ms, 3),
               "stp_tokens_per_s": c["tokens_per_s"], "torch_tokens_per_s": round(tps, 1),
               "ratio": round(c["tokens_per_s"] / tps, 3), "stp_loss": c["loss"],
               "torch_loss": round(loss, 4)}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
