// xent.cu: vocab-parallel softmax cross-entropy on bf16 logits (see kernels.h for the pieces).
//
// One block per token row (V is tens of thousands of columns); each thread strides the row with
// 16-byte loads and the block reduces in fp32. Nothing of size (N, V) is ever stored in fp32; the
// backward overwrites the logits with their gradient. With a TP shard the caller all-reduces
// rowmax (MAX), then sumexp and tlogit (SUM) between the pieces, so every rank sees the full-vocab
// softmax denominators without gathering the logits.
// xent_fused (TP = 1) does max, sum-exp, loss and gradient in two passes over the row instead of
// four: pass 1 keeps a per-thread running (max, sum) pair (online softmax) merged across the
// block; pass 2 writes the gradient in place.
// A target < 0 marks a row without loss (kernels.h): loss 0 and a zero gradient row.
#include "model/kernels/cuda/kernels.h"

#include <string>

#include "model/kernels/cuda/check.h"
#include "model/kernels/cuda/common.cuh"

namespace stp::cuda {

namespace {

constexpr int kBlock = 512;

__global__ void row_max_kernel(float* rowmax, const bf16* logits, int64_t V) {
  __shared__ float sh[32];
  const bf16* row = logits + int64_t(blockIdx.x) * V;
  float m = -INFINITY;
  for (int64_t c = 8 * threadIdx.x; c < V; c += 8 * blockDim.x) {
    float f[8];
    to_float8(f, load8(row + c));
#pragma unroll
    for (int k = 0; k < 8; ++k) m = fmaxf(m, f[k]);
  }
  m = block_reduce(m, sh, true);
  if (threadIdx.x == 0) rowmax[blockIdx.x] = m;
}

__global__ void sumexp_kernel(float* sumexp, float* tlogit, const bf16* logits,
                              const float* rowmax, const int* targets, int64_t V,
                              int64_t vocab_start) {
  __shared__ float sh[32];
  const bf16* row = logits + int64_t(blockIdx.x) * V;
  const float m = rowmax[blockIdx.x];
  float s = 0;
  for (int64_t c = 8 * threadIdx.x; c < V; c += 8 * blockDim.x) {
    float f[8];
    to_float8(f, load8(row + c));
#pragma unroll
    for (int k = 0; k < 8; ++k) s += expf(f[k] - m);
  }
  s = block_reduce(s, sh, false);
  if (threadIdx.x == 0) {
    sumexp[blockIdx.x] = s;
    const int64_t t = int64_t(targets[blockIdx.x]) - vocab_start;
    tlogit[blockIdx.x] = (t >= 0 && t < V) ? __bfloat162float(row[t]) : 0.0f;
  }
}

__global__ void loss_kernel(float* losses, const float* rowmax, const float* sumexp,
                            const float* tlogit, const int* targets, int64_t N) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  losses[n] = (targets && targets[n] < 0) ? 0.0f : logf(sumexp[n]) + rowmax[n] - tlogit[n];
}

// The gradient row of an ignored target (< 0): zeros.
__device__ __forceinline__ void zero_grad_row(bf16* drow, int64_t V) {
  const float z[8] = {};
  for (int64_t c = 8 * threadIdx.x; c < V; c += 8 * blockDim.x) store8(drow + c, from_float8(z));
}

// dlogits = dscale * (exp(l - m) / S - [v == target]); in place allowed.
__device__ __forceinline__ void write_grad_row(bf16* drow, const bf16* row, float m, float inv_s,
                                               int64_t t, float dscale, int64_t V) {
  for (int64_t c = 8 * threadIdx.x; c < V; c += 8 * blockDim.x) {
    float f[8];
    to_float8(f, load8(row + c));
#pragma unroll
    for (int k = 0; k < 8; ++k) f[k] = dscale * (expf(f[k] - m) * inv_s - (c + k == t ? 1.0f : 0.0f));
    store8(drow + c, from_float8(f));
  }
}

__global__ void xent_backward_kernel(bf16* dlogits, const bf16* logits, const float* rowmax,
                                     const float* sumexp, const int* targets, float dscale,
                                     int64_t V, int64_t vocab_start) {
  const int64_t r = blockIdx.x;
  if (targets[r] < 0) {
    zero_grad_row(dlogits + r * V, V);
    return;
  }
  write_grad_row(dlogits + r * V, logits + r * V, rowmax[r], 1.0f / sumexp[r],
                 int64_t(targets[r]) - vocab_start, dscale, V);
}

__global__ void xent_fused_kernel(float* losses, bf16* logits, const int* targets, float dscale,
                                  int64_t V) {
  __shared__ float sh[32];
  bf16* row = logits + int64_t(blockIdx.x) * V;
  const int64_t t = targets[blockIdx.x];
  if (t < 0) {  // ignored row (the whole block returns: no barrier is skipped by part of it)
    if (threadIdx.x == 0) losses[blockIdx.x] = 0.0f;
    zero_grad_row(row, V);
    return;
  }
  float m = -INFINITY, s = 0;
  for (int64_t c = 8 * threadIdx.x; c < V; c += 8 * blockDim.x) {
    float f[8], cm = -INFINITY;
    to_float8(f, load8(row + c));
#pragma unroll
    for (int k = 0; k < 8; ++k) cm = fmaxf(cm, f[k]);
    const float mn = fmaxf(m, cm);
    s *= expf(m - mn);
#pragma unroll
    for (int k = 0; k < 8; ++k) s += expf(f[k] - mn);
    m = mn;
  }
  const float M = block_reduce(m, sh, true);
  const float S = block_reduce(m == -INFINITY ? 0.0f : s * expf(m - M), sh, false);
  const float tl = __bfloat162float(row[t]);
  __syncthreads();  // every thread has read row[t] before anyone overwrites it
  if (threadIdx.x == 0) losses[blockIdx.x] = logf(S) + M - tl;
  write_grad_row(row, row, M, 1.0f / S, t, dscale, V);
}

void check_v(const char* what, int64_t V) {
  if (V % 8 != 0) throw CudaError(std::string(what) + ": V = " + std::to_string(V) + " must be a multiple of 8");
}

}  // namespace

