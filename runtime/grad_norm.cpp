// grad_norm.cpp: global-order gradient norm (contract in grad_norm.h).
#include "runtime/grad_norm.h"

#include <cmath>
#include <unordered_map>

namespace stp {

double sum_squares_f64(const float* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(x[i]) * double(x[i]);
  return s;
}

GradNormPlan::GradNormPlan(const ModelDesc& desc, const Topology& topo)
    : tp_(topo.TP), tp_rank_(topo.me.tp), dp_rank_(topo.me.dp) {
  std::unordered_map<std::string, int> seen;
  slot_by_param_.resize(desc.stages.size());
  for (size_t s = 0; s < desc.stages.size(); ++s) {
    const std::vector<ParamDesc>& ps = desc.stages[s].params;
    slot_by_param_[s].assign(ps.size(), -1);
    for (size_t k = 0; k < ps.size(); ++k) {
      if (seen.count(ps[k].name)) continue;
      seen[ps[k].name] = int(slots_.size());
      slot_by_param_[s][k] = int(slots_.size());
      slots_.push_back(GradNormSlot{ps[k].name, int(s), int(k), ps[k].shard_dim >= 0});
    }
  }
}

int GradNormPlan::slot_of(int stage, int param) const { return slot_by_param_[stage][param]; }

bool GradNormPlan::contributes(int stage, int param) const {
  const int s = slot_of(stage, param);
  if (s < 0 || dp_rank_ != 0) return false;
  return slots_[s].sharded || tp_rank_ == 0;
}

int64_t GradNormPlan::index(int stage, int param) const {
  const int s = slot_of(stage, param);
  return int64_t(s) * tp_ + (slots_[s].sharded ? tp_rank_ : 0);
}

double GradNormPlan::reduce(Communicator& comm, std::vector<double>& local, double timeout_s,
                            std::string* error) const {
  CommHandle h = comm.all_reduce(GroupKind::World, local.data(), local.data(), int64_t(local.size()),
                                 DType::F64, ReduceOp::Sum);
  CommStatus st = h.wait(timeout_s);
  if (!st.ok()) {
    *error = "gradient norm: " + st.error;
    return 0;
  }
  double total = 0;
  for (const double x : local) total += x;  // slot order, TP sub-slots in TP order
  return std::sqrt(total);
}

}  // namespace stp
