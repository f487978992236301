// params.h: the parameters of one TP rank's virtual stages, from the sharding table (ParamDesc).
//
// Contract:
// - A Param holds this rank's shard of one ParamDesc: value and grad (T = float in the product,
//   double in gradient checks), same element count, row-major local shape.
// - Sharding: shard_dim d of the full shape is split into `tp` equal slices, part by part when the
//   tensor is fused (ParamDesc::segments); rank r holds slice r of every part, parts in order.
//   param_local_to_full() is the one place that mapping is written; shard fill and gather use it.
// - Initialisation is counter-based: the value of full element i of tensor `name` is a function of
//   (seed, name, i) only, so every (tp, pp, dp) layout starts from the same full model.
//   Default scheme (GPT-2 / Megatron): matrices and embeddings N(0, init_std), output projections
//   (attn.out, mlp.fc2) N(0, init_std / sqrt(2 * layers)), norm weights 1, biases 0.
//   `randomize_all` (tests) draws every tensor, norm weights 1 + N(0, 0.1) and biases N(0, 0.1),
//   so that a forgotten bias or norm weight changes the answer.
// - Gradients: W passes write grads with beta 0 (overwrite) or 1 (add), as the caller says.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/desc/desc.h"

namespace stp {

template <typename T>
struct Param {
  ParamDesc desc;                    // the sharding-table entry (full shape, shard dim, parts)
  std::vector<int64_t> local_shape;  // this rank's shard shape
  std::vector<T> value, grad;        // local_elems each
  int64_t size() const { return int64_t(value.size()); }
};

struct ParamInit {
  uint64_t seed = 1234;
  double init_std = 0.02;
  int layers = 1;              // for the output-projection scaling
  bool randomize_all = false;  // tests: no zero biases, no unit norm weights
};

// The initialisation a run config asks for (train.seed, model.init_std, model.layers).
inline ParamInit param_init_of(const Config& cfg) {
  ParamInit init;
  init.seed = cfg.train.seed;
  init.init_std = cfg.model.init_std;
  init.layers = cfg.model.layers;
  return init;
}

// The parameters of one virtual stage on one TP rank.
template <typename T>
class StageParams {
 public:
  StageParams() = default;
  StageParams(const StageDesc& stage, int tp, int tp_rank, const ParamInit& init);
  Param<T>* find(const std::string& name);  // nullptr when absent
  const Param<T>* find(const std::string& name) const;
  std::vector<Param<T>>& all() { return params_; }
  const std::vector<Param<T>>& all() const { return params_; }
  void zero_grads();
  int tp() const { return tp_; }
  int tp_rank() const { return tp_rank_; }

 private:
  std::vector<Param<T>> params_;
  std::unordered_map<std::string, size_t> index_;
  int tp_ = 1, tp_rank_ = 0;
};

// Flat index into the full tensor of element `local` of rank `rank`'s shard.
int64_t param_local_to_full(const ParamDesc& p, int tp, int rank, int64_t local);
// The local shard shape of `p` on a TP group of `tp`.
std::vector<int64_t> param_local_shape(const ParamDesc& p, int tp);
// The initial value of full element `i` of `p` (see the scheme above).
double param_init_value(const ParamDesc& p, int64_t i, const ParamInit& init);

// A full (unsharded) tensor in our naming.
struct FullTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
using FullState = std::map<std::string, FullTensor>;

// Gathers full tensors from the shards of every TP rank: shards[r] is rank r's shard (all the same
// ParamDesc). `grad` picks the gradient instead of the value.
template <typename T>
FullTensor param_gather(const std::vector<const Param<T>*>& shards, bool grad);
// Fills rank `rank`'s shard values of `p` from the full tensor; returns an error naming the tensor
// when the full shape is not the table's.
template <typename T>
std::string param_scatter(Param<T>& p, const FullTensor& full, int tp, int rank);

}  // namespace stp
