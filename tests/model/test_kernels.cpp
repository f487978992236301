// test_kernels.cpp: every CPU kernel against an independent answer -- exact designed values where
// they exist (small-integer GEMMs, embedding rows, rotations by known angles) and finite
// differences in double precision for every backward (the kernels are templates, so the double
// instantiation is the very code the float product runs). Each test names what would fail it.
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <numeric>

#include "model/kernels/cpu/fast_math.h"
#include "model/kernels/cpu/kernels.h"
#include "model_test_util.h"

using namespace stp;
using namespace stp::test;
using Vec = std::vector<double>;

static constexpr double kFdTol = 1e-6;  // see fd_max_rel_err

TEST_CASE("matmul_forward: small-integer product and bias are exact", "[kernels]") {
  // Fails if the GEMM transposes the wrong operand, drops the bias or mis-strides rows.
  const int64_t N = 3, C = 4, OC = 5;
  std::vector<float> inp(N * C), w(OC * C), b(OC), out(N * OC);
  for (int64_t i = 0; i < N * C; ++i) inp[i] = float(i % 7 - 3);
  for (int64_t i = 0; i < OC * C; ++i) w[i] = float(i % 5 - 2);
  for (int64_t i = 0; i < OC; ++i) b[i] = float(i * 10);
  cpu::matmul_forward(out.data(), inp.data(), w.data(), b.data(), N, C, OC);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < OC; ++o) {
      float want = b[o];
      for (int64_t c = 0; c < C; ++c) want += inp[n * C + c] * w[o * C + c];
      REQUIRE(out[n * OC + o] == want);
    }
}

TEST_CASE("matmul_backward: gradients match finite differences, accumulate adds", "[kernels]") {
  // Fails if any of dinp / dweight / dbias is wrong, or if accumulate=false does not overwrite.
  const int64_t N = 5, C = 3, OC = 4;
  Vec inp = random_vec(N * C, 1), w = random_vec(OC * C, 2), b = random_vec(OC, 3),
      R = random_vec(N * OC, 4);
  Vec out(N * OC), dinp(N * C), dw(OC * C, 7.0), db(OC, 7.0);
  auto loss = [&] {
    cpu::matmul_forward(out.data(), inp.data(), w.data(), b.data(), N, C, OC);
    return dot(R, out.data());
  };
  cpu::matmul_backward(dinp.data(), dw.data(), db.data(), R.data(), inp.data(), w.data(), N, C, OC,
                       false);
  CHECK(fd_max_rel_err(inp, dinp, loss) < kFdTol);
  CHECK(fd_max_rel_err(w, dw, loss) < kFdTol);
  CHECK(fd_max_rel_err(b, db, loss) < kFdTol);
  Vec dw2 = dw, db2 = db;
  cpu::matmul_backward<double>(nullptr, dw2.data(), db2.data(), R.data(), inp.data(), w.data(), N,
                               C, OC, true);
  for (size_t i = 0; i < dw.size(); ++i) CHECK(dw2[i] == Approx(2 * dw[i]).epsilon(1e-12));
  for (size_t i = 0; i < db.size(); ++i) CHECK(db2[i] == Approx(2 * db[i]).epsilon(1e-12));
}

