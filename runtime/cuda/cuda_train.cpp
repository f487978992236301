// cuda_train.cpp: the CUDA trainer and its run loop (contract in cuda_train.h).
#include "runtime/cuda/cuda_train.h"

#include <spdlog/spdlog.h>

#include <chrono>

#include "comm/nccl/nccl_comm.h"
#include "model/kernels/cuda/check.h"
#include "runtime/checkpoint.h"
#include "runtime/core/clock.h"
#include "runtime/cuda/cuda_device.h"
#include "runtime/data.h"
#include "runtime/grad_norm.h"
#include "runtime/optimizer.h"
#include "runtime/run_report.h"
#include "runtime/train_loop.h"
#include "runtime/trainer.h"
#include "scheduler/program.h"
#include "scheduler/schedules.h"

namespace stp {

namespace {

using Clock = std::chrono::steady_clock;

class CudaTrainer final : public StepRunner {
 public:
  CudaTrainer(const Config& cfg, const Topology& topo, Communicator& host, NcclCommunicator& nccl)
      : cfg_(cfg), topo_(topo), host_(host), nccl_(nccl) {}
  std::string build();
  std::string resume() override;
  const char* device() const override { return "cuda"; }
  std::string step(StepReport* r, bool* fatal) override;
  std::string save_checkpoint(const std::string& root) override;
  int64_t next_step() const override { return next_step_; }
  const ModelDesc& desc() const override { return desc_; }
  const UnitProgram& rank_program() const override { return prog_.ranks[size_t(topo_.me.pp)]; }
  const ExecResult& last_exec() const override { return last_exec_; }
  Clock::time_point last_exec_start() const override { return exec_start_; }

 private:
  std::string load_batches(int64_t step);
  std::string sync_tied();
  CheckpointSite checkpoint_site();

