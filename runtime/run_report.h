// run_report.h: what both training loops (the CPU one in train_main.cpp and the CUDA one in
// runtime/cuda/cuda_train.cpp) share around their trainer: the world communicator they vote and
// reduce over, the metrics.jsonl objects and log line of a step, the run summary, and when a step
// is checkpointed.
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "comm/mpi_comm.h"
#include "model/desc/desc.h"
#include "runtime/core/config.h"
#include "runtime/core/topology.h"
#include "runtime/trainer.h"

namespace stp {

// The world communicator of a run: MPI when the launcher started several ranks (the session is
// finalised after the communicator: keep them in this order), else the single-rank one. "" or a
// message naming what failed.
struct WorldComm {
  std::unique_ptr<MpiSession> session;
  std::unique_ptr<Communicator> comm;
};
std::string world_comm_open(const Topology& topo, const LaunchEnv& env, bool v_placement, WorldComm* out);

// One metrics.jsonl line (docs/training.md keys) from a step's report; `world` ranks share the FLOPs.
nlohmann::json step_json(const StepReport& r, const Config& cfg, const ModelDesc& desc, int world);
// Rank 0's log line of a step, from its metrics object.
void log_step(const nlohmann::json& j, int steps);

// What rank 0 accumulates for the summary object.
struct RunTotals {
  int steps = 0;
  double first_loss = NAN, last_loss = NAN, time_s = 0, tokens = 0, exposed_s = 0, tflops = 0;
  int64_t peak_mem = 0;
  void add(const nlohmann::json& step);
};
// The last metrics.jsonl line; `stopped` is why the run ended early ("" = it did not).
nlohmann::json summary_json(const RunTotals& t, const Config& cfg, const std::string& stopped);

// Whether the end of `step` writes a checkpoint: every output.checkpoint.every steps, and the last
// step once (when output.checkpoint.dir is set).
bool checkpoint_due(const Config& cfg, int64_t step);

}  // namespace stp