template <bool kLayerNorm>
static void check_norm() {
  const int64_t N = 4, C = 8;
  Vec inp = random_vec(N * C, 11, 2.0), inp2 = random_vec(N * C, 12), w = random_vec(C, 13),
      b = random_vec(C, 14), R = random_vec(N * C, 15);
  Vec out(N * C), x(N * C), mean(N), rstd(N);
  auto fwd = [&] {
    if (kLayerNorm)
      cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), inp.data(),
                             inp2.data(), w.data(), b.data(), N, C, 1e-5f);
    else
      cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), inp.data(), inp2.data(), w.data(), N,
                           C, 1e-5f);
  };
  auto loss = [&] {
    fwd();
    return dot(R, out.data());
  };
  fwd();
  for (size_t i = 0; i < x.size(); ++i) REQUIRE(x[i] == inp[i] + inp2[i]);  // fused residual add
  Vec dinp(N * C, 0.0), dw(C), db(C);
  if (kLayerNorm) {
    cpu::layernorm_backward_input(dinp.data(), R.data(), x.data(), w.data(), mean.data(),
                                  rstd.data(), N, C, false);
    cpu::layernorm_backward_weight(dw.data(), db.data(), R.data(), x.data(), mean.data(),
                                   rstd.data(), N, C, false);
  } else {
    cpu::rmsnorm_backward_input(dinp.data(), R.data(), x.data(), w.data(), rstd.data(), N, C,
                                false);
    cpu::rmsnorm_backward_weight(dw.data(), R.data(), x.data(), rstd.data(), N, C, false);
  }
  CHECK(fd_max_rel_err(inp, dinp, loss) < kFdTol);
  CHECK(fd_max_rel_err(inp2, dinp, loss) < kFdTol);  // the residual add passes the gradient to both
  CHECK(fd_max_rel_err(w, dw, loss) < kFdTol);
  if (kLayerNorm) CHECK(fd_max_rel_err(b, db, loss) < kFdTol);
  // accumulate=true adds to what is there.
  Vec acc(N * C, 1.0);
  if (kLayerNorm)
    cpu::layernorm_backward_input(acc.data(), R.data(), x.data(), w.data(), mean.data(),
                                  rstd.data(), N, C, true);
  else
    cpu::rmsnorm_backward_input(acc.data(), R.data(), x.data(), w.data(), rstd.data(), N, C, true);
  for (size_t i = 0; i < acc.size(); ++i) CHECK(acc[i] == Approx(1.0 + dinp[i]).epsilon(1e-12));
}

TEST_CASE("layernorm: fused residual add exact, all gradients match FD", "[kernels]") {
  // Fails if the mean/variance terms of the backward, the weight or bias gradient, or the
  // residual add are wrong.
  check_norm<true>();
}

TEST_CASE("rmsnorm: fused residual add exact, all gradients match FD", "[kernels]") {
  check_norm<false>();
}

TEST_CASE("rmsnorm_forward: matches the defining formula", "[kernels]") {
  // Fails if eps is applied outside the sqrt or the weight is not applied (HF Llama semantics).
  const int64_t C = 4;
  std::vector<float> x = {1, 2, 3, 4}, w = {1, 2, 0.5f, 1}, out(C), rstd(1);
  cpu::rmsnorm_forward<float>(out.data(), rstd.data(), nullptr, x.data(), nullptr, w.data(), 1, C,
                              1e-6f);
  const double r = 1 / std::sqrt((1 + 4 + 9 + 16) / 4.0 + 1e-6);
  for (int c = 0; c < C; ++c) CHECK(out[c] == Approx(x[c] * r * w[c]).epsilon(1e-6));
}

