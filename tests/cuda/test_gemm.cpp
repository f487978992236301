// test_gemm.cpp: the cuBLASLt GEMMs (gemm.h) and matmul_forward/backward (kernels.h).
// An exact test with small integers (every product and partial sum is exactly representable in
// bf16 inputs, fp32 accumulation and the bf16 output) catches a transposed operand or a wrong
// leading dimension with a zero-tolerance assertion; random-input tests against the CPU twin in
// double bound the rounding; epilogue tests check the fused bias/GELU/dGELU against the unfused
// CPU composition; the plan-cache test interleaves exact products of different shapes and layouts.
#include <catch2/catch.hpp>

#include <random>

#include "model/kernels/cpu/kernels.h"
#include "model/kernels/cuda/kernels.h"
#include "tests/cuda/cuda_test_util.h"

using namespace stp::cuda;
using namespace stp::cuda::test;
using std::vector;

namespace {

vector<float> small_ints(size_t n, std::mt19937& rng, int lo, int hi) {
  std::uniform_int_distribution<int> d(lo, hi);
  vector<float> v(n);
  for (auto& x : v) x = float(d(rng));
  return v;
}

// Elements of `out` that differ from the exact reference (a NaN from the poison counts).
int count_inexact(const vector<float>& out, const vector<double>& ref) {
  REQUIRE(out.size() == ref.size());
  int bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) bad += double(out[i]) != ref[i];
  return bad;
}

// D (M, N) = A (M, K) @ B (K, N) through matmul_bf16 on small integers, each operand allocated at
// exactly its own shape, with the exact fp64 reference. |D| <= K * 2 * 2 <= 256 keeps D exact in
// bf16 for K <= 64.
struct MatmulCase {
  int64_t M, N, K;
  DeviceBuffer<bf16> a, b, d;
  vector<double> ref;
  MatmulCase(Env& env, std::mt19937& rng, int64_t M_, int64_t N_, int64_t K_) : M(M_), N(N_), K(K_) {
    REQUIRE(K <= 64);
    const auto ha = small_ints(M * K, rng, -2, 2), hb = small_ints(K * N, rng, -2, 2);
    a = env.bf(ha), b = env.bf(hb), d = env.bf_poison(M * N);
    const vector<double> A = to_double(ha), B = to_double(hb);
    ref.assign(M * N, 0.0);
    stp::cpu::gemm<double>(false, false, M, N, K, 1.0, A.data(), K, B.data(), N, 0.0, ref.data(), N);
  }
  // Poisons D, multiplies, returns the number of inexact elements of D.
  int run(Env& env) {
    CUDA_CHECK(cudaMemsetAsync(d.data(), 0xFF, d.bytes(), env.stream.get()));
    env.ctx.gemm.matmul_bf16(d.data(), a.data(), b.data(), M, N, K, env.stream.get());
    return count_inexact(env.get(d), ref);
  }
};

}  // namespace

// Fails on any operand/transpose/leading-dimension mistake: the answer is exact.
TEST_CASE("linear forward and backward are exact on small integers", "[cuda][gemm]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(1);
  const int64_t N = 40, C = 48, OC = 24;  // |sums| <= 48 * 2 * 1 = 96: exact in bf16
  auto x = small_ints(N * C, rng, -2, 2), w = small_ints(OC * C, rng, -1, 1),
       b = small_ints(OC, rng, -3, 3), dy = small_ints(N * OC, rng, -1, 1);
  auto dx = env.bf(x), dw = env.bf(w), db = env.bf(b), ddy = env.bf(dy);
  vector<double> X(x.begin(), x.end()), W(w.begin(), w.end()), B(b.begin(), b.end()),
      DY(dy.begin(), dy.end()), out(N * OC), dinp(N * C), dwr(OC * C, 0.0), dbr(OC, 0.0);
  stp::cpu::matmul_forward<double>(out.data(), X.data(), W.data(), B.data(), N, C, OC);
  stp::cpu::matmul_backward<double>(dinp.data(), dwr.data(), dbr.data(), DY.data(), X.data(),
                                    W.data(), N, C, OC, false);
  auto o = env.bf_poison(N * OC);
  matmul_forward(o.data(), dx.data(), dw.data(), db.data(), N, C, OC, env.ctx);
  auto gi = env.bf_poison(N * C);
  auto gw = env.f32_poison(OC * C), gb = env.f32_poison(OC);
  matmul_backward(gi.data(), gw.data(), gb.data(), ddy.data(), dx.data(), dw.data(), N, C, OC,
                  false, env.ctx);
  CHECK(count_inexact(env.get(o), out) == 0);
  CHECK(count_inexact(env.get(gi), dinp) == 0);
  CHECK(count_inexact(env.get(gw), dwr) == 0);
  CHECK(count_inexact(env.get(gb), dbr) == 0);
}

