// gpu_block.h: a transformer block and a single-GPU language model built directly from the CUDA
// kernels, for the whole-layer harness test and the one-step training benchmark.
//
// This is NOT the product's model path (model/ units under the executor own that); it mirrors one
// training step of the same architecture so the kernels can be checked and timed together before
// the executor drives them. Block (pre-norm, residual stream x (N, C)):
//   n1 = norm(x); qkv = n1 Wqkv^T + bqkv; rope(qkv); o = attn(qkv); a = o Wo^T + bo
//   x2 = x + a (fused into norm 2); n2 = norm(x2)
//   GELU:   g = gelu(n2 W1^T + b1)   (cuBLASLt GELU_AUX_BIAS epilogue; pre-activation kept)
//   SwiGLU: h = n2 W1^T (N, 2F); g = silu(h[:, :F]) * h[:, F:]
//   y = x2 + (g W2^T + b2)
// Parameters live in flat buffers: fp32 master, bf16 copy (what GEMMs read), fp32 gradient,
// AdamW m and v; matrices first, then vectors, so AdamW is two launches (decay / no decay).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/kernels/cuda/kernels.h"

namespace stp::cuda::bench {

struct ModelSpec {
  std::string name;
  int64_t L = 1, C = 64, NH = 2, NKV = 2, F = 256, V = 512, T = 64, B = 1;
  bool rms = false, swiglu = false, bias = true, rope = false, learned_pos = true;
  bool with_embedding_and_head = true;
  bool tied = false;  // LM head shares the token embedding
  int64_t HD() const { return C / NH; }
  int64_t QKV() const { return (NH + 2 * NKV) * HD(); }
  int64_t F1() const { return swiglu ? 2 * F : F; }
  int64_t N() const { return B * T; }
  int64_t layer_params() const;
  int64_t params() const;  // all trainable parameters
  // Model FLOPs of one training step (fwd + bwd): 6 * (matmul params) * tokens + causal
  // attention 6 * L * T * C * tokens (half of the dense 12 L T C, since the mask halves it).
  double step_flops() const;
};

// Offsets of one tensor in the flat parameter buffers.
struct Slot {
  int64_t off = 0, n = 0;
};

struct BlockParams {
  Slot ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
};

struct BlockActs {  // saved for the backward, per layer
  DeviceBuffer<bf16> x, n1, qkv, o, x2, n2, pre, g;
  DeviceBuffer<float> mean1, rstd1, mean2, rstd2, lse;
};

class GpuModel {
 public:
  GpuModel(const ModelSpec& spec, Ctx& ctx, uint64_t seed);
  // Parameters in the flat fp32 layout (tests set them from the CPU reference).
  std::vector<float> get_master() const;
  void set_master(const std::vector<float>& p);
  const ModelSpec& spec() const { return s_; }
  const std::vector<BlockParams>& layers() const { return layers_; }
  Slot wte, wpe, lnf_w, lnf_b, head_w;
  int64_t n_matrix = 0, n_total = 0;  // flat sizes: matrices, all

  // Block-level pieces (used by the layer test): y (N, C) from x; dx from dy.
  void block_forward(int layer, bf16* y, const bf16* x, BlockActs& a);
  void block_backward(int layer, bf16* dx, const bf16* dy, BlockActs& a);
  // One training step on tokens/targets (N each, device); returns the mean loss (synchronises).
  float train_step(const int* tokens, const int* targets, float lr, bool optimizer = true);
  std::vector<float> get_grads() const;
  void zero_grads();

  DeviceBuffer<float> master, grad, m, v;
  DeviceBuffer<bf16> wbf;

 private:
  void layout_params();
  void init_params(uint64_t seed);
  void alloc_buffers();
  void alloc_acts(BlockActs& a);
  void norm_fwd(bf16* out, float* mean, float* rstd, bf16* x_out, const bf16* in, const bf16* in2,
                const Slot& w, const Slot& b);
  void norm_bwd(bf16* dinp, const bf16* dout, const bf16* x, const float* mean, const float* rstd,
                const Slot& w, const Slot& b);
  const bf16* W(const Slot& s) const { return s.n ? wbf.data() + s.off : nullptr; }
  float* G(const Slot& s) { return s.n ? grad.data() + s.off : nullptr; }

  ModelSpec s_;
  Ctx& ctx_;
  int64_t step_ = 0;  // optimizer steps taken (AdamW bias correction)
  std::vector<BlockParams> layers_;
  std::vector<BlockActs> acts_;
  DeviceBuffer<bf16> stream_a_, stream_b_, dstream_a_, dstream_b_, dtmp_, dtmp2_, logits_, nf_, xf_;
  DeviceBuffer<float> meanf_, rstdf_, losses_;
  DeviceBuffer<double> norm_;
};

}  // namespace stp::cuda::bench
