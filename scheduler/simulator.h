// simulator.h: discrete-event run of all pipeline ranks' unit programs (DESIGN.md, "Simulator").
//
// One pipeline rank stands for its whole TP group (the TP ranks run the same program). Each rank
// has FIFO streams with the semantics of lower.h: compute (Compute, CommWait, Free), tp
// (CommStart) and pp (Send, Recv, Free after a send). The k-th send on a channel (a directed pair
// of pipeline ranks) meets the k-th receive (NCCL's matching by order); a message starts when its
// data is computed, both ends have posted it and the channel's previous message is done. Two
// models of the pp side (PPStreams, both deadlock-free for lowered programs, see lower.h):
//   Single   one pp FIFO per rank, and an op blocks it until the peer's matching op is at the head
//            of the peer's pp stream (plain ncclSend/ncclRecv on one stream, as the CUDA executor's
//            stream plan in streams.h does). The default. The validator's deadlock check uses it
//            too: it is the strictest model, so a program that passes runs under both.
//   Channel  one FIFO per channel, so messages on different channels overlap (MPI isend/irecv on
//            the CPU backend; with NCCL one communicator and stream per channel). It removes the
//            head-of-line blocking of Single, which costs schedules with traffic in both
//            directions (V shapes, interleaving, braids) several percent.
// Costs and memory come from cost.h.
//
// "Exposed" means one thing (DESIGN.md): time the compute stream of a rank sits idle, charged to
// what it waited for. A CommWait on a TP collective -> tp_exposed; on the end-of-iteration DP
// all-reduce -> dp_exposed; on a Recv, and the time after the rank's last op until the iteration
// ends -> pp_bubble. Per rank: busy + tp_exposed + dp_exposed + pp_bubble = iteration_time.
// The iteration ends when the last op of any rank ends (the optimizer step synchronizes).
//
// Errors are values: SimResult::error names the config rule, the lowering step or the deadlocked
// ranks and ops.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/desc/desc.h"
#include "runtime/core/config.h"
#include "scheduler/cost.h"
#include "scheduler/lower.h"

namespace stp {

enum class PPStreams : uint8_t { Channel, Single };
const char* pp_streams_name(PPStreams m);  // "channel", "single"

struct SimOptions {
  CostMode cost = CostMode::Flops;
  PPStreams pp_streams = PPStreams::Single;
  std::string schedule;  // overrides schedule.name ("" = the config's); chunks then default
  int microbatches = 0;  // overrides schedule.microbatches (0 = the config's)
};

// Start and end of one op of one rank (a CommWait: from when the compute stream reached it).
struct OpTime {
  double start = -1, end = -1;
};

struct RankReport {
  int rank = 0;
  double busy = 0;        // compute stream running unit passes
  double tp_exposed = 0;  // compute idle, waiting for a TP collective
  double dp_exposed = 0;  // compute idle, waiting for the DP gradient all-reduce
  double pp_bubble = 0;   // compute idle, waiting for PP data or for the iteration to end
  double finish = 0;      // end of this rank's last op
  int accum_depth = 0;    // ordered-accumulation side buffer depth (pipeline_accum_depth)
  int64_t state_bytes = 0, activation_peak_bytes = 0, side_buffer_bytes = 0, peak_mem_bytes = 0;
  bool fits = true;       // peak_mem_bytes <= the device memory (cluster.gpu.hbm_gb)
};

// The discrete-event run of a lowered program: per-op times and per-rank accounting. The program
// must pass validate_units' range rule (stage, mb, tensor, tag in range); anything else, including
// a deadlock, is reported in the result.
struct EngineResult {
  std::vector<std::vector<OpTime>> times;  // [rank][op]
  std::vector<RankReport> ranks;           // busy / exposed / finish / activation_peak_bytes
  double makespan = 0;
  std::string deadlock;                    // non-empty: the ranks blocked forever and their ops
  std::vector<std::pair<int, int>> blocked;  // (rank, op index) of each rank blocked forever
  bool ok() const { return deadlock.empty(); }
};
EngineResult simulate_program(const LoweredProgram& prog, const ModelDesc& desc, const CostModel& cost,
                              PPStreams pp_streams = PPStreams::Single);

struct SimResult {
  std::string error;  // non-empty: nothing below is meaningful
  bool ok() const { return error.empty(); }

  std::string schedule;
  CostMode cost = CostMode::Flops;
  PPStreams pp_streams = PPStreams::Single;
  int tp = 1, pp = 1, dp = 1, chunks = 1, microbatches = 1, micro_batch_size = 1, seq_len = 1;
  double iteration_time = 0;         // seconds (flops) or units (unit)
  double tokens_per_s = 0, samples_per_s = 0;  // per iteration time unit in unit mode
  double tflops_per_gpu = 0, mfu = 0;          // 0 in unit mode
  double pp_bubble = 0, pp_bubble_fraction = 0;    // mean over ranks; fraction of iteration_time
  double tp_exposed = 0, tp_exposed_fraction = 0;
  double dp_exposed = 0;
  std::vector<int64_t> peak_mem_bytes;  // per pipeline rank
  int64_t device_mem_bytes = 0;         // cluster.gpu.hbm_gb * 1e9; a rank above it does not fit
  std::vector<RankReport> ranks;

  // What the renderers draw.
  ModelDesc desc;
  LoweredProgram program;
  std::vector<std::vector<OpTime>> times;
};

// Generates the schedule, lowers it, validates the unit programs and simulates one iteration.
SimResult simulate(const Config& cfg, const SimOptions& opt);
// simulate() for every schedule that accepts the config's pp and microbatches (pipeline_check_args),
// in pipeline_schedule_names() order; those that do not are listed in `skipped` with the reason.
std::vector<SimResult> simulate_compare(const Config& cfg, const SimOptions& opt,
                                        std::vector<std::string>* skipped = nullptr);

// The summary as JSON text: schedule, iteration_time, tokens_per_s, samples_per_s, tflops_per_gpu,
// mfu, pp_bubble {time, fraction}, tp_exposed {time, fraction}, dp_exposed, peak_mem_bytes[],
// device_mem_bytes, fits (every rank), ranks[] (per-rank breakdown). No timeline
// (render_chrome_trace has it).
std::string sim_result_to_json(const SimResult& r, int indent = 2);

}  // namespace stp