  Config cfg_;
  Topology topo_;
  Communicator& host_;
  NcclCommunicator& nccl_;
  int chunks_ = 1;
  ModelDesc desc_;
  LoweredProgram prog_;
  cuda::DeviceAllocator alloc_;
  cuda::Stream stream_;
  std::unique_ptr<cuda::Ctx> ctx_;
  std::unique_ptr<cuda::CudaRankModel> model_;
  std::unique_ptr<cuda::CudaStreamDevice> dev_;
  std::unique_ptr<DeviceTensors> tensors_;
  std::unique_ptr<StreamExecutor> exec_;
  std::unique_ptr<GradNormPlan> norm_plan_;
  std::unique_ptr<DataLoader> data_;
  std::vector<std::vector<int32_t>> inputs_, targets_;
  ExecResult last_exec_;
  Clock::time_point exec_start_{};
  int64_t next_step_ = 1;
};

std::string CudaTrainer::build() {
  if (!cfg_.train.init_from.empty()) return "train.init_from is not supported with train.device=cuda yet";
  if (std::string err = build_run_program(cfg_, &chunks_, &desc_, &prog_); !err.empty()) return err;
  ctx_ = std::make_unique<cuda::Ctx>(alloc_, stream_.get(), cfg_.train.deterministic);
  model_ = std::make_unique<cuda::CudaRankModel>(cfg_, desc_, prog_.pipeline, topo_.me.pp, topo_.me.tp, *ctx_);
  if (!model_->error().empty()) return model_->error();
  exec_ = std::make_unique<StreamExecutor>(desc_, rank_program(), nccl_.whoami());
  if (!exec_->plan_error().empty()) return exec_->plan_error();
  dev_ = std::make_unique<cuda::CudaStreamDevice>(desc_, rank_program(), *model_, nccl_, *ctx_, cfg_.train.timeout_s);
  tensors_ = std::make_unique<DeviceTensors>(desc_, *dev_);
  norm_plan_ = std::make_unique<GradNormPlan>(desc_, topo_);
  const size_t N = size_t(cfg_.schedule.micro_batch_size) * size_t(cfg_.model.seq_len);
  inputs_.assign(size_t(cfg_.schedule.microbatches), std::vector<int32_t>(N, 0));
  targets_.assign(size_t(cfg_.schedule.microbatches), std::vector<int32_t>(N, -1));
  if (model_->holds_embedding() || model_->holds_last()) {
    DataLoader::Result d = DataLoader::open(cfg_.data, data_shape_of(cfg_));
    if (!d.loader) return d.error;
    data_ = std::move(d.loader);
  }
  return {};
}

std::string CudaTrainer::load_batches(int64_t step) {
  if (!data_) return {};  // a middle stage reads neither tokens nor targets
  for (int m = 0; m < cfg_.schedule.microbatches; ++m) {
    std::string err = data_->load(step, topo_.me.dp, m, inputs_[size_t(m)].data(), targets_[size_t(m)].data());
    if (!err.empty()) return "step " + std::to_string(step) + ": " + err;
    model_->upload_batch(m, inputs_[size_t(m)], targets_[size_t(m)]);
  }
  return {};
}

// Replicas of a tied embedding: summed through the host on a rank holding both (rare: pp 1 with
// chunks, V placement), by an NCCL all-reduce across the embedding group otherwise.
std::string CudaTrainer::sync_tied() {
  if (!cfg_.model.tie_embeddings || desc_.stages.size() < 2) return {};
  std::vector<cuda::DevParam*> reps;
  for (auto& p : model_->params())
    if (p->desc->name == "embed.weight") reps.push_back(p.get());
  if (reps.size() == 2) {
    std::vector<float> a = model_->download(reps[0]->grad), b = model_->download(reps[1]->grad);
    for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
    model_->upload(reps[0]->grad, a);
    model_->upload(reps[1]->grad, a);
    return {};
  }
  if (reps.size() != 1 || nccl_.size(GroupKind::Embed) < 2) return {};
  const CommStatus st = nccl_.all_reduce(GroupKind::Embed, reps[0]->grad.data(), reps[0]->grad.data(), reps[0]->n,
                                         DType::F32, ReduceOp::Sum, StreamRef{ctx_->stream})
                            .wait(cfg_.train.timeout_s);
  return st.ok() ? std::string() : "tied embedding gradient: " + st.error;
}

std::string CudaTrainer::step(StepReport* r, bool* fatal) {
  const Clock::time_point t0 = Clock::now();
  const int64_t s = next_step_;
  *fatal = true;
  *r = StepReport{};
  r->step = s;
  r->tokens = step_tokens(cfg_);
  alloc_.reset_peak();
  std::string err = load_batches(s);
  if (!err.empty()) return err;
  model_->begin_step(float(1.0 / double(step_loss_tokens(cfg_))));
  exec_start_ = Clock::now();
  const StreamExecResult res = exec_->run(*dev_, *tensors_);
  if (!res.ok()) return "step " + std::to_string(s) + ": " + res.error;
  last_exec_ = dev_->timings();
  last_exec_.peak_act_bytes = res.stats.peak_act_bytes;
  if (!(err = sync_tied()).empty()) return err;
  // Gradient norm (global parameter order) and loss (micro-batch slots), on the host communicator.
  const std::vector<double> sq = model_->grad_sq_norms();
  std::vector<double> local(size_t(norm_plan_->vector_size()), 0.0);
  for (size_t k = 0; k < sq.size(); ++k) {
    const cuda::DevParam& p = *model_->params()[k];
    if (norm_plan_->contributes(p.stage, p.index)) local[size_t(norm_plan_->index(p.stage, p.index))] = sq[k];
  }
  r->grad_norm = norm_plan_->reduce(host_, local, cfg_.train.timeout_s, &err);
  std::vector<double> mb_sums;
  if (model_->holds_last() && topo_.me.tp == 0)
    for (int m = 0; m < cfg_.schedule.microbatches; ++m) mb_sums.push_back(model_->loss_sum(m));
  if (err.empty()) r->loss = step_loss_reduce(host_, cfg_, topo_.me.dp, mb_sums, &err);
  if (!err.empty()) return "step " + std::to_string(s) + ": " + err;
  if (!(err = step_clip_and_lr(cfg_, r, fatal)).empty()) return err;
  model_->adamw(cfg_.train, s, float(r->clip_scale));
  CUDA_CHECK(cudaStreamSynchronize(ctx_->stream));  // the step's time includes its update
  RankStepStats mine;
  mine.peak_mem_bytes = double(alloc_.peak_bytes());
  mine.act_peak_bytes = double(res.stats.peak_act_bytes);
  mine.exposed_comm_s = last_exec_.exposed_comm_s;
  mine.exposed_tp_s = last_exec_.exposed_tp_s;
  mine.exposed_pp_s = last_exec_.exposed_pp_s;
  mine.exposed_dp_s = last_exec_.exposed_dp_s;
  mine.compute_s = last_exec_.compute_s;
  if (!(err = step_gather_stats(host_, mine, cfg_.train.timeout_s, r)).empty()) return err;
  r->step_time_s = seconds_since(t0);
  next_step_ = s + 1;
  return {};
}

CheckpointSite CudaTrainer::checkpoint_site() {
  return CheckpointSite{&cfg_, chunks_, placement_name(prog_.pipeline.placement), topo_.rank, topo_.world(), &host_};
}

std::string CudaTrainer::save_checkpoint(const std::string& root) {
  const int64_t step = next_step_ - 1;
  if (root.empty() || step < 1) return {};
  ShardMap shard;
  for (auto& p : model_->params())
    checkpoint_put_param(&shard, p->stage, p->desc->name, p->local_shape, model_->download(p->master),
                         model_->download(p->m), model_->download(p->v));
  return checkpoint_save(checkpoint_site(), root, step, shard);
}

std::string CudaTrainer::resume() {
  if (!cfg_.train.resume) return {};
  int64_t latest = -1;
  ShardMap shard;
  std::string path;
  std::string err = checkpoint_load(checkpoint_site(), &latest, &shard, &path);
  if (!err.empty() || latest < 0) return err;
  for (auto& p : model_->params()) {
    std::vector<float> value(size_t(p->n)), m(size_t(p->n)), v(size_t(p->n));
    err = checkpoint_take_param(shard, path, p->stage, p->desc->name, p->local_shape, &value, &m, &v);
    if (!err.empty()) return err;
    model_->upload(p->master, value);
    model_->upload(p->m, m);
    model_->upload(p->v, v);
  }
  model_->refresh_bf16();
  next_step_ = latest + 1;
  return {};
}

// The host communicator (loss, norms, statistics, SIGTERM votes, checkpoint agreement) is MPI under
// an MPI launcher, which also hands NCCL its unique id. Under torchrun or a bare srun there is no
// MPI: NCCL bootstraps from MASTER_ADDR (nccl_bootstrap.h) and the host values travel over the NCCL
// communicators through device staging (staged_comm.h).
bool host_over_mpi(const LaunchEnv& env) {
  return env.world > 1 && (env.launcher == "openmpi" || env.launcher == "pmi");
}

}  // namespace

int cuda_train_main(const Config& cfg, const LaunchEnv& env) {
  if (auto e = config_validate_world(cfg, env.world)) {
    spdlog::error("{}", e->to_string());
    return 2;
  }
  const Topology topo = topology_build(cfg.parallel, env);
  const bool v = pipeline_placement(cfg.schedule.name) == Placement::V;
  const double timeout = cfg.train.timeout_s;
  const bool mpi = host_over_mpi(env);
  WorldComm world;  // MPI, or the single-rank communicator for a world of one
  if (mpi || env.world <= 1) {
    if (const std::string err = world_comm_open(topo, env, v, &world); !err.empty()) {
      spdlog::error("train.device=cuda: the host communicator: {}", err);
      return 2;
    }
  }
  NcclCreateResult nc = comm_create_nccl(topo, v, env, nccl_options_of(cfg),
                                         mpi ? nccl_id_broadcast_over(*world.comm, timeout) : NcclIdBroadcast{});
  if (world.comm) {
    if (!agree(*world.comm, nc.comm ? std::string() : "NCCL: " + nc.error, timeout)) return 2;
  } else if (!nc.comm) {  // the launcher ends the ranks still waiting in NCCL's set-up
    spdlog::error("{}: NCCL: {}", topo.to_string(), nc.error);
    return 2;
  }
  // Declared outside the try (destroyed in reverse order: trainer, staged host communicator, NCCL,
  // MPI): a CUDA error aborts the communicators and exits before any CUDA teardown, which could
  // wait on device work that a peer will never complete (cudaFree synchronises the device).
  std::unique_ptr<Communicator> staged;
  std::unique_ptr<CudaTrainer> tr;
  try {
    if (!world.comm) staged = comm_create_staged(*nc.comm, staging_cuda(), timeout);
    Communicator& host = world.comm ? *world.comm : *staged;
    sigterm_setup(cfg, host);
    announce_run(cfg, topo, env, host);
    if (topo.rank == 0)
      spdlog::info("NCCL: {}; host reductions over {}", nc.comm->bootstrap(),
                   mpi ? "MPI" : env.world > 1 ? "NCCL (staged)" : "the process");
    tr = std::make_unique<CudaTrainer>(cfg, topo, host, *nc.comm);
    if (!agree(host, tr->build(), timeout)) return 2;
    return train_loop(*tr, cfg, host);
  } catch (const cuda::CudaError& e) {
    nc.comm->abort(e.what(), 1);
  }
}

}  // namespace stp
