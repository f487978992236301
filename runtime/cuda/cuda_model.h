// cuda_model.h: one rank's model on a CUDA device -- the bf16 twins of model/units.cpp's unit
// passes on the CUDA kernels (model/kernels/cuda/kernels.h), the device parameters and their
// optimizer state. The CUDA twin of runtime/rank_model.h, without the deterministic ordered
// accumulation (W passes add into the fp32 gradients in arrival order, GEMM beta 1: DESIGN.md's
// "at scale the mode is off"; a schedule that runs W in micro-batch order, such as 1F1B at pp 1,
// adds in the same order as the CPU).
//
// Contract:
// - Tensors: the same table and cuts as model/units.cpp; each pass reads and produces exactly its
//   table entries through the TensorSource<void> it is given (runtime/cuda/stream_executor.h).
//   Element type per tensor (cuda_tensor_fp32): the statistics "stats" (norm mean|rstd, loss
//   sum-exp|target logit), "lse" and "max" are fp32; every other tensor is bf16. A tensor's bytes
//   are the table's elements times that size.
// - Parameters: per local tensor an fp32 master, a bf16 copy (what the kernels read), an fp32
//   gradient and AdamW m, v; initialised by copying the CPU initialisation (model/params.h,
//   StageParams<float> with the run's ParamInit), so CPU and GPU runs start from the same weights.
// - Data: upload_batch() copies a micro-batch's token ids (embedding stage) and targets (last stage)
//   to the device on the compute stream; the host vectors are kept (the loss reads the targets).
// - Loss: Head.B copies the reduced row max and [sum-exp | target logit] of its micro-batch into a
//   device slot (no host synchronisation in the step); after the step's synchronisation
//   loss_sum(mb) downloads it and sums log(sumexp) + max - tlogit over the rows whose target is not
//   -1, in fp64, in row order (model/units.cpp's loss_rows_sum).
// - The vision tower is refused at construction (error()).
// - All work is enqueued on ctx.stream (the compute stream); nothing here synchronises, except
//   loss_sum(), grad_sq_norms() and download_masters(), which the trainer calls after the step.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/kernels/cuda/kernels.h"
#include "model/units.h"
#include "runtime/core/config.h"
#include "runtime/executor.h"
#include "scheduler/ir.h"

namespace stp::cuda {

bool cuda_tensor_fp32(const TensorDesc& t);
int64_t cuda_tensor_bytes(const TensorDesc& t);

struct DevParam {
  const ParamDesc* desc = nullptr;
  int stage = 0, index = 0;  // local stage, index in its parameter table
  int64_t n = 0;
  std::vector<int64_t> local_shape;
  bool decay = false;        // two or more dims (optimizer.h)
  DeviceBuffer<float> master, grad, m, v;
  DeviceBuffer<bf16> bf;
};

class CudaRankModel {
 public:
  CudaRankModel(const Config& cfg, const ModelDesc& desc, const PipelineProgram& pipe, int pp_rank,
                int tp_rank, Ctx& ctx);
  const std::string& error() const { return error_; }

  bool holds_stage(int s) const { return by_name_.count(s) > 0; }
  bool holds_last() const { return holds_stage(int(desc_.stages.size()) - 1); }
  bool holds_embedding() const;
  std::vector<std::unique_ptr<DevParam>>& params() { return params_; }
  int64_t local_elems() const;

  void begin_step(float loss_scale);  // zero gradients
  void upload_batch(int mb, const std::vector<int32_t>& inputs, const std::vector<int32_t>& targets);
  // Runs unit pass u of (stage, mb); also the V-turn hand-over copies (runtime/executor.h). "" or an error.
  std::string compute(int stage, int mb, UnitRef u, TensorSource<void>& t);
  // The gradients the end-of-step reduction all-reduces over g (TP: TP-partial ones; DP: all).
  std::vector<FloatSpan> grad_sync_spans(CommGroup g);

  // After the step's synchronisation (they synchronise the compute stream themselves).
  double loss_sum(int mb);
  std::vector<double> grad_sq_norms();  // per params() entry, fp64
  void adamw(const TrainConfig& t, int64_t step, float grad_scale);
  std::vector<float> download(const DeviceBuffer<float>& b);
  void upload(DeviceBuffer<float>& b, const std::vector<float>& h);  // synchronises
  void refresh_bf16();  // bf16 copies from the masters (after a resume)

 private:
  struct Unit;  // cuda_model.cpp: one unit pass' tensors and parameters
  std::string handover(int stage, int mb, UnitRef u, TensorSource<void>& t);

  const Config& cfg_;
  const ModelDesc& desc_;
  const PipelineProgram& pipe_;
  int pp_rank_;
  Ctx& ctx_;
  ModelShape shape_;
  std::string error_;
  std::vector<std::unique_ptr<DevParam>> params_;
  std::map<int, std::map<std::string, DevParam*>> by_name_;  // stage -> name -> param
  std::vector<DeviceBuffer<int32_t>> tokens_, targets_;       // per micro-batch (N)
  std::vector<std::vector<int32_t>> host_targets_;
  DeviceBuffer<float> loss_slots_;                            // (M, 3N): max | sumexp | tlogit
  DeviceBuffer<double> norms_;
  DeviceBuffer<bf16> ws_;                                     // unit scratch (compute stream)
  float loss_scale_ = 1.0f;
};

}  // namespace stp::cuda
