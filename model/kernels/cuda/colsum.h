// colsum.h: deterministic column sums over tokens (bias and norm-weight gradients); see colsum.cu.
// Shapes: dout, x (N, C) bf16; mean, rstd (N) fp32; out0, out1 (C) fp32. C must be even.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

#include "model/kernels/cuda/context.h"

namespace stp::cuda {

enum class ColsumMode { Sum, LnW, RmsW };

// Sum: out0 = sum_n dout. LnW: out0 = sum dout*xhat, out1 = sum dout (out1 may be null).
// RmsW: out0 = sum dout*x*rstd. accumulate adds to out0/out1, else overwrites them.
void colsum(ColsumMode mode, float* out0, float* out1, const __nv_bfloat16* dout,
            const __nv_bfloat16* x, const float* mean, const float* rstd, int64_t N, int64_t C,
            bool accumulate, Ctx& ctx);

}  // namespace stp::cuda
