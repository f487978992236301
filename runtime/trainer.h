// trainer.h: the training loop on TP x PP x DP ranks (issue 5).
//
// One step s (from 1):
//   1. data      ranks holding the first / last virtual stage read micro-batches m = 0..M-1 of
//                step s for their DP rank (runtime/data.h: i = ((s-1)*dp + d)*M*b + m*b + j).
//   2. run       the executor runs this rank's unit program (scheduler/lower.h), which ends with the
//                TP all-reduce of TP-partial gradients and the DP all-reduce of all gradients.
//                Head.B's loss scale is 1 / (dp*M*b*T'), T' = the tokens of a sequence with a loss
//                (T minus a VLM's visual positions): the gradients are those of the mean token
//                loss of the global batch. Weight gradients are accumulated in micro-batch order
//                (RankModel, train.deterministic).
//   3. tied      with tied embeddings the two replicas' gradients are summed (locally on a rank
//                holding both; else an all-reduce over the embedding group).
//   4. norm      the global gradient norm in global parameter order (grad_norm.h), identical on
//                every rank; clip factor min(1, grad_clip / (norm + 1e-6)) when grad_clip > 0.
//   5. check     a non-finite loss or norm stops the run (every rank sees the same values), before
//                any update, so the last checkpoint stays good.
//   6. update    AdamW (optimizer.h) on every local tensor with lr_at(step).
//   7. report    loss = sum of micro-batch token losses / tokens with a loss, summed in (dp, mb) order; per-rank
//                memory and exposed communication gathered; rank 0 writes metrics.jsonl and logs.
// Faults: any failure that only some ranks see (a timeout, a data error) is fatal: the caller
// aborts the job with the message (Communicator::abort). Errors are values throughout.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "model/params.h"
#include "runtime/checkpoint.h"
#include "runtime/core/config.h"
#include "runtime/core/topology.h"
#include "runtime/data.h"
#include "runtime/executor.h"
#include "runtime/grad_norm.h"
#include "runtime/rank_model.h"
#include "scheduler/lower.h"

namespace stp {

// A run's program, as every trainer builds it: chunks per rank (also written to
// cfg.parallel.chunks), the model description and this run's lowered unit programs of the
// pipeline program pipeline_from_config gives. "" or the error.
std::string build_run_program(Config& cfg, int* chunks, ModelDesc* desc, LoweredProgram* prog);

// Per-rank numbers of one step, gathered to every rank (index = global rank).
struct RankStepStats {
  double peak_mem_bytes = 0;   // model state (16 B/param) + activation peak + side buffer peak
  double act_peak_bytes = 0;   // executor's TensorStore high-water mark in this step
  double side_peak_bytes = 0;  // ordered-accumulation side buffer high-water mark
  double exposed_comm_s = 0, exposed_tp_s = 0, exposed_pp_s = 0, exposed_dp_s = 0;
  double compute_s = 0;
  double rss_bytes = 0;        // process peak resident set (getrusage)
};

struct StepReport {
  int64_t step = 0;
  double loss = 0;        // mean token loss of the step's forward pass (before the update)
  double lr = 0;
  double grad_norm = 0;   // before clipping
  double clip_scale = 1;
  int64_t tokens = 0;     // dp * M * b * T
  double step_time_s = 0;
  std::vector<RankStepStats> ranks;
};

// ---- the host half of a step, the same for every trainer (CPU and CUDA) -------------------------

// Tokens of the step's global batch, dp*M*b*T, and those with a loss, dp*M*b*T'.
int64_t step_tokens(const Config& cfg);
int64_t step_loss_tokens(const Config& cfg);
// The step's mean token loss. `mb_sums`: this rank's micro-batch loss sums when it is the last
// stage's TP rank 0, empty on every other rank. They fill the (dp, mb) slots of a world all-reduce,
// summed in slot order and divided by step_loss_tokens. Sets *error on a failed reduction.
double step_loss_reduce(Communicator& comm, const Config& cfg, int dp_rank, const std::vector<double>& mb_sums,
                        std::string* error);
// After r's loss and gradient norm are known: a non-finite one stops the run before the update (the
// returned error; *fatal = false, since every rank sees the same values); otherwise sets r's clip
// scale and learning rate.
std::string step_clip_and_lr(const Config& cfg, StepReport* r, bool* fatal);
// Every rank's statistics into r->ranks (index = global rank). "" or the error.
std::string step_gather_stats(Communicator& comm, const RankStepStats& mine, double timeout_s, StepReport* r);

// What the step loop (runtime/train_loop.h) drives: the CPU Trainer below and the CUDA trainer.
class StepRunner {
 public:
  virtual ~StepRunner() = default;
  virtual const char* device() const = 0;  // "cpu" | "cuda"
  // train.resume: loads the latest complete checkpoint under output.checkpoint.dir, if any
  // (collective); "" or the error.
  virtual std::string resume() = 0;
  virtual int64_t next_step() const = 0;
  // Runs step next_step(); "" or the error, *fatal = whether some ranks may not have seen it.
  virtual std::string step(StepReport* report, bool* fatal) = 0;
  // Writes the checkpoint of step next_step() - 1 under `root` (collective); "" or the error.
  virtual std::string save_checkpoint(const std::string& root) = 0;
  virtual const ModelDesc& desc() const = 0;
  virtual const UnitProgram& rank_program() const = 0;
  virtual const ExecResult& last_exec() const = 0;
  virtual std::chrono::steady_clock::time_point last_exec_start() const = 0;
};

class Trainer final : public StepRunner {
 public:
  struct Result;
  // Builds the schedule, the lowered program, the model shard, and opens the data.
  static Result create(const Config& cfg, const Topology& topo, Communicator& comm);
  ~Trainer() override;

