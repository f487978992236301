// norm.cu: LayerNorm and RMSNorm, forward and backward, bf16 tensors with fp32 statistics.
//
// One warp per token row; lanes read 8 bf16 (16 bytes) at a time, so C % 8 == 0. The forward can
// fuse the residual add that precedes a norm: x = inp + inp2 is rounded to bf16, stored to x_out,
// and the statistics are computed from the stored (rounded) x, so the backward, which reads the
// stored x, sees exactly the x that was normalised. Mean and variance are two passes over the row
// (the re-read hits L1), which avoids the cancellation of sum-of-squares.
//   LayerNorm: y = (x - mean) * rstd * w + b,  rstd = 1 / sqrt(var + eps)
//   RMSNorm:   y = x * rstd * w,               rstd = 1 / sqrt(mean(x^2) + eps)
// Backward of the input (xhat = normalised x, g = dout * w):
//   LayerNorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   RMSNorm:   dx = rstd * (g - xhat * mean(g * xhat))
// The weight/bias gradients are column sums (colsum.cu), run by the W pass.
#include "model/kernels/cuda/kernels.h"

#include "model/kernels/cuda/check.h"
#include "model/kernels/cuda/colsum.h"
#include "model/kernels/cuda/common.cuh"

namespace stp::cuda {

namespace {

constexpr int kWarpsPerBlock = 4;

// Pass 1: x (inp, or inp + inp2 rounded; stored to x_out when given) and its row sum (sum of squares
// for RMSNorm). Returns the warp-reduced sum.
template <bool kRms>
__device__ float row_first_pass(const bf16* inp, const bf16* inp2, bf16* x_out, int C, int lane) {
  float s = 0;
  for (int c = 8 * lane; c < C; c += 256) {
    Pack8 p = load8(inp + c);
    float f[8];
    to_float8(f, p);
    if (inp2) {
      float g[8];
      to_float8(g, load8(inp2 + c));
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        p.v[i] = __float2bfloat16(f[i] + g[i]);
        f[i] = __bfloat162float(p.v[i]);
      }
    }
    if (x_out) store8(x_out + c, p);
#pragma unroll
    for (int i = 0; i < 8; ++i) s += kRms ? f[i] * f[i] : f[i];
  }
  return warp_sum(s);
}

template <bool kRms>
__global__ void norm_forward_kernel(bf16* out, float* mean, float* rstd, bf16* x_out,
                                    const bf16* inp, const bf16* inp2, const bf16* w,
                                    const bf16* b, int N, int C, float eps) {
  const int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const size_t off = size_t(row) * C;
  const float s = row_first_pass<kRms>(inp + off, inp2 ? inp2 + off : nullptr,
                                       x_out ? x_out + off : nullptr, C, lane);
  // x now lives in x_out when given (each lane re-reads what it wrote), else in inp (unfused).
  const bf16* x = x_out ? x_out + off : inp + off;
  const bf16* x2 = (inp2 && !x_out) ? inp2 + off : nullptr;  // fused but not stored: recompute
  float mu = 0, r;
  if (kRms) {
    r = rsqrtf(s / C + eps);
  } else {
    mu = s / C;
    float v = 0;
    for (int c = 8 * lane; c < C; c += 256) {
      float f[8], g[8] = {};
      to_float8(f, load8(x + c));
      if (x2) to_float8(g, load8(x2 + c));
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float xi = x2 ? __bfloat162float(__float2bfloat16(f[i] + g[i])) : f[i];
        v += (xi - mu) * (xi - mu);
      }
    }
    r = rsqrtf(warp_sum(v) / C + eps);
  }
  for (int c = 8 * lane; c < C; c += 256) {
    float f[8], g[8] = {}, wf[8], bfv[8] = {};
    to_float8(f, load8(x + c));
    if (x2) to_float8(g, load8(x2 + c));
    to_float8(wf, load8(w + c));
    if (b) to_float8(bfv, load8(b + c));
    float y[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float xi = x2 ? __bfloat162float(__float2bfloat16(f[i] + g[i])) : f[i];
      y[i] = (xi - mu) * r * wf[i] + bfv[i];
    }
    store8(out + off + c, from_float8(y));
  }
  if (lane == 0) {
    if (mean) mean[row] = mu;
    rstd[row] = r;
  }
}

