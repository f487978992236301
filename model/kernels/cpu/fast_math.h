// fast_math.h: exp for the elementwise kernels, written so that the compiler vectorises the loops
// that call it (libm's expf is a scalar call, which made GELU and SwiGLU a quarter of a tiny
// model's step). Float: Cephes' range reduction x = n ln2 + r and degree-6 polynomial,
// |relative error| < 3e-7 (about 2 ulp, tested in test_kernels.cpp); input clamped to
// [-87.3, 88], so it never returns 0 or inf (callers' limits: exp(-87.3) ~ 1e-38 acts as 0
// next to 1); NaN gives NaN. Double: std::exp, so the double-precision gradient checks stay
// exact references.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// STP_MULTIVERSION: compile a hot loop twice, for x86-64-v3 (AVX2 + FMA, 8 floats per op) and
// for the baseline, and pick at load time by the CPU (GCC target_clones, an ifunc). The build stays
// portable and the loops run ~2.8x faster where AVX2 exists (GELU: 4.6 -> 1.6 ms per 1.5M
// elements). The two clones may round differently (FMA); one machine always runs the same clone.
// Off under ThreadSanitizer: the loader runs the ifunc resolvers before TSan's runtime is ready,
// and an instrumented resolver crashes the process at start-up.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(__SANITIZE_THREAD__)
#define STP_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define STP_MULTIVERSION
#endif

namespace stp::cpu {

inline float exp_fast(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x);  // keeps n in [-126, 127]
  // n = round(x / ln2) by the 1.5 * 2^23 trick (adds and subtracts vectorise; floor may not).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  // 2^n from the exponent bits. A NaN input keeps y NaN (it propagates, as std::exp's would); its
  // n is replaced by 0 here because converting NaN to an integer is undefined behaviour.
  const float n_int = n == n ? n : 0.0f;
  const uint32_t bits = uint32_t(int32_t(n_int) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return y * scale;
}

inline double exp_fast(double x) { return std::exp(x); }

// sum_{i<n} f(i) in double over 8 independent lanes, combined in a fixed tree: the compiler can
// vectorise it (a plain `s += f(i)` is a serial dependence it may not reorder), and the result is
// the same on every run and every thread split.
template <typename F>
inline double lane_sum(int64_t n, F f) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += double(f(i + j));
  double tail = 0;
  for (; i < n; ++i) tail += double(f(i));
  return (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))) + tail;
}

// max_{i<n} x[i] over 8 lanes (n >= 1).
template <typename T>
inline T lane_max(const T* x, int64_t n) {
  T acc[8];
  for (int j = 0; j < 8; ++j) acc[j] = x[0];
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
  T m = acc[0];
  for (int j = 1; j < 8; ++j) m = acc[j] > m ? acc[j] : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

}  // namespace stp::cpu
