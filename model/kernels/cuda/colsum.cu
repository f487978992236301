// colsum.cu: deterministic column reductions over the token dimension, for the gradients of
// biases and norm weights:
//   mode Sum:    out0[c] (+)= sum_n dout[n, c]                          (bias gradient)
//   mode LnW:    out0[c] (+)= sum_n dout[n, c] * (x[n, c] - mean[n]) * rstd[n]   (LN weight)
//                out1[c] (+)= sum_n dout[n, c]                          (LN bias)
//   mode RmsW:   out0[c] (+)= sum_n dout[n, c] * x[n, c] * rstd[n]      (RMSNorm weight)
// Two stages, both in a fixed order (so results are bit-identical run to run): stage 1 splits the
// rows into S slices, each block sums one (slice, 64-column tile) with each lane owning 2 adjacent
// columns (128-byte coalesced rows per warp) and writes partials to scratch (S, 2, C); stage 2
// sums the S partials per column in slice order and adds (or writes) the result.
#include "model/kernels/cuda/colsum.h"

#include "model/kernels/cuda/check.h"
#include "model/kernels/cuda/common.cuh"

namespace stp::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kTile = 64;  // columns per block: 32 lanes x 2

template <ColsumMode M>
__global__ void colsum_partial_kernel(float* part, const bf16* dout, const bf16* x,
                                      const float* mean, const float* rstd, int N, int C,
                                      int rows_per_slice) {
  __shared__ float sh[2][kWarps][kTile];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int c = blockIdx.x * kTile + 2 * lane;
  const int n0 = blockIdx.y * rows_per_slice, n1 = min(N, n0 + rows_per_slice);
  float a0 = 0, a1 = 0, b0 = 0, b1 = 0;
  if (c < C) {
    for (int n = n0 + warp; n < n1; n += kWarps) {
      const __nv_bfloat162 d2 = *reinterpret_cast<const __nv_bfloat162*>(dout + size_t(n) * C + c);
      const float d0 = __low2float(d2), d1 = __high2float(d2);
      if (M == ColsumMode::Sum) {
        a0 += d0, a1 += d1;
      } else {
        const __nv_bfloat162 x2 = *reinterpret_cast<const __nv_bfloat162*>(x + size_t(n) * C + c);
        const float mu = M == ColsumMode::LnW ? mean[n] : 0.0f, r = rstd[n];
        a0 += d0 * (__low2float(x2) - mu) * r;
        a1 += d1 * (__high2float(x2) - mu) * r;
        b0 += d0, b1 += d1;
      }
    }
  }
  sh[0][warp][2 * lane] = a0, sh[0][warp][2 * lane + 1] = a1;
  sh[1][warp][2 * lane] = b0, sh[1][warp][2 * lane + 1] = b1;
  __syncthreads();
  if (threadIdx.x < 2 * kTile) {
    const int which = threadIdx.x / kTile, col = threadIdx.x % kTile;
    float s = 0;
    for (int w = 0; w < kWarps; ++w) s += sh[which][w][col];
    const int cc = blockIdx.x * kTile + col;
    if (cc < C) part[(size_t(blockIdx.y) * 2 + which) * C + cc] = s;
  }
}

__global__ void colsum_finish_kernel(float* out0, float* out1, const float* part, int S, int C,
                                     bool accumulate) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s0 = 0, s1 = 0;
  for (int s = 0; s < S; ++s) {
    s0 += part[(size_t(s) * 2) * C + c];
    s1 += part[(size_t(s) * 2 + 1) * C + c];
  }
  out0[c] = accumulate ? out0[c] + s0 : s0;
  if (out1) out1[c] = accumulate ? out1[c] + s1 : s1;
}

}  // namespace

void colsum(ColsumMode mode, float* out0, float* out1, const bf16* dout, const bf16* x,
            const float* mean, const float* rstd, int64_t N, int64_t C, bool accumulate, Ctx& ctx) {
  if (C % 2 != 0) throw CudaError("colsum: C = " + std::to_string(C) + " must be even");
  // Enough slices to give every SM several blocks, each slice at least 64 rows.
  const int tiles = int(ceil_div(C, kTile));
  const int want = std::max(1, 4 * ctx.num_sms() / tiles);
  const int S = int(std::min<int64_t>(want, std::max<int64_t>(1, N / 64)));
  const int rows = int(ceil_div(N, S));
  float* part = ctx.scratch(size_t(S) * 2 * C);
  const dim3 grid(tiles, S);
  switch (mode) {
    case ColsumMode::Sum:
      colsum_partial_kernel<ColsumMode::Sum><<<grid, 32 * kWarps, 0, ctx.stream>>>(
          part, dout, x, mean, rstd, int(N), int(C), rows);
      break;
    case ColsumMode::LnW:
      colsum_partial_kernel<ColsumMode::LnW><<<grid, 32 * kWarps, 0, ctx.stream>>>(
          part, dout, x, mean, rstd, int(N), int(C), rows);
      break;
    case ColsumMode::RmsW:
      colsum_partial_kernel<ColsumMode::RmsW><<<grid, 32 * kWarps, 0, ctx.stream>>>(
          part, dout, x, mean, rstd, int(N), int(C), rows);
      break;
  }
  CUDA_CHECK_LAUNCH();
  colsum_finish_kernel<<<ceil_div(C, 256), 256, 0, ctx.stream>>>(out0, out1, part, S, int(C),
                                                                 accumulate);
  CUDA_CHECK_LAUNCH();
}

}  // namespace stp::cuda
