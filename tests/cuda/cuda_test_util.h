// cuda_test_util.h: shared helpers of the CUDA kernel harness.
//
// - STP_REQUIRE_GPU(): without a usable CUDA device, prints "SKIPPED: no CUDA device (<test>)" to
//   stdout and returns from the test with no assertions: a skip is visible, never a pass in
//   disguise (gpu_check.sh greps for these lines and reports a skipped harness as SKIPPED).
// - Device tensors are made from host vectors; outputs are poisoned with NaN before each kernel so
//   an element the kernel forgot to write fails the finiteness check.
// - compare(): ||out - ref|| / ||ref|| (2-norms, fp64) and the max absolute error, printed as one
//   `#`-prefixed line per comparison, asserted against a stated tolerance.
// - xent_run(): the cross-entropy kernels and their CPU twins on one set of logits, for the tests
//   of the vocab-parallel pieces and the fused kernel (with and without ignored targets).
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>

#include "model/kernels/cpu/kernels.h"
#include "model/kernels/cuda/check.h"
#include "model/kernels/cuda/context.h"
#include "model/kernels/cuda/kernels.h"
#include "model/kernels/cuda/memory.h"

namespace stp::cuda::test {

using bf16 = __nv_bfloat16;

inline bool have_gpu() { return device_count() > 0; }

#define STP_REQUIRE_GPU()                                                                  \
  do {                                                                                     \
    if (!::stp::cuda::test::have_gpu()) {                                                  \
      std::printf("SKIPPED: no CUDA device (%s)\n",                                        \
                  Catch::getResultCapture().getCurrentTestName().c_str());                 \
      return;                                                                              \
    }                                                                                      \
  } while (0)

// Tolerances, relative 2-norm error against an fp64 reference computed from the same (bf16-
// rounded) inputs. One bf16 rounding of the output contributes ~2^-9 RMS (~2e-3); the bounds leave
// room for fp32 accumulation and for chains with a rounded intermediate, and stay an order of
// magnitude below what a wrong index, a missing term or a wrong scale produces (>= 1e-1).
constexpr double kTolBf16Out = 6e-3;    // one bf16 rounding of the result
constexpr double kTolBf16Chain = 2e-2;  // results built from bf16-rounded intermediates
constexpr double kTolF32 = 1e-5;        // fp32 outputs of fp32 math on exact inputs

inline float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

// Uniform values in [lo, hi), rounded to bf16 so host references see exactly the device inputs.
inline std::vector<float> random_vec(size_t n, std::mt19937& rng, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = round_bf16(d(rng));
  return v;
}

inline std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = __float2bfloat16(v[i]);
  return r;
}

inline std::vector<float> to_f32(const std::vector<bf16>& v) {
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = __bfloat162float(v[i]);
  return r;
}

// A device tensor with its host-side allocator and stream for quick round trips.
struct Env {
  DeviceAllocator alloc;
  Stream stream;
  Ctx ctx;
  explicit Env(bool deterministic = true) : ctx(alloc, stream.get(), deterministic) {}

  DeviceBuffer<bf16> bf(const std::vector<float>& h) {
    DeviceBuffer<bf16> d(alloc, h.size());
    upload(d, to_bf16(h), stream.get());
    return d;
  }
  DeviceBuffer<float> f32(const std::vector<float>& h) {
    DeviceBuffer<float> d(alloc, h.size());
    upload(d, h, stream.get());
    return d;
  }
  DeviceBuffer<int> i32(const std::vector<int>& h) {
    DeviceBuffer<int> d(alloc, h.size());
    upload(d, h, stream.get());
    return d;
  }
  // Output buffers filled with NaN (0xFF bytes is a NaN in both bf16 and fp32).
  DeviceBuffer<bf16> bf_poison(size_t n) {
    DeviceBuffer<bf16> d(alloc, n);
    CUDA_CHECK(cudaMemsetAsync(d.data(), 0xFF, d.bytes(), stream.get()));
    return d;
  }
  DeviceBuffer<float> f32_poison(size_t n) {
    DeviceBuffer<float> d(alloc, n);
    CUDA_CHECK(cudaMemsetAsync(d.data(), 0xFF, d.bytes(), stream.get()));
    return d;
  }
  std::vector<float> get(const DeviceBuffer<bf16>& d) { return to_f32(download(d, stream.get())); }
  std::vector<float> get(const DeviceBuffer<float>& d) { return download(d, stream.get()); }
};

struct ErrStats {
  double rel = 0, max_abs = 0;
  bool finite = true;
};