TEST_CASE("exp_fast: within 3e-7 relative of exp over the softmax / GELU range", "[kernels]") {
  // Fails if the range reduction or polynomial loses accuracy (softmax and GELU would drift from
  // the double reference beyond fp32 rounding) or the clamp lets inf / 0 through.
  double worst = 0;
  for (int i = -870000; i <= 880000; i += 7) {
    const float x = float(i) * 1e-4f;
    worst = std::max(worst, std::abs(double(cpu::exp_fast(x)) / std::exp(double(x)) - 1.0));
  }
  CHECK(worst < 3e-7);
  CHECK(std::isfinite(cpu::exp_fast(1000.0f)));
  CHECK(cpu::exp_fast(-1000.0f) > 0.0f);
  CHECK(cpu::exp_fast(0.0f) == 1.0f);
  // A non-finite loss must reach the trainer's check as non-finite, not as a number.
  CHECK(std::isnan(cpu::exp_fast(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isfinite(cpu::exp_fast(std::numeric_limits<float>::infinity())));
  CHECK(cpu::exp_fast(-std::numeric_limits<float>::infinity()) > 0.0f);
}

TEST_CASE("gelu: tanh approximation values and FD gradient", "[kernels]") {
  // Fails if the exact (erf) GELU is used instead of the tanh form, or the derivative is wrong.
  Vec x = {-3.0, -1.0, 0.0, 0.5, 1.0, 2.5}, y(x.size());
  cpu::gelu_forward(y.data(), x.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    const double t = std::tanh(std::sqrt(2 / M_PI) * (x[i] + 0.044715 * std::pow(x[i], 3)));
    CHECK(y[i] == Approx(0.5 * x[i] * (1 + t)).epsilon(1e-11));
  }
  // The float kernel (tanh through exp) stays within a few fp32 ulps of the exact formula.
  std::vector<float> xf(2001), yf(2001);
  for (int i = 0; i <= 2000; ++i) xf[size_t(i)] = -10.0f + 0.01f * float(i);
  cpu::gelu_forward(yf.data(), xf.data(), 2001);
  for (int i = 0; i <= 2000; ++i) {
    const double xi = xf[size_t(i)];
    const double t = std::tanh(std::sqrt(2 / M_PI) * (xi + 0.044715 * xi * xi * xi));
    REQUIRE(std::abs(yf[size_t(i)] - 0.5 * xi * (1 + t)) <= 4e-7 * (1 + std::abs(xi)));
  }
  Vec in = random_vec(64, 21, 2.0), R = random_vec(64, 22), out(64), din(64);
  auto loss = [&] {
    cpu::gelu_forward(out.data(), in.data(), 64);
    return dot(R, out.data());
  };
  cpu::gelu_backward(din.data(), in.data(), R.data(), 64);
  CHECK(fd_max_rel_err(in, din, loss) < kFdTol);
}

TEST_CASE("swiglu: silu(gate) * up and FD gradient for gate and up", "[kernels]") {
  // Fails if gate and up halves are swapped or either derivative is wrong.
  const int64_t N = 3, F = 5;
  Vec in = random_vec(N * 2 * F, 31, 2.0), R = random_vec(N * F, 32), out(N * F), din(N * 2 * F);
  cpu::swiglu_forward(out.data(), in.data(), N, F);
  const double g = in[1], u = in[F + 1];
  CHECK(out[1] == Approx(g / (1 + std::exp(-g)) * u).epsilon(1e-14));
  auto loss = [&] {
    cpu::swiglu_forward(out.data(), in.data(), N, F);
    return dot(R, out.data());
  };
  cpu::swiglu_backward(din.data(), in.data(), R.data(), N, F);
  CHECK(fd_max_rel_err(in, din, loss) < kFdTol);
}

TEST_CASE("rope: Hugging Face rotate_half convention, backward is the inverse rotation",
          "[kernels]") {
  // Fails if pairs are interleaved (GPT-J style) instead of (i, i + HD/2), the frequency exponent
  // is off, v heads are rotated, or the backward is not the transpose of the forward.
  const int64_t B = 1, T = 3, NH = 2, NKV = 1, HD = 4, QKV = (NH + 2 * NKV) * HD;
  Vec qkv = random_vec(B * T * QKV, 41), orig = qkv;
  const float theta = 100.0f;
  cpu::rope_forward(qkv.data(), B, T, NH, NKV, HD, theta);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < NH + 2 * NKV; ++h)
      for (int64_t i = 0; i < HD / 2; ++i) {
        const int64_t a = t * QKV + h * HD + i, b = a + HD / 2;
        double want_a = orig[a], want_b = orig[b];
        if (h < NH + NKV) {  // q and k heads rotate, v heads do not
          const double ang = double(t) * std::pow(double(theta), -2.0 * i / HD);
          want_a = orig[a] * std::cos(ang) - orig[b] * std::sin(ang);
          want_b = orig[b] * std::cos(ang) + orig[a] * std::sin(ang);
        }
        CHECK(qkv[a] == Approx(want_a).epsilon(1e-12).margin(1e-14));
        CHECK(qkv[b] == Approx(want_b).epsilon(1e-12).margin(1e-14));
      }
  // <rope(x), y> == <x, rope_backward(y)> for random x, y.
  Vec x = random_vec(B * T * QKV, 42), y = random_vec(B * T * QKV, 43), rx = x, by = y;
  cpu::rope_forward(rx.data(), B, T, NH, NKV, HD, theta);
  cpu::rope_backward(by.data(), B, T, NH, NKV, HD, theta);
  CHECK(dot(rx, y.data()) == Approx(dot(x, by.data())).epsilon(1e-12));
}

// Straightforward attention in double, one query at a time (independent of the kernel's GEMMs).
static void naive_attention(Vec& out, Vec& lse, const Vec& qkv, const cpu::AttnShape& s) {
  const int64_t QKV = s.qkv_width(), g = s.NH / s.NKV;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.NH; ++h)
      for (int64_t t = 0; t < s.T; ++t) {
        const double* q = &qkv[(b * s.T + t) * QKV + h * s.HD];
        std::vector<double> sc;
        for (int64_t j = 0; j <= t; ++j) {
          const double* k = &qkv[(b * s.T + j) * QKV + (s.NH + h / g) * s.HD];
          double d = 0;
          for (int64_t e = 0; e < s.HD; ++e) d += q[e] * k[e];
          sc.push_back(d / std::sqrt(double(s.HD)));
        }
        const double m = *std::max_element(sc.begin(), sc.end());
        double z = 0;
        for (double v : sc) z += std::exp(v - m);
        lse[(b * s.NH + h) * s.T + t] = m + std::log(z);
        for (int64_t e = 0; e < s.HD; ++e) {
          double o = 0;
          for (int64_t j = 0; j <= t; ++j)
            o += std::exp(sc[j] - m) / z *
                 qkv[(b * s.T + j) * QKV + (s.NH + s.NKV + h / g) * s.HD + e];
          out[(b * s.T + t) * s.NH * s.HD + h * s.HD + e] = o;
        }
      }
}

