// attention.cpp: causal softmax attention with GQA, forward and backward (contract in kernels.h).
//
// Per (b, head), query rows are processed in blocks of kRowBlock; a block [i0, i1) only needs keys
// 0..i1-1 when causal, so the masked upper triangle is never multiplied (half the GEMM work at
// long T). Per block the scores S = scale * Q K^T (rows, keys) are one GEMM over strided views of
// qkv (row stride QKV), the softmax a row loop, O = P V another GEMM. The backward recomputes P
// from S and the saved lse, so nothing T x T lives between passes:
//   dP = dO V^T;  D_t = sum_d dO[t,d] O[t,d];  dS = P * (dP - D)
//   dQ = scale dS K;  dK += scale dS^T Q;  dV += P^T dO   (summed over the query heads of a group)
// Work is split over (b, head) in the forward and over (b, kv head) in the backward, so no two
// tasks write the same dK/dV rows and the result does not depend on the thread count. While the
// tasks run on several threads, OpenBLAS runs single-threaded (BlasSerial).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "model/kernels/cpu/fast_math.h"
#include "model/kernels/cpu/kernels.h"
#include "model/kernels/cpu/parallel.h"

namespace stp::cpu {
namespace {

constexpr int64_t kRowBlock = 64;

// Per-task views into qkv / out for batch b and query head h.
struct HeadView {
  int64_t q, k, v,
      o;  // element offsets of the first row; rows are QKV (q, k, v) or NH*HD (o) apart
};

HeadView head_view(const AttnShape& s, int64_t b, int64_t h) {
  const int64_t QKV = s.qkv_width(), group = s.NH / s.NKV, kvh = h / group;
  HeadView v;
  v.q = b * s.T * QKV + h * s.HD;
  v.k = b * s.T * QKV + (s.NH + kvh) * s.HD;
  v.v = b * s.T * QKV + (s.NH + s.NKV + kvh) * s.HD;
  v.o = b * s.T * s.NH * s.HD + h * s.HD;
  return v;
}

// Keys a query row t may see: 0..t (causal) or all; keys a row block [i0, i1) needs.
inline int64_t visible(const AttnShape& s, int64_t t) { return s.causal ? t + 1 : s.T; }
inline int64_t block_keys(const AttnShape& s, int64_t i1) { return s.causal ? i1 : s.T; }

// S (rows, nk) = scale * Q[i0:i0+rows] K[0:nk]^T, row stride nk.
template <typename T>
void scores(T* S, const T* qkv, const HeadView& hv, const AttnShape& s, int64_t i0, int64_t rows,
            int64_t nk, T scale) {
  const int64_t QKV = s.qkv_width();
  gemm<T>(false, true, rows, nk, s.HD, scale, qkv + hv.q + i0 * QKV, QKV, qkv + hv.k, QKV, T(0), S,
          nk);
}

// Causal softmax of the score rows [i0, i0+rows) in place (rows, nk); lse of each row.
template <typename T>
STP_MULTIVERSION void softmax_rows(T* S, T* lse_row, const AttnShape& s, int64_t i0, int64_t rows,
                                   int64_t nk) {
  for (int64_t r = 0; r < rows; ++r) {
    T* row = S + r * nk;
    const int64_t n = visible(s, i0 + r);
    const T m = lane_max(row, n);
    for (int64_t j = 0; j < n; ++j) row[j] = exp_fast(row[j] - m);
    const T sum = T(lane_sum(n, [&](int64_t j) { return row[j]; }));
    const T inv = T(1) / sum;
    for (int64_t j = 0; j < n; ++j) row[j] *= inv;
    std::fill(row + n, row + nk, T(0));
    lse_row[i0 + r] = m + std::log(sum);
  }
}

template <typename T>
void forward_head(T* out, T* lse, const T* qkv, const AttnShape& s, int64_t b, int64_t h, T* S) {
  const HeadView hv = head_view(s, b, h);
  const int64_t QKV = s.qkv_width(), OW = s.NH * s.HD;
  T* lse_row = lse + (b * s.NH + h) * s.T;
  for (int64_t i0 = 0; i0 < s.T; i0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, s.T - i0), nk = block_keys(s, i0 + rows);
    scores(S, qkv, hv, s, i0, rows, nk, T(1) / std::sqrt(T(s.HD)));
    softmax_rows(S, lse_row, s, i0, rows, nk);
    // O[i0:i0+rows] (rows, HD) = P (rows, nk) @ V[0:nk] (nk, HD)
    gemm<T>(false, false, rows, s.HD, nk, T(1), S, nk, qkv + hv.v, QKV, T(0), out + hv.o + i0 * OW,
            OW);
  }
}

// P (rows, nk) from the scores and lse; dP (rows, nk) becomes dS = P * (dP - D).
template <typename T>
STP_MULTIVERSION void softmax_backward_block(T* P, T* dP, const T* out, const T* dout,
                                             const T* lse_row, const HeadView& hv,
                                             const AttnShape& s, int64_t i0, int64_t rows,
                                             int64_t nk) {
  const int64_t OW = s.NH * s.HD;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = i0 + r;
    const T* o = out + hv.o + t * OW;
    const T* d = dout + hv.o + t * OW;
    const T D = T(lane_sum(s.HD, [&](int64_t e) { return o[e] * d[e]; }));
    T* p = P + r * nk;
    T* dp = dP + r * nk;
    const int64_t n = visible(s, t);
    for (int64_t j = 0; j < n; ++j) {
      p[j] = exp_fast(p[j] - lse_row[t]);
      dp[j] = p[j] * (dp[j] - D);
    }
    std::fill(p + n, p + nk, T(0));
    std::fill(dp + n, dp + nk, T(0));
  }
}

