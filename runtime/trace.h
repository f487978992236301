// trace.h: the Chrome trace (Perfetto / chrome://tracing) of the ops a rank really executed.
//
// One file per rank, output.dir/trace_rank<R>.json (train_main records the first 4 steps), {"traceEvents": [...]}: one complete event
// ("ph":"X", microseconds) per executed op, pid = global rank, tid = the op's stream (0 compute,
// 1 tp, 2 pp) so the braid shows as interleaved unit passes on the compute row and collectives on
// their own row; CommWait events are the time the compute stream was blocked. args carry the step,
// the op index and its text (op_to_string). Process/thread names are metadata events.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "model/desc/desc.h"
#include "runtime/executor.h"
#include "scheduler/lower.h"

namespace stp {

class ExecTrace {
 public:
  ExecTrace(int global_rank, std::string who, size_t max_events = 200000);
  // Appends the executed ops of one iteration that started `t0_s` seconds after the run began.
  void add_iteration(int step, double t0_s, const UnitProgram& prog, const ExecResult& res,
                     const ModelDesc& desc);
  // Appends a named span on the compute row (optimizer, data loading, ...).
  void add_span(const std::string& name, int step, double t0_s, double t1_s);
  // Writes dir/trace_rank<R>.json; returns an error message (empty on success).
  std::string write(const std::string& dir) const;
  size_t events() const { return events_.size(); }

 private:
  int rank_;
  size_t max_events_;
  nlohmann::json events_ = nlohmann::json::array();
};

}  // namespace stp
