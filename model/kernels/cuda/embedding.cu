// embedding.cu: vocab-parallel token embedding (+ learned positions), forward and backward.
//
// Forward: one thread per 8 columns of a token: out = wte[tok - vocab_start] (zero when the token
// is another rank's; the TP all-reduce completes the sum) + wpe[n % T].
// Backward, deterministic without atomics: (token, n) pairs are radix-sorted by token (cub; the
// sort is stable, so equal tokens keep ascending n), then the first sorted position of each run
// of equal tokens sums that run's dout rows in n order and adds the sum to its dwte row. The same
// inputs always give the same bits, whatever the schedule. Positions: dwpe[t] += sum_b dout[b, t]
// in b order.
#include "model/kernels/cuda/kernels.h"

#include <cub/cub.cuh>

#include <string>

#include "model/kernels/cuda/check.h"
#include "model/kernels/cuda/common.cuh"

namespace stp::cuda {

namespace {

constexpr int kBlock = 256;

__global__ void embedding_forward_kernel(bf16* out, const int* tokens, const bf16* wte,
                                         const bf16* wpe, int64_t N, int64_t T, int64_t C,
                                         int64_t vocab_start, int64_t V) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, per_row = C / 8;
  if (i >= N * per_row) return;
  const int64_t n = i / per_row, c = (i % per_row) * 8;
  const int64_t row = int64_t(tokens[n]) - vocab_start;
  float f[8] = {};
  if (row >= 0 && row < V) to_float8(f, load8(wte + row * C + c));
  if (wpe) {
    float p[8];
    to_float8(p, load8(wpe + (n % T) * C + c));
#pragma unroll
    for (int k = 0; k < 8; ++k) f[k] += p[k];
  }
  store8(out + n * C + c, from_float8(f));
}

__global__ void iota_kernel(int* v, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) v[i] = int(i);
}

// Block i handles sorted position i if it starts a run of equal tokens in this shard.
__global__ void embedding_scatter_kernel(float* dwte, const bf16* dout, const int* keys,
                                         const int* idx, int64_t N, int64_t C,
                                         int64_t vocab_start, int64_t V) {
  const int64_t i = blockIdx.x;
  const int tok = keys[i];
  if (i > 0 && keys[i - 1] == tok) return;
  const int64_t row = int64_t(tok) - vocab_start;
  if (row < 0 || row >= V) return;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float s = 0;
    for (int64_t j = i; j < N && keys[j] == tok; ++j) s += __bfloat162float(dout[idx[j] * C + c]);
    dwte[row * C + c] += s;
  }
}

__global__ void embedding_pos_kernel(float* dwpe, const bf16* dout, int64_t B, int64_t T,
                                     int64_t C) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * C) return;
  float s = 0;
  for (int64_t b = 0; b < B; ++b) s += __bfloat162float(dout[b * T * C + i]);
  dwpe[i] += s;
}

}  // namespace

void embedding_forward(bf16* out, const int* tokens, const bf16* wte, const bf16* wpe, int64_t N,
                       int64_t T, int64_t C, int64_t vocab_start, int64_t V, Ctx& ctx) {
  if (C % 8 != 0) throw CudaError("embedding_forward: C = " + std::to_string(C) + " must be a multiple of 8");
  embedding_forward_kernel<<<ceil_div(N * C / 8, kBlock), kBlock, 0, ctx.stream>>>(
      out, tokens, wte, wpe, N, T, C, vocab_start, V);
  CUDA_CHECK_LAUNCH();
}

void embedding_backward(float* dwte, float* dwpe, const bf16* dout, const int* tokens, int64_t N,
                        int64_t T, int64_t C, int64_t vocab_start, int64_t V, Ctx& ctx) {
  DeviceBuffer<int> buf(ctx.alloc, size_t(3 * N));  // idx_in, keys_out, idx_out
  int* idx_in = buf.data();
  int* keys = buf.data() + N;
  int* idx = buf.data() + 2 * N;
  iota_kernel<<<ceil_div(N, kBlock), kBlock, 0, ctx.stream>>>(idx_in, N);
  CUDA_CHECK_LAUNCH();
  size_t temp = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp, tokens, keys, idx_in, idx, N, 0,
                                             sizeof(int) * 8, ctx.stream));
  DeviceBuffer<uint8_t> tmp(ctx.alloc, temp);
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(tmp.data(), temp, tokens, keys, idx_in, idx, N, 0,
                                             sizeof(int) * 8, ctx.stream));
  embedding_scatter_kernel<<<unsigned(N), kBlock, 0, ctx.stream>>>(dwte, dout, keys, idx, N, C,
                                                                   vocab_start, V);
  CUDA_CHECK_LAUNCH();
  if (dwpe) {
    embedding_pos_kernel<<<ceil_div(T * C, kBlock), kBlock, 0, ctx.stream>>>(dwpe, dout, N / T, T, C);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace stp::cuda
