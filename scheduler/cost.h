// cost.h: the simulator's cost and memory model (DESIGN.md, "Simulator").
//
// Two modes:
//   flops  unit pass time = FLOPs / (gpu.peak_tflops*1e12 * cluster.compute_efficiency)
//                           + activation bytes / (gpu.hbm_bw_gbs*1e9)
//          (ModelDesc counts bytes at 4 per element; bf16 halves them).
//          TP/DP collectives by ring formulas on the group's link, n = group size:
//            all-reduce (sum or max)        2(n-1)/n * bytes / bw + latency
//            reduce-scatter / all-gather     (n-1)/n * bytes / bw + latency
//          a group that spans nodes uses inter_bw_gbs / inter_latency_us, else intra_*;
//          a PP message: bytes / bw + latency of the link between the two pipeline ranks.
//          While a TP/DP collective is in flight on its rank, compute runs slower by
//          cluster.overlap_slowdown (0.1 = 10% longer for the overlapped part).
//   unit   (the PAPER.md analysis) every F, B and W of one chunk costs 1 in total, split *equally*
//          over the stage's units that have that pass (so BW costs 2, and a unit with no FLOPs,
//          such as In.F of a receiving stage, still takes its share: the braid's slots are then
//          uniform, as the paper's analysis assumes); a TP collective costs schedule.t_ar; PP
//          messages, the end-of-iteration gradient reductions and overlap slowdown cost 0.
//
// Memory per rank (bytes):
//   model state    per local parameter: fp32 = 4 weight + 4 grad + 8 AdamW (m, v) = 16;
//                  bf16 = those fp32 master copies plus a 2-byte bf16 weight copy = 18
//   activations    every tensor of the tensor table, elems * (4 fp32, 2 bf16), counted in program
//                  order as the executor's TensorStore counts it: from the first op that writes it
//                  (a Recv: when it is posted) to its Free op (a sent tensor's too)
//   side buffer    train.deterministic: ordered weight-gradient accumulation holds up to depth
//                  contributions (pipeline_accum_depth); each is charged as the largest one of
//                  the rank's stages (its local parameters * 4 bytes, fp32 gradients)
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/desc/desc.h"
#include "runtime/core/config.h"
#include "scheduler/lower.h"

namespace stp {

enum class CostMode : uint8_t { Flops, Unit };
const char* cost_mode_name(CostMode m);                      // "flops", "unit"
std::optional<CostMode> cost_mode_parse(const std::string& s);

// A link: seconds per byte and a fixed latency.
struct Link {
  double sec_per_byte = 0;
  double latency = 0;
};

struct CostModel {
  CostMode mode = CostMode::Flops;
  int tp = 1, pp = 1, dp = 1;
  double overlap_slowdown = 0;
  double t_ar = 0;                          // unit mode: one TP collective
  double act_bytes = 4;                     // bytes per activation element
  double state_bytes_per_param = 16;        // model state per local parameter
  double grad_bytes = 4;                    // bytes per gradient element (side buffer, DP)
  Link tp_link, dp_link;
  std::vector<std::vector<Link>> pp_link;   // [from][to] pipeline ranks
  // [stage][unit][UnitPass] duration of one unit pass
  std::vector<std::vector<std::array<double, 3>>> unit_time;

  double compute(int stage, UnitRef u) const { return unit_time[stage][u.unit][int(u.pass)]; }
  // Duration of a CommStart (TP or DP collective), or of a Send/Recv between two pipeline ranks.
  double op_time(const Op& op, int rank) const;
  double collective(CollKind k, CommGroup g, int64_t elems) const;
};

// Builds the model from a validated config and the description it was built for.
CostModel cost_model_build(const Config& cfg, const ModelDesc& desc, CostMode mode);
// Unit costs with a given T_AR, nothing else (the deadlock check of validate_units uses T_AR = 0).
CostModel cost_model_unit(const ModelDesc& desc, int pp, double t_ar);

// Model-state bytes of pipeline rank `rank` (parameters, gradients, optimizer), and the largest
// weight-gradient contribution of one of its stages (bytes), under `placement`.
struct RankStatic {
  int64_t state_bytes = 0;
  int64_t max_contribution_bytes = 0;
};
RankStatic rank_static_memory(const ModelDesc& desc, const PipelineProgram& prog, int rank, const CostModel& cm);

}  // namespace stp
