// norm.cpp: LayerNorm and RMSNorm, forward (with the fused residual add) and backward
// (contract in kernels.h). Row statistics and weight-gradient sums accumulate in double, so the
// float kernels lose nothing to long reductions and the double kernels are exact references.
// Large calls split rows (forward, input gradient) or columns (weight gradient) over workers;
// every output element is computed by one worker in a fixed order, so results do not depend on
// the split.
#include <cmath>
#include <vector>

#include "model/kernels/cpu/fast_math.h"
#include "model/kernels/cpu/kernels.h"
#include "model/kernels/cpu/parallel.h"

namespace stp::cpu {
namespace {

// x (C) = inp + inp2 (or inp), written to x_out when given; returns the row to normalise.
template <typename T>
const T* residual_row(T* x_out, const T* inp, const T* inp2, int64_t C) {
  if (!inp2) {
    if (x_out && x_out != inp)
      for (int64_t c = 0; c < C; ++c) x_out[c] = inp[c];
    return inp;
  }
  for (int64_t c = 0; c < C; ++c) x_out[c] = inp[c] + inp2[c];
  return x_out;
}

// Row-range bodies, compiled for AVX2 and the baseline (STP_MULTIVERSION); the kernels below
// split rows over workers and call them.
template <typename T>
STP_MULTIVERSION void layernorm_forward_rows(int64_t lo, int64_t hi, T* out, T* mean, T* rstd,
                                             T* x_out, const T* inp, const T* inp2, const T* weight,
                                             const T* bias, int64_t C, float eps) {
  for (int64_t n = lo; n < hi; ++n) {
    const T* x = residual_row(x_out ? x_out + n * C : nullptr, inp + n * C,
                              inp2 ? inp2 + n * C : nullptr, C);
    const double m = lane_sum(C, [&](int64_t c) { return x[c]; }) / double(C);
    const double v = lane_sum(C, [&](int64_t c) { return (x[c] - m) * (x[c] - m); });
    const double r = 1.0 / std::sqrt(v / double(C) + double(eps));
    T* o = out + n * C;
    for (int64_t c = 0; c < C; ++c) o[c] = T((x[c] - m) * r) * weight[c] + (bias ? bias[c] : T(0));
    mean[n] = T(m);
    rstd[n] = T(r);
  }
}

template <typename T>
STP_MULTIVERSION void rmsnorm_forward_rows(int64_t lo, int64_t hi, T* out, T* rstd, T* x_out,
                                           const T* inp, const T* inp2, const T* weight, int64_t C,
                                           float eps) {
  for (int64_t n = lo; n < hi; ++n) {
    const T* x = residual_row(x_out ? x_out + n * C : nullptr, inp + n * C,
                              inp2 ? inp2 + n * C : nullptr, C);
    const double ss = lane_sum(C, [&](int64_t c) { return double(x[c]) * x[c]; });
    const double r = 1.0 / std::sqrt(ss / double(C) + double(eps));
    T* o = out + n * C;
    for (int64_t c = 0; c < C; ++c) o[c] = T(x[c] * r) * weight[c];
    rstd[n] = T(r);
  }
}

// LayerNorm: dinp = rstd * (dn - mean(dn) - xhat * mean(dn * xhat)), dn = dout * weight.
template <typename T>
STP_MULTIVERSION void layernorm_backward_input_rows(int64_t lo, int64_t hi, T* dinp, const T* dout,
                                                    const T* x, const T* weight, const T* mean,
                                                    const T* rstd, int64_t C, bool accumulate) {
  for (int64_t n = lo; n < hi; ++n) {
    const T* xr = x + n * C;
    const T* dr = dout + n * C;
    const double m = mean[n], r = rstd[n];
    const double sum_dn = lane_sum(C, [&](int64_t c) { return double(dr[c]) * weight[c]; });
    const double sum_dn_xhat =
        lane_sum(C, [&](int64_t c) { return double(dr[c]) * weight[c] * ((xr[c] - m) * r); });
    const double a = sum_dn / double(C), b = sum_dn_xhat / double(C);
    T* di = dinp + n * C;
    for (int64_t c = 0; c < C; ++c) {
      const double dn = double(dr[c]) * weight[c];
      const T g = T(r * (dn - a - (xr[c] - m) * r * b));
      di[c] = accumulate ? di[c] + g : g;
    }
  }
}

// RMSNorm: dinp = rstd * (dn - xhat * mean(dn * xhat)).
template <typename T>
STP_MULTIVERSION void rmsnorm_backward_input_rows(int64_t lo, int64_t hi, T* dinp, const T* dout,
                                                  const T* x, const T* weight, const T* rstd,
                                                  int64_t C, bool accumulate) {
  for (int64_t n = lo; n < hi; ++n) {
    const T* xr = x + n * C;
    const T* dr = dout + n * C;
    const double r = rstd[n];
    const double sum_dn_xhat =
        lane_sum(C, [&](int64_t c) { return double(dr[c]) * weight[c] * xr[c] * r; });
    const double b = sum_dn_xhat / double(C);
    T* di = dinp + n * C;
    for (int64_t c = 0; c < C; ++c) {
      const T g = T(r * (double(dr[c]) * weight[c] - xr[c] * r * b));
      di[c] = accumulate ? di[c] + g : g;
    }
  }
}

}  // namespace

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, T* x_out, const T* inp, const T* inp2,
                       const T* weight, const T* bias, int64_t N, int64_t C, float eps) {
  parallel_range(N, 8.0 * double(N * C), [&](int64_t lo, int64_t hi) {
    layernorm_forward_rows(lo, hi, out, mean, rstd, x_out, inp, inp2, weight, bias, C, eps);
  });
}

