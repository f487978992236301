// attention_plain.cu: the plain CUDA attention kernels (layouts in attention.h).
//
// The fallback for shapes cuDNN refuses, and the independent second implementation the tests
// compare cuDNN against. One warp per query row (forward, dq) or per key row (dk, dv); each lane
// owns the head dims d = lane + 32*i, so HD <= 32 * kMaxPerLane = 256. Forward uses the online
// softmax (running max m and sum l), so no (T, T) matrix is stored. The backward recomputes the
// probabilities from lse in two kernels, one over queries (dq) and one over keys (dk, dv, summed
// over the query heads of a GQA group), so nothing is accumulated with atomics: deterministic.
// O(T^2 * HD) work per head with a warp reduction per (query, key): a correctness path, far slower
// than cuDNN's fused kernel at T = 2048.
#include "model/kernels/cuda/attention.h"

#include <cmath>

#include "model/kernels/cuda/check.h"

namespace stp::cuda {

namespace {

constexpr int kMaxPerLane = 8;
constexpr int kBlock = 128;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

struct Dims {
  int B, T, NH, NKV, HD, QKV, rep;
  float scale;
  bool causal;
};

Dims dims_of(const AttnShape& s) {
  Dims d;
  d.B = int(s.B), d.T = int(s.T), d.NH = int(s.NH), d.NKV = int(s.NKV), d.HD = int(s.HD);
  d.QKV = int(s.qkv_width());
  d.rep = d.NH / d.NKV;
  d.scale = 1.0f / std::sqrt(float(s.HD));
  d.causal = s.causal;
  return d;
}

__device__ __forceinline__ void load_row(float (&r)[kMaxPerLane], const __nv_bfloat16* p, int HD,
                                         int lane) {
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    r[i] = d < HD ? __bfloat162float(p[d]) : 0.0f;
  }
}

__device__ __forceinline__ float dot_row(const float (&r)[kMaxPerLane], const __nv_bfloat16* p,
                                         int HD, int lane) {
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < HD) s += r[i] * __bfloat162float(p[d]);
  }
  return warp_sum(s);
}

__device__ __forceinline__ void store_row(__nv_bfloat16* p, const float (&r)[kMaxPerLane],
                                          float mul, int HD, int lane) {
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < HD) p[d] = __float2bfloat16(r[i] * mul);
  }
}

// One warp per (b, h, t) query row.
__global__ void attn_fwd_kernel(__nv_bfloat16* out, float* lse, const __nv_bfloat16* qkv, Dims D) {
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (row >= D.B * D.NH * D.T) return;
  const int t = row % D.T, h = (row / D.T) % D.NH, b = row / (D.T * D.NH), g = h / D.rep;
  const __nv_bfloat16* base = qkv + size_t(b) * D.T * D.QKV;
  float q[kMaxPerLane], acc[kMaxPerLane] = {};
  load_row(q, base + size_t(t) * D.QKV + h * D.HD, D.HD, lane);
  float m = -INFINITY, l = 0.0f;
  const int jend = D.causal ? t + 1 : D.T;
  for (int j = 0; j < jend; ++j) {
    const __nv_bfloat16* kj = base + size_t(j) * D.QKV + (D.NH + g) * D.HD;
    const __nv_bfloat16* vj = kj + D.NKV * D.HD;
    const float s = dot_row(q, kj, D.HD, lane) * D.scale;
    const float mn = fmaxf(m, s), corr = expf(m - mn), p = expf(s - mn);
    l = l * corr + p;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int d = lane + 32 * i;
      acc[i] = acc[i] * corr + (d < D.HD ? p * __bfloat162float(vj[d]) : 0.0f);
    }
    m = mn;
  }
  store_row(out + (size_t(b) * D.T + t) * D.NH * D.HD + h * D.HD, acc, 1.0f / l, D.HD, lane);
  if (lane == 0) lse[row] = m + logf(l);  // row = (b*NH + h)*T + t, lse's layout
}

// delta[(b*NH + h)*T + t] = dO . O for each query row (the softmax backward's row term).
__global__ void attn_delta_kernel(float* delta, const __nv_bfloat16* dout,
                                  const __nv_bfloat16* out, Dims D) {
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (row >= D.B * D.NH * D.T) return;
  const int t = row % D.T, h = (row / D.T) % D.NH, b = row / (D.T * D.NH);
  const size_t off = (size_t(b) * D.T + t) * D.NH * D.HD + h * D.HD;
  float o[kMaxPerLane];
  load_row(o, out + off, D.HD, lane);
  const float s = dot_row(o, dout + off, D.HD, lane);
  if (lane == 0) delta[row] = s;
}

