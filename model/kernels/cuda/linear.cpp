// linear.cpp: the matmul and attention entry points of kernels.h, mapped onto the engines in Ctx
// (cuBLASLt GEMMs, deterministic column sums for bias gradients, the attention dispatcher).
#include "model/kernels/cuda/colsum.h"
#include "model/kernels/cuda/kernels.h"

namespace stp::cuda {

void matmul_forward(bf16* out, const bf16* inp, const bf16* weight, const bf16* bias, int64_t N,
                    int64_t C, int64_t OC, Ctx& ctx) {
  ctx.gemm.linear_forward(out, nullptr, inp, weight, bias, N, C, OC, false, ctx.stream);
}

void matmul_backward(bf16* dinp, float* dweight, float* dbias, const bf16* dout, const bf16* inp,
                     const bf16* weight, int64_t N, int64_t C, int64_t OC, bool accumulate,
                     Ctx& ctx) {
  if (dinp) ctx.gemm.linear_backward_input(dinp, dout, weight, nullptr, N, C, OC, ctx.stream);
  if (dweight) ctx.gemm.linear_backward_weight(dweight, dout, inp, N, C, OC, accumulate, ctx.stream);
  if (dbias) colsum(ColsumMode::Sum, dbias, nullptr, dout, nullptr, nullptr, nullptr, N, OC,
                    accumulate, ctx);
}

void attention_forward(bf16* out, float* lse, const bf16* qkv, const AttnShape& s, Ctx& ctx) {
  ctx.attention.forward(out, lse, qkv, s, ctx.stream);
}

void attention_backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                        const float* lse, const AttnShape& s, Ctx& ctx) {
  ctx.attention.backward(dqkv, dout, qkv, out, lse, s, ctx.stream);
}

}  // namespace stp::cuda
