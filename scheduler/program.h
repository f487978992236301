// program.h: the pipeline program a config asks for: generated (schedule.name) or imported from a
// per-rank CSV (schedule.name: csv, schedule.file), validated either way. The trainer, the
// simulator and `stp-train schedule` all get their program here.
#pragma once

#include <optional>
#include <string>

#include "runtime/core/config.h"
#include "scheduler/ir.h"

namespace stp {

struct ProgramResult {
  std::optional<PipelineProgram> program;
  std::string error;  // names the file/key and the rule (with the rank and step for violations)
  bool ok() const { return program.has_value(); }
};

// `schedule_override` (non-empty) replaces schedule.name (simulate --compare); chunks then follow
// that schedule's default unless parallel.chunks is set and valid for it.
ProgramResult pipeline_from_config(const Config& cfg, const std::string& schedule_override = "");

}  // namespace stp
