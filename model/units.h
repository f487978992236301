// units.h: the decoder split into units (model/desc/desc.h), one function per (UnitKind, pass),
// fp32 on the CPU (T = float) and in double for gradient checks (T = double).
//
// Contract:
// - A unit pass reads and writes activations only through a TensorSource, by the stage's tensor
//   table index: `produce` for the tensors the table says it produces, `read` for those that list
//   it as a reader. Anything else it needs lives in a Workspace (freed with the workspace, never
//   counted as activation memory). tests/model checks that every pass touches exactly its table
//   entries.
// - Model code never calls a collective. A pass whose UnitDesc has a CollDesc leaves a TP-partial
//   (or, for Head.max, TP-local) tensor; the caller reduces it in place before its readers run.
//   Replicated additive terms of a partial (row-parallel biases, the position embedding) are added
//   on TP rank 0 only, so the sum over ranks counts them once.
// - The design's cuts (desc.h): the residual add of the previous unit's reduced partial is the
//   first thing a forward unit does (fused into its norm); a backward unit starts by adding the
//   previous backward unit's reduced input gradient to its residual gradient `g`, and ends with its
//   own TP-partial `dx`, norm backward included.
// - Tensor layouts: stats (2N) = [mean (N) | rstd (N)] (RMSNorm leaves mean 0); loss.stats (2N) =
//   [sum-exp (N) | target logit (N)]; qkv per token = [NH_tp q heads | NKV_tp k | NKV_tp v], RoPE
//   applied; Attn.dqkv is the gradient of the GEMM output (before RoPE).
// - W passes write gradients with GEMM beta 0 (`accumulate` false: deterministic scratch) or 1.
//   One exception keeps tied embeddings right: on a stage that holds both the embedding and a tied
//   head, In.W adds to embed.weight's gradient (Head.W, which runs before it, wrote it).
// - Loss: Head.B computes dlogits = loss_scale * (softmax - onehot) and reports the micro-batch's
//   summed token loss in UnitCtx::loss_sum (identical on every TP rank). Targets of -1 (the
//   positions before a VLM's visual tokens) carry no loss and no gradient.
// - VLM (desc.h): vision units run on UnitCtx::vshape; the vision In reads UnitCtx::pixels; Merge
//   reads both shapes and the tokens.
// - Errors are values: unit_run returns "" or a message naming the stage, micro-batch, unit pass
//   and the missing tensor / parameter.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/desc/desc.h"
#include "model/params.h"
#include "runtime/core/config.h"

namespace stp {

// Shapes of one TP rank (the fixed vocabulary; _tp sizes are this rank's shard).
struct ModelShape {
  int tp = 1, tp_rank = 0;
  int64_t b = 1, T = 1, N = 1;        // micro-batch sequences, sequence length, tokens
  int64_t C = 0, HD = 0;              // hidden, head dim
  int64_t NH_tp = 0, NKV_tp = 0;      // heads of this rank
  int64_t QKV_tp = 0;                 // (NH_tp + 2*NKV_tp) * HD
  int64_t F_tp = 0, F1_tp = 0;        // ffn shard; fc1 width (2*F_tp with SwiGLU)
  int64_t V_tp = 0, vocab_start = 0;  // vocab shard [vocab_start, vocab_start + V_tp)
  bool layernorm = true, swiglu = false, rope = false, tie = false;
  bool causal = true;                 // attention mask (the vision tower: bidirectional)
  bool rope2d = false;                // the vision tower's 2-D rotary embedding (grid, merge)
  float eps = 1e-5f, theta = 10000.0f;
  // VLM. LLM shape: visual positions per sequence (1 .. vis). Vision shape: patches per side,
  // merge size, flattened patch values K (this rank's column shard: K_tp), merged visual tokens of
  // the micro-batch Nvt = N / merge^2, merger width Fm = merge^2 * C (this rank's shard: Fm_tp).
  int64_t vis = 0;
  int64_t grid = 0, merge = 1, K = 0, K_tp = 0, Nvt = 0, Fm = 0, Fm_tp = 0;
};
ModelShape model_shape(const Config& cfg, int tp_rank);
// The vision tower's shape on TP rank tp_rank (b = sequences * images, T = patches per image,
// C = vision hidden); the VLM section of model/desc/desc.h.
ModelShape vision_shape(const Config& cfg, int tp_rank);

// Activation storage of one rank, by (stage, micro-batch, tensor index).
template <typename T>
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  // Allocates (or returns, if live) the tensor's buffer of the table's element count.
  virtual T* produce(int stage, int mb, int t) = 0;
  // The live tensor's buffer, or nullptr when it is not live.
  virtual T* read(int stage, int mb, int t) = 0;
};

// Scratch of unit passes, reused across calls (grows to the largest request).
template <typename T>
class Workspace {
 public:
  T* get(int slot, int64_t n);  // slot in [0, 4)
 private:
  std::vector<T> buf_[4];
};

template <typename T>
struct UnitCtx {
  const ModelShape* shape = nullptr;
  const ModelShape* vshape = nullptr;  // vision units and Merge (VLM only)
  const StageDesc* stage = nullptr;
  StageParams<T>* params = nullptr;
  TensorSource<T>* store = nullptr;
  Workspace<T>* ws = nullptr;
  int mb = 0;
  const int* tokens = nullptr;   // (N) input ids of this micro-batch (stage 0: In.F, In.W)
  const int* targets = nullptr;  // (N) target ids (last stage: Loss.F, Head.B); -1 = no loss
  const float* pixels = nullptr; // (b*images*Np, K) flattened patches (VLM stage 0: vision In)
  float loss_scale = 1.0f;       // Head.B: d loss / d (summed token loss)
  bool accumulate = true;        // W passes: add into grads (beta 1) or overwrite (beta 0)
  double loss_sum = 0;           // out (Head.B): sum over the micro-batch's tokens of the loss
};

// Runs pass `pass` of unit `unit` of ctx.stage for micro-batch ctx.mb. "" on success.
// Passes without compute (In.F on stage > 0, Out.B: the executor receives their tensor) succeed
// without touching anything.
template <typename T>
std::string unit_run(UnitCtx<T>& ctx, int unit, UnitPass pass);

// Summed token loss of a micro-batch from the reduced Head.max and Loss.stats (after Loss.F's
// all-reduce and before Head.B frees them), over the rows of ctx.targets that are not -1. "" on
// success.
template <typename T>
std::string unit_loss_sum(UnitCtx<T>& ctx, double* loss_sum);

}  // namespace stp