  std::string resume() override;
  // Runs step next_step(). On error, *fatal says whether other ranks may be stuck (abort the job).
  std::string step(StepReport* report, bool* fatal) override;
  int64_t next_step() const override { return next_step_; }
  const char* device() const override { return "cpu"; }
  // Writes this rank's shard of the last completed step under `root`; rank 0 then writes the
  // manifest. Nothing (and "") when root is empty or no step has completed. Collective.
  std::string save_checkpoint(const std::string& root) override;
  std::string save_checkpoint() { return save_checkpoint(cfg_.output.checkpoint.dir); }
  // The full model (or gradients) on every rank, in our naming, each tied replica once.
  FullState gather_full(bool grad, std::string* error);

  const ModelDesc& desc() const override { return desc_; }
  const LoweredProgram& program() const { return prog_; }
  const UnitProgram& rank_program() const override { return prog_.ranks[size_t(topo_.me.pp)]; }
  RankModel& model() { return *model_; }
  const ExecResult& last_exec() const override { return last_exec_; }
  std::chrono::steady_clock::time_point last_exec_start() const override { return last_exec_start_; }
  const Topology& topology() const { return topo_; }
  int chunks() const { return chunks_; }
  CheckpointSite checkpoint_site();

 private:
  Trainer(const Config& cfg, const Topology& topo, Communicator& comm) : cfg_(cfg), topo_(topo), comm_(comm) {}
  std::string build();
  std::string load_batches(int64_t step);
  std::string sync_tied();
  double grad_norm(std::string* error);
  void update(int64_t step, float scale);
  RankStepStats my_stats() const;

  Config cfg_;
  Topology topo_;
  Communicator& comm_;
  int chunks_ = 1;
  ModelDesc desc_;
  LoweredProgram prog_;
  std::unique_ptr<RankModel> model_;
  std::unique_ptr<TensorStore> store_;
  std::unique_ptr<Executor> exec_;
  std::unique_ptr<GradNormPlan> norm_plan_;
  std::unique_ptr<DataLoader> data_;
  ExecResult last_exec_;
  std::chrono::steady_clock::time_point last_exec_start_{};
  int64_t next_step_ = 1;
};

struct Trainer::Result {
  std::unique_ptr<Trainer> trainer;
  std::string error;
};

// The whole `stp-train train` run on this process: MPI (world > 1) or a single rank, the trainer,
// metrics, trace, checkpoints. Returns the exit code: 0 done, 1 runtime failure (NaN, failed
// checkpoint), 2 bad input (config vs world, data, checkpoint from another config), 143 stopped by
// SIGTERM (train.checkpoint_on_sigterm: at the first step boundary after any rank received it,
// every rank writes the checkpoint of the last completed step, to output.checkpoint.dir or else
// output.dir/checkpoint, unless no step completed since the start or that step is already saved;
// runtime/signals.h). Faults that can leave ranks hanging end the job through MPI_Abort with a
// message naming this rank.
int train_main(const Config& cfg, const LaunchEnv& env);

}  // namespace stp