TEST_CASE("linear forward/backward match the CPU on random inputs, accumulate adds",
          "[cuda][gemm]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(2);
  const int64_t N = 200, C = 264, OC = 136;
  auto x = random_vec(N * C, rng), w = random_vec(OC * C, rng, -.1f, .1f), b = random_vec(OC, rng),
       dy = random_vec(N * OC, rng), gw0 = random_vec(OC * C, rng), gb0 = random_vec(OC, rng);
  auto dx = env.bf(x), dw = env.bf(w), db = env.bf(b), ddy = env.bf(dy);
  vector<double> X = to_double(x), W = to_double(w), B = to_double(b), DY = to_double(dy),
                 out(N * OC), dinp(N * C), dwr = to_double(gw0), dbr = to_double(gb0);
  stp::cpu::matmul_forward<double>(out.data(), X.data(), W.data(), B.data(), N, C, OC);
  stp::cpu::matmul_backward<double>(dinp.data(), dwr.data(), dbr.data(), DY.data(), X.data(),
                                    W.data(), N, C, OC, true);
  auto o = env.bf_poison(N * OC);
  matmul_forward(o.data(), dx.data(), dw.data(), db.data(), N, C, OC, env.ctx);
  auto gi = env.bf_poison(N * C);
  auto gw = env.f32(gw0), gb = env.f32(gb0);
  matmul_backward(gi.data(), gw.data(), gb.data(), ddy.data(), dx.data(), dw.data(), N, C, OC,
                  true, env.ctx);
  compare("matmul_forward (bias)", env.get(o), out, kTolBf16Out);
  compare("matmul_backward dinp", env.get(gi), dinp, kTolBf16Out);
  compare("matmul_backward dweight (+=, fp32)", env.get(gw), dwr, kTolF32);
  compare("matmul_backward dbias (+=, fp32)", env.get(gb), dbr, kTolF32);
}

// Fails if the GELU_AUX epilogue's output or its stored pre-activation, or the DGELU epilogue,
// differ from the unfused composition (they would differ by O(1) if the aux layout were wrong).
TEST_CASE("GELU and dGELU epilogues equal the unfused composition", "[cuda][gemm]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(3);
  const int64_t N = 128, C = 96, OC = 160;
  auto x = random_vec(N * C, rng), w = random_vec(OC * C, rng, -.2f, .2f), b = random_vec(OC, rng),
       dy = random_vec(N * C, rng), w2 = random_vec(C * OC, rng, -.2f, .2f);
  auto dx = env.bf(x), dw = env.bf(w), db = env.bf(b), ddy = env.bf(dy), dw2 = env.bf(w2);
  auto o = env.bf_poison(N * OC), pre = env.bf_poison(N * OC);
  env.ctx.gemm.linear_forward(o.data(), pre.data(), dx.data(), dw.data(), db.data(), N, C, OC,
                              true, env.stream.get());
  vector<double> X = to_double(x), W = to_double(w), B = to_double(b), P(N * OC), G(N * OC);
  stp::cpu::matmul_forward<double>(P.data(), X.data(), W.data(), B.data(), N, C, OC);
  stp::cpu::gelu_forward<double>(G.data(), P.data(), N * OC);
  compare("linear_forward GELU_AUX_BIAS pre", env.get(pre), P, kTolBf16Out);
  compare("linear_forward GELU_AUX_BIAS out", env.get(o), G, kTolBf16Out);
  // Backward of a second layer (C <- OC) through the GELU: dpre = (dy @ w2) * gelu'(pre).
  auto dpre = env.bf_poison(N * OC);
  env.ctx.gemm.linear_backward_input(dpre.data(), ddy.data(), dw2.data(), pre.data(), N, OC, C,
                                     env.stream.get());
  vector<double> W2 = to_double(w2), DY = to_double(dy), DH(N * OC), DP(N * OC);
  auto pre_h = env.get(pre);
  vector<double> PRE(pre_h.begin(), pre_h.end());  // the stored bf16 pre-activation
  stp::cpu::matmul_backward<double>(DH.data(), nullptr, nullptr, DY.data(), nullptr, W2.data(), N,
                                    OC, C, false);
  stp::cpu::gelu_backward<double>(DP.data(), PRE.data(), DH.data(), N * OC);
  compare("linear_backward_input DGELU", env.get(dpre), DP, kTolBf16Chain);
}

