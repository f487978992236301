// adamw.cu: fused AdamW over fp32 master weights with the bf16 copy written in the same pass, and
// the deterministic fp64 squared gradient norm used for clipping.
//
// AdamW is stp::adamw_update's arithmetic in the same order (runtime/optimizer.cpp), one thread
// per element; the bias corrections c1, c2 are computed on the host exactly as there. The GPU may
// contract a*b+c into an FMA, so results agree with the CPU to a few fp32 ulps, not bit for bit.
// grad_sq_norm: a fixed grid (independent of the device) of fp64 block partials, then one block
// sums the partials in index order: the same bits on every run and every GPU model.
#include "model/kernels/cuda/kernels.h"

#include <cmath>

#include "model/kernels/cuda/check.h"
#include "model/kernels/cuda/common.cuh"

namespace stp::cuda {

namespace {

constexpr int kBlock = 256;
constexpr int kNormBlocks = 1024;

__global__ void adamw_kernel(float* p, bf16* p_bf16, const float* g, float* m, float* v, int64_t n,
                             float lr, float b1, float b2, float eps, float wd, float c1, float c2,
                             float grad_scale) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float gi = g[i] * grad_scale;
  const float mi = b1 * m[i] + (1.0f - b1) * gi;
  const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  const float mhat = mi / c1, vhat = vi / c2;
  const float pi = p[i] - lr * (mhat / (sqrtf(vhat) + eps) + wd * p[i]);
  p[i] = pi;
  if (p_bf16) p_bf16[i] = __float2bfloat16(pi);
}

__device__ double block_sum_double(double v, double* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  return sh[0];
}

__global__ void sq_norm_partial_kernel(double* part, const float* g, int64_t n) {
  __shared__ double sh[kBlock];
  double s = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    s += double(g[i]) * double(g[i]);
  const double t = block_sum_double(s, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = t;
}

__global__ void sq_norm_finish_kernel(double* out, const double* part, int nparts) {
  __shared__ double sh[kBlock];
  double s = 0;
  for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += part[i];
  const double t = block_sum_double(s, sh);
  if (threadIdx.x == 0) *out = t;
}

}  // namespace

void adamw_update(float* p, bf16* p_bf16, const float* g, float* m, float* v, int64_t n,
                  const AdamWHyper& h, float grad_scale, Ctx& ctx) {
  const float c1 = 1.0f - std::pow(h.beta1, float(h.t));
  const float c2 = 1.0f - std::pow(h.beta2, float(h.t));
  adamw_kernel<<<ceil_div(n, kBlock), kBlock, 0, ctx.stream>>>(
      p, p_bf16, g, m, v, n, h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, c1, c2, grad_scale);
  CUDA_CHECK_LAUNCH();
}

void grad_sq_norm(double* out, const float* g, int64_t n, Ctx& ctx) {
  double* part = reinterpret_cast<double*>(ctx.scratch(2 * kNormBlocks));
  sq_norm_partial_kernel<<<kNormBlocks, kBlock, 0, ctx.stream>>>(part, g, n);
  CUDA_CHECK_LAUNCH();
  sq_norm_finish_kernel<<<1, kBlock, 0, ctx.stream>>>(out, part, kNormBlocks);
  CUDA_CHECK_LAUNCH();
}

}  // namespace stp::cuda