static void check_attention(int64_t NH, int64_t NKV, int64_t T = 6, int64_t B = 2) {
  cpu::AttnShape s;
  s.B = B;
  s.T = T;
  s.NH = NH;
  s.NKV = NKV;
  s.HD = 4;
  const int64_t n_qkv = s.B * s.T * s.qkv_width(), n_out = s.B * s.T * s.NH * s.HD;
  Vec qkv = random_vec(n_qkv, 51), R = random_vec(n_out, 52);
  Vec out(n_out), lse(s.B * s.NH * s.T), out_ref(n_out), lse_ref(lse.size());
  cpu::attention_forward(out.data(), lse.data(), qkv.data(), s);
  naive_attention(out_ref, lse_ref, qkv, s);
  for (size_t i = 0; i < out.size(); ++i)
    REQUIRE(out[i] == Approx(out_ref[i]).epsilon(1e-12).margin(1e-14));
  for (size_t i = 0; i < lse.size(); ++i) REQUIRE(lse[i] == Approx(lse_ref[i]).epsilon(1e-12));
  Vec dqkv(n_qkv, 99.0);  // overwritten, not accumulated
  cpu::attention_backward(dqkv.data(), R.data(), qkv.data(), out.data(), lse.data(), s);
  auto loss = [&] {
    cpu::attention_forward(out.data(), lse.data(), qkv.data(), s);
    return dot(R, out.data());
  };
  CHECK(fd_max_rel_err(qkv, dqkv, loss, 400) < kFdTol);
}

TEST_CASE("attention MHA: matches a naive causal softmax, dqkv matches FD", "[kernels]") {
  // Fails if the causal mask, the scale, lse, or any of dq/dk/dv is wrong.
  check_attention(4, 4);
}

TEST_CASE("attention GQA: kv heads shared by groups, dk/dv summed over the group", "[kernels]") {
  // Fails if query head h reads the wrong kv head or the group's dk/dv contributions are not
  // summed.
  check_attention(4, 2);
  check_attention(4, 1);
}

TEST_CASE("attention: query-row blocks (T > 64, partial last block) match naive and FD",
          "[kernels]") {
  // Fails if a row block skips keys it may see, computes keys it may not, or mis-accumulates
  // dK/dV across blocks.
  check_attention(4, 2, 150, 1);
}

TEST_CASE("attention: is causal (future tokens do not change the past)", "[kernels]") {
  // Fails if query t can see key t+1.
  cpu::AttnShape s;
  s.B = 1;
  s.T = 5;
  s.NH = 2;
  s.NKV = 2;
  s.HD = 4;
  Vec qkv = random_vec(s.T * s.qkv_width(), 61), out1(s.T * 8), out2(s.T * 8), lse(s.NH * s.T);
  cpu::attention_forward(out1.data(), lse.data(), qkv.data(), s);
  for (int64_t i = 3 * s.qkv_width(); i < s.T * s.qkv_width(); ++i) qkv[i] += 1.0;  // tokens 3, 4
  cpu::attention_forward(out2.data(), lse.data(), qkv.data(), s);
  for (int64_t i = 0; i < 3 * 8; ++i) CHECK(out1[i] == out2[i]);
}

