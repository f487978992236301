// params.cpp: shard layout, counter-based initialisation, gather and scatter (contract in
// params.h).
#include "model/params.h"

#include <cmath>
#include <numeric>

namespace stp {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

// A standard normal that depends only on (key, i): Box-Muller on two counter-hashed uniforms.
double counter_normal(uint64_t key, int64_t i) {
  const uint64_t a = splitmix64(key ^ splitmix64(uint64_t(i) * 2));
  const uint64_t b = splitmix64(key ^ splitmix64(uint64_t(i) * 2 + 1));
  const double u1 = (double(a >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
  const double u2 = double(b >> 11) * 0x1.0p-53;          // [0, 1)
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int64_t prod(const std::vector<int64_t>& v, size_t lo, size_t hi) {
  int64_t n = 1;
  for (size_t i = lo; i < hi; ++i) n *= v[i];
  return n;
}

}  // namespace

std::vector<int64_t> param_local_shape(const ParamDesc& p, int tp) {
  std::vector<int64_t> s = p.shape;
  if (p.shard_dim >= 0) s[size_t(p.shard_dim)] /= tp;
  return s;
}

int64_t param_local_to_full(const ParamDesc& p, int tp, int rank, int64_t local) {
  if (p.shard_dim < 0 || tp == 1) return local;
  const size_t d = size_t(p.shard_dim);
  const int64_t D = p.shape[d], Dl = D / tp, inner = prod(p.shape, d + 1, p.shape.size());
  const int64_t i = local % inner, l = (local / inner) % Dl, o = local / (inner * Dl);
  const std::vector<int64_t> parts = p.segments.empty() ? std::vector<int64_t>{D} : p.segments;
  int64_t full_off = 0, local_off = 0, fd = -1;
  for (int64_t part : parts) {
    const int64_t pl = part / tp;
    if (l < local_off + pl) {
      fd = full_off + rank * pl + (l - local_off);
      break;
    }
    full_off += part;
    local_off += pl;
  }
  return (o * D + fd) * inner + i;
}

namespace {

// The init of one tensor: value(i) = mean + std * N(key, i) (std 0: constant).
struct InitRule {
  uint64_t key;
  double mean, std;
  double value(int64_t i) const { return std == 0 ? mean : mean + std * counter_normal(key, i); }
};

InitRule init_rule(const ParamDesc& p, const ParamInit& init) {
  const bool bias = ends_with(p.name, ".bias");
  const bool norm_w = !bias && p.name.find("norm") != std::string::npos;
  const uint64_t key = splitmix64(init.seed) ^ fnv1a(p.name);
  if (norm_w) return {key, 1.0, init.randomize_all ? 0.1 : 0.0};
  if (bias) return {key, 0.0, init.randomize_all ? 0.1 : 0.0};
  double std = init.init_std;
  if (ends_with(p.name, ".attn.out.weight") || ends_with(p.name, ".mlp.fc2.weight"))
    std /= std::sqrt(2.0 * std::max(1, init.layers));
  return {key, 0.0, std};
}

}  // namespace

double param_init_value(const ParamDesc& p, int64_t i, const ParamInit& init) {
  return init_rule(p, init).value(i);
}

template <typename T>
StageParams<T>::StageParams(const StageDesc& stage, int tp, int tp_rank, const ParamInit& init)
    : tp_(tp), tp_rank_(tp_rank) {
  params_.reserve(stage.params.size());
  for (const ParamDesc& d : stage.params) {
    Param<T> p;
    p.desc = d;
    p.local_shape = param_local_shape(d, tp);
    const int64_t n = d.local_elems(tp);
    p.value.resize(size_t(n));
    p.grad.assign(size_t(n), T(0));
    const InitRule rule = init_rule(d, init);
    for (int64_t j = 0; j < n; ++j)
      p.value[size_t(j)] = T(rule.value(param_local_to_full(d, tp, tp_rank, j)));
    index_[d.name] = params_.size();
    params_.push_back(std::move(p));
  }
}

template <typename T>
Param<T>* StageParams<T>::find(const std::string& name) {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &params_[it->second];
}

template <typename T>
const Param<T>* StageParams<T>::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &params_[it->second];
}

template <typename T>
void StageParams<T>::zero_grads() {
  for (Param<T>& p : params_) std::fill(p.grad.begin(), p.grad.end(), T(0));
}

template <typename T>
FullTensor param_gather(const std::vector<const Param<T>*>& shards, bool grad) {
  FullTensor f;
  const ParamDesc& d = shards.at(0)->desc;
  f.shape = d.shape;
  f.data.assign(size_t(d.full_elems()), 0.0f);
  const int tp = d.shard_dim < 0 ? 1 : int(shards.size());
  for (int r = 0; r < tp; ++r) {
    const std::vector<T>& src = grad ? shards[size_t(r)]->grad : shards[size_t(r)]->value;
    for (int64_t j = 0; j < int64_t(src.size()); ++j)
      f.data[size_t(param_local_to_full(d, tp, r, j))] = float(src[size_t(j)]);
  }
  return f;
}

template <typename T>
std::string param_scatter(Param<T>& p, const FullTensor& full, int tp, int rank) {
  if (full.shape != p.desc.shape) {
    auto str = [](const std::vector<int64_t>& s) {
      std::string r = "[";
      for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
      return r + "]";
    };
    return "tensor '" + p.desc.name + "': expected shape " + str(p.desc.shape) + ", found " +
           str(full.shape);
  }
  for (int64_t j = 0; j < p.size(); ++j)
    p.value[size_t(j)] = T(full.data[size_t(param_local_to_full(p.desc, tp, rank, j))]);
  return "";
}

template class StageParams<float>;
template class StageParams<double>;
template FullTensor param_gather<float>(const std::vector<const Param<float>*>&, bool);
template FullTensor param_gather<double>(const std::vector<const Param<double>*>&, bool);
template std::string param_scatter<float>(Param<float>&, const FullTensor&, int, int);
template std::string param_scatter<double>(Param<double>&, const FullTensor&, int, int);

}  // namespace stp
