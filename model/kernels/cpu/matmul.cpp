// matmul.cpp: GEMM-based kernels (contract in kernels.h). Every product goes through
// cblas_sgemm / cblas_dgemm; bias broadcast and column sums are the only loops, and both are
// memory-bound O(N*OC) passes.
#include <cblas.h>

#include <algorithm>
#include <vector>

#include "model/kernels/cpu/kernels.h"
#include "model/kernels/cpu/parallel.h"

namespace stp::cpu {
namespace {

inline void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K,
                      float alpha, const float* a, int64_t lda, const float* b, int64_t ldb,
                      float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, int(M), int(N), int(K), alpha, a, int(lda), b, int(ldb), beta,
              c, int(ldc));
}
inline void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K,
                      double alpha, const double* a, int64_t lda, const double* b, int64_t ldb,
                      double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, int(M), int(N), int(K), alpha, a, int(lda), b, int(ldb), beta,
              c, int(ldc));
}

// dbias (OC) (+)= sum over rows of dout (N, OC). Rows are added in order and columns are split
// over workers: deterministic whatever the split.
template <typename T>
void column_sums(T* dbias, const T* dout, int64_t N, int64_t OC, bool accumulate) {
  parallel_range(OC, double(N * OC), [&](int64_t o0, int64_t o1) {
    std::vector<T> acc(size_t(o1 - o0), T(0));
    for (int64_t n = 0; n < N; ++n) {
      const T* row = dout + n * OC + o0;
      for (int64_t o = 0; o < o1 - o0; ++o) acc[size_t(o)] += row[o];
    }
    for (int64_t o = o0; o < o1; ++o)
      dbias[o] = accumulate ? dbias[o] + acc[size_t(o - o0)] : acc[size_t(o - o0)];
  });
}

}  // namespace

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // BLAS leaves C untouched for K = 0 only when beta = 1; make beta = 0 explicit
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  blas_gemm(trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
            alpha, a, lda, b, ldb, beta, c, ldc);
}

template <typename T>
void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, int64_t N, int64_t C,
                    int64_t OC) {
  // out (N, OC) = inp (N, C) @ weight (OC, C)^T [+ bias]: bias is broadcast first, then beta = 1.
  if (bias)
    for (int64_t n = 0; n < N; ++n) std::copy(bias, bias + OC, out + n * OC);
  gemm<T>(false, true, N, OC, C, T(1), inp, C, weight, C, bias ? T(1) : T(0), out, OC);
}

template <typename T>
void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int64_t N, int64_t C, int64_t OC, bool accumulate) {
  // dinp (N, C) = dout (N, OC) @ weight (OC, C)
  if (dinp) gemm<T>(false, false, N, C, OC, T(1), dout, OC, weight, C, T(0), dinp, C);
  // dweight (OC, C) (+)= dout^T (OC, N) @ inp (N, C)
  if (dweight)
    gemm<T>(true, false, OC, C, N, T(1), dout, OC, inp, C, accumulate ? T(1) : T(0), dweight, C);
  if (dbias) column_sums(dbias, dout, N, OC, accumulate);
}

#define STP_INSTANTIATE(T)                                                                      \
  template void gemm<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*,  \
                        int64_t, T, T*, int64_t);                                               \
  template void matmul_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t); \
  template void matmul_backward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t,  \
                                   int64_t, bool);
STP_INSTANTIATE(float)
STP_INSTANTIATE(double)
#undef STP_INSTANTIATE

}  // namespace stp::cpu
