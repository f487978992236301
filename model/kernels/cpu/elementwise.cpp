// elementwise.cpp: GELU (tanh approximation), SwiGLU, residual add and RoPE, 1-D and the vision
// tower's 2-D (contract in kernels.h). Memory-bound loops; the compiler vectorises them.
#include <cmath>
#include <vector>

#include "model/kernels/cpu/fast_math.h"
#include "model/kernels/cpu/kernels.h"
#include "model/kernels/cpu/parallel.h"

namespace stp::cpu {
namespace {
constexpr double kGeluK = 0.7978845608028654;  // sqrt(2 / pi)
constexpr double kGeluA = 0.044715;

// tanh(y) = 1 - 2 / (exp(2y) + 1): one vectorisable exp instead of libm's tanh (GELU was half
// tanh in the profile). Its absolute error is a few ulps of 1, which is what GELU needs (it uses
// 1 + tanh and 1 - tanh^2); at the clamped ends of exp_fast it returns -1 and 1 to fp32.
template <typename T>
inline T fast_tanh(T y) {
  return T(1) - T(2) / (exp_fast(T(2) * y) + T(1));
}

// The loops live in restrict-pointer range functions (vectorised); the kernels split rows over
// workers when the call is large (~20 flops per element).
template <typename T>
STP_MULTIVERSION void gelu_forward_range(T* __restrict out, const T* __restrict inp, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T x = inp[i];
    out[i] = T(0.5) * x * (T(1) + fast_tanh(T(kGeluK) * (x + T(kGeluA) * x * x * x)));
  }
}

template <typename T>
STP_MULTIVERSION void gelu_backward_range(T* __restrict dinp, const T* __restrict inp,
                                          const T* __restrict dout, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T x = inp[i];
    const T t = fast_tanh(T(kGeluK) * (x + T(kGeluA) * x * x * x));
    const T dt = T(kGeluK) * (T(1) + T(3 * kGeluA) * x * x);
    dinp[i] = dout[i] * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * dt);
  }
}

template <typename T>
STP_MULTIVERSION void swiglu_forward_range(T* __restrict out, const T* __restrict inp, int64_t N,
                                           int64_t F) {
  for (int64_t n = 0; n < N; ++n) {
    const T* gate = inp + n * 2 * F;
    const T* up = gate + F;
    T* o = out + n * F;
    for (int64_t f = 0; f < F; ++f) o[f] = gate[f] / (T(1) + exp_fast(-gate[f])) * up[f];
  }
}

// d/dgate = dout * up * s * (1 + g * (1 - s)), d/dup = dout * g * s, s = sigmoid(g).
template <typename T>
STP_MULTIVERSION void swiglu_backward_range(T* __restrict dinp, const T* __restrict inp,
                                            const T* __restrict dout, int64_t N, int64_t F) {
  for (int64_t n = 0; n < N; ++n) {
    const T* gate = inp + n * 2 * F;
    const T* up = gate + F;
    const T* d = dout + n * F;
    T* dg = dinp + n * 2 * F;
    T* du = dg + F;
    for (int64_t f = 0; f < F; ++f) {
      const T g = gate[f], s = T(1) / (T(1) + exp_fast(-g));
      dg[f] = d[f] * up[f] * s * (T(1) + g * (T(1) - s));
      du[f] = d[f] * g * s;
    }
  }
}

}  // namespace

template <typename T>
void gelu_forward(T* out, const T* inp, int64_t n) {
  parallel_range(n, 20.0 * double(n),
                 [&](int64_t lo, int64_t hi) { gelu_forward_range(out + lo, inp + lo, hi - lo); });
}

template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n) {
  parallel_range(n, 30.0 * double(n), [&](int64_t lo, int64_t hi) {
    gelu_backward_range(dinp + lo, inp + lo, dout + lo, hi - lo);
  });
}

template <typename T>
void swiglu_forward(T* out, const T* inp, int64_t N, int64_t F) {
  parallel_range(N, 20.0 * double(N * F), [&](int64_t lo, int64_t hi) {
    swiglu_forward_range(out + lo * F, inp + lo * 2 * F, hi - lo, F);
  });
}

template <typename T>
void swiglu_backward(T* dinp, const T* inp, const T* dout, int64_t N, int64_t F) {
  parallel_range(N, 30.0 * double(N * F), [&](int64_t lo, int64_t hi) {
    swiglu_backward_range(dinp + lo * 2 * F, inp + lo * 2 * F, dout + lo * F, hi - lo, F);
  });
}

