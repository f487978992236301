// trainer.cpp: one training step and its pieces (contract in trainer.h); train_main is in
// train_main.cpp.
#include "runtime/trainer.h"

#include <sys/resource.h>

#include <chrono>
#include <cmath>

#include "model/kernels/cpu/kernels.h"
#include "runtime/checkpoint.h"
#include "runtime/core/clock.h"
#include "runtime/init_from.h"
#include "runtime/optimizer.h"
#include "scheduler/program.h"
#include "scheduler/schedules.h"

namespace stp {

namespace {

using Clock = std::chrono::steady_clock;

double peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) * 1024.0;
}

constexpr int kStats = 9;  // doubles per rank in RankStepStats, gathered as one F64 block
static_assert(sizeof(RankStepStats) == kStats * sizeof(double), "RankStepStats is gathered as doubles");

}  // namespace

int64_t step_tokens(const Config& cfg) { return config_sequences_per_step(cfg) * cfg.model.seq_len; }

int64_t step_loss_tokens(const Config& cfg) {
  return config_sequences_per_step(cfg) * config_loss_tokens_per_sequence(cfg);
}

double step_loss_reduce(Communicator& comm, const Config& cfg, int dp_rank, const std::vector<double>& mb_sums,
                        std::string* error) {
  const int M = cfg.schedule.microbatches;
  std::vector<double> slots(size_t(cfg.parallel.dp) * M, 0.0);
  std::copy(mb_sums.begin(), mb_sums.end(), slots.begin() + ptrdiff_t(dp_rank) * M);
  CommHandle h = comm.all_reduce(GroupKind::World, slots.data(), slots.data(), int64_t(slots.size()), DType::F64,
                                 ReduceOp::Sum);
  const CommStatus st = h.wait(cfg.train.timeout_s);
  if (!st.ok()) {
    *error = "loss: " + st.error;
    return 0;
  }
  double sum = 0;
  for (double x : slots) sum += x;
  return sum / double(step_loss_tokens(cfg));
}

std::string step_clip_and_lr(const Config& cfg, StepReport* r, bool* fatal) {
  if (!std::isfinite(r->loss) || !std::isfinite(r->grad_norm)) {
    *fatal = false;
    return "step " + std::to_string(r->step) + ": the " + (std::isfinite(r->loss) ? "gradient norm" : "loss") +
           " is " + std::to_string(std::isfinite(r->loss) ? r->grad_norm : r->loss) +
           " (not finite); stopping before the update, the last checkpoint is untouched";
  }
  const double clip = cfg.train.grad_clip;
  r->clip_scale = clip > 0 ? std::min(1.0, clip / (r->grad_norm + 1e-6)) : 1.0;
  r->lr = lr_at(cfg.train, r->step);
  return {};
}

std::string step_gather_stats(Communicator& comm, const RankStepStats& mine, double timeout_s, StepReport* r) {
  std::vector<RankStepStats> all(size_t(comm.world_size()));
  CommHandle h = comm.all_gather(GroupKind::World, &mine, all.data(), kStats, DType::F64);
  const CommStatus st = h.wait(timeout_s);
  if (!st.ok()) return "step statistics: " + st.error;
  r->ranks = std::move(all);
  return {};
}

Trainer::~Trainer() = default;

CheckpointSite Trainer::checkpoint_site() {
  return CheckpointSite{&cfg_, chunks_, placement_name(prog_.pipeline.placement), topo_.rank, topo_.world(), &comm_};
}

Trainer::Result Trainer::create(const Config& cfg, const Topology& topo, Communicator& comm) {
  std::unique_ptr<Trainer> t(new Trainer(cfg, topo, comm));
  std::string err = t->build();
  if (!err.empty()) return {nullptr, err};
  return {std::move(t), ""};
}

std::string build_run_program(Config& cfg, int* chunks, ModelDesc* desc, LoweredProgram* prog) {
  *chunks = config_chunks(cfg);
  cfg.parallel.chunks = *chunks;
  // The same program the simulator and `stp-train schedule` see: generated, or imported from
  // schedule.file (csv), validated either way.
  ProgramResult pr = pipeline_from_config(cfg);
  if (!pr.ok()) return "schedule: " + pr.error;
  *desc = model_desc_build(cfg, *chunks, config_stage_layers(cfg));
  LowerOptions lo;
  lo.dp = cfg.parallel.dp;
  LowerResult lr = lower(std::move(*pr.program), *desc, lo);
  if (!lr.ok()) return "schedule " + cfg.schedule.name + ": " + lr.error;
  *prog = std::move(*lr.program);
  return {};
}

std::string Trainer::build() {
  if (std::string err = build_run_program(cfg_, &chunks_, &desc_, &prog_); !err.empty()) return err;
  model_ = std::make_unique<RankModel>(cfg_, desc_, prog_.pipeline, topo_.me.pp, topo_.me.tp);
  // --- initial parameters: train.init_from (runtime/init_from.h); a later resume() wins ---
  if (!cfg_.train.init_from.empty()) {
    std::string err = init_from_file(cfg_, cfg_.train.init_from, *model_, topo_.TP, topo_.me.tp);
    if (!err.empty()) return err;
  }
  // --- end initial parameters ---
  store_ = std::make_unique<TensorStore>(desc_);
  exec_ = std::make_unique<Executor>(desc_, prog_.pipeline, topo_.me.pp, comm_,
                                     ExecOptions{cfg_.train.timeout_s, true});
  norm_plan_ = std::make_unique<GradNormPlan>(desc_, topo_);
  if (model_->needs_data()) {
    DataLoader::Result d = DataLoader::open(cfg_.data, data_shape_of(cfg_));
    if (!d.loader) return d.error;
    data_ = std::move(d.loader);
  }
  return {};
}

