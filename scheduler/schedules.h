// schedules.h: the pipeline schedule generators (DESIGN.md "One IR", PAPER.md "The method").
//
// Contract:
// - Every generator is a pure function (pp, rank, microbatches, chunks) -> that rank's steps.
//   Micro-batches are 0-based; stages are virtual stages 0..S-1 (S = pp*chunks) with the placement
//   pipeline_placement(name) gives (ir.h, stage_rank()).
// - A generator may assume pipeline_check_args(name, pp, M, chunks) accepted its arguments; only
//   pipeline_generate() checks, and it throws std::invalid_argument with that message otherwise
//   (callers that take user input call pipeline_check_args first and report the message).
// - Every program a generator returns for accepted arguments passes validate_pipeline()
//   (validate_pipeline.h): one F and one backward per (stage, mb), on the rank that holds the stage,
//   in dependency order, without deadlock. tests/scheduler/test_generators.cpp proves it for
//   pp in {2,3,4,8} and M from the minimum to 4*pp+3.
//
// Names: gpipe | 1f1b | 1f1b-i | zb-h1 | zb-v | dualpipe-v | stp.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "scheduler/ir.h"

namespace stp {

// Known schedule names, in display order (the config loader's "csv" import is not a generator).
const std::vector<std::string>& pipeline_schedule_names();

// Placement of a schedule: V for zb-v / dualpipe-v / stp, looped for the others.
Placement pipeline_placement(const std::string& name);

// Chunks per rank when the caller passes chunks <= 0: 2 for V schedules and 1f1b-i, else 1.
int pipeline_default_chunks(const std::string& name);

// Smallest micro-batch count the schedule accepts with `pp` ranks (stp: 3pp-1, dualpipe-v: 2pp,
// 1f1b-i: pp (and M % pp == 0), the others 1).
int pipeline_min_microbatches(const std::string& name, int pp);

// nullopt when (name, pp, microbatches, chunks) can be generated; otherwise the rule broken, with
// the arithmetic, e.g. "stp needs microbatches >= 3*pp-1 = 11, got 9". chunks <= 0 = default.
std::optional<std::string> pipeline_check_args(const std::string& name, int pp, int microbatches,
                                               int chunks);

// Every rank's program. chunks <= 0 = the schedule's default. Throws std::invalid_argument with
// pipeline_check_args' message when the arguments are rejected.
PipelineProgram pipeline_generate(const std::string& name, int pp, int microbatches, int chunks = 0);

// ---- the generators, one file each (gen_<name>.cpp) -------------------------------------------------

// GPipe: all forwards, then all (unsplit) backwards, micro-batches in order. chunks = 1.
std::vector<Step> gen_gpipe(int pp, int rank, int microbatches, int chunks);

// 1F1B (PipeDream-flush), picotron-style: warm-up forwards, steady 1F1B, cool-down backwards. chunks = 1.
std::vector<Step> gen_1f1b(int pp, int rank, int microbatches, int chunks);

// Interleaved 1F1B (Megatron's virtual pipeline, looped placement), depth-first in rounds of pp
// micro-batches; needs microbatches % pp == 0. chunks >= 2.
std::vector<Step> gen_1f1b_interleaved(int pp, int rank, int microbatches, int chunks);

// ZB-H1 (Zero Bubble, handcrafted 1): 1F1B order with B/W split; rank r lags its W's r steps behind
// its B's so the cool-down bubble fills with W. Peak activations as 1F1B. chunks = 1.
std::vector<Step> gen_zb_h1(int pp, int rank, int microbatches, int chunks);

// ZB-V (Zero Bubble V): V placement, B/W split, as torch.distributed.pipelining's
// ScheduleZBVZeroBubble generates it (padded to 2pp-1 micro-batches, then trimmed). chunks = 2.
std::vector<Step> gen_zb_v(int pp, int rank, int microbatches, int chunks);

// DualPipeV: V placement; steady state braids F of one chunk with the unsplit backward of the other
// chunk, as torch.distributed.pipelining's ScheduleDualPipeV. chunks = 2, microbatches >= 2pp.
std::vector<Step> gen_dualpipe_v(int pp, int rank, int microbatches, int chunks);

// STP: the per-rank program of PAPER.md (phases 1..9, deferred-W FIFO per rank). chunks = 2,
// microbatches >= 3pp-1.
std::vector<Step> gen_stp(int pp, int rank, int microbatches, int chunks);

}  // namespace stp