template <bool kRms>
__global__ void norm_backward_input_kernel(bf16* dinp, const bf16* dout, const bf16* x,
                                           const bf16* w, const float* mean, const float* rstd,
                                           int N, int C, bool accumulate) {
  const int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const size_t off = size_t(row) * C;
  const float mu = kRms ? 0.0f : mean[row], r = rstd[row];
  float sg = 0, sgx = 0;
  for (int c = 8 * lane; c < C; c += 256) {
    float d[8], xf[8], wf[8];
    to_float8(d, load8(dout + off + c));
    to_float8(xf, load8(x + off + c));
    to_float8(wf, load8(w + c));
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float g = d[i] * wf[i];
      sg += g;
      sgx += g * (xf[i] - mu) * r;
    }
  }
  const float mg = kRms ? 0.0f : warp_sum(sg) / C, mgx = warp_sum(sgx) / C;
  for (int c = 8 * lane; c < C; c += 256) {
    float d[8], xf[8], wf[8], prev[8] = {};
    to_float8(d, load8(dout + off + c));
    to_float8(xf, load8(x + off + c));
    to_float8(wf, load8(w + c));
    if (accumulate) to_float8(prev, load8(dinp + off + c));
    float o[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = prev[i] + r * (d[i] * wf[i] - mg - (xf[i] - mu) * r * mgx);
    store8(dinp + off + c, from_float8(o));
  }
}

void check_c(const char* what, int64_t C) {
  if (C % 8 != 0) throw CudaError(std::string(what) + ": C = " + std::to_string(C) + " must be a multiple of 8");
}

}  // namespace

void layernorm_forward(bf16* out, float* mean, float* rstd, bf16* x_out, const bf16* inp,
                       const bf16* inp2, const bf16* weight, const bf16* bias, int64_t N,
                       int64_t C, float eps, Ctx& ctx) {
  check_c("layernorm_forward", C);
  norm_forward_kernel<false><<<ceil_div(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, ctx.stream>>>(
      out, mean, rstd, x_out, inp, inp2, weight, bias, int(N), int(C), eps);
  CUDA_CHECK_LAUNCH();
}

void rmsnorm_forward(bf16* out, float* rstd, bf16* x_out, const bf16* inp, const bf16* inp2,
                     const bf16* weight, int64_t N, int64_t C, float eps, Ctx& ctx) {
  check_c("rmsnorm_forward", C);
  norm_forward_kernel<true><<<ceil_div(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, ctx.stream>>>(
      out, nullptr, rstd, x_out, inp, inp2, weight, nullptr, int(N), int(C), eps);
  CUDA_CHECK_LAUNCH();
}

void layernorm_backward_input(bf16* dinp, const bf16* dout, const bf16* x, const bf16* weight,
                              const float* mean, const float* rstd, int64_t N, int64_t C,
                              bool accumulate, Ctx& ctx) {
  check_c("layernorm_backward_input", C);
  norm_backward_input_kernel<false>
      <<<ceil_div(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, ctx.stream>>>(
          dinp, dout, x, weight, mean, rstd, int(N), int(C), accumulate);
  CUDA_CHECK_LAUNCH();
}

void rmsnorm_backward_input(bf16* dinp, const bf16* dout, const bf16* x, const bf16* weight,
                            const float* rstd, int64_t N, int64_t C, bool accumulate, Ctx& ctx) {
  check_c("rmsnorm_backward_input", C);
  norm_backward_input_kernel<true>
      <<<ceil_div(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, ctx.stream>>>(
          dinp, dout, x, weight, nullptr, rstd, int(N), int(C), accumulate);
  CUDA_CHECK_LAUNCH();
}

void layernorm_backward_weight(float* dweight, float* dbias, const bf16* dout, const bf16* x,
                               const float* mean, const float* rstd, int64_t N, int64_t C,
                               bool accumulate, Ctx& ctx) {
  colsum(ColsumMode::LnW, dweight, dbias, dout, x, mean, rstd, N, C, accumulate, ctx);
}

void rmsnorm_backward_weight(float* dweight, const bf16* dout, const bf16* x, const float* rstd,
                             int64_t N, int64_t C, bool accumulate, Ctx& ctx) {
  colsum(ColsumMode::RmsW, dweight, nullptr, dout, x, nullptr, rstd, N, C, accumulate, ctx);
}

}  // namespace stp::cuda
