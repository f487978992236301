// test_kernels.cpp: every memory-bound CUDA kernel against its CPU twin (stp::cpu, run in double
// on the same bf16-rounded inputs), on random inputs, with NaN-poisoned outputs. Each comparison
// prints its relative 2-norm error and max abs error; tolerances are in cuda_test_util.h.
// A test fails on: a wrong formula or index (errors ~1e-1 and up), an element left unwritten
// (NaN), or a result that is not reproducible where determinism is promised.
#include <catch2/catch.hpp>

#include <random>
#include <string>

#include "model/kernels/cpu/kernels.h"
#include "model/kernels/cuda/kernels.h"
#include "tests/cuda/cuda_test_util.h"

using namespace stp::cuda;
using namespace stp::cuda::test;
using std::vector;

namespace {

vector<double> D(const vector<float>& v) { return to_double(v); }

}  // namespace

TEST_CASE("layernorm/rmsnorm forward with fused residual match the CPU", "[cuda][norm]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(11);
  const int64_t N = 96, C = 776;  // C not a power of two; 776 = 8 * 97
  auto a = random_vec(N * C, rng), b = random_vec(N * C, rng), w = random_vec(C, rng, 0.5f, 1.5f),
       bias = random_vec(C, rng);
  auto da = env.bf(a), db = env.bf(b), dw = env.bf(w), dbias = env.bf(bias);
  for (bool rms : {false, true}) {
    auto out = env.bf_poison(N * C), x = env.bf_poison(N * C);
    auto mean = env.f32_poison(N), rstd = env.f32_poison(N);
    if (rms)
      rmsnorm_forward(out.data(), rstd.data(), x.data(), da.data(), db.data(), dw.data(), N, C, 1e-5f, env.ctx);
    else
      layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), da.data(), db.data(),
                        dw.data(), dbias.data(), N, C, 1e-5f, env.ctx);
    vector<double> ro(N * C), rm(N), rr(N), rx(N * C);
    auto A = D(a), B = D(b), Wd = D(w), Bd = D(bias);
    if (rms)
      stp::cpu::rmsnorm_forward<double>(ro.data(), rr.data(), rx.data(), A.data(), B.data(), Wd.data(), N, C, 1e-5f);
    else
      stp::cpu::layernorm_forward<double>(ro.data(), rm.data(), rr.data(), rx.data(), A.data(),
                                          B.data(), Wd.data(), Bd.data(), N, C, 1e-5f);
    const std::string tag = rms ? "rmsnorm_forward" : "layernorm_forward";
    compare(tag + " x (residual)", env.get(x), rx, kTolBf16Out);
    compare(tag + " out", env.get(out), ro, kTolBf16Chain);
    compare(tag + " rstd", env.get(rstd), rr, kTolBf16Chain);
    if (!rms) compare(tag + " mean", env.get(mean), rm, 5e-2);  // mean ~ 0: relative to tiny
  }
}