template <typename T>
void rmsnorm_forward(T* out, T* rstd, T* x_out, const T* inp, const T* inp2, const T* weight,
                     int64_t N, int64_t C, float eps) {
  parallel_range(N, 6.0 * double(N * C), [&](int64_t lo, int64_t hi) {
    rmsnorm_forward_rows(lo, hi, out, rstd, x_out, inp, inp2, weight, C, eps);
  });
}

template <typename T>
void layernorm_backward_input(T* dinp, const T* dout, const T* x, const T* weight, const T* mean,
                              const T* rstd, int64_t N, int64_t C, bool accumulate) {
  parallel_range(N, 12.0 * double(N * C), [&](int64_t lo, int64_t hi) {
    layernorm_backward_input_rows(lo, hi, dinp, dout, x, weight, mean, rstd, C, accumulate);
  });
}

template <typename T>
void rmsnorm_backward_input(T* dinp, const T* dout, const T* x, const T* weight, const T* rstd,
                            int64_t N, int64_t C, bool accumulate) {
  parallel_range(N, 10.0 * double(N * C), [&](int64_t lo, int64_t hi) {
    rmsnorm_backward_input_rows(lo, hi, dinp, dout, x, weight, rstd, C, accumulate);
  });
}

template <typename T>
void layernorm_backward_weight(T* dweight, T* dbias, const T* dout, const T* x, const T* mean,
                               const T* rstd, int64_t N, int64_t C, bool accumulate) {
  parallel_range(C, 4.0 * double(N * C), [&](int64_t c0, int64_t c1) {
    std::vector<double> dw(size_t(c1 - c0), 0.0), db(size_t(c1 - c0), 0.0);
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * C;
      const T* dr = dout + n * C;
      const double m = mean[n], r = rstd[n];
      for (int64_t c = c0; c < c1; ++c) {
        dw[size_t(c - c0)] += double(dr[c]) * ((xr[c] - m) * r);
        db[size_t(c - c0)] += dr[c];
      }
    }
    for (int64_t c = c0; c < c1; ++c) {
      const T w = T(dw[size_t(c - c0)]), b = T(db[size_t(c - c0)]);
      dweight[c] = accumulate ? dweight[c] + w : w;
      if (dbias) dbias[c] = accumulate ? dbias[c] + b : b;
    }
  });
}

template <typename T>
void rmsnorm_backward_weight(T* dweight, const T* dout, const T* x, const T* rstd, int64_t N,
                             int64_t C, bool accumulate) {
  parallel_range(C, 3.0 * double(N * C), [&](int64_t c0, int64_t c1) {
    std::vector<double> dw(size_t(c1 - c0), 0.0);
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * C;
      const T* dr = dout + n * C;
      const double r = rstd[n];
      for (int64_t c = c0; c < c1; ++c) dw[size_t(c - c0)] += double(dr[c]) * (xr[c] * r);
    }
    for (int64_t c = c0; c < c1; ++c) {
      const T w = T(dw[size_t(c - c0)]);
      dweight[c] = accumulate ? dweight[c] + w : w;
    }
  });
}

#define STP_INSTANTIATE(T)                                                                        \
  template void layernorm_forward<T>(T*, T*, T*, T*, const T*, const T*, const T*, const T*,      \
                                     int64_t, int64_t, float);                                    \
  template void rmsnorm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t,    \
                                   float);                                                        \
  template void layernorm_backward_input<T>(T*, const T*, const T*, const T*, const T*, const T*, \
                                            int64_t, int64_t, bool);                              \
  template void rmsnorm_backward_input<T>(T*, const T*, const T*, const T*, const T*, int64_t,    \
                                          int64_t, bool);                                         \
  template void layernorm_backward_weight<T>(T*, T*, const T*, const T*, const T*, const T*,      \
                                             int64_t, int64_t, bool);                             \
  template void rmsnorm_backward_weight<T>(T*, const T*, const T*, const T*, int64_t, int64_t,    \
                                           bool);
STP_INSTANTIATE(float)
STP_INSTANTIATE(double)
#undef STP_INSTANTIATE

}  // namespace stp::cpu
