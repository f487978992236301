// attention.h: scaled-dot-product attention, forward and backward, on bf16 with fp32 softmax.
//
// Layouts (one TP rank; QKV = (NH + 2*NKV) * HD):
//   qkv  (B, T, QKV) bf16   per token: NH query heads, then NKV key heads, then NKV value heads,
//                           each HD contiguous (the column-parallel QKV GEMM's output, RoPE applied)
//   out  (B, T, NH*HD) bf16 head h at columns [h*HD, (h+1)*HD)
//   lse  (B, NH, T) fp32    natural-log logsumexp of the scaled scores of each query row
//   dqkv (B, T, QKV) bf16   written, not accumulated
// GQA: query head h reads key/value head h / (NH / NKV). Scale 1/sqrt(HD). `causal` masks keys
// after the query (top-left aligned: query t sees keys 0..t).
//
// Attention (the dispatcher) runs cuDNN's fused SDPA through the cuDNN frontend graph API, one
// graph per (shape, causal, pass, deterministic) built on first use and cached. If cuDNN refuses a
// shape (or the frontend is not compiled in) it logs one warning line naming the shape and the
// reason and runs the plain CUDA kernels below for that shape from then on: never silently.
// `deterministic` asks cuDNN for its deterministic backward (train.deterministic); the plain
// kernels are always deterministic (no atomics).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "model/kernels/cuda/memory.h"

namespace stp::cuda {

struct AttnShape {
  int64_t B = 1, T = 1, NH = 1, NKV = 1, HD = 64;
  bool causal = true;
  int64_t qkv_width() const { return (NH + 2 * NKV) * HD; }
  std::string to_string() const;
};

enum class AttnBackend { Cudnn, Plain };
const char* attn_backend_name(AttnBackend b);

// Checks what both backends require (NH % NKV == 0, HD % 8 == 0, HD <= 256); "" when fine.
std::string attention_shape_error(const AttnShape& s);

class Attention {
 public:
  Attention(DeviceAllocator& alloc, bool deterministic);
  ~Attention();
  Attention(const Attention&) = delete;
  Attention& operator=(const Attention&) = delete;

  // Tests and the bench set this to compare the two backends on one shape.
  void set_force_plain(bool v) { force_plain_ = v; }

  AttnBackend forward(__nv_bfloat16* out, float* lse, const __nv_bfloat16* qkv, const AttnShape& s,
                      cudaStream_t stream);
  AttnBackend backward(__nv_bfloat16* dqkv, const __nv_bfloat16* dout, const __nv_bfloat16* qkv,
                       const __nv_bfloat16* out, const float* lse, const AttnShape& s,
                       cudaStream_t stream);

 private:
  struct CudnnState;  // cuDNN handle and graph caches (attention_cudnn.cpp)
  DeviceAllocator& alloc_;
  bool deterministic_;
  bool force_plain_ = false;
  std::unique_ptr<CudnnState> cudnn_;
  DeviceBuffer<float> scratch_;  // plain backward's row dot products (B, NH, T)
};

// The plain kernels (attention_plain.cu). `scratch` holds B*NH*T floats.
void attention_forward_plain(__nv_bfloat16* out, float* lse, const __nv_bfloat16* qkv,
                             const AttnShape& s, cudaStream_t stream);
void attention_backward_plain(__nv_bfloat16* dqkv, const __nv_bfloat16* dout,
                              const __nv_bfloat16* qkv, const __nv_bfloat16* out, const float* lse,
                              float* scratch, const AttnShape& s, cudaStream_t stream);

}  // namespace stp::cuda