// One query head's contribution to dq (overwritten) and dk, dv (accumulated).
template <typename T>
void backward_head(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse,
                   const AttnShape& s, int64_t b, int64_t h, T* P, T* dP) {
  const HeadView hv = head_view(s, b, h);
  const int64_t QKV = s.qkv_width(), OW = s.NH * s.HD;
  const T scale = T(1) / std::sqrt(T(s.HD));
  const T* lse_row = lse + (b * s.NH + h) * s.T;
  for (int64_t i0 = 0; i0 < s.T; i0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, s.T - i0), nk = block_keys(s, i0 + rows);
    scores(P, qkv, hv, s, i0, rows, nk, scale);
    // dP (rows, nk) = dO[i0:] (rows, HD) @ V[0:nk]^T
    gemm<T>(false, true, rows, nk, s.HD, T(1), dout + hv.o + i0 * OW, OW, qkv + hv.v, QKV, T(0), dP,
            nk);
    softmax_backward_block(P, dP, out, dout, lse_row, hv, s, i0, rows, nk);
    // dQ = scale * dS @ K;  dK += scale * dS^T @ Q;  dV += P^T @ dO
    gemm<T>(false, false, rows, s.HD, nk, scale, dP, nk, qkv + hv.k, QKV, T(0),
            dqkv + hv.q + i0 * QKV, QKV);
    gemm<T>(true, false, nk, s.HD, rows, scale, dP, nk, qkv + hv.q + i0 * QKV, QKV, T(1),
            dqkv + hv.k, QKV);
    gemm<T>(true, false, nk, s.HD, rows, T(1), P, nk, dout + hv.o + i0 * OW, OW, T(1), dqkv + hv.v,
            QKV);
  }
}

double attention_flops(const AttnShape& s) {
  return (s.causal ? 2.0 : 4.0) * s.B * s.NH * double(s.T) * s.T * s.HD;
}

}  // namespace

template <typename T>
void attention_forward(T* out, T* lse, const T* qkv, const AttnShape& s) {
  const int workers = parallel_workers(s.B * s.NH, attention_flops(s));
  BlasSerial serial(workers > 1);
  const size_t scratch = size_t(std::min(kRowBlock, s.T) * s.T);
  std::vector<std::vector<T>> S(static_cast<size_t>(workers), std::vector<T>(scratch, T(0)));
  parallel_for(s.B * s.NH, workers, [&](int64_t task, int w) {
    forward_head(out, lse, qkv, s, task / s.NH, task % s.NH, S[size_t(w)].data());
  });
}

template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse,
                        const AttnShape& s) {
  const int64_t QKV = s.qkv_width(), group = s.NH / s.NKV;
  const int workers = parallel_workers(s.B * s.NKV, 2.5 * attention_flops(s));
  BlasSerial serial(workers > 1);
  const size_t scratch = size_t(std::min(kRowBlock, s.T) * s.T);
  std::vector<std::vector<T>> P(static_cast<size_t>(workers), std::vector<T>(2 * scratch, T(0)));
  parallel_for(s.B * s.NKV, workers, [&](int64_t task, int w) {
    const int64_t b = task / s.NKV, kvh = task % s.NKV;
    for (int64_t t = 0; t < s.T; ++t) {  // this task owns dK, dV of (b, kvh): zero them first
      T* row = dqkv + (b * s.T + t) * QKV;
      std::fill_n(row + (s.NH + kvh) * s.HD, s.HD, T(0));
      std::fill_n(row + (s.NH + s.NKV + kvh) * s.HD, s.HD, T(0));
    }
    T* p = P[size_t(w)].data();
    for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
      backward_head(dqkv, dout, qkv, out, lse, s, b, h, p, p + scratch);
  });
}

#define STP_INSTANTIATE(T)                                                \
  template void attention_forward<T>(T*, T*, const T*, const AttnShape&); \
  template void attention_backward<T>(T*, const T*, const T*, const T*, const T*, const AttnShape&);
STP_INSTANTIATE(float)
STP_INSTANTIATE(double)
#undef STP_INSTANTIATE

}  // namespace stp::cpu
