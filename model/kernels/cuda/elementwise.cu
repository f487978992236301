// elementwise.cu: GELU, SwiGLU, residual add, fp32<->bf16 casts, RoPE.
//
// Memory-bound: each thread moves 8 bf16 (16 bytes) per access and the grid covers the tensor
// once (n % 8 == 0, checked). Math is fp32; results are rounded to bf16 once.
//   GELU: tanh approximation (common.cuh), matching cuBLASLt's GELU epilogue and the CPU backend.
//   SwiGLU: inp row = [gate (F) | up (F)]; out = silu(gate) * up, silu(g) = g / (1 + exp(-g)).
//   RoPE: rotate-half pairs (i, i + HD/2), angle t * theta^(-2i/HD), applied in place to the
//   NH query and NKV key heads of each token of qkv; the backward applies the inverse rotation.
//   2-D RoPE (vision): the same rotation; the angle of pair i is the patch's row (i < HD/4) or
//   column (i >= HD/4) times theta^(-4(i mod HD/4)/HD). One kernel, templated on the angle.
#include "model/kernels/cuda/kernels.h"

#include <cmath>
#include <string>

#include "model/kernels/cuda/check.h"
#include "model/kernels/cuda/common.cuh"

namespace stp::cuda {

namespace {

constexpr int kBlock = 256;

void check_mult8(const char* what, int64_t n) {
  if (n % 8 != 0)
    throw CudaError(std::string(what) + ": size " + std::to_string(n) + " must be a multiple of 8");
}

__global__ void gelu_forward_kernel(bf16* out, const bf16* inp, int64_t n8) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n8) return;
  float f[8];
  to_float8(f, load8(inp + 8 * i));
#pragma unroll
  for (int k = 0; k < 8; ++k) f[k] = gelu_tanh(f[k]);
  store8(out + 8 * i, from_float8(f));
}

__global__ void gelu_backward_kernel(bf16* dinp, const bf16* inp, const bf16* dout, int64_t n8) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n8) return;
  float x[8], d[8];
  to_float8(x, load8(inp + 8 * i));
  to_float8(d, load8(dout + 8 * i));
#pragma unroll
  for (int k = 0; k < 8; ++k) d[k] *= gelu_tanh_grad(x[k]);
  store8(dinp + 8 * i, from_float8(d));
}

// One thread per 8 output columns of one row.
__global__ void swiglu_forward_kernel(bf16* out, const bf16* inp, int64_t N, int64_t F) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, per_row = F / 8;
  if (i >= N * per_row) return;
  const int64_t row = i / per_row, c = (i % per_row) * 8;
  float g[8], u[8];
  to_float8(g, load8(inp + row * 2 * F + c));
  to_float8(u, load8(inp + row * 2 * F + F + c));
#pragma unroll
  for (int k = 0; k < 8; ++k) g[k] = g[k] / (1.0f + expf(-g[k])) * u[k];
  store8(out + row * F + c, from_float8(g));
}

__global__ void swiglu_backward_kernel(bf16* dinp, const bf16* inp, const bf16* dout, int64_t N,
                                       int64_t F) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, per_row = F / 8;
  if (i >= N * per_row) return;
  const int64_t row = i / per_row, c = (i % per_row) * 8;
  float g[8], u[8], d[8], dg[8], du[8];
  to_float8(g, load8(inp + row * 2 * F + c));
  to_float8(u, load8(inp + row * 2 * F + F + c));
  to_float8(d, load8(dout + row * F + c));
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const float sig = 1.0f / (1.0f + expf(-g[k]));
    du[k] = d[k] * g[k] * sig;
    dg[k] = d[k] * u[k] * sig * (1.0f + g[k] * (1.0f - sig));
  }
  store8(dinp + row * 2 * F + c, from_float8(dg));
  store8(dinp + row * 2 * F + F + c, from_float8(du));
}

__global__ void residual_kernel(bf16* out, const bf16* a, const bf16* b, int64_t n8) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n8) return;
  float x[8], y[8];
  to_float8(x, load8(a + 8 * i));
  to_float8(y, load8(b + 8 * i));