std::string Trainer::load_batches(int64_t step) {
  if (!data_) return {};
  const int T = cfg_.model.seq_len, b = cfg_.schedule.micro_batch_size;
  std::vector<int32_t> scratch(size_t(b) * T);
  for (int m = 0; m < cfg_.schedule.microbatches; ++m) {
    int32_t* in = model_->holds_embedding() ? model_->inputs(m) : scratch.data();
    int32_t* tg = model_->holds_last() ? model_->targets(m) : scratch.data();
    std::string err = data_->load(step, topo_.me.dp, m, in, tg, model_->pixels(m));
    if (!err.empty()) return "step " + std::to_string(step) + ": " + err;
  }
  return {};
}

std::string Trainer::sync_tied() {
  model_->sync_tied_local();
  Param<float>* e = model_->tied_embedding();
  if (!e || comm_.size(GroupKind::Embed) < 2) return {};
  CommHandle h = comm_.all_reduce(GroupKind::Embed, e->grad.data(), e->grad.data(), e->size(),
                                  DType::F32, ReduceOp::Sum);
  CommStatus st = h.wait(cfg_.train.timeout_s);
  return st.ok() ? std::string() : "tied embedding gradient: " + st.error;
}

double Trainer::grad_norm(std::string* error) {
  std::vector<double> local(size_t(norm_plan_->vector_size()), 0.0);
  for (const LocalParam& lp : model_->local_params())
    if (norm_plan_->contributes(lp.stage, lp.index))
      local[size_t(norm_plan_->index(lp.stage, lp.index))] = cpu::grad_sq_norm(lp.p->grad.data(), lp.p->size());
  return norm_plan_->reduce(comm_, local, cfg_.train.timeout_s, error);
}

void Trainer::update(int64_t step, float scale) {
  for (LocalParam& lp : model_->local_params()) {
    const AdamWHyper h = adamw_hyper(cfg_.train, step, lp.decay);
    cpu::adamw_update(lp.p->value.data(), lp.p->grad.data(), lp.m.data(), lp.v.data(), lp.p->size(),
                      h, scale);
  }
}

RankStepStats Trainer::my_stats() const {
  const double act = double(last_exec_.peak_act_bytes), side = double(model_->side_buffer_peak_bytes());
  return RankStepStats{double(model_->local_elems()) * 16.0 + act + side,
                       act,
                       side,
                       last_exec_.exposed_comm_s,
                       last_exec_.exposed_tp_s,
                       last_exec_.exposed_pp_s,
                       last_exec_.exposed_dp_s,
                       last_exec_.compute_s,
                       peak_rss_bytes()};
}

std::string Trainer::step(StepReport* r, bool* fatal) {
  const Clock::time_point t0 = Clock::now();
  const int64_t s = next_step_;
  *fatal = true;
  *r = StepReport{};
  r->step = s;
  r->tokens = step_tokens(cfg_);
  std::string err = load_batches(s);
  if (!err.empty()) return err;
  model_->begin_step(float(1.0 / double(step_loss_tokens(cfg_))));
  last_exec_start_ = Clock::now();
  last_exec_ = exec_->run(rank_program(), *model_, *store_);
  if (!last_exec_.ok()) return "step " + std::to_string(s) + ": " + last_exec_.error;
  if (!(err = model_->end_step()).empty() || !(err = sync_tied()).empty()) return err;
  r->grad_norm = grad_norm(&err);
  std::vector<double> mb_sums;
  if (model_->holds_last() && topo_.me.tp == 0)
    for (int m = 0; m < cfg_.schedule.microbatches; ++m) mb_sums.push_back(model_->loss_sum(m));
  if (err.empty()) r->loss = step_loss_reduce(comm_, cfg_, topo_.me.dp, mb_sums, &err);
  if (!err.empty()) return "step " + std::to_string(s) + ": " + err;
  if (!(err = step_clip_and_lr(cfg_, r, fatal)).empty()) return err;
  update(s, float(r->clip_scale));
  if (!(err = step_gather_stats(comm_, my_stats(), cfg_.train.timeout_s, r)).empty()) return err;
  r->step_time_s = seconds_since(t0);
  next_step_ = s + 1;
  return {};
}

FullState Trainer::gather_full(bool grad, std::string* error) {
  FullState out;
  for (const GradNormSlot& slot : norm_plan_->slots()) {
    const ParamDesc& d = desc_.stages[size_t(slot.stage)].params[size_t(slot.param)];
    FullTensor f;
    f.shape = d.shape;
    f.data.assign(size_t(d.full_elems()), 0.0f);
    if (model_->holds_stage(slot.stage) && topo_.me.dp == 0 && (d.shard_dim >= 0 || topo_.me.tp == 0)) {
      const Param<float>& p = model_->params(slot.stage).all()[size_t(slot.param)];
      const std::vector<float>& src = grad ? p.grad : p.value;
      for (int64_t j = 0; j < p.size(); ++j)
        f.data[size_t(param_local_to_full(d, topo_.TP, topo_.me.tp, j))] = src[size_t(j)];
    }
    CommHandle h = comm_.all_reduce(GroupKind::World, f.data.data(), f.data.data(),
                                    int64_t(f.data.size()), DType::F32, ReduceOp::Sum);
    CommStatus st = h.wait(cfg_.train.timeout_s);
    if (!st.ok()) {
      *error = "gather " + slot.name + ": " + st.error;
      return out;
    }
    out[slot.name] = std::move(f);
  }
  return out;
}

}  // namespace stp
