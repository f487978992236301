// train_loop.cpp: the step loop both trainers run (contract in train_loop.h).
#include "runtime/train_loop.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>

#include "runtime/core/metrics.h"
#include "runtime/run_report.h"
#include "runtime/signals.h"
#include "runtime/trace.h"

namespace stp {

namespace {

using Clock = std::chrono::steady_clock;
constexpr int64_t kTraceSteps = 4;  // output.trace records the first steps (a few MB per rank)
constexpr int kExitSigterm = 128 + SIGTERM;  // what a shell reports for a process ended by SIGTERM

// The stop after SIGTERM at a step boundary (every rank, together): the checkpoint of the last
// completed step, unless no step completed since the start or `saved_step` is that step. Returns
// the summary's `stopped` reason; a failed save aborts the job.
std::string stop_on_sigterm(StepRunner& tr, const Config& cfg, Communicator& comm, int64_t saved_step) {
  const bool lead = comm.world_rank() == 0;
  const int64_t step = tr.next_step() - 1;
  std::string msg;
  if (step < 1) {
    msg = "SIGTERM before step 1 completed: no checkpoint written; exiting";
  } else if (step == saved_step) {
    msg = "SIGTERM: the checkpoint of step " + std::to_string(step) + " is already in " +
          cfg.output.checkpoint.dir + "; exiting";
  } else {
    std::string root = cfg.output.checkpoint.dir;
    if (root.empty()) {
      root = (std::filesystem::path(cfg.output.dir) / "checkpoint").string();
      if (lead) spdlog::info("SIGTERM: output.checkpoint.dir is empty, so the checkpoint goes to {}", root);
    }
    const std::string err = tr.save_checkpoint(root);
    if (!err.empty()) abort_job(comm, "SIGTERM: " + err, cfg.train.timeout_s);
    msg = "SIGTERM: checkpoint of step " + std::to_string(step) + " written to " + root + "; exiting";
  }
  if (lead) spdlog::warn("{}", msg);
  return msg;
}

}  // namespace

void abort_job(Communicator& comm, const std::string& message, double timeout_s) {
  const std::string silent = comm.diagnose(std::min(2.0, timeout_s));
  comm.abort(silent.empty() ? message : message + "; " + silent, 1);
  std::_Exit(1);  // not reached: abort() ends the process
}

bool agree(Communicator& comm, const std::string& my_error, double timeout_s) {
  if (!my_error.empty()) spdlog::error("{}: {}", comm.whoami(), my_error);
  bool bad = false;
  const CommStatus st = comm_any(comm, !my_error.empty(), timeout_s, &bad);
  if (!st.ok()) abort_job(comm, "set-up: " + st.error, timeout_s);
  return !bad;
}

void sigterm_setup(const Config& cfg, Communicator& comm) {
  if (!cfg.train.checkpoint_on_sigterm) return;
  const std::string err = sigterm_install();
  if (!err.empty()) spdlog::warn("{}: {}; SIGTERM ends the process without a checkpoint", comm.whoami(), err);
}

void announce_run(const Config& cfg, const Topology& topo, const LaunchEnv& env, Communicator& comm) {
  constexpr int kHost = 64;
  std::vector<char> mine(kHost, 0), all(size_t(kHost) * comm.world_size(), 0);
  std::snprintf(mine.data(), kHost, "%s", env.host.c_str());
  CommHandle h = comm.all_gather(GroupKind::World, mine.data(), all.data(), kHost, DType::U8);
  const CommStatus st = h.wait(cfg.train.timeout_s);
  if (topo.rank != 0) return;
  std::vector<std::string> hosts;
  for (int r = 0; st.ok() && r < comm.world_size(); ++r) hosts.emplace_back(all.data() + size_t(r) * kHost);
  spdlog::info("{}", topo.to_string());
  spdlog::info("\n{}", topology_table(topo, hosts));
  for (const std::string& w : topology_warnings(topo)) spdlog::warn("{}", w);
  const std::string err = write_file_atomic(cfg.output.dir, "config.json", config_to_json(cfg) + "\n");
  if (!err.empty()) spdlog::warn("config.json: {}", err);
}

int train_loop(StepRunner& tr, const Config& cfg, Communicator& comm) {
  const bool lead = comm.world_rank() == 0;
  if (!agree(comm, tr.resume(), cfg.train.timeout_s)) return 2;
  if (lead && tr.next_step() > 1) spdlog::info("resumed from {} at step {}", cfg.output.checkpoint.dir, tr.next_step());
  MetricsWriter metrics;
  if (lead && cfg.output.metrics) {
    const std::string err = metrics.open(cfg.output.dir, tr.next_step() > 1);
    if (!err.empty()) spdlog::warn("metrics: {}", err);
  }
  std::unique_ptr<ExecTrace> trace;
  if (cfg.output.trace) trace = std::make_unique<ExecTrace>(comm.world_rank(), comm.whoami());
  const Clock::time_point t0 = Clock::now();
  RunTotals totals;
  std::string stopped;
  int code = 0;
  bool warned_slow = false;
  int64_t saved_step = tr.next_step() - 1;  // a resumed run's checkpoint; then the last one written
  while (tr.next_step() <= cfg.train.steps) {
    std::string err;
    if (cfg.train.checkpoint_on_sigterm && sigterm_agree(comm, cfg.train.timeout_s, &err)) {
      stopped = stop_on_sigterm(tr, cfg, comm, saved_step);
      code = kExitSigterm;
      break;
    }
    if (!err.empty()) abort_job(comm, err, cfg.train.timeout_s);
    StepReport r;
    bool fatal = false;
    err = tr.step(&r, &fatal);
    if (!err.empty() && fatal) abort_job(comm, err, cfg.train.timeout_s);
    if (!err.empty()) {
      if (lead) spdlog::error("{}", err);
      stopped = err;
      code = 1;
      break;
    }
    if (trace && r.step <= kTraceSteps)
      trace->add_iteration(int(r.step), std::chrono::duration<double>(tr.last_exec_start() - t0).count(),
                           tr.rank_program(), tr.last_exec(), tr.desc());
    nlohmann::json j = step_json(r, cfg, tr.desc(), comm.world_size());
    j["device"] = tr.device();
    if (lead) {
      totals.add(j);
      log_step(j, cfg.train.steps);
      if (metrics.is_open()) metrics.write(j);
      if (!warned_slow && cfg.train.timeout_s > 0 && r.step_time_s > 0.5 * cfg.train.timeout_s) {
        warned_slow = true;
        spdlog::warn("step {} took {:.1f} s, more than half of train.timeout_s ({:.0f} s): an operation's timeout "
                     "counts from when the host issues it, up to a step before it runs; raise train.timeout_s",
                     r.step, r.step_time_s, cfg.train.timeout_s);
      }
    }
    if (checkpoint_due(cfg, r.step)) {
      err = tr.save_checkpoint(cfg.output.checkpoint.dir);
      if (!err.empty()) abort_job(comm, err, cfg.train.timeout_s);
      saved_step = r.step;
      if (lead) spdlog::info("checkpoint: step {} written to {}", r.step, cfg.output.checkpoint.dir);
    }
  }
  if (lead && metrics.is_open()) {
    nlohmann::json summary = summary_json(totals, cfg, stopped);
    summary["device"] = tr.device();
    metrics.write(summary);
  }
  if (trace) {
    const std::string err = trace->write(cfg.output.dir);
    if (!err.empty()) spdlog::warn("trace: {}", err);
  }
  return code;
}

}  // namespace stp
