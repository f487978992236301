// simulate.cpp: `stp-train simulate`: one iteration of the config's schedule (or all of them with
// --compare) on the cost model, as a table or JSON, with optional Chrome trace and SVG timeline.
#include <algorithm>
#include <cstdio>
#include <fstream>

#include "cmd/commands.h"
#include "scheduler/render.h"
#include "scheduler/simulator.h"

namespace stp {

namespace {

bool write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (out) return true;
  std::fprintf(stderr, "error: cannot write '%s'\n", path.c_str());
  return false;
}

void print_table(const std::vector<SimResult>& rs, bool unit) {
  std::printf("# %-11s %12s %12s %8s %7s %9s %9s %10s\n", "schedule", unit ? "iter(units)" : "iter_s",
              unit ? "tokens/unit" : "tokens/s", "TFLOPS", "MFU", "pp_bubble", "tp_expos", "peak_GB");
  for (const SimResult& r : rs) {
    const int64_t peak = r.peak_mem_bytes.empty() ? 0 : *std::max_element(r.peak_mem_bytes.begin(), r.peak_mem_bytes.end());
    std::printf("  %-11s %12.4f %12.1f %8.1f %6.1f%% %8.1f%% %8.1f%% %10.2f%s\n", r.schedule.c_str(), r.iteration_time,
                r.tokens_per_s, r.tflops_per_gpu, 100 * r.mfu, 100 * r.pp_bubble_fraction, 100 * r.tp_exposed_fraction,
                peak / 1e9, std::all_of(r.ranks.begin(), r.ranks.end(), [](const RankReport& k) { return k.fits; }) ? "" : "  (does not fit)");
  }
}

}  // namespace

int cmd_simulate(const Config& cfg, const SimulateOptions& opt) {
  SimOptions so;
  so.cost = opt.cost == "unit" ? CostMode::Unit : CostMode::Flops;
  so.pp_streams = opt.pp_streams == "single" ? PPStreams::Single : PPStreams::Channel;
  std::vector<SimResult> rs;
  std::vector<std::string> skipped;
  if (opt.compare) {
    rs = simulate_compare(cfg, so, &skipped);
    std::sort(rs.begin(), rs.end(), [](const SimResult& a, const SimResult& b) { return a.iteration_time < b.iteration_time; });
  } else {
    rs.push_back(simulate(cfg, so));
  }
  for (const SimResult& r : rs)
    if (!r.ok()) {
      std::fprintf(stderr, "error: %s\n", r.error.c_str());
      return 2;
    }
  if (rs.empty()) {
    std::fprintf(stderr, "error: no schedule accepts this config\n");
    return 2;
  }
  if (opt.json) {
    if (!opt.compare) {
      std::printf("%s\n", sim_result_to_json(rs[0]).c_str());
    } else {
      std::printf("[\n");
      for (size_t i = 0; i < rs.size(); ++i) std::printf("%s%s\n", sim_result_to_json(rs[i]).c_str(), i + 1 < rs.size() ? "," : "");
      std::printf("]\n");
    }
  } else {
    const SimResult& r0 = rs[0];
    std::printf("# %s: TP %d x PP %d x DP %d, %d chunks, M = %d x %d sequences of %d tokens, cost %s, pp streams %s\n",
                cfg.source.c_str(), r0.tp, r0.pp, r0.dp, r0.chunks, r0.microbatches, r0.micro_batch_size, r0.seq_len,
                opt.cost.c_str(), opt.pp_streams.c_str());
    print_table(rs, so.cost == CostMode::Unit);
    for (const std::string& s : skipped) std::printf("# skipped: %s\n", s.c_str());
  }
  if (!opt.trace.empty() && !write_text(opt.trace, render_chrome_trace(rs[0]))) return 1;
  if (!opt.svg.empty() && !write_text(opt.svg, render_svg(rs[0]))) return 1;
  return 0;
}

}  // namespace stp
