// common.cuh: device helpers shared by the .cu files of the backend: warp reductions, 16-byte
// packs of 8 bf16 (one load/store instruction per lane), launch-size arithmetic.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace stp::cuda {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Eight bf16 in one 16-byte register group.
struct alignas(16) Pack8 {
  bf16 v[8];
};

__device__ __forceinline__ Pack8 load8(const bf16* p) {
  Pack8 r;
  *reinterpret_cast<int4*>(&r) = *reinterpret_cast<const int4*>(p);
  return r;
}

__device__ __forceinline__ void store8(bf16* p, const Pack8& r) {
  *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(&r);
}

__device__ __forceinline__ void to_float8(float (&f)[8], const Pack8& r) {
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = __bfloat162float(r.v[i]);
}

__device__ __forceinline__ Pack8 from_float8(const float (&f)[8]) {
  Pack8 r;
#pragma unroll
  for (int i = 0; i < 8; ++i) r.v[i] = __float2bfloat16(f[i]);
  return r;
}

inline unsigned ceil_div(int64_t a, int64_t b) { return unsigned((a + b - 1) / b); }

// Tanh-approximation GELU, as cuBLASLt's epilogues and the CPU backend compute it.
__device__ __forceinline__ float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  const float u = k * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.0f + tanhf(u));
}

__device__ __forceinline__ float gelu_tanh_grad(float x) {
  const float k = 0.7978845608028654f;
  const float u = k * (x + 0.044715f * x * x * x);
  const float th = tanhf(u);
  const float du = k * (1.0f + 3.0f * 0.044715f * x * x);
  return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
}

}  // namespace stp::cuda

namespace stp::cuda {

// Block-wide sum / max for blockDim.x a multiple of 32 (<= 1024); every thread gets the result.
// `sh` is 32 floats of shared memory; the function synchronises before reusing it.
__device__ __forceinline__ float block_reduce(float v, float* sh, bool is_max) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  v = is_max ? warp_max(v) : warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  float r = lane < nw ? sh[lane] : (is_max ? -INFINITY : 0.0f);
  r = is_max ? warp_max(r) : warp_sum(r);
  return r;
}

}  // namespace stp::cuda
