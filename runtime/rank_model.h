// rank_model.h: the model as one rank holds it -- the parameters of its virtual stages, their AdamW
// state, the step's tokens -- run unit by unit for the executor (ExecBackend).
//
// Contract:
// - Local stages: the virtual stages the placement puts on this pipeline rank, ascending. Local
//   parameter order (checkpoint shards, gradient sync spans): stages ascending, each stage's
//   parameters in its table order; identical on every rank of a TP or DP group.
// - Loss: the step's loss is the mean token loss over dp * M * b * T tokens, so Head.B's
//   loss_scale is 1 / (dp*M*b*T) and the gradients sum (over micro-batches, then DP) to the
//   gradient of that mean. Head.B reports each micro-batch's summed token loss (loss_sum()).
// - Gradient accumulation (train.deterministic, DESIGN.md "Numerics"): the W units of one
//   (stage, mb) write its contribution to scratch with GEMM beta 0 (the stage's grad buffers are
//   swapped for a scratch set during the first..last W unit of that micro-batch, O(1)), and the
//   contribution is added to the running sum in micro-batch order: a micro-batch that finishes
//   early waits in a side buffer (side_buffer_peak_bytes). Every schedule therefore adds the same
//   numbers in the same order. With deterministic off, W units add in arrival order (beta 1).
// - Tied embeddings: after the TP/DP reductions, sync_tied_local() adds the head's replica
//   gradient and the embedding's on a rank holding both (V placement, or pp = 1 with chunks),
//   embedding's + head's, both copies then equal; across ranks the trainer all-reduces over the
//   embedding group (a + b == b + a in IEEE arithmetic, so both orders agree).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/params.h"
#include "model/units.h"
#include "runtime/core/config.h"
#include "runtime/executor.h"
#include "scheduler/ir.h"

namespace stp {

// One local parameter tensor and its optimizer state.
struct LocalParam {
  int stage = 0;
  int index = 0;            // into the stage's parameter table (ParamDesc order)
  Param<float>* p = nullptr;
  std::vector<float> m, v;  // AdamW moments, p->size() each
  bool decay = false;       // two or more dims (optimizer.h)
};

class RankModel final : public ExecBackend {
 public:
  RankModel(const Config& cfg, const ModelDesc& desc, const PipelineProgram& pipe, int pp_rank,
            int tp_rank);

  const std::vector<int>& stages() const { return stages_; }
  bool holds_stage(int s) const;
  bool holds_first() const { return holds_stage(0); }
  bool holds_last() const { return holds_stage(int(desc_.stages.size()) - 1); }
  bool holds_embedding() const;  // the stage with the text embedding (stage 0, or a VLM's Merge)
  bool needs_data() const { return holds_first() || holds_embedding() || holds_last(); }
  StageParams<float>& params(int stage) { return *params_.at(stage); }
  std::vector<LocalParam>& local_params() { return local_; }
  int64_t local_elems() const;

  // Starts a step: zero gradients, clear losses and the accumulation state; `loss_scale` is
  // 1 / (tokens of the global batch).
  void begin_step(float loss_scale);
  // Token buffers (b*T) of micro-batch mb for this step: inputs (embedding stage) / targets
  // (last); a VLM's patches (b * images * Np * K, the first stage; null without a vision tower).
  int32_t* inputs(int mb) { return inputs_[size_t(mb)].data(); }
  int32_t* targets(int mb) { return targets_[size_t(mb)].data(); }
  float* pixels(int mb) { return pixels_[size_t(mb)].empty() ? nullptr : pixels_[size_t(mb)].data(); }
  // After the executor ran: every micro-batch's contribution added, nothing left waiting.
  std::string end_step() const;
  // Summed token loss of micro-batch mb (last stage holder, after its Head.B), or -1 if unknown.
  double loss_sum(int mb) const { return loss_sum_[size_t(mb)]; }
  // V placement / single rank: both replicas of a tied embedding on this rank get their sum.
  void sync_tied_local();
  // The local gradient of the tied embedding held for the head on a rank without stage 0 (looped
  // placement, last pipeline rank) or of stage 0's embedding: the buffer the trainer all-reduces
  // over the embedding group; nullptr when the model is untied or the rank holds neither.
  Param<float>* tied_embedding();
  int64_t side_buffer_peak_bytes() const { return side_peak_bytes_; }

  // ExecBackend
  std::string compute(int stage, int mb, UnitRef u, TensorStore& store) override;
  std::vector<FloatSpan> grad_sync_spans(CommGroup g) override;

 private:
  struct StageAccum {
    int w_first = -1, w_last = -1;  // first and last W unit in backward order
    int open_mb = -1;                // micro-batch whose W units write scratch now
    int next_mb = 0;                 // next micro-batch to add
    std::vector<std::vector<float>> held;                  // running sums swapped out
    std::map<int, std::vector<std::vector<float>>> early;  // side buffer
  };
  void w_begin(int stage, int mb);
  std::string w_end(int stage, int mb);
  void add_contribution(int stage, const std::vector<std::vector<float>>& c);

  const Config& cfg_;
  const ModelDesc& desc_;
  ModelShape shape_, vshape_;
  std::vector<int> stages_;
  std::map<int, std::unique_ptr<StageParams<float>>> params_;
  std::vector<LocalParam> local_;
  std::map<int, StageAccum> accum_;
  Workspace<float> ws_;
  std::vector<std::vector<int32_t>> inputs_, targets_;
  std::vector<std::vector<float>> pixels_;
  std::vector<double> loss_sum_;
  float loss_scale_ = 1.0f;
  int64_t side_bytes_ = 0, side_peak_bytes_ = 0;
};

}  // namespace stp
