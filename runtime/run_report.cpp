// run_report.cpp: the pieces both training loops share (contract in run_report.h).
#include "runtime/run_report.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "comm/self_comm.h"

namespace stp {

std::string world_comm_open(const Topology& topo, const LaunchEnv& env, bool v_placement, WorldComm* out) {
  if (env.world <= 1) {
    out->comm = comm_create_self();
    return {};
  }
  MpiSession::Result s = MpiSession::start(nullptr, nullptr);
  if (!s.session) return s.error;
  out->session = std::move(s.session);
  CommCreateResult c = comm_create_mpi(*out->session, topo, v_placement);
  if (!c.comm) return "communicator: " + c.error;
  out->comm = std::move(c.comm);
  return {};
}

namespace {

double mean_of(const std::vector<RankStepStats>& r, double RankStepStats::*f) {
  double s = 0;
  for (const RankStepStats& x : r) s += x.*f;
  return r.empty() ? 0 : s / double(r.size());
}

}  // namespace

nlohmann::json step_json(const StepReport& r, const Config& cfg, const ModelDesc& desc, int world) {
  nlohmann::json per_rank_mem = nlohmann::json::array(), per_rank_act = nlohmann::json::array(),
                 per_rank_exp = nlohmann::json::array();
  double peak = 0;
  for (const RankStepStats& x : r.ranks) {
    per_rank_mem.push_back(int64_t(x.peak_mem_bytes));
    per_rank_act.push_back(int64_t(x.act_peak_bytes));
    per_rank_exp.push_back(x.exposed_comm_s);
    peak = std::max(peak, x.peak_mem_bytes);
  }
  const double tps = double(r.tokens) / r.step_time_s;
  const double tflops = 3.0 * desc.flops_per_token_fwd * tps / world / 1e12;
  return {{"step", r.step},
          {"loss", r.loss},
          {"lr", r.lr},
          {"grad_norm", r.grad_norm},
          {"clip_scale", r.clip_scale},
          {"tokens", r.tokens},
          {"step_time_s", r.step_time_s},
          {"tokens_per_s", tps},
          {"tflops_per_gpu", tflops},
          {"mfu", tflops / cfg.cluster.gpu.peak_tflops},
          {"peak_mem_bytes", int64_t(peak)},
          {"peak_mem_bytes_per_rank", per_rank_mem},
          {"act_peak_bytes_per_rank", per_rank_act},
          {"exposed_comm_s", mean_of(r.ranks, &RankStepStats::exposed_comm_s)},
          {"exposed_comm_s_per_rank", per_rank_exp},
          {"exposed_tp_s", mean_of(r.ranks, &RankStepStats::exposed_tp_s)},
          {"exposed_pp_s", mean_of(r.ranks, &RankStepStats::exposed_pp_s)},
          {"exposed_dp_s", mean_of(r.ranks, &RankStepStats::exposed_dp_s)}};
}

void log_step(const nlohmann::json& j, int steps) {
  spdlog::info("step {}/{} | loss {:.4f} | lr {:.2e} | grad norm {:.3f} | {:.0f} tok/s | {:.4f} TFLOPS/GPU | "
               "MFU {:.2f}% | peak mem {:.2f} MiB | exposed comm {:.2f} ms",
               j["step"].get<int64_t>(), steps, j["loss"].get<double>(), j["lr"].get<double>(),
               j["grad_norm"].get<double>(), j["tokens_per_s"].get<double>(),
               j["tflops_per_gpu"].get<double>(), 100.0 * j["mfu"].get<double>(),
               j["peak_mem_bytes"].get<double>() / 1048576.0, 1e3 * j["exposed_comm_s"].get<double>());
}

void RunTotals::add(const nlohmann::json& j) {
  if (steps++ == 0) first_loss = j["loss"];
  last_loss = j["loss"];
  time_s += j["step_time_s"].get<double>();
  tokens += j["tokens"].get<double>();
  exposed_s += j["exposed_comm_s"].get<double>();
  tflops += j["tflops_per_gpu"].get<double>();
  peak_mem = std::max(peak_mem, j["peak_mem_bytes"].get<int64_t>());
}

nlohmann::json summary_json(const RunTotals& t, const Config& cfg, const std::string& stopped) {
  const double n = std::max(1, t.steps);
  return {{"summary", true},
          {"schedule", cfg.schedule.name},
          {"tp", cfg.parallel.tp}, {"pp", cfg.parallel.pp}, {"dp", cfg.parallel.dp},
          {"steps", t.steps},
          {"first_loss", t.first_loss},
          {"final_loss", t.last_loss},
          {"train_time_s", t.time_s},
          {"tokens_per_s", t.time_s > 0 ? t.tokens / t.time_s : 0.0},
          {"tflops_per_gpu", t.tflops / n},
          {"mfu", t.tflops / n / cfg.cluster.gpu.peak_tflops},
          {"peak_mem_bytes", t.peak_mem},
          {"exposed_comm_s_per_step", t.exposed_s / n},
          {"stopped", stopped.empty() ? nlohmann::json(nullptr) : nlohmann::json(stopped)}};
}

bool checkpoint_due(const Config& cfg, int64_t step) {
  const int every = cfg.output.checkpoint.every;
  const bool last = step == cfg.train.steps;
  return !cfg.output.checkpoint.dir.empty() && ((every > 0 && step % every == 0) || (last && (every <= 0 || step % every)));
}

}  // namespace stp
