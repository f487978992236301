// executor.h: runs one rank's unit program (scheduler/lower.h) for one iteration.
//
// Contract:
// - One loop, one switch over op kinds, ops in program order on the calling thread:
//     Compute    ExecBackend::compute(stage, mb, unit pass), reading/writing activations in the
//                TensorStore. Before In.F of a stage whose previous stage is on this rank (the V
//                turn, or pp = 1 with several chunks) the previous stage's Out.x is copied into
//                In.out; before Out.B of a stage whose next stage is local, In.g of the next stage
//                into Out.g (v_turn_of). No Send/Recv crosses a rank boundary that does not exist.
//     CommStart  a TP collective on the op's tensor (in place, op.elems elements), or with tensor
//                -1 the end-of-iteration gradient reduction over TP or DP (ExecBackend spans),
//                started only after the previous one finished (the tp stream is a FIFO and both
//                reduce the same gradient buffers).
//     Send/Recv  point-to-point on the PP group with the op's peer (a pipeline rank); a Recv's
//                buffer is its tensor, allocated when the Recv is posted.
//     CommWait   blocks until every operation issued under the tag completes; the blocked time is
//                the exposed communication time, charged to the op's group.
//     Free       releases the tensor. A tensor with a Send still in flight is released when the
//                send completes (checked between ops), as a stream-ordered free would be.
// - Between ops the executor calls Communicator::progress() (backends with inline progress need it).
// - Every wait has the train timeout; a timeout or any failure ends the run with an error naming
//   this rank, the op (index and text) and the communication it waited on. The caller aborts the job.
// - ExecResult::executed lists the ops as they were executed (index into the program, start and end
//   time); tests compare it with the lowered program to prove the braid is what ran.
// - Memory: TensorStore counts the bytes of live activation tensors (the tensor table's elements
//   times 4) in program order, which on this synchronous host is also time order: from the op that
//   first needs the buffer (the producing unit pass, or the Recv that posts it) to its Free op. A
//   sent tensor stops counting at its Free op and keeps its buffer until the send completes (a
//   stream-ordered free, as a caching allocator counts it). peak_bytes is the high-water mark.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "comm/communicator.h"
#include "model/desc/desc.h"
#include "model/units.h"
#include "scheduler/lower.h"

namespace stp {

struct FloatSpan {
  float* data = nullptr;
  int64_t n = 0;
};

// One map key for an activation tensor: (stage, micro-batch, tensor index), 22 bits each for the
// micro-batch and the index. tensor_key_name() names it for leak reports: "s1 mb3 attn2.qkv".
inline uint64_t tensor_key(int stage, int mb, int t) {
  return (uint64_t(uint32_t(stage)) << 44) | (uint64_t(uint32_t(mb)) << 22) | uint64_t(uint32_t(t));
}
std::string tensor_key_name(const ModelDesc& desc, uint64_t key);

// The activation tensors of one rank, keyed by (stage, micro-batch, tensor index). It is the model
// units' TensorSource; unlike the model's ActivationStore it frees in stream order (see Memory).
class TensorStore final : public TensorSource<float> {
 public:
  explicit TensorStore(const ModelDesc& desc) : desc_(&desc) {}
  float* produce(int stage, int mb, int t) override { return get(stage, mb, t); }
  float* read(int stage, int mb, int t) override;  // nullptr unless live
  // The tensor's buffer (elements = the table's elems), allocated, zeroed and counted on first use.
  float* get(int stage, int mb, int t);
  bool has(int stage, int mb, int t) const;  // buffer exists (counted or kept for a send)
  int64_t elems(int stage, int t) const { return desc_->stages[stage].tensors[t].elems; }
  // Stops counting the tensor; frees its buffer unless `keep_buffer` (a send still reads it).
  void release(int stage, int mb, int t, bool keep_buffer = false);
  void drop_buffer(int stage, int mb, int t);  // frees a buffer kept by release(..., true)
  int64_t live_bytes() const { return live_bytes_; }
  int64_t peak_bytes() const { return peak_bytes_; }
  void reset_peak() { peak_bytes_ = live_bytes_; }
  // Names of live tensors ("s1 mb3 attn2.qkv"), for leak reports; empty when nothing is live.
  std::vector<std::string> live_names() const;

