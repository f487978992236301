// test_vision_kernels.cpp: the CUDA kernels the VLM adds or changes -- 2-D RoPE of the vision
// tower and cross-entropy with ignored targets (< 0) -- against their CPU twins (stp::cpu, run in
// double on the same bf16-rounded inputs), with NaN-poisoned outputs; tolerances in
// cuda_test_util.h. A test fails on a wrong patch position or angle, a row that should be ignored
// but carries loss or gradient (checked exactly: 0), or an element left unwritten (NaN).
#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <utility>

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
  const int64_t B = 3, NH = 4, NKV = 2, HD = 64, W = (NH + 2 * NKV) * HD;
  const float theta = 10000.f;
  for (auto [G, m] : vector<std::pair<int64_t, int64_t>>{{8, 2}, {6, 3}}) {
    const int64_t Np = G * G;
    const std::string tag = "rope2d G " + std::to_string(G) + " m " + std::to_string(m);
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

TEST_CASE("cross-entropy with ignored targets matches the CPU; ignored rows are exactly 0",
          "[cuda][xent][vision]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(22);
  const int64_t N = 70, V = 1000, start = 1000;  // this shard holds [1000, 2000) of 3000
  auto logits = random_vec(N * V, rng, -6.f, 6.f);
  vector<int> tgt(N);
  std::uniform_int_distribution<int> ti(0, 2999), ignore(0, 9);
  for (auto& t : tgt) t = ignore(rng) < 3 ? -1 : ti(rng);
  tgt[0] = -1;  // at least one ignored row, and one held by this shard
  tgt[1] = 1500;
  auto dl = env.bf(logits);
  auto dt = env.i32(tgt);
  auto rm = env.f32_poison(N), se = env.f32_poison(N), tl = env.f32_poison(N), loss = env.f32_poison(N);
  xent_row_max(rm.data(), dl.data(), N, V, env.ctx);
  xent_sumexp(se.data(), tl.data(), dl.data(), rm.data(), dt.data(), N, V, start, env.ctx);
  xent_loss(loss.data(), rm.data(), se.data(), tl.data(), N, dt.data(), env.ctx);
  vector<double> L = to_double(logits), RM(N), SE(N), TL(N), LOSS(N), G(N * V);
  stp::cpu::xent_row_max<double>(RM.data(), L.data(), N, V);
  stp::cpu::xent_sumexp<double>(SE.data(), TL.data(), L.data(), RM.data(), tgt.data(), N, V, start);
  stp::cpu::xent_loss<double>(LOSS.data(), RM.data(), SE.data(), TL.data(), N, tgt.data());
  compare("xent_sumexp tlogit (ignored rows 0)", env.get(tl), TL, 1e-7);
  auto got_loss = env.get(loss);
  compare("xent_loss (ignored rows 0)", got_loss, LOSS, kTolF32);
  CHECK(nonzero_ignored_rows(got_loss, tgt, 1) == 0);
  auto g = env.bf_poison(N * V);
  xent_backward(g.data(), dl.data(), rm.data(), se.data(), dt.data(), 0.5f, N, V, start, env.ctx);
  stp::cpu::xent_backward<double>(G.data(), L.data(), RM.data(), SE.data(), tgt.data(), 0.5f, N, V, start);
  auto got_g = env.get(g);
  compare("xent_backward (ignored rows 0)", got_g, G, kTolBf16Out);
  CHECK(nonzero_ignored_rows(got_g, tgt, V) == 0);

  // Fused (TP = 1): the shard is the whole vocabulary; ignored rows stay -1.
  for (auto& t : tgt)
    if (t >= 0) t %= int(V);
  auto dt1 = env.i32(tgt);
  auto inplace = env.bf(logits);
  auto floss = env.f32_poison(N);
  xent_fused(floss.data(), inplace.data(), dt1.data(), 0.25f, N, V, env.ctx);
  stp::cpu::xent_sumexp<double>(SE.data(), TL.data(), L.data(), RM.data(), tgt.data(), N, V, 0);
  stp::cpu::xent_loss<double>(LOSS.data(), RM.data(), SE.data(), TL.data(), N, tgt.data());
  stp::cpu::xent_backward<double>(G.data(), L.data(), RM.data(), SE.data(), tgt.data(), 0.25f, N, V, 0);
  auto got_floss = env.get(floss), got_fg = env.get(inplace);
  compare("xent_fused loss (ignored rows 0)", got_floss, LOSS, kTolF32);
  compare("xent_fused dlogits (ignored rows 0)", got_fg, G, kTolBf16Out);
  CHECK(nonzero_ignored_rows(got_floss, tgt, 1) == 0);
  CHECK(nonzero_ignored_rows(got_fg, tgt, V) == 0);
}