#pragma unroll
  for (int k = 0; k < 8; ++k) x[k] += y[k];
  store8(out + 8 * i, from_float8(x));
}

__global__ void cast_to_bf16_kernel(bf16* out, const float* inp, int64_t n8) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n8) return;
  const float4 a = reinterpret_cast<const float4*>(inp)[2 * i];
  const float4 b = reinterpret_cast<const float4*>(inp)[2 * i + 1];
  const float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
  store8(out + 8 * i, from_float8(f));
}

__global__ void cast_to_f32_kernel(float* out, const bf16* inp, int64_t n8) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n8) return;
  float f[8];
  to_float8(f, load8(inp + 8 * i));
  reinterpret_cast<float4*>(out)[2 * i] = make_float4(f[0], f[1], f[2], f[3]);
  reinterpret_cast<float4*>(out)[2 * i + 1] = make_float4(f[4], f[5], f[6], f[7]);
}

// Pair i's angle at position t of a sequence (the CPU twin's angle(t, i)), fp32.
struct Rope1dAngle {
  float theta;
  int HD;
  __device__ float operator()(int64_t t, int i) const {
    return float(t) * powf(theta, -2.0f * float(i) / float(HD));
  }
};

// Patch p's (row, col) from the merge-window order; pairs i < HD/4 turn with the row, the rest
// with the column, at theta^(-4j/HD), j = i mod HD/4.
struct Rope2dAngle {
  float theta;
  int HD, grid, merge;
  __device__ float operator()(int64_t p, int i) const {
    const int quarter = HD / 4, mm = merge * merge, wi = int(p / mm), q = int(p % mm);
    const int pos = i < quarter ? (wi / (grid / merge)) * merge + q / merge
                                : (wi % (grid / merge)) * merge + q % merge;
    return float(pos) * powf(theta, -4.0f * float(i % quarter) / float(HD));
  }
};

// One thread per (token, head, pair i < HD/2) of the NH + NKV rotated heads of qkv (B, T, QKV).
// sign = -1 inverts.
template <typename Angle>
__global__ void rope_kernel(bf16* qkv, int64_t B, int64_t T, int NH, int NKV, int HD, Angle angle,
                            float sign) {
  const int half = HD / 2, heads = NH + NKV;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * T * heads * half) return;
  const int i = int(idx % half), h = int((idx / half) % heads);
  const int64_t tok = idx / (int64_t(half) * heads), t = tok % T;
  float s, c;
  sincosf(angle(t, i), &s, &c);
  s *= sign;
  bf16* p = qkv + tok * int64_t(NH + 2 * NKV) * HD + int64_t(h) * HD;
  const float x1 = __bfloat162float(p[i]), x2 = __bfloat162float(p[i + half]);
  p[i] = __float2bfloat16(x1 * c - x2 * s);
  p[i + half] = __float2bfloat16(x2 * c + x1 * s);
}

template <typename Angle>
void rope_launch(bf16* qkv, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HD,
                 const Angle& angle, float sign, Ctx& ctx) {
  const int64_t n = B * T * (NH + NKV) * (HD / 2);
  rope_kernel<<<ceil_div(n, kBlock), kBlock, 0, ctx.stream>>>(qkv, B, T, int(NH), int(NKV),
                                                              int(HD), angle, sign);
  CUDA_CHECK_LAUNCH();
}

void check_rope2d(const char* what, int64_t Np, int64_t HD, int64_t grid, int64_t merge) {
  using std::to_string;
  std::string bad;
  if (HD % 4 != 0)
    bad = "HD = " + to_string(HD) + " must be a multiple of 4";
  else if (merge < 1 || grid % merge != 0)
    bad = "grid = " + to_string(grid) + " must be a multiple of merge = " + to_string(merge);
  else if (Np != grid * grid)
    bad = "Np = " + to_string(Np) + " must be grid^2 = " + to_string(grid * grid);
  if (!bad.empty()) throw CudaError(std::string(what) + ": " + bad);
}

}  // namespace