 private:
  struct Entry {
    std::vector<float> buf;
    bool counted = true;  // counted in live_bytes (false: kept only for a send in flight)
  };
  const ModelDesc* desc_;
  std::unordered_map<uint64_t, Entry> map_;
  int64_t live_bytes_ = 0, peak_bytes_ = 0;
};

// The communicator group of a unit program's comm op (None: the world).
GroupKind comm_group_of(CommGroup g);

// The V turn (Compute above): the local copy before unit pass `u` of `stage` on pipeline rank
// `rank`, within one micro-batch -- tensor `src` of stage `src_stage` into tensor `dst` of `stage`.
// In.F of a stage whose previous stage is on `rank` reads that stage's last unit's "x" into its
// "out"; Out.B of a stage whose next stage is on `rank` reads the next stage's "g" (unit 0) into its
// "g". nullopt when the pass has no hand-over; `error` set when the table lacks either tensor.
struct VTurn {
  int src_stage = -1, src = -1, dst = -1;
  std::string error;
};
std::optional<VTurn> v_turn_of(const ModelDesc& desc, const PipelineProgram& pipe, int rank, int stage,
                               UnitRef u);

// What the executor needs from the model.
class ExecBackend {
 public:
  virtual ~ExecBackend() = default;
  // Runs unit pass `u` of (stage, mb). Returns an error message, empty on success.
  virtual std::string compute(int stage, int mb, UnitRef u, TensorStore& store) = 0;
  // The gradient buffers the end-of-iteration sync all-reduces over `g` (TP: the TP-partial
  // gradients of replicated parameters; DP: every local gradient).
  virtual std::vector<FloatSpan> grad_sync_spans(CommGroup g) = 0;
};

struct ExecOptions {
  double timeout_s = 60;
  bool record = true;  // fill ExecResult::executed
};

struct ExecEvent {
  int op = 0;          // index into UnitProgram::ops
  double t0 = 0, t1 = 0;  // seconds since the run started
};

struct ExecResult {
  std::string error;                // empty = ok
  std::vector<ExecEvent> executed;  // in execution order (ExecOptions::record)
  double wall_s = 0;
  double compute_s = 0;             // inside ExecBackend::compute
  double exposed_comm_s = 0;        // blocked in CommWait, all groups
  double exposed_tp_s = 0, exposed_pp_s = 0, exposed_dp_s = 0;
  int64_t peak_act_bytes = 0;       // TensorStore high-water mark during this run
  bool ok() const { return error.empty(); }
};

class Executor {
 public:
  // `rank` is this rank's pipeline rank (the unit program's rank).
  Executor(const ModelDesc& desc, const PipelineProgram& pipeline, int rank, Communicator& comm,
           ExecOptions opts);
  // Runs the program once. The store must be empty of this iteration's tensors when it starts;
  // it is empty again when the run succeeds (a live tensor at the end is reported as an error).
  ExecResult run(const UnitProgram& prog, ExecBackend& backend, TensorStore& store);

 private:
  struct Pending {
    std::vector<CommHandle> handles;
    int op = -1;  // the op that started it
  };
  std::string step_op(const UnitProgram& prog, int i, ExecBackend& backend, TensorStore& store,
                      ExecResult& res);
  std::string do_compute(const Op& op, ExecBackend& backend, TensorStore& store, ExecResult& res);
  std::string do_comm_start(const Op& op, int i, ExecBackend& backend, TensorStore& store);
  std::string do_wait(const UnitProgram& prog, const Op& op, ExecResult& res);
  std::string do_free(const Op& op, TensorStore& store);
  void reap_sends(TensorStore& store, bool block, std::string* err);
  std::string where(const UnitProgram& prog, int i) const;

  const ModelDesc& desc_;
  const PipelineProgram& pipeline_;
  int rank_;
  Communicator& comm_;
  ExecOptions opts_;
  std::unordered_map<int, Pending> pending_;  // by tag
  struct InFlight {
    int tag, stage, mb, tensor;
    bool freed;  // a send whose Free op ran: release the tensor when the send completes
  };
  std::vector<InFlight> sends_;
  int last_grad_tag_ = -1;  // the previous end-of-iteration gradient reduction
};

}  // namespace stp
