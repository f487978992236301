// adamw.cpp: AdamW and the squared gradient norm (contract in kernels.h). The update is the
// formula of runtime/optimizer.h, operation for operation, so a rank updating its shard computes
// bit for bit what a single rank computes for the same elements.
#include <cmath>

#include "model/kernels/cpu/fast_math.h"
#include "model/kernels/cpu/kernels.h"
#include "model/kernels/cpu/parallel.h"

namespace stp::cpu {

namespace {

// The update of elements [0, n): restrict pointers and locals so the loop vectorises.
template <typename T>
STP_MULTIVERSION void adamw_range(T* __restrict p, const T* __restrict g, T* __restrict m,
                                  T* __restrict v, int64_t n, T b1, T b2, T lr, T eps, T wd, T c1,
                                  T c2, T gs) {
  for (int64_t i = 0; i < n; ++i) {
    const T gi = g[i] * gs;
    m[i] = b1 * m[i] + (T(1) - b1) * gi;
    v[i] = b2 * v[i] + (T(1) - b2) * gi * gi;
    const T mhat = m[i] / c1, vhat = v[i] / c2;
    p[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * p[i]);
  }
}

}  // namespace

template <typename T>
void adamw_update(T* p, const T* g, T* m, T* v, int64_t n, const AdamWHyper& h, float grad_scale) {
  const T b1 = T(h.beta1), b2 = T(h.beta2), lr = T(h.lr), eps = T(h.eps), wd = T(h.weight_decay);
  const T c1 = T(1) - std::pow(b1, T(h.t));
  const T c2 = T(1) - std::pow(b2, T(h.t));
  const int workers = parallel_workers(n, 10.0 * double(n));
  parallel_for(workers, workers, [&](int64_t w, int) {
    const int64_t lo = n * w / workers, hi = n * (w + 1) / workers;
    adamw_range(p + lo, g + lo, m + lo, v + lo, hi - lo, b1, b2, lr, eps, wd, c1, c2,
                T(grad_scale));
  });
}

template <typename T>
double grad_sq_norm(const T* g, int64_t n) {
  return lane_sum(n, [&](int64_t i) { return double(g[i]) * double(g[i]); });
}

template void adamw_update<float>(float*, const float*, float*, float*, int64_t, const AdamWHyper&,
                                  float);
template void adamw_update<double>(double*, const double*, double*, double*, int64_t,
                                   const AdamWHyper&, float);
template double grad_sq_norm<float>(const float*, int64_t);
template double grad_sq_norm<double>(const double*, int64_t);

}  // namespace stp::cpu
