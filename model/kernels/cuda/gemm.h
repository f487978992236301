// gemm.h: every matrix product of the CUDA backend, through cuBLASLt. No hand-written GEMM.
//
// Operands are bf16, accumulation is fp32 (CUBLAS_COMPUTE_32F), outputs are bf16 (activations,
// input gradients) or fp32 (weight gradients, which accumulate into fp32 master gradients).
// All matrices are row-major as the model stores them; the row-major -> column-major mapping is
// done once, in gemm.cpp. Shapes (N = b*T tokens, C input features, OC output features):
//
//   linear_forward         out (N, OC) = inp (N, C) @ weight (OC, C)^T  [+ bias (OC)]  [GELU]
//                          with GELU the pre-activation is also written to `pre` (N, OC) for the
//                          backward (cuBLASLt's GELU_AUX epilogue: one pass instead of three).
//   linear_backward_input  dinp (N, C) = dout (N, OC) @ weight (OC, C)   [* gelu'(pre) (N, C)]
//                          the DGELU epilogue fuses the GELU backward of the *previous* layer.
//   linear_backward_weight dweight (OC, C) fp32 (+)= dout (N, OC)^T @ inp (N, C)
//                          accumulate=false writes (beta = 0), for deterministic per-micro-batch
//                          scratch; true adds (beta = 1).
//   matmul_bf16            the general row-major D (M, N) = A (M, K) @ B (K, N), for benches/tests.
//
// GELU here is the tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), which is
// what cuBLASLt's epilogues compute and what the CPU backend uses.
//
// A Gemm owns its cuBLASLt handle and a workspace; the heuristic's algorithm choice is cached per
// (shape, layout, epilogue) key, so a training step asks the heuristic once per distinct GEMM.
// Invariant of the cache: everything a Plan holds (operation, layouts, algorithm) is a function of
// GemmKey alone, so two calls share a plan only if they are the same column-major GEMM (e.g.
// matmul_bf16 (M, N, K) and linear_backward_input (N=M, C=N, OC=K) do, correctly). The per-call
// pointers (bias, GELU aux) are written onto the cached plan by every call whose epilogue reads
// them, and a call that lacks one is refused, so no call runs with another call's pointer.
// Errors (no algorithm for a shape, a bad pointer alignment, a missing epilogue pointer) throw
// CudaError naming the shape.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include <cublasLt.h>
#include <cuda_bf16.h>

#include "model/kernels/cuda/memory.h"

namespace stp::cuda {

using bf16 = __nv_bfloat16;

enum class GemmEpilogue : uint8_t { None, Bias, Gelu, GeluBias, DGelu };

// One GEMM in cuBLASLt's column-major terms: D (m, n) = op(A) (m, k) @ op(B) (k, n) [+ beta D].
struct GemmKey {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldd = 0;
  bool d_fp32 = false;
  bool accumulate = false;
  GemmEpilogue epilogue = GemmEpilogue::None;
  int64_t align = 256;  // bytes every pointer is aligned to (set by Gemm from the call's pointers)
  auto tie() const {
    return std::tie(trans_a, trans_b, m, n, k, lda, ldb, ldd, d_fp32, accumulate, epilogue, align);
  }
  bool operator<(const GemmKey& o) const { return tie() < o.tie(); }
};

class Gemm {
 public:
  explicit Gemm(DeviceAllocator& alloc, size_t workspace_bytes = size_t(64) << 20);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  void linear_forward(bf16* out, bf16* pre, const bf16* inp, const bf16* weight, const bf16* bias,
                      int64_t N, int64_t C, int64_t OC, bool gelu, cudaStream_t s);
  void linear_backward_input(bf16* dinp, const bf16* dout, const bf16* weight, const bf16* pre,
                             int64_t N, int64_t C, int64_t OC, cudaStream_t s);
  void linear_backward_weight(float* dweight, const bf16* dout, const bf16* inp, int64_t N,
                              int64_t C, int64_t OC, bool accumulate, cudaStream_t s);
  void matmul_bf16(bf16* D, const bf16* A, const bf16* B, int64_t M, int64_t N, int64_t K,
                   cudaStream_t s);

  size_t cached_plans() const { return plans_.size(); }

 private:
  struct Plan;
  struct Ptrs {
    const void* a = nullptr;
    const void* b = nullptr;
    void* d = nullptr;
    const void* bias = nullptr;
    const void* aux = nullptr;
  };
  Plan& plan_for(const GemmKey& key);
  void run(const GemmKey& key, const Ptrs& p, cudaStream_t s);

  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer<uint8_t> workspace_;
  std::map<GemmKey, std::unique_ptr<Plan>> plans_;
};

}  // namespace stp::cuda
