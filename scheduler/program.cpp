#include "scheduler/program.h"

#include <fstream>
#include <sstream>

#include "scheduler/schedules.h"
#include "scheduler/text_io.h"
#include "scheduler/validate_pipeline.h"

namespace stp {

namespace {

ProgramResult import_csv(const Config& cfg) {
  ProgramResult r;
  std::ifstream in(cfg.schedule.file);
  if (!in) {
    r.error = cfg.source + ": 'schedule.file': cannot open '" + cfg.schedule.file + "'";
    return r;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  const int chunks = cfg.parallel.chunks;  // required with csv (config validation)
  PipelineParseResult p = pipeline_from_csv(ss.str(), cfg.parallel.pp, chunks);
  if (!p.ok()) {
    r.error = cfg.schedule.file + ": " + p.error->to_string();
    return r;
  }
  if (p.program->microbatches != cfg.schedule.microbatches) {
    r.error = cfg.schedule.file + ": the schedule runs " + std::to_string(p.program->microbatches) +
              " micro-batches but schedule.microbatches = " + std::to_string(cfg.schedule.microbatches);
    return r;
  }
  r.program = std::move(p.program);
  return r;
}

}  // namespace

ProgramResult pipeline_from_config(const Config& cfg, const std::string& schedule_override) {
  const std::string name = schedule_override.empty() ? cfg.schedule.name : schedule_override;
  ProgramResult r;
  if (name == "csv") {
    r = import_csv(cfg);
    if (!r.ok()) return r;
  } else {
    int chunks = cfg.parallel.chunks;
    if (!schedule_override.empty() || chunks <= 0) chunks = pipeline_default_chunks(name);
    if (auto e = pipeline_check_args(name, cfg.parallel.pp, cfg.schedule.microbatches, chunks)) {
      r.error = cfg.source + ": 'schedule': " + *e;
      return r;
    }
    r.program = pipeline_generate(name, cfg.parallel.pp, cfg.schedule.microbatches, chunks);
  }
  if (auto v = validate_pipeline_first(*r.program)) {
    r.error = (name == "csv" ? cfg.schedule.file : cfg.source) + ": schedule '" + name +
              "' is invalid: " + v->to_string();
    r.program.reset();
  }
  return r;
}

}  // namespace stp
