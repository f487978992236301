// lower.h: lowering a pipeline program to per-rank unit programs (DESIGN.md, "One IR, three
// consumers"; PAPER.md, "Braided blocks"). The executor, the simulator and the renderers all read
// the unit program this file defines; the rules below are the whole contract.
//
// Streams. Every op runs on one stream of its rank, in program order within that stream:
//   compute   Compute, CommWait (blocks the compute stream until the tag completes), Free
//   tp        CommStart of TP and DP collectives (one FIFO; DP = the end-of-step gradient all-reduce)
//   pp        Send, Recv, and the Free of a sent tensor (released when its send completes); one
//             stream per rank or one per channel, see "PP point-to-point" below
// A CommStart or Send depends on every compute-stream op before it in program order (an event
// recorded on the compute stream at that point). A Recv depends only on the pp stream.
//
// Units of one step (ModelDesc gives the units of each virtual stage):
//   F   the stage's units in forward order;  B   StageDesc::backward_order();
//   W   the units with a W pass in backward order (a deferred W runs all its layers' W units);
//   BW  per unit in backward order: B_u then W_u (Megatron overlap: B_u, start, W_u, ..., wait).
// A braided pair interleaves *slots* one by one, the forward's first: F slot of a, slot of b, next
// F slot of a, ...; a slot is one unit pass, except in a BW where it is B_u followed by W_u. The
// longer pass's remaining slots run after the shorter one ends.
//
// TP collectives: a unit pass with a CollDesc is followed at once by CommStart (tp stream). Its
// CommWait goes right before the first later op of this rank that reads the reduced tensor (the
// tensor table's readers). That single rule yields every placement the method names:
//   unbraided F or B     the next unit of the pass reads it: wait right away;
//   BW                   W_u does not read B_u's result: B_u, start, W_u, wait, B_next;
//   braided pairs        the next unit of the *same* pass reads it, so the other pass's slot in
//                        between hides the collective;
//   loss statistics      read by Head.B of the same micro-batch in a later step: waited there.
// A reduced tensor that nothing reads is waited at the end of its step.
//
// PP point-to-point (group PP, peer = pipeline rank). A channel is a directed pair of pipeline
// ranks; NCCL (and the MPI backend, one tag per pair) matches its k-th send with its k-th receive.
//   Send  right after the op that completes the stage output: Out.F (activation, stage s -> s+1)
//         or In.B (input gradient, stage s -> s-1). Not on the last stage's F or stage 0's B.
//   Recv  its CommWait goes right before the consumer: In.F (activation) or Out.B (gradient).
//   V turn (stage pp-1 -> pp on the same rank): local handover, no Send/Recv: In.F of stage pp
//         reads Out.F's output of stage pp-1, and Out.B of stage pp-1 reads In.B's output of stage
//         pp; each tensor is freed after that local reader.
//   Order: all messages of the pipeline are put in one global order, by the time their data is
//         ready in the unit-cost step timing (pipeline_unit_timing), ties by sending rank and
//         position. Every rank issues its Send/Recv ops in that order. A Recv is posted early:
//         right after this rank's previous pp op in the global order (at the start if none).
//   Guarantees: both ends of every channel issue its messages in the same order, and the programs
//         cannot deadlock on any cost model, whether the executor runs one FIFO per channel
//         (MPI isend/irecv; NCCL with a communicator and stream per channel) or a single pp
//         stream per rank on which every Send/Recv blocks until the peer's matching op is at the
//         head of the peer's stream (plain ncclSend/ncclRecv): the first unfinished message in the
//         global order always has both ends at the head of their pp streams and its data
//         computed from earlier messages only. The simulator models both (simulator.h,
//         PPStreams); the validator checks the stricter single stream.
//
// Free: each tensor of (stage, mb) is freed right after the last op of this rank's program that
// touches it (producer, readers, its collective's start/wait, its send). After a Send the Free runs
// on the pp stream, so the buffer lives until the send completes. A tensor with no reader is
// freed right after its producer (or its collective's wait).
//
// End of the iteration: the gradients of TP-replicated parameters with TP-partial gradients
// (ParamDesc::tp_partial_grad) are all-reduced over TP (tp > 1), then all local gradients over DP
// (dp > 1); both are CommStart + CommWait with tensor = -1.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/desc/desc.h"
#include "scheduler/ir.h"

