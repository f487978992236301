#!/usr/bin/env python3
"""PyTorch eager reference for the one-step training benchmark (tests/cuda/bench_step.cpp).

The same models as the C++ bench (tests/cuda/gpu_block.h): pre-norm blocks, GPT-style (LayerNorm,
tanh-GELU, biases, learned positions, tied head) or Llama-style (RMSNorm, SwiGLU, RoPE, no biases,
untied head), causal attention through F.scaled_dot_product_attention, fp32 master weights under
torch.autocast(bfloat16), cross-entropy, clip_grad_norm_(1.0), fused AdamW (decay on matrices only).
No torch.compile: this is the eager baseline. One JSON object per model on stdout (and appended to
--json), timed exactly like the C++ bench: host wall-clock around whole steps, each ending in
loss.item(), median of the timed steps after 2 warm-up steps; FLOPs by the same formula.

Data, as in the C++ bench: every step trains on a fresh batch, all made before the timed loop.
Inputs are i.i.d. uniform over V; targets, independent of them, i.i.d. from a Zipf law over V
(p_k ~ 1/(k+1)). The model learns the law from every token, so the loss drops on unseen batches,
but never below the law's entropy (`loss_floor`: 7.30 nats for V = 32000, 7.57 for 50304). (One
fixed batch of uniform tokens, repeated, let llama7b-slice memorise it: loss 11.2 -> 0.0003 in ten
steps; fresh uniform targets leave nothing to learn.)
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PEAK_TFLOPS = 989.0

SPECS = {
    "gpt-125m": dict(L=12, C=768, NH=12, NKV=12, F=3072, V=50304, T=2048, B=4, llama=False, tied=True),
    "gpt-1.3b": dict(L=24, C=2048, NH=16, NKV=16, F=8192, V=50304, T=2048, B=4, llama=False, tied=True),
    "llama7b-slice": dict(L=4, C=4096, NH=32, NKV=32, F=11008, V=32000, T=2048, B=2, llama=True, tied=False),
}


def step_flops(s):
    """6 * matmul params * tokens + causal attention 6 * L * T * C * tokens (as bench_step.cpp)."""
    HD = s["C"] // s["NH"]
    QKV = (s["NH"] + 2 * s["NKV"]) * HD
    F1 = 2 * s["F"] if s["llama"] else s["F"]
    mm = s["C"] * QKV + s["C"] * s["NH"] * HD + s["C"] * F1 + s["F"] * s["C"]
    per_token = 6.0 * s["L"] * mm + 6.0 * s["L"] * s["T"] * s["C"] + 6.0 * s["V"] * s["C"]
    return per_token * s["B"] * s["T"]


def rope(x, cos, sin):  # x (B, H, T, HD), rotate-half pairing
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, s):
        super().__init__()
        C, NH, NKV, llama = s["C"], s["NH"], s["NKV"], s["llama"]
        self.NH, self.NKV, self.HD, self.llama = NH, NKV, C // NH, llama
        bias = not llama
        norm = (lambda: nn.RMSNorm(C, eps=1e-5)) if llama else (lambda: nn.LayerNorm(C, eps=1e-5))
        self.n1, self.n2 = norm(), norm()
        self.qkv = nn.Linear(C, (NH + 2 * NKV) * self.HD, bias=bias)
        self.o = nn.Linear(NH * self.HD, C, bias=bias)
        self.fc1 = nn.Linear(C, 2 * s["F"] if llama else s["F"], bias=bias)
        self.fc2 = nn.Linear(s["F"], C, bias=bias)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        qkv = self.qkv(self.n1(x))
        q, k, v = qkv.split([self.NH * self.HD, self.NKV * self.HD, self.NKV * self.HD], dim=-1)
        q = q.view(B, T, self.NH, self.HD).transpose(1, 2)
        k = k.view(B, T, self.NKV, self.HD).transpose(1, 2)
        v = v.view(B, T, self.NKV, self.HD).transpose(1, 2)
        if self.llama:
            q, k = rope(q, cos, sin), rope(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.NKV != self.NH)
        x = x + self.o(o.transpose(1, 2).reshape(B, T, C))
        h = self.fc1(self.n2(x))
        if self.llama:
            g, u = h.chunk(2, dim=-1)
            h = F.silu(g) * u
        else:
            h = F.gelu(h, approximate="tanh")
        return x + self.fc2(h)


class Model(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s
        self.wte = nn.Embedding(s["V"], s["C"])
        self.wpe = None if s["llama"] else nn.Embedding(s["T"], s["C"])
        self.blocks = nn.ModuleList(Block(s) for _ in range(s["L"]))
        self.nf = nn.RMSNorm(s["C"], eps=1e-5) if s["llama"] else nn.LayerNorm(s["C"], eps=1e-5)
        self.head = nn.Linear(s["C"], s["V"], bias=False)
        if s["tied"]:
            self.head.weight = self.wte.weight
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
        HD = s["C"] // s["NH"]
        inv = 10000.0 ** (-torch.arange(0, HD // 2, dtype=torch.float32) * 2 / HD)
        ang = torch.arange(s["T"], dtype=torch.float32)[:, None] * inv[None, :]
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)

    def forward(self, tok, tgt):
        x = self.wte(tok)
        if self.wpe is not None:
            x = x + self.wpe.weight[None, : tok.shape[1]]
        for b in self.blocks:
            x = b(x, self.cos, self.sin)
        logits = self.head(self.nf(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt.view(-1))


def bench(name, steps):
    s = SPECS[name]
    torch.manual_seed(0)
    model = Model(s).cuda()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    zipf = 1.0 / torch.arange(1, s["V"] + 1, dtype=torch.float64)
    zipf /= zipf.sum()
    loss_floor = float(-(zipf * zipf.log()).sum())
    shape = (steps + 2, s["B"], s["T"])
    xs = torch.randint(0, s["V"], shape, device="cuda")
    ys = torch.multinomial(zipf, xs.numel(), replacement=True).view(shape).cuda()
    batches = list(zip(xs, ys))  # each (B, T), contiguous
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times, first, last = [], None, None
    for i in range(steps + 2):
        x, y = batches[i]
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        last = loss.item()
        t1 = time.perf_counter()
        first = last if i == 0 else first
        if i >= 2:
            times.append((t1 - t0) * 1e3)
    med = statistics.median(times)
    tflops = step_flops(s) / (med * 1e-3) / 1e12
    n_params = sum(p.numel() for p in model.parameters())
    del model, opt
    torch.cuda.empty_cache()
    return dict(impl="torch", model=name, params=n_params, tokens=s["B"] * s["T"], step_ms=med,
                step_ms_min=min(times), tokens_per_s=s["B"] * s["T"] / (med * 1e-3), tflops=tflops,
                mfu=tflops / PEAK_TFLOPS, loss_first=first, loss_last=last, loss_floor=loss_floor,
                peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9)


def bench_gemm(n=8192, reps=20):
    """torch.matmul on random bf16 (n, n) x (n, n), three operand sets rotated, CUDA events."""
    a = [torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    b = [torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    for i in range(3):
        torch.matmul(a[i], b[i])
    ms = []
    for i in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        torch.matmul(a[i % 3], b[i % 3])
        e1.record()
        e1.synchronize()
        ms.append(e0.elapsed_time(e1))
    med = statistics.median(ms)
    tflops = 2.0 * n ** 3 / (med * 1e-3) / 1e12
    return dict(impl="torch", model=f"gemm-{n}", step_ms=med, tflops=tflops, mfu=tflops / PEAK_TFLOPS)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="gpt-125m,gpt-1.3b,llama7b-slice")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    print(f"# torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
    for name in [m for m in a.models.split(",") if m]:
        try:
            r = bench_gemm() if name == "gemm-8192" else bench(name, max(1, a.steps))
        except Exception as e:  # one model failing (e.g. OOM) must not hide the others
            r = dict(impl="torch", model=name, error=f"{type(e).__name__}: {e}"[:300])
            torch.cuda.empty_cache()
        line = json.dumps(r)
        print(line, flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
