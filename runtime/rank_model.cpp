// rank_model.cpp: one rank's model for the executor (contract in rank_model.h).
#include "runtime/rank_model.h"

namespace stp {

RankModel::RankModel(const Config& cfg, const ModelDesc& desc, const PipelineProgram& pipe,
                     int pp_rank, int tp_rank)
    : cfg_(cfg), desc_(desc), shape_(model_shape(cfg, tp_rank)),
      vshape_(cfg.model.vision.enabled ? vision_shape(cfg, tp_rank) : ModelShape{}) {
  const ParamInit init = param_init_of(cfg);
  for (int s = 0; s < int(desc.stages.size()); ++s) {
    if (stage_rank(pipe.placement, pipe.pp, s) != pp_rank) continue;
    stages_.push_back(s);
    params_[s] = std::make_unique<StageParams<float>>(desc.stages[s], cfg.parallel.tp, tp_rank, init);
    for (Param<float>& p : params_[s]->all()) {
      LocalParam lp;
      lp.stage = s;
      lp.index = int(&p - params_[s]->all().data());
      lp.p = &p;
      lp.m.assign(size_t(p.size()), 0.0f);
      lp.v.assign(size_t(p.size()), 0.0f);
      lp.decay = p.desc.shape.size() >= 2;
      local_.push_back(std::move(lp));
    }
    StageAccum& a = accum_[s];
    const std::vector<UnitDesc>& units = desc.stages[s].units;
    for (int u = int(units.size()) - 1; u >= 0; --u) {
      if (!units[u].has_w) continue;
      if (a.w_first < 0) a.w_first = u;
      a.w_last = u;
    }
  }
  const int M = cfg.schedule.microbatches;
  const size_t N = size_t(cfg.schedule.micro_batch_size) * size_t(cfg.model.seq_len);
  inputs_.assign(size_t(M), std::vector<int32_t>(N, 0));
  targets_.assign(size_t(M), std::vector<int32_t>(N, 0));
  const size_t patch_values = cfg.model.vision.enabled && holds_first() ? size_t(vshape_.N * vshape_.K) : 0;
  pixels_.assign(size_t(M), std::vector<float>(patch_values, 0.0f));
  loss_sum_.assign(size_t(M), -1.0);
}

bool RankModel::holds_stage(int s) const { return params_.count(s) > 0; }

bool RankModel::holds_embedding() const {
  for (int s : stages_)
    if (desc_.stages[size_t(s)].embeds) return true;
  return false;
}

int64_t RankModel::local_elems() const {
  int64_t n = 0;
  for (const LocalParam& lp : local_) n += lp.p->size();
  return n;
}

void RankModel::begin_step(float loss_scale) {
  loss_scale_ = loss_scale;
  for (auto& kv : params_) kv.second->zero_grads();
  std::fill(loss_sum_.begin(), loss_sum_.end(), -1.0);
  for (auto& kv : accum_) {
    kv.second.open_mb = -1;
    kv.second.next_mb = 0;
    kv.second.held.clear();
    kv.second.early.clear();
  }
  side_bytes_ = 0;
}

std::string RankModel::end_step() const {
  if (!cfg_.train.deterministic) return {};
  for (const auto& kv : accum_) {
    const StageAccum& a = kv.second;
    if (a.w_first < 0) continue;
    if (a.open_mb >= 0 || a.next_mb != cfg_.schedule.microbatches || !a.early.empty())
      return "stage " + std::to_string(kv.first) + ": weight gradients of micro-batches " +
             std::to_string(a.next_mb) + ".." + std::to_string(cfg_.schedule.microbatches - 1) +
             " were not all accumulated (" + std::to_string(a.early.size()) + " waiting)";
  }
  return {};
}

// The stage's gradient buffers become zeroed scratch; the running sums wait in `held`.
void RankModel::w_begin(int stage, int mb) {
  StageAccum& a = accum_[stage];
  a.open_mb = mb;
  std::vector<Param<float>>& ps = params_[stage]->all();
  a.held.resize(ps.size());
  for (size_t k = 0; k < ps.size(); ++k) {
    a.held[k].assign(ps[k].grad.size(), 0.0f);
    ps[k].grad.swap(a.held[k]);
  }
}

void RankModel::add_contribution(int stage, const std::vector<std::vector<float>>& c) {
  std::vector<Param<float>>& ps = params_[stage]->all();
  for (size_t k = 0; k < ps.size(); ++k) {
    float* g = ps[k].grad.data();
    const float* x = c[k].data();
    for (size_t i = 0; i < ps[k].grad.size(); ++i) g[i] += x[i];
  }
}

// The contribution goes to the running sum now if it is the next micro-batch, else to the side
// buffer; then every waiting contribution that has become next is added, in order.
std::string RankModel::w_end(int stage, int mb) {
  StageAccum& a = accum_[stage];
  std::vector<Param<float>>& ps = params_[stage]->all();
  std::vector<std::vector<float>> contrib(ps.size());
  for (size_t k = 0; k < ps.size(); ++k) {
    ps[k].grad.swap(a.held[k]);  // running sum back in place
    contrib[k].swap(a.held[k]);
  }
  a.open_mb = -1;
  if (mb < a.next_mb || a.early.count(mb))
    return "stage " + std::to_string(stage) + ": weight gradient of micro-batch " +
           std::to_string(mb) + " computed twice";
  if (mb != a.next_mb) {
    int64_t bytes = 0;
    for (const auto& c : contrib) bytes += int64_t(c.size()) * 4;
    side_bytes_ += bytes;
    side_peak_bytes_ = std::max(side_peak_bytes_, side_bytes_);
    a.early[mb] = std::move(contrib);
    return {};
  }
  add_contribution(stage, contrib);
  ++a.next_mb;
  for (auto it = a.early.find(a.next_mb); it != a.early.end(); it = a.early.find(a.next_mb)) {
    add_contribution(stage, it->second);
    for (const auto& c : it->second) side_bytes_ -= int64_t(c.size()) * 4;
    a.early.erase(it);
    ++a.next_mb;
  }
  return {};
}

std::string RankModel::compute(int stage, int mb, UnitRef u, TensorStore& store) {
  auto pit = params_.find(stage);
  if (pit == params_.end()) return "stage " + std::to_string(stage) + " is not on this rank";
  const StageDesc& sd = desc_.stages[stage];
  UnitCtx<float> ctx;
  ctx.shape = &shape_;
  ctx.vshape = cfg_.model.vision.enabled ? &vshape_ : nullptr;
  ctx.stage = &sd;
  ctx.params = pit->second.get();
  ctx.store = &store;
  ctx.ws = &ws_;
  ctx.mb = mb;
  ctx.tokens = sd.embeds ? inputs(mb) : nullptr;
  ctx.targets = sd.last ? targets(mb) : nullptr;
  ctx.pixels = sd.first ? pixels(mb) : nullptr;
  ctx.loss_scale = loss_scale_;
  const bool det = cfg_.train.deterministic;
  ctx.accumulate = !det;
  StageAccum& a = accum_[stage];
  if (det && u.pass == UnitPass::W && u.unit == a.w_first) {
    if (a.open_mb >= 0)
      return "stage " + std::to_string(stage) + ": W of micro-batch " + std::to_string(mb) +
             " starts while that of micro-batch " + std::to_string(a.open_mb) + " is unfinished";
    w_begin(stage, mb);
  }
  if (det && u.pass == UnitPass::W && a.open_mb != mb)
    return "stage " + std::to_string(stage) + ": W unit " + std::to_string(u.unit) +
           " of micro-batch " + std::to_string(mb) + " runs outside its W pass";
  std::string err = unit_run(ctx, u.unit, u.pass);
  if (!err.empty()) return err;
  if (u.pass == UnitPass::B && sd.units[u.unit].kind == UnitKind::Head) loss_sum_[size_t(mb)] = ctx.loss_sum;
  if (det && u.pass == UnitPass::W && u.unit == a.w_last) return w_end(stage, mb);
  return {};
}

std::vector<FloatSpan> RankModel::grad_sync_spans(CommGroup g) {
  std::vector<FloatSpan> spans;
  for (LocalParam& lp : local_)
    if (g == CommGroup::DP || lp.p->desc.tp_partial_grad)
      spans.push_back(FloatSpan{lp.p->grad.data(), lp.p->size()});
  return spans;
}

void RankModel::sync_tied_local() {
  const int last = int(desc_.stages.size()) - 1;
  if (!cfg_.model.tie_embeddings || last == 0 || !holds_stage(0) || !holds_stage(last)) return;
  Param<float>* a = params_[0]->find("embed.weight");
  Param<float>* b = params_[last]->find("embed.weight");
  if (!a || !b) return;
  for (size_t i = 0; i < a->grad.size(); ++i) a->grad[i] = b->grad[i] = a->grad[i] + b->grad[i];
}

Param<float>* RankModel::tied_embedding() {
  const int last = int(desc_.stages.size()) - 1;
  if (!cfg_.model.tie_embeddings || last == 0) return nullptr;
  if (holds_stage(0)) return params_[0]->find("embed.weight");
  if (holds_stage(last)) return params_[last]->find("embed.weight");
  return nullptr;
}

}  // namespace stp
