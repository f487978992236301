// validate_pipeline.h: pipeline-level checks of a PipelineProgram (DESIGN.md: "A validator checks
// every program before use"), the unit-cost dependency simulation they rest on, and the depth of the
// ordered-accumulation side buffer (DESIGN.md, "Numerics").
//
// Rules, in the order violations are reported (the first one is the root cause in practice):
//   shape      ranks.size() == pp, pp/chunks/microbatches >= 1
//   range      0 <= stage < pp*chunks, 0 <= mb < microbatches
//   wrong-rank a pass runs on the rank that holds its stage (placement, ir.h stage_rank)
//   braid      a braided pair starts with a forward (ir.h: `a` is the forward)
//   duplicate  no pass appears twice
//   missing    every (stage, mb) has one F and one backward: B then W, or BW
//   mixed      a (stage, mb) does not have both BW and a B/W split
//   order      on its rank, F(s,mb) runs before B/BW(s,mb), which runs before W(s,mb), in strictly
//              earlier steps (a braided pair runs its two passes together)
//   deadlock   dependency simulation: all ranks run their steps in order; a step starts when its
//              passes' inputs are done: F(s,mb) needs F(s-1,mb); B/BW(s,mb) needs F(s,mb) and
//              B/BW(s+1,mb); W(s,mb) needs B(s,mb). A rank that can never start its next step is
//              reported with the passes it waits on and where they are.
// Communication is free and unordered here; matching sends/receives is the lowering's validator.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "scheduler/ir.h"

namespace stp {

enum class PipelineRule : uint8_t { Shape, Range, WrongRank, Braid, Duplicate, Missing, Mixed, Order, Deadlock };

const char* pipeline_rule_name(PipelineRule rule);  // "shape", "range", "wrong-rank", ...

struct Violation {
  PipelineRule rule = PipelineRule::Shape;
  int rank = -1;  // -1: not tied to one rank
  int step = -1;  // index into ranks[rank]; -1: not tied to one step
  std::string message;
  std::string to_string() const;  // "rank 1, step 5 [order]: ..."
};

// Every violation, grouped by rule in the order above; empty = the program is valid.
std::vector<Violation> validate_pipeline(const PipelineProgram& prog);
// The first violation, or nullopt.
std::optional<Violation> validate_pipeline_first(const PipelineProgram& prog);

// Dependency simulation with unit costs: F = B = W = 1, BW = 2, a braided step costs the sum of its
// two passes (one compute stream runs both), communication is free. Needs passes in range.
struct UnitTiming {
  std::vector<std::vector<int>> start;  // start[r][i]: start of step i on rank r, -1 if never run
  std::vector<int> finish;              // per rank: end of its last step that ran
  int makespan = 0;                     // max over ranks of finish
  std::vector<Violation> deadlocks;     // one per rank blocked forever (rule deadlock)
};
UnitTiming pipeline_unit_timing(const PipelineProgram& prog);
// The makespan of pipeline_unit_timing, or -1 when the program deadlocks. A cross-check for the
// simulator: STP 6M + P - 1, ZB-V 6M + P - 1 (M >= 2P-1), DualPipeV 6M + 2(P-1), interleaved
// 1F1B with 2 chunks 6M + 3(P-1), 1F1B and GPipe 3M + 3(P-1), ZB-H1 3M + P - 1 (M >= P).
int pipeline_unit_makespan(const PipelineProgram& prog);

// Per rank: the largest number of weight-gradient contributions (from W or BW) that wait in the
// ordered-accumulation side buffer at one time, when each stage adds its contributions in
// micro-batch order and one that finishes early waits until all earlier ones are added. A rank runs
// its steps in program order, so the depth depends on the program alone.
std::vector<int> pipeline_accum_depth(const PipelineProgram& prog);

}  // namespace stp