void gelu_forward(bf16* out, const bf16* inp, int64_t n, Ctx& ctx) {
  check_mult8("gelu_forward", n);
  gelu_forward_kernel<<<ceil_div(n / 8, kBlock), kBlock, 0, ctx.stream>>>(out, inp, n / 8);
  CUDA_CHECK_LAUNCH();
}

void gelu_backward(bf16* dinp, const bf16* inp, const bf16* dout, int64_t n, Ctx& ctx) {
  check_mult8("gelu_backward", n);
  gelu_backward_kernel<<<ceil_div(n / 8, kBlock), kBlock, 0, ctx.stream>>>(dinp, inp, dout, n / 8);
  CUDA_CHECK_LAUNCH();
}

void swiglu_forward(bf16* out, const bf16* inp, int64_t N, int64_t F, Ctx& ctx) {
  check_mult8("swiglu_forward (F)", F);
  swiglu_forward_kernel<<<ceil_div(N * F / 8, kBlock), kBlock, 0, ctx.stream>>>(out, inp, N, F);
  CUDA_CHECK_LAUNCH();
}

void swiglu_backward(bf16* dinp, const bf16* inp, const bf16* dout, int64_t N, int64_t F, Ctx& ctx) {
  check_mult8("swiglu_backward (F)", F);
  swiglu_backward_kernel<<<ceil_div(N * F / 8, kBlock), kBlock, 0, ctx.stream>>>(dinp, inp, dout, N, F);
  CUDA_CHECK_LAUNCH();
}

void residual_forward(bf16* out, const bf16* a, const bf16* b, int64_t n, Ctx& ctx) {
  check_mult8("residual_forward", n);
  residual_kernel<<<ceil_div(n / 8, kBlock), kBlock, 0, ctx.stream>>>(out, a, b, n / 8);
  CUDA_CHECK_LAUNCH();
}

void cast_f32_to_bf16(bf16* out, const float* inp, int64_t n, Ctx& ctx) {
  check_mult8("cast_f32_to_bf16", n);
  cast_to_bf16_kernel<<<ceil_div(n / 8, kBlock), kBlock, 0, ctx.stream>>>(out, inp, n / 8);
  CUDA_CHECK_LAUNCH();
}

void cast_bf16_to_f32(float* out, const bf16* inp, int64_t n, Ctx& ctx) {
  check_mult8("cast_bf16_to_f32", n);
  cast_to_f32_kernel<<<ceil_div(n / 8, kBlock), kBlock, 0, ctx.stream>>>(out, inp, n / 8);
  CUDA_CHECK_LAUNCH();
}

void rope_forward(bf16* qkv, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HD,
                  float theta, Ctx& ctx) {
  if (HD % 2 != 0) throw CudaError("rope_forward: HD = " + std::to_string(HD) + " must be even");
  rope_launch(qkv, B, T, NH, NKV, HD, Rope1dAngle{theta, int(HD)}, 1.0f, ctx);
}

void rope_backward(bf16* dqkv, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HD,
                   float theta, Ctx& ctx) {
  if (HD % 2 != 0) throw CudaError("rope_backward: HD = " + std::to_string(HD) + " must be even");
  rope_launch(dqkv, B, T, NH, NKV, HD, Rope1dAngle{theta, int(HD)}, -1.0f, ctx);
}

void rope2d_forward(bf16* qkv, int64_t B, int64_t Np, int64_t NH, int64_t NKV, int64_t HD,
                    int64_t grid, int64_t merge, float theta, Ctx& ctx) {
  check_rope2d("rope2d_forward", Np, HD, grid, merge);
  rope_launch(qkv, B, Np, NH, NKV, HD, Rope2dAngle{theta, int(HD), int(grid), int(merge)}, 1.0f,
              ctx);
}

void rope2d_backward(bf16* dqkv, int64_t B, int64_t Np, int64_t NH, int64_t NKV, int64_t HD,
                     int64_t grid, int64_t merge, float theta, Ctx& ctx) {
  check_rope2d("rope2d_backward", Np, HD, grid, merge);
  rope_launch(dqkv, B, Np, NH, NKV, HD, Rope2dAngle{theta, int(HD), int(grid), int(merge)}, -1.0f,
              ctx);
}

}  // namespace stp::cuda
