// trace.cpp: Chrome trace events of executed ops (format in trace.h).
#include "runtime/trace.h"

#include "runtime/core/metrics.h"

namespace stp {

ExecTrace::ExecTrace(int global_rank, std::string who, size_t max_events)
    : rank_(global_rank), max_events_(max_events) {
  events_.push_back({{"ph", "M"}, {"name", "process_name"}, {"pid", rank_}, {"args", {{"name", who}}}});
  const char* streams[3] = {"compute", "tp", "pp"};
  for (int t = 0; t < 3; ++t)
    events_.push_back({{"ph", "M"}, {"name", "thread_name"}, {"pid", rank_}, {"tid", t},
                       {"args", {{"name", streams[t]}}}});
}

void ExecTrace::add_iteration(int step, double t0_s, const UnitProgram& prog, const ExecResult& res,
                              const ModelDesc& desc) {
  for (const ExecEvent& e : res.executed) {
    if (events_.size() >= max_events_) return;
    const Op& op = prog.ops[e.op];
    events_.push_back({{"ph", "X"},
                       {"name", op_to_string(op, desc)},
                       {"cat", op_kind_name(op.kind)},
                       {"pid", rank_},
                       {"tid", int(op.stream)},
                       {"ts", (t0_s + e.t0) * 1e6},
                       {"dur", (e.t1 - e.t0) * 1e6},
                       {"args", {{"step", step}, {"op", e.op}}}});
  }
}

void ExecTrace::add_span(const std::string& name, int step, double t0_s, double t1_s) {
  if (events_.size() >= max_events_) return;
  events_.push_back({{"ph", "X"}, {"name", name}, {"cat", "trainer"}, {"pid", rank_}, {"tid", 0},
                     {"ts", t0_s * 1e6}, {"dur", (t1_s - t0_s) * 1e6}, {"args", {{"step", step}}}});
}

std::string ExecTrace::write(const std::string& dir) const {
  nlohmann::json doc = {{"traceEvents", events_}, {"displayTimeUnit", "ms"}};
  return write_file_atomic(dir, "trace_rank" + std::to_string(rank_) + ".json", doc.dump());
}

}  // namespace stp
