// schedule.cpp: `stp-train schedule`: print or draw every rank's pipeline program.
#include <cstdio>
#include <fstream>

#include "cmd/commands.h"
#include "scheduler/program.h"
#include "scheduler/render.h"
#include "scheduler/simulator.h"
#include "scheduler/text_io.h"

namespace stp {

int cmd_schedule(const Config& cfg, const ScheduleOptions& opt) {
  const ProgramResult pr = pipeline_from_config(cfg);
  if (!pr.ok()) {
    std::fprintf(stderr, "error: %s\n", pr.error.c_str());
    return 2;
  }
  std::string text;
  if (opt.format == "csv") text = pipeline_to_csv(*pr.program);
  else if (opt.format == "text") text = pipeline_to_text(*pr.program);
  else {
    // The SVG is a timeline, so it needs times: the unit-cost simulation of this program.
    SimOptions so;
    so.cost = CostMode::Unit;
    so.pp_streams = PPStreams::Channel;
    const SimResult r = simulate(cfg, so);
    if (!r.ok()) {
      std::fprintf(stderr, "error: %s\n", r.error.c_str());
      return 2;
    }
    text = render_svg(r);
  }
  if (opt.out.empty()) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  }
  std::ofstream out(opt.out);
  out << text;
  if (!out) {
    std::fprintf(stderr, "error: cannot write '%s'\n", opt.out.c_str());
    return 1;
  }
  return 0;
}

}  // namespace stp