TEST_CASE("norm backward (input and weight) match the CPU, accumulate adds", "[cuda][norm]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(12);
  const int64_t N = 300, C = 264;
  auto x = random_vec(N * C, rng, -2.f, 2.f), dout = random_vec(N * C, rng),
       w = random_vec(C, rng, 0.5f, 1.5f), prev = random_vec(N * C, rng),
       gw0 = random_vec(C, rng), gb0 = random_vec(C, rng);
  // Statistics from the CPU forward (double), handed to both backwards as fp32.
  vector<double> X = D(x), W = D(w), mean(N), rstd(N), tmp(N * C);
  for (bool rms : {false, true}) {
    if (rms) stp::cpu::rmsnorm_forward<double>(tmp.data(), rstd.data(), nullptr, X.data(), nullptr, W.data(), N, C, 1e-5f);
    else stp::cpu::layernorm_forward<double>(tmp.data(), mean.data(), rstd.data(), nullptr, X.data(), nullptr, W.data(), W.data(), N, C, 1e-5f);
    vector<float> meanf(mean.begin(), mean.end()), rstdf(rstd.begin(), rstd.end());
    auto dx = env.bf(x), ddo = env.bf(dout), dw = env.bf(w);
    auto dmean = env.f32(meanf), drstd = env.f32(rstdf);
    auto dinp = env.bf(prev);
    auto gw = env.f32(gw0), gb = env.f32(gb0);
    vector<double> rdinp = D(prev), rgw = D(gw0), rgb = D(gb0), DO = D(dout);
    vector<double> MEAN(meanf.begin(), meanf.end()), RSTD(rstdf.begin(), rstdf.end());
    const std::string tag = rms ? "rmsnorm" : "layernorm";
    if (rms) {
      rmsnorm_backward_input(dinp.data(), ddo.data(), dx.data(), dw.data(), drstd.data(), N, C, true, env.ctx);
      rmsnorm_backward_weight(gw.data(), ddo.data(), dx.data(), drstd.data(), N, C, true, env.ctx);
      stp::cpu::rmsnorm_backward_input<double>(rdinp.data(), DO.data(), X.data(), W.data(), RSTD.data(), N, C, true);
      stp::cpu::rmsnorm_backward_weight<double>(rgw.data(), DO.data(), X.data(), RSTD.data(), N, C, true);
    } else {
      layernorm_backward_input(dinp.data(), ddo.data(), dx.data(), dw.data(), dmean.data(), drstd.data(), N, C, true, env.ctx);
      layernorm_backward_weight(gw.data(), gb.data(), ddo.data(), dx.data(), dmean.data(), drstd.data(), N, C, true, env.ctx);
      stp::cpu::layernorm_backward_input<double>(rdinp.data(), DO.data(), X.data(), W.data(), MEAN.data(), RSTD.data(), N, C, true);
      stp::cpu::layernorm_backward_weight<double>(rgw.data(), rgb.data(), DO.data(), X.data(), MEAN.data(), RSTD.data(), N, C, true);
      compare(tag + "_backward_weight dbias (+=)", env.get(gb), rgb, kTolF32 * 10);
    }
    compare(tag + "_backward_input dinp (+=)", env.get(dinp), rdinp, kTolBf16Out);
    compare(tag + "_backward_weight dweight (+=)", env.get(gw), rgw, kTolF32 * 10);
  }
}

// Fails if the two-stage column sum depends on anything but its inputs.
TEST_CASE("norm weight gradient is bit-reproducible", "[cuda][norm][determinism]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(13);
  const int64_t N = 4096, C = 512;
  auto x = env.bf(random_vec(N * C, rng)), dout = env.bf(random_vec(N * C, rng));
  auto rstd = env.f32(vector<float>(N, 1.3f));
  vector<float> first;
  for (int rep = 0; rep < 3; ++rep) {
    auto gw = env.f32_poison(C);
    rmsnorm_backward_weight(gw.data(), dout.data(), x.data(), rstd.data(), N, C, false, env.ctx);
    auto h = env.get(gw);
    if (rep == 0) first = h;
    else CHECK(std::memcmp(h.data(), first.data(), C * sizeof(float)) == 0);
  }
}

TEST_CASE("gelu, swiglu, residual forward/backward match the CPU", "[cuda][elementwise]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(14);
  const int64_t N = 64, F = 344, n = N * F;
  auto x = random_vec(n, rng, -4.f, 4.f), y = random_vec(n, rng), d = random_vec(n, rng);
  auto gx = random_vec(2 * n, rng, -4.f, 4.f);
  auto dx = env.bf(x), dy = env.bf(y), dd = env.bf(d), dgx = env.bf(gx);
  vector<double> X = D(x), Y = D(y), Dd = D(d), GX = D(gx), r(n), r2(2 * n);
  {
    auto o = env.bf_poison(n);
    gelu_forward(o.data(), dx.data(), n, env.ctx);
    stp::cpu::gelu_forward<double>(r.data(), X.data(), n);
    compare("gelu_forward", env.get(o), r, kTolBf16Out);
    gelu_backward(o.data(), dx.data(), dd.data(), n, env.ctx);
    stp::cpu::gelu_backward<double>(r.data(), X.data(), Dd.data(), n);
    compare("gelu_backward", env.get(o), r, kTolBf16Out);
  }
  {
    auto o = env.bf_poison(n);
    swiglu_forward(o.data(), dgx.data(), N, F, env.ctx);
    stp::cpu::swiglu_forward<double>(r.data(), GX.data(), N, F);
    compare("swiglu_forward", env.get(o), r, kTolBf16Out);
    auto o2 = env.bf_poison(2 * n);
    swiglu_backward(o2.data(), dgx.data(), dd.data(), N, F, env.ctx);
    stp::cpu::swiglu_backward<double>(r2.data(), GX.data(), Dd.data(), N, F);
    compare("swiglu_backward", env.get(o2), r2, kTolBf16Out);
  }
  {
    auto o = env.bf_poison(n);
    residual_forward(o.data(), dx.data(), dy.data(), n, env.ctx);
    stp::cpu::residual_forward<double>(r.data(), X.data(), Y.data(), n);
    compare("residual_forward", env.get(o), r, kTolBf16Out);
  }
}