// Fails if the plan cache misses on a repeated GEMM, or if two GEMMs share a plan they must not:
// (64x32 @ 32x48) and (48x32 @ 32x64) swap cuBLASLt's m and n and their leading dimensions, and
// linear_forward with N=48, C=32, OC=64 is the second's m, n, k with op(A) = T and another lda.
// Every result is exact (small integers), so a wrong layout is a nonzero count, not a rounding;
// each product is re-checked after the others ran, so a later key cannot disturb an earlier plan.
// (The first version of this test read the second product's B (32, 64) from a 32x48 buffer, on
// the GPU and in the CPU reference alike: both read past the end, rel error ~2 on the H200.)
TEST_CASE("GEMM plans are cached per shape and layout", "[cuda][gemm]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(4);
  MatmulCase p1(env, rng, 64, 48, 32), p2(env, rng, 48, 64, 32);
  const size_t before = env.ctx.gemm.cached_plans();
  for (int i = 0; i < 3; ++i) CHECK(p1.run(env) == 0);
  CHECK(env.ctx.gemm.cached_plans() == before + 1);
  CHECK(p2.run(env) == 0);
  CHECK(env.ctx.gemm.cached_plans() == before + 2);

  // out (48, 64) = x (48, 32) @ w (64, 32)^T: cuBLASLt m=64 n=48 k=32 like p2, but A transposed.
  const int64_t N = 48, C = 32, OC = 64;
  const auto x = small_ints(N * C, rng, -2, 2), w = small_ints(OC * C, rng, -2, 2);
  auto dx = env.bf(x), dw = env.bf(w);
  auto o = env.bf_poison(N * OC);
  vector<double> X = to_double(x), W = to_double(w), out(N * OC);
  stp::cpu::matmul_forward<double>(out.data(), X.data(), W.data(), nullptr, N, C, OC);
  env.ctx.gemm.linear_forward(o.data(), nullptr, dx.data(), dw.data(), nullptr, N, C, OC, false,
                              env.stream.get());
  CHECK(count_inexact(env.get(o), out) == 0);
  CHECK(env.ctx.gemm.cached_plans() == before + 3);

  CHECK(p1.run(env) == 0);
  CHECK(p2.run(env) == 0);
  CHECK(env.ctx.gemm.cached_plans() == before + 3);  // hits, no new plans
}

// Fails if a GELU call without its pre-activation buffer runs on a cached plan: the aux pointer
// of the previous call is still set on the plan's descriptor, so it would silently write there.
TEST_CASE("GEMM refuses an epilogue without its pointer", "[cuda][gemm]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(5);
  const int64_t N = 32, C = 64, OC = 96;
  auto dx = env.bf(random_vec(N * C, rng)), dw = env.bf(random_vec(OC * C, rng));
  auto o = env.bf_poison(N * OC), pre = env.bf_poison(N * OC);
  Gemm& g = env.ctx.gemm;
  g.linear_forward(o.data(), pre.data(), dx.data(), dw.data(), nullptr, N, C, OC, true,
                   env.stream.get());  // caches the GELU_AUX plan with `pre` on it
  CHECK_THROWS_WITH(g.linear_forward(o.data(), nullptr, dx.data(), dw.data(), nullptr, N, C, OC,
                                     true, env.stream.get()),
                    Catch::Contains("aux") && Catch::Contains("m=96 n=32 k=64"));
}