inline ErrStats error_of(const std::vector<float>& out, const std::vector<double>& ref) {
  ErrStats e;
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(out[i])) e.finite = false;
    const double d = double(out[i]) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
    e.max_abs = std::max(e.max_abs, std::fabs(d));
  }
  e.rel = std::sqrt(num / std::max(den, 1e-300));
  return e;
}

// Prints "# <name>: rel <r> max_abs <m> (tol <t>)" and asserts finiteness and rel <= tol.
inline void compare(const std::string& name, const std::vector<float>& out,
                    const std::vector<double>& ref, double tol) {
  REQUIRE(out.size() == ref.size());
  const ErrStats e = error_of(out, ref);
  std::printf("# %-40s rel %.3e  max_abs %.3e  (tol %.0e)%s\n", name.c_str(), e.rel, e.max_abs,
              tol, e.finite ? "" : "  NON-FINITE");
  INFO(name << ": rel " << e.rel << " max_abs " << e.max_abs << " tol " << tol);
  CHECK(e.finite);
  CHECK(e.rel <= tol);
}

inline std::vector<double> to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// The cross-entropy of (N, V) logits (bf16-exact) on the vocab shard [start, start + V), on the
// GPU into NaN-poisoned outputs and with stp::cpu in double: row max, sum-exp and target logit,
// the loss (given the targets if `loss_targets`, else null: no row ignored) and the backward at
// scale 0.5; then xent_fused (TP = 1: the whole vocabulary, targets >= 0 taken mod V) in place at
// scale 0.25. Targets < 0 are ignored rows throughout.
struct XentRun {
  std::vector<float> rm, se, tl, loss, g, fused_loss, fused_g;  // GPU
  std::vector<double> RM, SE, TL, LOSS, G, FUSED_LOSS, FUSED_G;  // CPU reference
};
inline XentRun xent_run(Env& env, const std::vector<float>& logits, std::vector<int> tgt, int64_t N,
                        int64_t V, int64_t start, bool loss_targets) {
  using std::vector;
  XentRun x;
  auto dl = env.bf(logits);
  auto dt = env.i32(tgt);
  auto rm = env.f32_poison(N), se = env.f32_poison(N), tl = env.f32_poison(N), loss = env.f32_poison(N);
  auto g = env.bf_poison(N * V);
  xent_row_max(rm.data(), dl.data(), N, V, env.ctx);
  xent_sumexp(se.data(), tl.data(), dl.data(), rm.data(), dt.data(), N, V, start, env.ctx);
  xent_loss(loss.data(), rm.data(), se.data(), tl.data(), N, loss_targets ? dt.data() : nullptr, env.ctx);
  xent_backward(g.data(), dl.data(), rm.data(), se.data(), dt.data(), 0.5f, N, V, start, env.ctx);
  x.rm = env.get(rm);
  x.se = env.get(se);
  x.tl = env.get(tl);
  x.loss = env.get(loss);
  x.g = env.get(g);
  const vector<double> L = to_double(logits);
  x.RM = x.SE = x.TL = x.LOSS = vector<double>(N);
  x.G = vector<double>(N * V);
  stp::cpu::xent_row_max<double>(x.RM.data(), L.data(), N, V);
  stp::cpu::xent_sumexp<double>(x.SE.data(), x.TL.data(), L.data(), x.RM.data(), tgt.data(), N, V, start);
  stp::cpu::xent_loss<double>(x.LOSS.data(), x.RM.data(), x.SE.data(), x.TL.data(), N,
                              loss_targets ? tgt.data() : nullptr);
  stp::cpu::xent_backward<double>(x.G.data(), L.data(), x.RM.data(), x.SE.data(), tgt.data(), 0.5f, N, V,
                                  start);

  for (auto& t : tgt)
    if (t >= 0) t %= int(V);
  auto dt1 = env.i32(tgt);
  auto inplace = env.bf(logits);
  auto floss = env.f32_poison(N);
  xent_fused(floss.data(), inplace.data(), dt1.data(), 0.25f, N, V, env.ctx);
  x.fused_loss = env.get(floss);
  x.fused_g = env.get(inplace);
  vector<double> SE1(N), TL1(N);
  x.FUSED_LOSS = vector<double>(N);
  x.FUSED_G = vector<double>(N * V);
  stp::cpu::xent_sumexp<double>(SE1.data(), TL1.data(), L.data(), x.RM.data(), tgt.data(), N, V, 0);
  stp::cpu::xent_loss<double>(x.FUSED_LOSS.data(), x.RM.data(), SE1.data(), TL1.data(), N,
                              loss_targets ? tgt.data() : nullptr);
  stp::cpu::xent_backward<double>(x.FUSED_G.data(), L.data(), x.RM.data(), SE1.data(), tgt.data(), 0.25f, N,
                                  V, 0);
  return x;
}

}  // namespace stp::cuda::test