// Fails if a cast rounds differently from round-to-nearest-even or drops an element.
TEST_CASE("fp32 <-> bf16 casts are exact round trips of bf16 values", "[cuda][elementwise]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(15);
  const int64_t n = 4104;
  std::uniform_real_distribution<float> u(-100.f, 100.f);
  vector<float> h(n);
  for (auto& v : h) v = u(rng);
  auto src = env.f32(h);
  auto b = env.bf_poison(n);
  cast_f32_to_bf16(b.data(), src.data(), n, env.ctx);
  auto back = env.f32_poison(n);
  cast_bf16_to_f32(back.data(), b.data(), n, env.ctx);
  auto got = env.get(back);
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) bad += got[i] != round_bf16(h[i]);
  CHECK(bad == 0);
}

TEST_CASE("rope forward/backward match the CPU and invert each other", "[cuda][rope]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(16);
  const int64_t B = 2, T = 200, NH = 4, NKV = 2, HD = 64, W = (NH + 2 * NKV) * HD;
  auto q = random_vec(B * T * W, rng);
  auto dq = env.bf(q);
  vector<double> Q = D(q);
  rope_forward(dq.data(), B, T, NH, NKV, HD, 10000.f, env.ctx);
  stp::cpu::rope_forward<double>(Q.data(), B, T, NH, NKV, HD, 10000.f);
  compare("rope_forward", env.get(dq), Q, kTolBf16Out);
  rope_backward(dq.data(), B, T, NH, NKV, HD, 10000.f, env.ctx);
  compare("rope_backward(rope_forward(x)) = x", env.get(dq), D(q), kTolBf16Chain);
}

TEST_CASE("vocab-parallel embedding forward/backward match the CPU", "[cuda][embedding]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(17);
  const int64_t B = 3, T = 64, N = B * T, C = 136, Vfull = 500, V = 256, start = 200;
  vector<int> tok(N);
  std::uniform_int_distribution<int> ti(0, int(Vfull) - 1), hot(0, 9);
  for (auto& t : tok) t = hot(rng) < 3 ? 321 : ti(rng);  // a frequent token: long sorted runs
  auto wte = random_vec(V * C, rng), wpe = random_vec(T * C, rng), dout = random_vec(N * C, rng);
  auto gte0 = random_vec(V * C, rng), gpe0 = random_vec(T * C, rng);
  auto dtok = env.i32(tok);
  auto dwte = env.bf(wte), dwpe = env.bf(wpe), ddo = env.bf(dout);
  auto out = env.bf_poison(N * C);
  embedding_forward(out.data(), dtok.data(), dwte.data(), dwpe.data(), N, T, C, start, V, env.ctx);
  vector<double> ro(N * C), WTE = D(wte), WPE = D(wpe), DO = D(dout), GTE = D(gte0), GPE = D(gpe0);
  stp::cpu::embedding_forward<double>(ro.data(), tok.data(), WTE.data(), WPE.data(), N, T, C, start, V);
  compare("embedding_forward", env.get(out), ro, kTolBf16Out);
  auto gte = env.f32(gte0), gpe = env.f32(gpe0);
  embedding_backward(gte.data(), gpe.data(), ddo.data(), dtok.data(), N, T, C, start, V, env.ctx);
  stp::cpu::embedding_backward<double>(GTE.data(), GPE.data(), DO.data(), tok.data(), N, T, C, start, V);
  auto g1 = env.get(gte);
  compare("embedding_backward dwte (+=)", g1, GTE, kTolF32);
  compare("embedding_backward dwpe (+=)", env.get(gpe), GPE, kTolF32);
  // Deterministic: the same inputs give the same bits.
  auto gte2 = env.f32(gte0);
  embedding_backward(gte2.data(), nullptr, ddo.data(), dtok.data(), N, T, C, start, V, env.ctx);
  CHECK(std::memcmp(env.get(gte2).data(), g1.data(), g1.size() * sizeof(float)) == 0);
}

