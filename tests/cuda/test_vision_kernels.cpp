// test_vision_kernels.cpp: the CUDA kernels the VLM adds or changes -- 2-D RoPE of the vision
// tower and cross-entropy with ignored targets (< 0) -- against their CPU twins (stp::cpu, run in
// double on the same bf16-rounded inputs), with NaN-poisoned outputs; tolerances in
// cuda_test_util.h. A test fails on a wrong patch position or angle, a row that should be ignored
// but carries loss or gradient (checked exactly: 0), or an element left unwritten (NaN).
#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <tuple>

#include "model/kernels/cpu/kernels.h"
#include "model/kernels/cuda/kernels.h"
#include "tests/cuda/cuda_test_util.h"

using namespace stp::cuda;
using namespace stp::cuda::test;
using std::vector;

TEST_CASE("rope2d forward/backward match the CPU and invert each other", "[cuda][rope][vision]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(21);
  const int64_t B = 3, NH = 4, NKV = 2;
  const float theta = 10000.f;
  // HD 80 is the vision tower's head size (Qwen2-VL: 1280 / 16).
  for (auto [G, m, HD] : vector<std::tuple<int64_t, int64_t, int64_t>>{{8, 2, 64}, {6, 3, 64}, {8, 2, 80}}) {
    const int64_t Np = G * G, W = (NH + 2 * NKV) * HD;
    const std::string tag = "rope2d G " + std::to_string(G) + " m " + std::to_string(m) + " HD " + std::to_string(HD);
    auto x = random_vec(B * Np * W, rng), dy = random_vec(B * Np * W, rng);
    auto dx = env.bf(x), ddy = env.bf(dy);
    vector<double> X = to_double(x), DY = to_double(dy);
    rope2d_forward(dx.data(), B, Np, NH, NKV, HD, G, m, theta, env.ctx);
    stp::cpu::rope2d_forward<double>(X.data(), B, Np, NH, NKV, HD, G, m, theta);
    compare(tag + " forward", env.get(dx), X, kTolBf16Out);
    rope2d_backward(ddy.data(), B, Np, NH, NKV, HD, G, m, theta, env.ctx);
    stp::cpu::rope2d_backward<double>(DY.data(), B, Np, NH, NKV, HD, G, m, theta);
    compare(tag + " backward", env.get(ddy), DY, kTolBf16Out);
    rope2d_backward(dx.data(), B, Np, NH, NKV, HD, G, m, theta, env.ctx);
    compare(tag + " backward(forward(x)) = x", env.get(dx), to_double(x), kTolBf16Chain);
  }
  // The preconditions are checked before any launch and named in the error.
  auto q = env.bf(vector<float>(64 * 3 * 8, 0.f));
  using Catch::Contains;
  CHECK_THROWS_WITH(rope2d_forward(q.data(), 1, 64, 1, 1, 6, 8, 2, theta, env.ctx),
                    Contains("HD = 6 must be a multiple of 4"));
  CHECK_THROWS_WITH(rope2d_backward(q.data(), 1, 64, 1, 1, 8, 8, 3, theta, env.ctx),
                    Contains("grid = 8 must be a multiple of merge = 3"));
  CHECK_THROWS_WITH(rope2d_forward(q.data(), 1, 60, 1, 1, 8, 8, 2, theta, env.ctx),
                    Contains("Np = 60 must be grid^2 = 64"));
}

namespace {

// Rows of `v` (N, V) whose target is < 0 that hold anything but exact zeros.
int nonzero_ignored_rows(const vector<float>& v, const vector<int>& tgt, int64_t V) {
  int bad = 0;
  for (size_t n = 0; n < tgt.size(); ++n) {
    if (tgt[n] >= 0) continue;
    for (int64_t c = 0; c < V; ++c)
      if (v[n * V + c] != 0.f) {
        ++bad;
        break;
      }
  }
  return bad;
}

}  // namespace

TEST_CASE("cross-entropy with ignored targets matches the CPU, ignored rows are exactly 0",
          "[cuda][xent][vision]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(22);
  // The shard holds [V, 2V) of 3V; V = 8200 takes three 4096-column passes of a row.
  for (const int64_t V : {int64_t(1000), int64_t(8200)}) {
    const int64_t N = V > 4096 ? 16 : 70, start = V;
    const std::string tag = " (ignored rows 0) V " + std::to_string(V);
    auto logits = random_vec(N * V, rng, -6.f, 6.f);
    vector<int> tgt(N);
    std::uniform_int_distribution<int> ti(0, int(3 * V) - 1), ignore(0, 9);
    for (auto& t : tgt) t = ignore(rng) < 3 ? -1 : ti(rng);
    tgt[0] = -1;  // at least one ignored row, and one held by this shard
    tgt[1] = int(start + V / 2);
    const XentRun x = xent_run(env, logits, tgt, N, V, start, true);  // xent_loss: the targets
    compare("xent_sumexp tlogit" + tag, x.tl, x.TL, 1e-7);
    compare("xent_loss" + tag, x.loss, x.LOSS, kTolF32);
    CHECK(nonzero_ignored_rows(x.loss, tgt, 1) == 0);
    compare("xent_backward" + tag, x.g, x.G, kTolBf16Out);
    CHECK(nonzero_ignored_rows(x.g, tgt, V) == 0);
    // Fused (TP = 1): the shard is the whole vocabulary; ignored rows stay -1.
    compare("xent_fused loss" + tag, x.fused_loss, x.FUSED_LOSS, kTolF32);
    compare("xent_fused dlogits" + tag, x.fused_g, x.FUSED_G, kTolBf16Out);
    CHECK(nonzero_ignored_rows(x.fused_loss, tgt, 1) == 0);
    CHECK(nonzero_ignored_rows(x.fused_g, tgt, V) == 0);
  }
}
