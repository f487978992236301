// model_test_util.h: shared helpers of the model tests -- small configs of each architecture
// variant, deterministic random data, and finite-difference comparison.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "model/kernels/cpu/kernels.h"
#include "model/reference.h"
#include "runtime/core/config.h"

namespace stp::test {

// GPT: LayerNorm, GELU, learned positions, MHA, biases. Llama: RMSNorm, SwiGLU, RoPE, GQA, no
// biases. Qwen2: Llama + q/k/v bias. Sizes are small enough for double-precision FD checks.
inline Config tiny_config(const std::string& arch, int tp = 1) {
  Config c;
  ModelConfig& m = c.model;
  m.arch = arch;
  m.layers = 2;
  m.hidden = 16;
  m.heads = 4;
  m.vocab = 32;
  m.seq_len = 8;
  m.ffn_hidden = 32;
  m.init_std = 0.3;  // large enough that every path carries signal in a tiny model
  if (arch == "gpt") {
    m.norm = "layernorm";
    m.activation = "gelu";
    m.position = "learned";
    m.kv_heads = 0;
    m.bias = m.qkv_bias = true;
  } else {
    m.norm = "rmsnorm";
    m.activation = "swiglu";
    m.position = "rope";
    m.kv_heads = 2;
    m.bias = false;
    m.qkv_bias = arch == "qwen2";
    m.rope_theta = 10000.0;
    m.norm_eps = 1e-6;
  }
  c.parallel.tp = tp;
  c.schedule.micro_batch_size = 2;
  c.train.grad_clip = 0;
  return c;
}

// A tiny Qwen2-VL-style model: tiny_config(arch)'s LLM behind a 2-layer vision tower (8x8
// images of 2x2 patches: 16 patches, 4 visual tokens at positions 1..4 of the 8-token sequence).
inline Config tiny_vlm_config(const std::string& arch = "qwen2", int tp = 1) {
  Config c = tiny_config(arch, tp);
  VisionConfig& v = c.model.vision;
  v.enabled = true;
  v.image_size = 8;
  v.patch_size = 2;
  v.channels = 3;
  v.layers = 2;
  v.hidden = 16;
  v.heads = 2;
  v.ffn_hidden = 32;
  v.merge_size = 2;
  return c;
}

inline std::vector<double> random_vec(int64_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> v(static_cast<size_t>(n));
  for (double& x : v) x = d(rng);
  return v;
}

inline std::vector<float> to_float(const std::vector<double>& v) {
  return std::vector<float>(v.begin(), v.end());
}

inline MicroBatch random_batch(int64_t N, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> d(0, vocab - 1);
  MicroBatch mb;
  for (int64_t i = 0; i < N; ++i) {
    mb.tokens.push_back(d(rng));
    mb.targets.push_back(d(rng));
  }
  return mb;
}

// A micro-batch in the VLM layout (model/desc/desc.h): ids -1 at the visual positions 1..vis,
// targets -1 at 0..vis-1, random normal patches; a plain random_batch without a vision tower.
inline MicroBatch make_batch(const Config& cfg, uint64_t seed) {
  const int64_t b = cfg.schedule.micro_batch_size, T = cfg.model.seq_len;
  MicroBatch mb = random_batch(b * T, cfg.model.vocab, seed);
  const VisionGeometry g = vision_geometry(cfg);
  if (g.visual_tokens == 0) return mb;
  for (int64_t j = 0; j < b; ++j)
    for (int64_t t = 0; t < g.visual_tokens; ++t) {
      mb.tokens[size_t(j * T + 1 + t)] = -1;
      mb.targets[size_t(j * T + t)] = -1;
    }
  const std::vector<double> px =
      random_vec(b * cfg.model.vision.images_per_sample * g.patches * g.patch_dim, seed + 1000);
  mb.pixels = to_float(px);
  return mb;
}

// Summed cross-entropy of full logits (N, V) over the rows whose target is not -1: the reference
// the vocab-parallel kernels are checked against.
inline double xent_reference(const std::vector<double>& logits, const std::vector<int>& tgt, int64_t N,
                             int64_t V) {
  double L = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (tgt[size_t(n)] < 0) continue;
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(logits[size_t(n * V + v)]);
    L += std::log(z) - logits[size_t(n * V + tgt[size_t(n)])];
  }
  return L;
}

