// reference.cpp: the in-process reference step (contract in reference.h).
#include "model/reference.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "model/kernels/cpu/kernels.h"

namespace stp {
namespace {

std::string check_divisible(const Config& cfg) {
  const ModelConfig& m = cfg.model;
  const int tp = cfg.parallel.tp;
  auto bad = [&](const char* what, int v) {
    return std::string("reference: ") + what + " = " + std::to_string(v) +
           " is not divisible by tp = " + std::to_string(tp);
  };
  if (tp < 1) return "reference: tp = " + std::to_string(tp) + " must be >= 1";
  if (m.heads % tp) return bad("model.heads", m.heads);
  if (m.kv() % tp) return bad("model.kv_heads", m.kv());
  if (m.ffn() % tp) return bad("model.ffn_hidden", m.ffn());
  if (m.vocab % tp) return bad("model.vocab", m.vocab);
  if (m.heads % m.kv()) return "reference: heads must be a multiple of kv_heads";
  return "";
}

// In-process TP collective: reduce tensor t of (stage, mb) over every rank's store, in place.
template <typename T>
void tp_reduce(Reference<T>& ref, int stage, int mb, const CollDesc& c) {
  const int tp = int(ref.stores.size());
  const int64_t n = ref.desc.stages[size_t(stage)].tensors[size_t(c.tensor)].elems;
  std::vector<T*> bufs(static_cast<size_t>(tp), nullptr);
  for (int r = 0; r < tp; ++r) bufs[size_t(r)] = ref.stores[size_t(r)]->read(stage, mb, c.tensor);
  for (int64_t i = 0; i < n; ++i) {
    T acc = bufs[0][i];
    for (int r = 1; r < tp; ++r)
      acc = c.kind == CollKind::AllReduceMax ? std::max(acc, bufs[size_t(r)][i])
                                             : acc + bufs[size_t(r)][i];
    for (int r = 0; r < tp; ++r) bufs[size_t(r)][i] = acc;
  }
}

// Runs one unit pass on every TP rank, its collective, and the free rule.
template <typename T>
std::string run_pass(Reference<T>& ref, int stage, int mbi, const MicroBatch& mb, UnitRef u,
                     float loss_scale, double* loss_sum) {
  const bool accumulate = !ref.w_overwrite;
  const StageDesc& sd = ref.desc.stages[size_t(stage)];
  for (size_t r = 0; r < ref.stores.size(); ++r) {
    UnitCtx<T> ctx;
    ctx.shape = &ref.shapes[r];
    ctx.vshape = ref.vshapes.empty() ? nullptr : &ref.vshapes[r];
    ctx.pixels = mb.pixels.empty() ? nullptr : mb.pixels.data();
    ctx.stage = &sd;
    ctx.params = &ref.params[r][size_t(stage)];
    ctx.store = ref.stores[r].get();
    ctx.ws = &ref.ws[r];
    ctx.mb = mbi;
    ctx.tokens = mb.tokens.data();
    ctx.targets = mb.targets.data();
    ctx.loss_scale = loss_scale;
    ctx.accumulate = accumulate;
    std::string e = unit_run(ctx, u.unit, u.pass);
    if (!e.empty()) return e;
    if (r == 0 && loss_sum && u.pass == UnitPass::B &&
        sd.units[size_t(u.unit)].kind == UnitKind::Head)
      *loss_sum += ctx.loss_sum;
  }
  const UnitDesc& ud = sd.units[size_t(u.unit)];
  if (u.pass != UnitPass::W) {
    const CollDesc& c = ud.coll[u.pass == UnitPass::F ? 0 : 1];
    if (c.kind != CollKind::None && ref.stores.size() > 1) tp_reduce(ref, stage, mbi, c);
  }
  for (auto& st : ref.stores) {
    std::string e = st->pass_done(stage, mbi, u);
    if (!e.empty()) return e;
  }
  return "";
}

// The PP hand-over by copy: tensor `from` of stage s1 becomes tensor `to` of stage s2.
template <typename T>
std::string hand_over(Reference<T>& ref, int mbi, int s1, int from, int s2, int to) {
  for (auto& st : ref.stores) {
    const T* src = st->read(s1, mbi, from);
    if (!src)
      return "reference: hand-over source " +
             ref.desc.stages[size_t(s1)].tensors[size_t(from)].name + " is not live";
    T* dst = st->produce(s2, mbi, to);
    std::copy(src, src + ref.desc.stages[size_t(s2)].tensors[size_t(to)].elems, dst);
    std::string e = st->release(s1, mbi, from);
    if (!e.empty()) return e;
  }
  return "";
}

template <typename T>
std::string forward_mb(Reference<T>& ref, int mbi, const MicroBatch& mb) {
  const int S = int(ref.desc.stages.size());
  for (int s = 0; s < S; ++s) {
    const StageDesc& sd = ref.desc.stages[size_t(s)];
    if (s > 0) {  // stage s-1's Out.x becomes stage s's In.out
      const StageDesc& prev = ref.desc.stages[size_t(s - 1)];
      const int out_x = prev.find_tensor("x", int(prev.units.size()) - 1);
      std::string e = hand_over(ref, mbi, s - 1, out_x, s, sd.find_tensor("out", 0));
      if (!e.empty()) return e;
    }
    for (int u = 0; u < int(sd.units.size()); ++u) {
      std::string e = run_pass(ref, s, mbi, mb, UnitRef{u, UnitPass::F}, 0.0f, nullptr);
      if (!e.empty()) return e;
    }
  }
  return "";
}

template <typename T>
std::string backward_mb(Reference<T>& ref, int mbi, const MicroBatch& mb, float loss_scale,
                        double* loss_sum) {
  const int S = int(ref.desc.stages.size());
  for (int s = S - 1; s >= 0; --s) {
    const StageDesc& sd = ref.desc.stages[size_t(s)];
    for (int u : sd.backward_order()) {
      if (sd.units[size_t(u)].kind == UnitKind::Out) {  // stage s+1's In.g becomes Out.g
        const int in_g = ref.desc.stages[size_t(s + 1)].find_tensor("g", 0);
        std::string e = hand_over(ref, mbi, s + 1, in_g, s, sd.find_tensor("g", u));
        if (!e.empty()) return e;
      }
      std::string e = run_pass(ref, s, mbi, mb, UnitRef{u, UnitPass::B}, loss_scale, loss_sum);
      if (e.empty() && sd.units[size_t(u)].has_w)
        e = run_pass(ref, s, mbi, mb, UnitRef{u, UnitPass::W}, loss_scale, loss_sum);
      if (!e.empty()) return e;
    }
  }
  return "";
}

// Sums TP-partial gradients over the ranks and the two tied embedding replicas.
template <typename T>
void finish_grads(Reference<T>& ref) {
  const int tp = int(ref.params.size()), S = int(ref.desc.stages.size());
  for (int s = 0; s < S; ++s)
    for (size_t i = 0; i < ref.params[0][size_t(s)].all().size(); ++i) {
      if (!ref.params[0][size_t(s)].all()[i].desc.tp_partial_grad || tp == 1) continue;
      std::vector<T>& g0 = ref.params[0][size_t(s)].all()[i].grad;
      for (int r = 1; r < tp; ++r) {
        const std::vector<T>& gr = ref.params[size_t(r)][size_t(s)].all()[i].grad;
        for (size_t j = 0; j < g0.size(); ++j) g0[j] += gr[j];
      }
      for (int r = 1; r < tp; ++r) ref.params[size_t(r)][size_t(s)].all()[i].grad = g0;
    }
  if (S > 1 && ref.cfg.model.tie_embeddings)
    for (int r = 0; r < tp; ++r) {
      std::vector<T>& a = ref.params[size_t(r)][0].find("embed.weight")->grad;
      std::vector<T>& b = ref.params[size_t(r)][size_t(S - 1)].find("embed.weight")->grad;
      for (size_t j = 0; j < a.size(); ++j) b[j] = a[j] = a[j] + b[j];
    }
}

// acc (one vector per parameter, all ranks and stages in order) += the scratch gradients.
template <typename T>
void add_scratch_grads(Reference<T>& ref, std::vector<std::vector<T>>& acc, bool first) {
  size_t k = 0;
  for (auto& rank : ref.params)
    for (auto& sp : rank)
      for (Param<T>& p : sp.all()) {
        if (first) {
          acc.push_back(p.grad);
        } else {
          std::vector<T>& a = acc[k];
          for (size_t j = 0; j < a.size(); ++j) a[j] += p.grad[j];
        }
        ++k;
      }
}

// Whether parameter i of stage s is counted in the global norm by TP rank r (each full
// parameter once: sharded ones on every rank, replicated ones on rank 0, a tied replica not).
template <typename T>
bool counts_in_norm(const Reference<T>& ref, int r, int s, const ParamDesc& d) {
  if (d.shard_dim < 0 && r != 0) return false;
  const int S = int(ref.desc.stages.size());
  return !(S > 1 && s == S - 1 && d.name == "embed.weight");
}

}  // namespace

template <typename T>
std::string reference_init(Reference<T>& ref, const Config& cfg, std::vector<int> layer_split,
                           const ParamInit& init) {
  std::string e = check_divisible(cfg);
  if (!e.empty()) return e;
  if (layer_split.empty()) layer_split = {cfg.model.layers};
  int sum = 0;
  for (int l : layer_split) sum += l;
  if (sum != cfg.model.layers)
    return "reference: layer split sums to " + std::to_string(sum) +
           ", model.layers = " + std::to_string(cfg.model.layers);
  ref.cfg = cfg;
  ref.cfg.parallel.pp = int(layer_split.size());
  ref.cfg.parallel.chunks = 1;
  try {
    ref.desc = model_desc_build(ref.cfg, 1, layer_split);
  } catch (const std::exception& ex) {
    return std::string("reference: model_desc_build: ") + ex.what();
  }
  const int tp = cfg.parallel.tp, S = int(layer_split.size());
  ref.shapes.clear();
  ref.vshapes.clear();
  ref.params.assign(size_t(tp), {});
  ref.adam_m.assign(size_t(tp), {});
  ref.adam_v.assign(size_t(tp), {});
  ref.stores.clear();
  ref.ws.assign(size_t(tp), Workspace<T>());
  for (int r = 0; r < tp; ++r) {
    ref.shapes.push_back(model_shape(cfg, r));
    if (cfg.model.vision.enabled) ref.vshapes.push_back(vision_shape(cfg, r));
    ref.stores.push_back(std::make_unique<ActivationStore<T>>(ref.desc));
    for (int s = 0; s < S; ++s) {
      ref.params[size_t(r)].emplace_back(ref.desc.stages[size_t(s)], tp, r, init);
      std::vector<std::vector<T>> zeros;
      for (const Param<T>& p : ref.params[size_t(r)].back().all())
        zeros.emplace_back(p.value.size(), T(0));
      ref.adam_m[size_t(r)].push_back(zeros);
      ref.adam_v[size_t(r)].push_back(zeros);
    }
  }
  ref.step = 0;
  return "";
}

template <typename T>
std::string reference_forward_backward(Reference<T>& ref, const std::vector<MicroBatch>& mbs,
                                       RefStats* stats) {
  const int64_t N = ref.shapes.at(0).N;
  for (const MicroBatch& mb : mbs)
    if (int64_t(mb.tokens.size()) != N || int64_t(mb.targets.size()) != N)
      return "reference: a micro-batch has " + std::to_string(mb.tokens.size()) + " tokens and " +
             std::to_string(mb.targets.size()) + " targets, expected b*T = " + std::to_string(N);
  if (!ref.w_overwrite)  // with w_overwrite every W pass overwrites: nothing to zero
    for (auto& rank : ref.params)
      for (auto& sp : rank) sp.zero_grads();
  for (auto& st : ref.stores) st->reset_peak();
  int64_t loss_tokens = 0;
  for (const MicroBatch& mb : mbs)
    for (int t : mb.targets) loss_tokens += t >= 0;
  if (loss_tokens == 0) return "reference: every target is -1 (no token carries a loss)";
  const float loss_scale = float(1.0 / double(loss_tokens));
  double loss_sum = 0;
  std::vector<std::vector<T>> acc;  // w_overwrite: the ordered sum of the scratch gradients
  for (int i = 0; i < int(mbs.size()); ++i) {
    std::string e = forward_mb(ref, i, mbs[size_t(i)]);
    if (e.empty()) e = backward_mb(ref, i, mbs[size_t(i)], loss_scale, &loss_sum);
    if (!e.empty()) return e;
    if (ref.w_overwrite) add_scratch_grads(ref, acc, i == 0);
  }
  if (ref.w_overwrite) {
    size_t k = 0;
    for (auto& rank : ref.params)
      for (auto& sp : rank)
        for (Param<T>& p : sp.all()) p.grad = acc[k++];
  }
  for (auto& st : ref.stores)
    if (!st->live_names().empty()) return "reference: tensor leaked: " + st->live_names()[0];
  finish_grads(ref);
  if (stats) {
    stats->loss = loss_sum / double(loss_tokens);
    stats->peak_act_bytes = ref.stores[0]->peak_bytes();
    double sq = 0;
    for (size_t r = 0; r < ref.params.size(); ++r)
      for (size_t s = 0; s < ref.params[r].size(); ++s)
        for (const Param<T>& p : ref.params[r][s].all())
          if (counts_in_norm(ref, int(r), int(s), p.desc))
            sq += cpu::grad_sq_norm(p.grad.data(), p.size());
    stats->grad_norm = std::sqrt(sq);
  }
  return "";
}

template <typename T>
std::string reference_step(Reference<T>& ref, const std::vector<MicroBatch>& mbs, double lr,
                           RefStats* stats) {
  RefStats st;
  std::string e = reference_forward_backward(ref, mbs, &st);
  if (!e.empty()) return e;
  const TrainConfig& t = ref.cfg.train;
  const float clip =
      t.grad_clip > 0 ? float(std::min(1.0, t.grad_clip / (st.grad_norm + 1e-6))) : 1.0f;
  ++ref.step;
  for (size_t r = 0; r < ref.params.size(); ++r)
    for (size_t s = 0; s < ref.params[r].size(); ++s)
      for (size_t i = 0; i < ref.params[r][s].all().size(); ++i) {
        Param<T>& p = ref.params[r][s].all()[i];
        AdamWHyper h;
        h.lr = float(lr);
        h.beta1 = float(t.beta1);
        h.beta2 = float(t.beta2);
        h.eps = float(t.eps);
        h.weight_decay = p.desc.shape.size() >= 2 ? float(t.weight_decay) : 0.0f;
        h.t = ref.step;
        cpu::adamw_update(p.value.data(), p.grad.data(), ref.adam_m[r][s][i].data(),
                          ref.adam_v[r][s][i].data(), p.size(), h, clip);
      }
  if (stats) *stats = st;
  return "";
}

template <typename T>
std::string reference_logits(Reference<T>& ref, const MicroBatch& mb, std::vector<double>* logits) {
  const ModelShape& s0 = ref.shapes.at(0);
  if (int64_t(mb.tokens.size()) != s0.N || int64_t(mb.targets.size()) != s0.N)
    return "reference_logits: expected b*T = " + std::to_string(s0.N) + " tokens and targets";
  const int S = int(ref.desc.stages.size()), mbi = 1 << 20;  // an id no training step uses
  std::string e = forward_mb(ref, mbi, mb);
  if (!e.empty()) return e;
  const StageDesc& last = ref.desc.stages[size_t(S - 1)];
  const int64_t V = ref.cfg.model.vocab;
  logits->assign(size_t(s0.N * V), 0.0);
  for (size_t r = 0; r < ref.stores.size(); ++r) {
    const ModelShape& s = ref.shapes[r];
    const T* l =
        ref.stores[r]->read(S - 1, mbi, last.find_tensor("logits", int(last.units.size()) - 2));
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t v = 0; v < s.V_tp; ++v)
        (*logits)[size_t(n * V + s.vocab_start + v)] = double(l[n * s.V_tp + v]);
  }
  for (auto& st : ref.stores)  // forward-only: drop what the backward would have read
    for (int s = 0; s < S; ++s)
      for (int t = 0; t < int(ref.desc.stages[size_t(s)].tensors.size()); ++t)
        if (st->live(s, mbi, t)) st->release(s, mbi, t);
  return "";
}