TEST_CASE("embedding: vocab shards sum to the full lookup, backward scatters by token",
          "[kernels]") {
  // Fails if rows outside the shard are not zero, the position row is wrong, or the backward
  // misses repeated tokens.
  const int64_t N = 6, T = 3, C = 2, V = 8;
  std::vector<int> tok = {0, 7, 3, 3, 5, 1};
  Vec wte(V * C), wpe(T * C);
  std::iota(wte.begin(), wte.end(), 1.0);
  for (int64_t i = 0; i < T * C; ++i) wpe[i] = 100.0 * (i + 1);
  Vec full(N * C), lo(N * C), hi(N * C);
  cpu::embedding_forward(full.data(), tok.data(), wte.data(), wpe.data(), N, T, C, 0, V);
  cpu::embedding_forward<double>(lo.data(), tok.data(), wte.data(), wpe.data(), N, T, C, 0, V / 2);
  cpu::embedding_forward<double>(hi.data(), tok.data(), wte.data() + V / 2 * C, nullptr, N, T, C,
                                 V / 2, V / 2);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      REQUIRE(full[n * C + c] == wte[tok[n] * C + c] + wpe[(n % T) * C + c]);
      REQUIRE(lo[n * C + c] + hi[n * C + c] == full[n * C + c]);
    }
  Vec dout(N * C), dwte(V * C, 0.0), dwpe(T * C, 0.0);
  std::iota(dout.begin(), dout.end(), 1.0);
  cpu::embedding_backward(dwte.data(), dwpe.data(), dout.data(), tok.data(), N, T, C, 0, V);
  CHECK(dwte[3 * C] == dout[2 * C] + dout[3 * C]);  // token 3 appears twice
  CHECK(dwte[2 * C] == 0.0);                        // token 2 never appears
  CHECK(dwpe[0] == dout[0] + dout[3 * C]);          // positions 0 of both sequences
}

TEST_CASE("cross-entropy: vocab-parallel pieces equal the full softmax loss, FD gradient",
          "[kernels]") {
  // Fails if the shard's target logit, the global max, the sum-exp or softmax - onehot is wrong.
  const int64_t N = 4, V = 10;
  Vec logits = random_vec(N * V, 71, 3.0);
  std::vector<int> tgt = {0, 4, 5, 9};
  auto full_loss = [&] { return xent_reference(logits, tgt, N, V); };
  const XentShards x = xent_two_shards(logits, tgt, N, V);  // columns [0, 5) and [5, 10)
  Vec losses(N);
  cpu::xent_loss(losses.data(), x.gmax.data(), x.gse.data(), x.gtl.data(), N, nullptr);
  CHECK(std::accumulate(losses.begin(), losses.end(), 0.0) == Approx(full_loss()).epsilon(1e-12));
  CHECK(fd_max_rel_err(logits, x.dlogits, full_loss, 40) < kFdTol);
}

TEST_CASE("adamw_update: matches the AdamW formula in double, thread split does not matter",
          "[kernels]") {
  // Fails if bias correction, decoupled decay, grad_scale or eps placement differs from
  // runtime/optimizer.h, or if the threaded split changes any element.
  const int64_t n = 300000;  // large enough to use every worker
  std::vector<float> p(n), g(n), m(n, 0.1f), v(n, 0.2f);
  for (int64_t i = 0; i < n; ++i) {
    p[i] = std::sin(0.001f * i);
    g[i] = std::cos(0.003f * i);
  }
  AdamWHyper h;
  h.lr = 1e-2f;
  h.beta1 = 0.9f;
  h.beta2 = 0.95f;
  h.eps = 1e-8f;
  h.weight_decay = 0.1f;
  h.t = 3;
  std::vector<float> p0 = p, m0 = m, v0 = v;
  cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), n, h, 0.5f);
  for (int64_t i : {int64_t(0), int64_t(12345), n - 1}) {
    const double gi = 0.5 * g[i];
    const double mi = 0.9 * m0[i] + 0.1 * gi, vi = 0.95 * v0[i] + 0.05 * gi * gi;
    const double mh = mi / (1 - std::pow(0.9, 3)), vh = vi / (1 - std::pow(0.95, 3));
    const double want = p0[i] - 1e-2 * (mh / (std::sqrt(vh) + 1e-8) + 0.1 * p0[i]);
    CHECK(p[i] == Approx(want).epsilon(1e-5));
    CHECK(m[i] == Approx(mi).epsilon(1e-6));
  }
  // The same elements updated alone (one worker) give bit-identical results.
  std::vector<float> p1(p0.begin() + 12345, p0.begin() + 12350), m1(5, 0.1f), v1(5, 0.2f);
  cpu::adamw_update(p1.data(), g.data() + 12345, m1.data(), v1.data(), 5, h, 0.5f);
  for (int i = 0; i < 5; ++i) CHECK(p1[i] == p[12345 + i]);
}