template <typename T>
void residual_forward(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

namespace {

// Rotates the q and k heads of every token of qkv (B, T, QKV) by +angle (sign 1) or -angle
// (sign -1); angle(t, i) (double) is pair i's angle at position t of a sequence. The cos/sin
// table (T, HD/2) is computed once per call, in double.
template <typename T, typename Angle>
void rope_apply(T* qkv, int64_t B, int64_t T_, int64_t NH, int64_t NKV, int64_t HD, T sign,
                const Angle& angle) {
  const int64_t half = HD / 2, QKV = (NH + 2 * NKV) * HD;
  std::vector<T> cs(size_t(T_ * half)), sn(size_t(T_ * half));
  for (int64_t t = 0; t < T_; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double a = angle(t, i);
      cs[t * half + i] = T(std::cos(a));
      sn[t * half + i] = T(std::sin(a));
    }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T_; ++t) {
      T* row = qkv + (b * T_ + t) * QKV;
      const T* c = cs.data() + t * half;
      const T* s = sn.data() + t * half;
      for (int64_t h = 0; h < NH + NKV; ++h) {  // q heads then k heads are contiguous
        T* x = row + h * HD;
        for (int64_t i = 0; i < half; ++i) {
          const T x1 = x[i], x2 = x[i + half], si = sign * s[i];
          x[i] = x1 * c[i] - x2 * si;
          x[i + half] = x2 * c[i] + x1 * si;
        }
      }
    }
}

// theta^(-j/n), j < n: the 1-D rope's theta^(-2i/HD) for n = HD/2, the 2-D rope's theta^(-4j/HD)
// for n = HD/4.
std::vector<double> rope_freqs(int64_t n, float theta) {
  std::vector<double> f(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) f[j] = std::pow(double(theta), -double(j) / double(n));
  return f;
}

// 1-D: pair i at position t turns by t * theta^(-2i/HD).
template <typename T>
void rope1d_apply(T* qkv, int64_t B, int64_t T_, int64_t NH, int64_t NKV, int64_t HD,
                  float theta, T sign) {
  const std::vector<double> f = rope_freqs(HD / 2, theta);
  rope_apply(qkv, B, T_, NH, NKV, HD, sign, [&](int64_t t, int64_t i) { return double(t) * f[i]; });
}

// 2-D: patch p's (row, col) from the merge-window order; the first HD/4 pairs turn with the row,
// the rest with the column, both with the frequencies theta^(-4j/HD), j < HD/4.
template <typename T>
void rope2d_apply(T* qkv, int64_t B, int64_t Np, int64_t NH, int64_t NKV, int64_t HD,
                  int64_t grid, int64_t merge, float theta, T sign) {
  const int64_t quarter = HD / 4, windows_per_row = grid / merge;
  const std::vector<double> f = rope_freqs(quarter, theta);
  rope_apply(qkv, B, Np, NH, NKV, HD, sign, [&](int64_t p, int64_t i) {
    const int64_t wi = p / (merge * merge), q = p % (merge * merge);
    if (i < quarter) return double((wi / windows_per_row) * merge + q / merge) * f[i];
    return double((wi % windows_per_row) * merge + q % merge) * f[i - quarter];
  });
}

}  // namespace

template <typename T>
void rope_forward(T* qkv, int64_t B, int64_t T_, int64_t NH, int64_t NKV, int64_t HD, float theta) {
  rope1d_apply(qkv, B, T_, NH, NKV, HD, theta, T(1));
}

// The rotation is orthogonal, so its backward is the inverse rotation.
template <typename T>
void rope_backward(T* dqkv, int64_t B, int64_t T_, int64_t NH, int64_t NKV, int64_t HD,
                   float theta) {
  rope1d_apply(dqkv, B, T_, NH, NKV, HD, theta, T(-1));
}

template <typename T>
void rope2d_forward(T* qkv, int64_t B, int64_t Np, int64_t NH, int64_t NKV, int64_t HD,
                    int64_t grid, int64_t merge, float theta) {
  rope2d_apply(qkv, B, Np, NH, NKV, HD, grid, merge, theta, T(1));
}

template <typename T>
void rope2d_backward(T* dqkv, int64_t B, int64_t Np, int64_t NH, int64_t NKV, int64_t HD,
                     int64_t grid, int64_t merge, float theta) {
  rope2d_apply(dqkv, B, Np, NH, NKV, HD, grid, merge, theta, T(-1));
}

#define STP_INSTANTIATE(T)                                                               \
  template void gelu_forward<T>(T*, const T*, int64_t);                                  \
  template void gelu_backward<T>(T*, const T*, const T*, int64_t);                       \
  template void swiglu_forward<T>(T*, const T*, int64_t, int64_t);                       \
  template void swiglu_backward<T>(T*, const T*, const T*, int64_t, int64_t);            \
  template void residual_forward<T>(T*, const T*, const T*, int64_t);                    \
  template void rope_forward<T>(T*, int64_t, int64_t, int64_t, int64_t, int64_t, float); \
  template void rope_backward<T>(T*, int64_t, int64_t, int64_t, int64_t, int64_t, float); \
  template void rope2d_forward<T>(T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,  \
                                  int64_t, float);                                         \
  template void rope2d_backward<T>(T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                   int64_t, float);
STP_INSTANTIATE(float)
STP_INSTANTIATE(double)
#undef STP_INSTANTIATE

}  // namespace stp::cpu