// One warp per query row: dq = scale * sum_j p_tj (dO.v_j - delta_t) k_j.
__global__ void attn_dq_kernel(__nv_bfloat16* dqkv, const __nv_bfloat16* dout,
                               const __nv_bfloat16* qkv, const float* lse, const float* delta,
                               Dims D) {
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (row >= D.B * D.NH * D.T) return;
  const int t = row % D.T, h = (row / D.T) % D.NH, b = row / (D.T * D.NH), g = h / D.rep;
  const __nv_bfloat16* base = qkv + size_t(b) * D.T * D.QKV;
  float q[kMaxPerLane], dO[kMaxPerLane], dq[kMaxPerLane] = {};
  load_row(q, base + size_t(t) * D.QKV + h * D.HD, D.HD, lane);
  load_row(dO, dout + (size_t(b) * D.T + t) * D.NH * D.HD + h * D.HD, D.HD, lane);
  const float L = lse[row], dl = delta[row];
  const int jend = D.causal ? t + 1 : D.T;
  for (int j = 0; j < jend; ++j) {
    const __nv_bfloat16* kj = base + size_t(j) * D.QKV + (D.NH + g) * D.HD;
    const __nv_bfloat16* vj = kj + D.NKV * D.HD;
    const float p = expf(dot_row(q, kj, D.HD, lane) * D.scale - L);
    const float ds = p * (dot_row(dO, vj, D.HD, lane) - dl);
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < D.HD) dq[i] += ds * __bfloat162float(kj[d]);
    }
  }
  store_row(dqkv + (size_t(b) * D.T + t) * D.QKV + h * D.HD, dq, D.scale, D.HD, lane);
}

// One warp per (b, g, j) key row: dv = sum p dO, dk = scale * sum ds q, over the group's heads.
__global__ void attn_dkv_kernel(__nv_bfloat16* dqkv, const __nv_bfloat16* dout,
                                const __nv_bfloat16* qkv, const float* lse, const float* delta,
                                Dims D) {
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (row >= D.B * D.NKV * D.T) return;
  const int j = row % D.T, g = (row / D.T) % D.NKV, b = row / (D.T * D.NKV);
  const __nv_bfloat16* base = qkv + size_t(b) * D.T * D.QKV;
  float k[kMaxPerLane], v[kMaxPerLane], dk[kMaxPerLane] = {}, dv[kMaxPerLane] = {};
  load_row(k, base + size_t(j) * D.QKV + (D.NH + g) * D.HD, D.HD, lane);
  load_row(v, base + size_t(j) * D.QKV + (D.NH + D.NKV + g) * D.HD, D.HD, lane);
  for (int h = g * D.rep; h < (g + 1) * D.rep; ++h) {
    const int tbeg = D.causal ? j : 0;
    for (int t = tbeg; t < D.T; ++t) {
      const __nv_bfloat16* qt = base + size_t(t) * D.QKV + h * D.HD;
      const __nv_bfloat16* dOt = dout + (size_t(b) * D.T + t) * D.NH * D.HD + h * D.HD;
      const int lrow = (b * D.NH + h) * D.T + t;
      const float p = expf(dot_row(k, qt, D.HD, lane) * D.scale - lse[lrow]);
      const float ds = p * (dot_row(v, dOt, D.HD, lane) - delta[lrow]);
#pragma unroll
      for (int i = 0; i < kMaxPerLane; ++i) {
        const int d = lane + 32 * i;
        if (d < D.HD) {
          dv[i] += p * __bfloat162float(dOt[d]);
          dk[i] += ds * __bfloat162float(qt[d]);
        }
      }
    }
  }
  __nv_bfloat16* dst = dqkv + (size_t(b) * D.T + j) * D.QKV;
  store_row(dst + (D.NH + g) * D.HD, dk, D.scale, D.HD, lane);
  store_row(dst + (D.NH + D.NKV + g) * D.HD, dv, 1.0f, D.HD, lane);
}

unsigned blocks_for_rows(int64_t rows) { return unsigned((rows * 32 + kBlock - 1) / kBlock); }

}  // namespace

void attention_forward_plain(__nv_bfloat16* out, float* lse, const __nv_bfloat16* qkv,
                             const AttnShape& s, cudaStream_t stream) {
  const Dims D = dims_of(s);
  attn_fwd_kernel<<<blocks_for_rows(s.B * s.NH * s.T), kBlock, 0, stream>>>(out, lse, qkv, D);
  CUDA_CHECK_LAUNCH();
}

void attention_backward_plain(__nv_bfloat16* dqkv, const __nv_bfloat16* dout,
                              const __nv_bfloat16* qkv, const __nv_bfloat16* out, const float* lse,
                              float* scratch, const AttnShape& s, cudaStream_t stream) {
  const Dims D = dims_of(s);
  const unsigned q_blocks = blocks_for_rows(s.B * s.NH * s.T);
  attn_delta_kernel<<<q_blocks, kBlock, 0, stream>>>(scratch, dout, out, D);
  CUDA_CHECK_LAUNCH();
  attn_dq_kernel<<<q_blocks, kBlock, 0, stream>>>(dqkv, dout, qkv, lse, scratch, D);
  CUDA_CHECK_LAUNCH();
  attn_dkv_kernel<<<blocks_for_rows(s.B * s.NKV * s.T), kBlock, 0, stream>>>(dqkv, dout, qkv, lse,
                                                                            scratch, D);
  CUDA_CHECK_LAUNCH();
}

}  // namespace stp::cuda
