// grad_norm.h: the global gradient norm, identical on every rank and every (tp, pp, dp) layout
// (DESIGN.md, "Numerics").
//
// Every parameter of the full model gets a slot in *global parameter order*: virtual stages in
// order, each stage's parameters in its ParamDesc order, a name seen before skipped (the tied
// embedding's replica on the head stage is the same parameter). A slot holds TP sub-slots, one per
// TP rank: a TP-sharded tensor's squared norm is the sum of its shards' (sub-slot k = shard k); a
// replicated one is counted once (sub-slot 0, from TP rank 0). Only DP rank 0 fills slots (the
// gradients are identical across DP after the all-reduce). Each rank writes the squared norms of
// its own tensors, computed in fp64, into a zeroed vector; one all-reduce (sum) over the world
// fills every slot -- exactly, since each slot has a single non-zero contributor -- and every rank
// then adds the slots in order: the same fp64 operations in the same order on every rank.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "model/desc/desc.h"
#include "runtime/core/topology.h"

namespace stp {

struct GradNormSlot {
  std::string name;
  int stage = 0;      // the first stage that holds it
  int param = 0;      // index into that stage's params
  bool sharded = false;
};

class GradNormPlan {
 public:
  GradNormPlan(const ModelDesc& desc, const Topology& topo);
  const std::vector<GradNormSlot>& slots() const { return slots_; }
  // Index of parameter `param` of `stage` in slots(), or -1 when it is a replica counted elsewhere.
  int slot_of(int stage, int param) const;
  // True when this rank writes the squared norm of (stage, param).
  bool contributes(int stage, int param) const;
  // Sub-slot index in the world vector for (stage, param) written by this rank.
  int64_t index(int stage, int param) const;
  int64_t vector_size() const { return int64_t(slots_.size()) * tp_; }

  // Sums `local` (vector_size() entries, this rank's contributions, zero elsewhere) over the world
  // and returns sqrt of the ordered sum. Error in `*error` (e.g. a timeout naming the collective).
  double reduce(Communicator& comm, std::vector<double>& local, double timeout_s,
                std::string* error) const;

 private:
  std::vector<GradNormSlot> slots_;
  std::vector<std::vector<int>> slot_by_param_;  // [stage][param] -> slot or -1
  int tp_ = 1, tp_rank_ = 0, dp_rank_ = 0;
};

// Sum of squares of n floats, in fp64, in index order.
double sum_squares_f64(const float* x, int64_t n);

}  // namespace stp