void xent_row_max(float* rowmax, const bf16* logits, int64_t N, int64_t V, Ctx& ctx) {
  check_v("xent_row_max", V);
  row_max_kernel<<<unsigned(N), kBlock, 0, ctx.stream>>>(rowmax, logits, V);
  CUDA_CHECK_LAUNCH();
}

void xent_sumexp(float* sumexp, float* tlogit, const bf16* logits, const float* rowmax,
                 const int* targets, int64_t N, int64_t V, int64_t vocab_start, Ctx& ctx) {
  check_v("xent_sumexp", V);
  sumexp_kernel<<<unsigned(N), kBlock, 0, ctx.stream>>>(sumexp, tlogit, logits, rowmax, targets,
                                                        V, vocab_start);
  CUDA_CHECK_LAUNCH();
}

void xent_loss(float* losses, const float* rowmax, const float* sumexp, const float* tlogit,
               int64_t N, const int* targets, Ctx& ctx) {
  loss_kernel<<<ceil_div(N, 256), 256, 0, ctx.stream>>>(losses, rowmax, sumexp, tlogit, targets,
                                                        N);
  CUDA_CHECK_LAUNCH();
}

void xent_backward(bf16* dlogits, const bf16* logits, const float* rowmax, const float* sumexp,
                   const int* targets, float dscale, int64_t N, int64_t V, int64_t vocab_start,
                   Ctx& ctx) {
  check_v("xent_backward", V);
  xent_backward_kernel<<<unsigned(N), kBlock, 0, ctx.stream>>>(dlogits, logits, rowmax, sumexp,
                                                               targets, dscale, V, vocab_start);
  CUDA_CHECK_LAUNCH();
}

void xent_fused(float* losses, bf16* logits_to_grad, const int* targets, float dscale, int64_t N,
                int64_t V, Ctx& ctx) {
  check_v("xent_fused", V);
  xent_fused_kernel<<<unsigned(N), kBlock, 0, ctx.stream>>>(losses, logits_to_grad, targets,
                                                            dscale, V);
  CUDA_CHECK_LAUNCH();
}

}  // namespace stp::cuda