// Two vocab shards of (N, V) logits: columns [0, V/2) and [V/2, V), each stored contiguously.
inline std::array<std::vector<double>, 2> vocab_shards(const std::vector<double>& logits, int64_t N, int64_t V) {
  const int64_t Vh = V / 2;
  std::array<std::vector<double>, 2> sh = {std::vector<double>(size_t(N * Vh)), std::vector<double>(size_t(N * Vh))};
  for (int64_t n = 0; n < N; ++n)
    for (int r = 0; r < 2; ++r)
      for (int64_t v = 0; v < Vh; ++v) sh[size_t(r)][size_t(n * Vh + v)] = logits[size_t(n * V + r * Vh + v)];
  return sh;
}

// The vocab-parallel cross-entropy of (N, V) logits on the two vocab_shards, with the all-reduces
// done by hand (row max: MAX, sum-exp and target logit: SUM), as Head and Loss run it over TP 2.
// The backward runs per shard in place on the shard's logits (so every row must be overwritten)
// at scale 0.5, and is assembled into the (N, V) gradient of the summed loss (doubled).
struct XentShards {
  std::array<std::vector<double>, 2> tlogit;    // each shard's target logits, before the SUM
  std::vector<double> gmax, gse, gtl;           // the reduced row max, sum-exp, target logit (N)
  std::vector<double> dlogits;                  // (N, V)
};
inline XentShards xent_two_shards(const std::vector<double>& logits, const std::vector<int>& tgt,
                                  int64_t N, int64_t V) {
  using Vec = std::vector<double>;
  const int64_t Vh = V / 2;
  std::array<Vec, 2> sh = vocab_shards(logits, N, V);
  Vec mx[2] = {Vec(N), Vec(N)}, se[2] = {Vec(N), Vec(N)};
  XentShards x{{Vec(N), Vec(N)}, Vec(N), Vec(N), Vec(N), Vec(N * V)};
  for (int r = 0; r < 2; ++r) cpu::xent_row_max(mx[r].data(), sh[r].data(), N, Vh);
  for (int64_t n = 0; n < N; ++n) x.gmax[n] = std::max(mx[0][n], mx[1][n]);
  for (int r = 0; r < 2; ++r)
    cpu::xent_sumexp(se[r].data(), x.tlogit[r].data(), sh[r].data(), x.gmax.data(), tgt.data(), N,
                     Vh, r * Vh);
  for (int64_t n = 0; n < N; ++n) {
    x.gse[n] = se[0][n] + se[1][n];
    x.gtl[n] = x.tlogit[0][n] + x.tlogit[1][n];
  }
  for (int r = 0; r < 2; ++r) {
    cpu::xent_backward(sh[r].data(), sh[r].data(), x.gmax.data(), x.gse.data(), tgt.data(), 0.5f, N,
                       Vh, r * Vh);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t v = 0; v < Vh; ++v) x.dlogits[n * V + r * Vh + v] = 2.0 * sh[r][n * Vh + v];
  }
  return x;
}

// Central finite difference of loss() in x[i], step h.
inline double fd(std::vector<double>& x, size_t i, const std::function<double()>& loss,
                 double h = 1e-5) {
  const double x0 = x[i];
  x[i] = x0 + h;
  const double lp = loss();
  x[i] = x0 - h;
  const double lm = loss();
  x[i] = x0;
  return (lp - lm) / (2 * h);
}

// Largest |analytic - numeric| / (|numeric| + floor) over the checked indices (all, or `max_checks`
// spread evenly). In double with h = 1e-5 the truncation error is ~1e-10 relative and the
// cancellation noise ~1e-16 |loss| / h < 1e-9 absolute, so a correct gradient scores < 1e-6
// (|error| < 1e-6 |g| + 1e-8) and any wrong term scores O(1). The floor keeps gradients that are
// zero in exact arithmetic (e.g. the key bias: softmax is shift-invariant) from scoring noise.
inline double fd_max_rel_err(std::vector<double>& x, const std::vector<double>& analytic,
                             const std::function<double()>& loss, size_t max_checks = 64,
                             double floor = 1e-2) {
  double worst = 0;
  const size_t n = x.size(), step = std::max<size_t>(1, n / std::max<size_t>(1, max_checks));
  for (size_t i = 0; i < n; i += step) {
    const double num = fd(x, i, loss);
    worst = std::max(worst, std::abs(analytic[i] - num) / (std::abs(num) + floor));
  }
  return worst;
}

inline double dot(const std::vector<double>& a, const double* b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Largest |a - b| over the largest |b|: the error relative to the tensor's scale.
inline double max_scaled_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, m = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, double(std::abs(a[i] - b[i])));
    m = std::max(m, double(std::abs(b[i])));
  }
  return d / m;
}

}  // namespace stp::test