TEST_CASE("cross-entropy pieces and the fused kernel match the CPU", "[cuda][xent]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(18);
  // The shard holds [V, 2V) of 3V. V = 1000 fits one 4096-column pass of a row; V = 8200 takes
  // three, so the per-thread accumulation across passes and the fused kernel's rescale of the
  // running sum between them are exercised (every real vocabulary shard takes that path).
  for (const int64_t V : {int64_t(1000), int64_t(8200)}) {
    const int64_t N = V > 4096 ? 16 : 70, start = V;
    const std::string tag = " V " + std::to_string(V);
    auto logits = random_vec(N * V, rng, -6.f, 6.f);
    vector<int> tgt(N);
    std::uniform_int_distribution<int> ti(0, int(3 * V) - 1);
    for (auto& t : tgt) t = ti(rng);
    tgt[0] = int(start + V - 1);  // a target in this shard's last pass
    const XentRun x = xent_run(env, logits, tgt, N, V, start, false);  // xent_loss: null targets
    compare("xent_row_max" + tag, x.rm, x.RM, 1e-7);
    compare("xent_sumexp" + tag, x.se, x.SE, kTolF32);
    compare("xent_sumexp tlogit" + tag, x.tl, x.TL, 1e-7);
    compare("xent_loss" + tag, x.loss, x.LOSS, kTolF32);
    compare("xent_backward" + tag, x.g, x.G, kTolBf16Out);
    // Fused (TP = 1): the shard is the whole vocabulary, targets inside it.
    compare("xent_fused loss" + tag, x.fused_loss, x.FUSED_LOSS, kTolF32);
    compare("xent_fused dlogits (in place)" + tag, x.fused_g, x.FUSED_G, kTolBf16Out);
  }
}

TEST_CASE("AdamW matches the CPU update and writes the bf16 copy", "[cuda][optimizer]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(19);
  const int64_t n = 10007;
  auto p = random_vec(n, rng), g = random_vec(n, rng), m = random_vec(n, rng, -0.1f, 0.1f),
       v = random_vec(n, rng, 0.f, 0.01f);
  stp::AdamWHyper h;
  h.lr = 1e-3f, h.beta1 = 0.9f, h.beta2 = 0.95f, h.eps = 1e-8f, h.weight_decay = 0.1f, h.t = 7;
  auto dp = env.f32(p), dg = env.f32(g), dm = env.f32(m), dv = env.f32(v);
  auto pb = env.bf_poison(n);
  adamw_update(dp.data(), pb.data(), dg.data(), dm.data(), dv.data(), n, h, 0.5f, env.ctx);
  vector<double> P = D(p), G = D(g), M = D(m), Vv = D(v);
  stp::cpu::adamw_update<double>(P.data(), G.data(), M.data(), Vv.data(), n, h, 0.5f);
  compare("adamw p", env.get(dp), P, 1e-6);
  compare("adamw m", env.get(dm), M, 1e-6);
  compare("adamw v", env.get(dv), Vv, 1e-6);
  compare("adamw p_bf16", env.get(pb), P, kTolBf16Out);
}

TEST_CASE("grad_sq_norm equals the CPU's fp64 sum and is reproducible", "[cuda][optimizer]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(20);
  const int64_t n = 3000001;
  auto g = random_vec(n, rng);
  auto dg = env.f32(g);
  DeviceBuffer<double> out(env.alloc, 2);
  grad_sq_norm(out.data(), dg.data(), n, env.ctx);
  grad_sq_norm(out.data() + 1, dg.data(), n, env.ctx);
  auto h = download(out, env.stream.get());
  const double ref = stp::cpu::grad_sq_norm<float>(g.data(), n);
  std::printf("# grad_sq_norm gpu %.17g cpu %.17g\n", h[0], ref);
  CHECK(std::fabs(h[0] - ref) <= 1e-12 * ref);
  CHECK(h[0] == h[1]);
}
