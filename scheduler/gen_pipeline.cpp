// gen_pipeline.cpp: the schedule table (names, placement, chunk and micro-batch rules) and
// pipeline_generate(), which runs one generator per rank. The rules here are the single source of
// what each generator may assume (schedules.h).
#include <stdexcept>
#include <string>

#include "scheduler/schedules.h"

namespace stp {
namespace {

using Generator = std::vector<Step> (*)(int pp, int rank, int microbatches, int chunks);

struct ScheduleInfo {
  const char* name;
  Generator gen;
  Placement placement;
  int default_chunks;
  int min_chunks, max_chunks;  // max 0 = unbounded
};

const ScheduleInfo kSchedules[] = {
    {"gpipe", gen_gpipe, Placement::Looped, 1, 1, 1},
    {"1f1b", gen_1f1b, Placement::Looped, 1, 1, 1},
    {"1f1b-i", gen_1f1b_interleaved, Placement::Looped, 2, 2, 0},
    {"zb-h1", gen_zb_h1, Placement::Looped, 1, 1, 1},
    {"zb-v", gen_zb_v, Placement::V, 2, 2, 2},
    {"dualpipe-v", gen_dualpipe_v, Placement::V, 2, 2, 2},
    {"stp", gen_stp, Placement::V, 2, 2, 2},
};

const ScheduleInfo* find_schedule(const std::string& name) {
  for (const ScheduleInfo& s : kSchedules)
    if (name == s.name) return &s;
  return nullptr;
}

std::string str(int v) { return std::to_string(v); }

std::string known_names() {
  std::string out;
  for (const ScheduleInfo& s : kSchedules) out += (out.empty() ? "" : " | ") + std::string(s.name);
  return out;
}

std::optional<std::string> check_chunks(const ScheduleInfo& s, int chunks) {
  const std::string n = s.name;
  if (chunks < s.min_chunks || (s.max_chunks > 0 && chunks > s.max_chunks)) {
    if (s.placement == Placement::V)
      return n + " is V-shaped and needs exactly 2 chunks per rank, got " + str(chunks);
    if (s.max_chunks == 0) return n + " needs chunks >= " + str(s.min_chunks) + ", got " + str(chunks);
    return n + " runs one chunk per rank, got chunks = " + str(chunks);
  }
  return std::nullopt;
}

std::optional<std::string> check_microbatches(const std::string& n, int pp, int M) {
  if (M < 1) return n + " needs microbatches >= 1, got " + str(M);
  if (n == "stp" && M < 3 * pp - 1)
    return "stp needs microbatches >= 3*pp-1 = 3*" + str(pp) + "-1 = " + str(3 * pp - 1) +
           " (PAPER.md: the phase counts only come out right from there), got " + str(M);
  if (n == "dualpipe-v" && M < 2 * pp)
    return "dualpipe-v needs microbatches >= 2*pp = 2*" + str(pp) + " = " + str(2 * pp) +
           " (one per virtual stage, as PyTorch's ScheduleDualPipeV), got " + str(M);
  if (n == "1f1b-i" && M % pp != 0)
    return "1f1b-i needs microbatches divisible by pp (forwards go round the chunks in groups of "
           "pp micro-batches): " + str(M) + " % " + str(pp) + " = " + str(M % pp);
  return std::nullopt;
}

}  // namespace

const std::vector<std::string>& pipeline_schedule_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const ScheduleInfo& s : kSchedules) v.push_back(s.name);
    return v;
  }();
  return names;
}

Placement pipeline_placement(const std::string& name) {
  const ScheduleInfo* s = find_schedule(name);
  return s ? s->placement : Placement::Looped;
}

int pipeline_default_chunks(const std::string& name) {
  const ScheduleInfo* s = find_schedule(name);
  return s ? s->default_chunks : 1;
}

int pipeline_min_microbatches(const std::string& name, int pp) {
  if (name == "stp") return 3 * pp - 1;
  if (name == "dualpipe-v") return 2 * pp;
  if (name == "1f1b-i") return pp;
  return 1;
}

std::optional<std::string> pipeline_check_args(const std::string& name, int pp, int microbatches,
                                               int chunks) {
  const ScheduleInfo* s = find_schedule(name);
  if (!s) return "unknown schedule '" + name + "'; known: " + known_names();
  if (pp < 1) return name + " needs pp >= 1, got " + str(pp);
  if (auto e = check_chunks(*s, chunks > 0 ? chunks : s->default_chunks)) return e;
  return check_microbatches(name, pp, microbatches);
}

PipelineProgram pipeline_generate(const std::string& name, int pp, int microbatches, int chunks) {
  if (auto e = pipeline_check_args(name, pp, microbatches, chunks)) throw std::invalid_argument(*e);
  const ScheduleInfo* s = find_schedule(name);
  PipelineProgram prog;
  prog.schedule = name;
  prog.pp = pp;
  prog.chunks = chunks > 0 ? chunks : s->default_chunks;
  prog.microbatches = microbatches;
  prog.placement = s->placement;
  prog.ranks.reserve(pp);
  for (int r = 0; r < pp; ++r) prog.ranks.push_back(s->gen(pp, r, microbatches, prog.chunks));
  return prog;
}

}  // namespace stp
