// reference.h: the single-process reference training step -- every unit of every virtual stage of
// the model, for every TP rank of an in-process TP group, run one after another with the TP
// collectives done in-process (sum / max over the ranks' buffers) and the PP hand-over done by
// copy. The distributed tests and the training test use it as the independent single-rank answer.
//
// Contract:
// - Order per micro-batch: F of stages 0..S-1 (units in forward order), then per stage S-1..0 the
//   unsplit backward of the lowering's BW rule (per unit in backward order: B_u then W_u). Weight
//   gradients accumulate (beta 1) over micro-batches in micro-batch order.
// - Loss: the mean token loss over all micro-batches (Head.B's loss_scale = 1 / the number of
//   targets that are not -1, N * M for an LLM).
// - End of backward: TP-partial gradients (ParamDesc::tp_partial_grad) are summed over the TP
//   ranks; with tied embeddings on S > 1 stages the two embed.weight replicas' gradients are
//   summed.
// - Optimizer (reference_step): global gradient norm in double, each full parameter counted once;
//   clip factor min(1, grad_clip / (norm + 1e-6)) when train.grad_clip > 0; AdamW as
//   runtime/optimizer.h (weight decay on tensors of 2 or more dims), t = the step count from 1.
// - Activation memory: each TP rank has its own ActivationStore with the lowering's free rule;
//   RefStats::peak_act_bytes is TP rank 0's high-water mark.
// - Errors are values ("" = ok); no exception leaves this API.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/activations.h"
#include "model/params.h"
#include "model/units.h"
#include "runtime/core/config.h"

namespace stp {

struct MicroBatch {
  std::vector<int> tokens;   // (N) = (b, T) input ids
  std::vector<int> targets;  // (N) next-token ids; -1 = no loss (a VLM's visual positions)
  std::vector<float> pixels; // VLM: (b * images * Np, K) flattened patches; empty otherwise
};

template <typename T>
struct Reference {
  Config cfg;
  ModelDesc desc;                                   // tp = cfg.parallel.tp, one entry per stage
  std::vector<ModelShape> shapes;                   // [tp rank]
  std::vector<ModelShape> vshapes;                  // [tp rank] the vision tower's (VLM only)
  std::vector<std::vector<StageParams<T>>> params;  // [tp rank][stage]
  std::vector<std::vector<std::vector<std::vector<T>>>> adam_m, adam_v;  // [tp][stage][param]
  std::vector<std::unique_ptr<ActivationStore<T>>> stores;               // [tp rank]
  std::vector<Workspace<T>> ws;                                          // [tp rank]
  int64_t step = 0;                                                      // optimizer steps taken
  // Deterministic mode (DESIGN.md "Numerics"): W passes overwrite (beta 0) a scratch gradient
  // and each micro-batch's contribution is added to the accumulated gradient in micro-batch order.
  bool w_overwrite = false;
};

struct RefStats {
  double loss = 0;             // mean token loss
  double grad_norm = 0;        // global gradient norm before clipping
  int64_t peak_act_bytes = 0;  // TP rank 0
};

// Builds the model for cfg (cfg.parallel.tp in-process ranks); layer_split gives the layers of each
// virtual stage (empty = one stage with every layer).
template <typename T>
std::string reference_init(Reference<T>& ref, const Config& cfg, std::vector<int> layer_split,
                           const ParamInit& init);
// Forward and backward over the micro-batches; gradients (grads zeroed first) are left in params.
template <typename T>
std::string reference_forward_backward(Reference<T>& ref, const std::vector<MicroBatch>& mbs,
                                       RefStats* stats);
// reference_forward_backward, then clipping and one AdamW update with learning rate `lr`.
template <typename T>
std::string reference_step(Reference<T>& ref, const std::vector<MicroBatch>& mbs, double lr,
                           RefStats* stats);
// Forward only: the full-vocabulary logits (N, vocab) of one micro-batch (TP shards gathered).
template <typename T>
std::string reference_logits(Reference<T>& ref, const MicroBatch& mb, std::vector<double>* logits);
// The full model (or its gradients) in our naming, gathered by the sharding table; each tied
// replica appears once.
template <typename T>
FullState reference_full_state(const Reference<T>& ref, bool grad);
// Loads full tensors into every shard; an error names a missing or mis-shaped tensor.
template <typename T>
std::string reference_load_full_state(Reference<T>& ref, const FullState& state);

}  // namespace stp