template <typename T>
FullState reference_full_state(const Reference<T>& ref, bool grad) {
  FullState out;
  for (size_t s = 0; s < ref.desc.stages.size(); ++s)
    for (size_t i = 0; i < ref.params[0][s].all().size(); ++i) {
      const std::string& name = ref.params[0][s].all()[i].desc.name;
      if (out.count(name)) continue;  // a tied replica
      std::vector<const Param<T>*> shards;
      for (const auto& rank : ref.params) shards.push_back(&rank[s].all()[i]);
      out[name] = param_gather(shards, grad);
    }
  return out;
}

template <typename T>
std::string reference_load_full_state(Reference<T>& ref, const FullState& state) {
  for (size_t r = 0; r < ref.params.size(); ++r)
    for (auto& sp : ref.params[r])
      for (Param<T>& p : sp.all()) {
        auto it = state.find(p.desc.name);
        if (it == state.end()) return "load: tensor '" + p.desc.name + "' is missing";
        std::string e = param_scatter(p, it->second, int(ref.params.size()), int(r));
        if (!e.empty()) return "load: " + e;
      }
  return "";
}

#define STP_INSTANTIATE(T)                                                                       \
  template std::string reference_init<T>(Reference<T>&, const Config&, std::vector<int>,         \
                                         const ParamInit&);                                      \
  template std::string reference_forward_backward<T>(Reference<T>&,                              \
                                                     const std::vector<MicroBatch>&, RefStats*); \
  template std::string reference_step<T>(Reference<T>&, const std::vector<MicroBatch>&, double,  \
                                         RefStats*);                                             \
  template std::string reference_logits<T>(Reference<T>&, const MicroBatch&,                     \
                                           std::vector<double>*);                                \
  template FullState reference_full_state<T>(const Reference<T>&, bool);                         \
  template std::string reference_load_full_state<T>(Reference<T>&, const FullState&);
STP_INSTANTIATE(float)
STP_INSTANTIATE(double)
#undef STP_INSTANTIATE

}  // namespace stp