namespace stp {

enum class OpKind : uint8_t { Compute, CommStart, CommWait, Send, Recv, Free };
enum class Stream : uint8_t { Compute, TP, PP };
enum class CommGroup : uint8_t { None, TP, PP, DP };

const char* op_kind_name(OpKind k);       // "compute", "comm_start", ...
const char* stream_name(Stream s);        // "compute", "tp", "pp"
const char* comm_group_name(CommGroup g); // "none", "tp", "pp", "dp"

struct Op {
  OpKind kind = OpKind::Compute;
  Stream stream = Stream::Compute;
  int stage = -1;                  // virtual stage of the pass / tensor (-1: end-of-step gradient sync)
  int mb = -1;                     // micro-batch
  UnitRef unit;                    // Compute: the unit pass; CommStart: the unit pass it follows;
                                   // Send/Recv: the unit pass that produces/consumes the tensor
  CollKind coll = CollKind::None;  // CommStart
  CommGroup group = CommGroup::None;  // CommStart (TP, DP), Send/Recv (PP)
  int tag = -1;                    // CommStart/Send/Recv: a tag unique on this rank; CommWait: the tag
  int peer = -1;                   // Send/Recv: the other pipeline rank
  int tensor = -1;                 // CommStart/Send/Recv/Free: index into stage's tensor table
  int64_t elems = 0;               // CommStart/Send/Recv: elements per rank
  int step = -1;                   // index of the pipeline Step it belongs to (-1: end of iteration)
};

// One rank's program and the steps it came from.
struct UnitProgram {
  int rank = 0;
  std::vector<Op> ops;
};

struct LoweredProgram {
  PipelineProgram pipeline;
  std::vector<UnitProgram> ranks;  // ranks[r].rank == r
  int messages = 0;                // PP messages in the global order
};

struct LowerResult {
  std::optional<LoweredProgram> program;
  std::string error;  // set when program is empty: which rank/step and why
  bool ok() const { return program.has_value(); }
};

struct LowerOptions {
  bool grad_sync = true;  // append the end-of-iteration TP/DP gradient reductions
  int dp = 1;             // data-parallel size (the DP all-reduce is emitted when dp > 1)
};

// Which tensors of its stage each unit pass reads and writes (the tensor table, inverted), and the
// tensors that cross stages (-1 when the stage has none).
struct StageAccess {
  std::vector<std::vector<int>> reads[3];   // [UnitPass][unit] -> tensor indices
  std::vector<std::vector<int>> writes[3];  // [UnitPass][unit] -> tensor indices
  std::vector<char> has_reader;             // per tensor: some unit reads it
  int in_unit = -1, out_unit = -1;
  int in_out = -1, in_g = -1, out_x = -1, out_g = -1;  // In.F out, In.B g, Out.F x, Out.B g
};
StageAccess stage_access(const StageDesc& s);

struct TensorRef {
  int stage = -1, mb = -1, tensor = -1;
};

// What every op touches, shared by lowering (Free placement), the unit-program validator and the
// simulator (allocation). Compute: its unit pass' entries in the tensor table, plus the V-turn
// handover reads; CommStart/CommWait/Send read op.tensor; Recv writes it; Free touches nothing.
class TensorAccess {
 public:
  // `prog` may be null (one step lowered alone: no handover).
  TensorAccess(const ModelDesc& desc, const PipelineProgram* prog);
  const StageAccess& stage(int s) const { return stages_[s]; }
  int max_tensors() const { return max_tensors_; }
  void touches(const Op& op, int rank, std::vector<TensorRef>* reads, std::vector<TensorRef>* writes) const;

 private:
  bool local(int stage, int rank) const;
  std::vector<StageAccess> stages_;
  const PipelineProgram* prog_;
  int max_tensors_ = 1;
};

// Lowers every rank. `desc` must describe pipeline.stages() virtual stages. The pipeline program
// must pass validate_pipeline (lowering reports, but does not diagnose, a program it cannot order).
LowerResult lower(const PipelineProgram& pipeline, const ModelDesc& desc, const LowerOptions& opt = {});

// The compute and TP-collective ops of one step lowered alone (no Send/Recv/Free; tags from 0; a
// wait whose reader is not in the step lands at its end): what the golden unit-program tests pin
// down. lower() runs the same code per step.
std::vector<Op> lower_step_units(const Step& step, const ModelDesc& desc);

// "F attn3 s1 mb2", "comm_start all_reduce tp tag 4 (attn3.partial)", "send -> 2 s1 mb2 (out.x)"...
std::string op_to_string(const Op& op, const ModelDesc& desc);

}  // namespace stp
