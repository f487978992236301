// embedding_xent.cpp: the vocab-parallel ends of the model -- embedding lookup and its scatter
// backward, and the cross-entropy pieces that bracket the TP collectives (contract in kernels.h).
#include <algorithm>
#include <cmath>
#include <limits>

#include "model/kernels/cpu/fast_math.h"
#include "model/kernels/cpu/kernels.h"
#include "model/kernels/cpu/parallel.h"

namespace stp::cpu {

template <typename T>
void embedding_forward(T* out, const int* tokens, const T* wte, const T* wpe, int64_t N, int64_t T_,
                       int64_t C, int64_t vocab_start, int64_t V) {
  for (int64_t n = 0; n < N; ++n) {
    T* o = out + n * C;
    const int64_t row = int64_t(tokens[n]) - vocab_start;
    if (row >= 0 && row < V)
      std::copy(wte + row * C, wte + (row + 1) * C, o);
    else
      std::fill(o, o + C, T(0));
    if (wpe) {
      const T* p = wpe + (n % T_) * C;
      for (int64_t c = 0; c < C; ++c) o[c] += p[c];
    }
  }
}

template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int* tokens, int64_t N, int64_t T_,
                        int64_t C, int64_t vocab_start, int64_t V) {
  for (int64_t n = 0; n < N; ++n) {
    const T* d = dout + n * C;
    const int64_t row = int64_t(tokens[n]) - vocab_start;
    if (row >= 0 && row < V) {
      T* w = dwte + row * C;
      for (int64_t c = 0; c < C; ++c) w[c] += d[c];
    }
    if (dwpe) {
      T* p = dwpe + (n % T_) * C;
      for (int64_t c = 0; c < C; ++c) p[c] += d[c];
    }
  }
}

template <typename T>
void xent_row_max(T* rowmax, const T* logits, int64_t N, int64_t V) {
  parallel_range(N, 2.0 * double(N * V), [&](int64_t lo, int64_t hi) {
    for (int64_t n = lo; n < hi; ++n) {
      const T* l = logits + n * V;
      rowmax[n] = V > 0 ? lane_max(l, V) : -std::numeric_limits<T>::infinity();
    }
  });
}

namespace {

template <typename T>
STP_MULTIVERSION void xent_sumexp_rows(int64_t lo, int64_t hi, T* sumexp, T* tlogit,
                                       const T* logits, const T* rowmax, const int* targets,
                                       int64_t V, int64_t vocab_start) {
  for (int64_t n = lo; n < hi; ++n) {
    const T* l = logits + n * V;
    const T m = rowmax[n];
    sumexp[n] = T(lane_sum(V, [&](int64_t v) { return exp_fast(l[v] - m); }));
    const int64_t t = int64_t(targets[n]) - vocab_start;
    tlogit[n] = (t >= 0 && t < V) ? l[t] : T(0);
  }
}

template <typename T>
STP_MULTIVERSION void xent_backward_rows(int64_t lo, int64_t hi, T* dlogits, const T* logits,
                                         const T* rowmax, const T* sumexp, const int* targets,
                                         float dscale, int64_t V, int64_t vocab_start) {
  for (int64_t n = lo; n < hi; ++n) {
    const T* l = logits + n * V;
    T* d = dlogits + n * V;
    if (targets[n] < 0) {  // ignored row: no loss, no gradient
      for (int64_t v = 0; v < V; ++v) d[v] = T(0);
      continue;
    }
    const T inv = T(dscale) / sumexp[n], m = rowmax[n];
    for (int64_t v = 0; v < V; ++v) d[v] = exp_fast(l[v] - m) * inv;
    const int64_t t = int64_t(targets[n]) - vocab_start;
    if (t >= 0 && t < V) d[t] -= T(dscale);
  }
}

}  // namespace

template <typename T>
void xent_sumexp(T* sumexp, T* tlogit, const T* logits, const T* rowmax, const int* targets,
                 int64_t N, int64_t V, int64_t vocab_start) {
  parallel_range(N, 20.0 * double(N * V), [&](int64_t lo, int64_t hi) {
    xent_sumexp_rows(lo, hi, sumexp, tlogit, logits, rowmax, targets, V, vocab_start);
  });
}

template <typename T>
void xent_loss(T* losses, const T* rowmax, const T* sumexp, const T* tlogit, int64_t N,
               const int* targets) {
  for (int64_t n = 0; n < N; ++n)
    losses[n] = (targets && targets[n] < 0) ? T(0) : std::log(sumexp[n]) + rowmax[n] - tlogit[n];
}

template <typename T>
void xent_backward(T* dlogits, const T* logits, const T* rowmax, const T* sumexp,
                   const int* targets, float dscale, int64_t N, int64_t V, int64_t vocab_start) {
  parallel_range(N, 20.0 * double(N * V), [&](int64_t lo, int64_t hi) {
    xent_backward_rows(lo, hi, dlogits, logits, rowmax, sumexp, targets, dscale, V, vocab_start);
  });
}

#define STP_INSTANTIATE(T)                                                                         \
  template void embedding_forward<T>(T*, const int*, const T*, const T*, int64_t, int64_t,         \
                                     int64_t, int64_t, int64_t);                                   \
  template void embedding_backward<T>(T*, T*, const T*, const int*, int64_t, int64_t, int64_t,     \
                                      int64_t, int64_t);                                           \
  template void xent_row_max<T>(T*, const T*, int64_t, int64_t);                                   \
  template void xent_sumexp<T>(T*, T*, const T*, const T*, const int*, int64_t, int64_t, int64_t); \
  template void xent_loss<T>(T*, const T*, const T*, const T*, int64_t, const int*);               \
  template void xent_backward<T>(T*, const T*, const T*, const T*, const int*, float, int64_t,     \
                                 int64_t, int64_t);
STP_INSTANTIATE(float)
STP_INSTANTIATE(double)
#undef STP_INSTANTIATE

}  // namespace stp::cpu
