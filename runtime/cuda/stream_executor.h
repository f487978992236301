// stream_executor.h: replays one rank's unit program (scheduler/lower.h) on device streams, as its
// StreamPlan (scheduler/streams.h) says. Plain C++: the CUDA device (cuda_device.h) implements
// StreamDevice with cudaStreams and cudaEvents, the tests with a host fake that logs every call.
//
// Contract of StreamExecutor::run, op by op in program order on the calling (host) thread:
//   1. wait     if plan.wait[i] >= 0: device.wait(plan.stream[i], plan.wait[i]) -- exactly the
//               plan's cross-stream waits, nothing else orders the streams.
//   2. buffers  a Recv's tensor is allocated on its stream (pp) before the op is issued; a unit's
//               outputs are allocated on the compute stream when the unit produces them
//               (DeviceTensors::produce, the units' TensorSource).
//   3. issue    device.run(plan.stream[i], i, tensors) for every op, Free and CommWait included
//               (a CommWait's work is the wait of 1.; the device may time it).
//   4. free     a Free releases its tensor to the allocator of its stream, at once, unless the plan
//               defers it (plan.free_after[i] = e: a comm stream still reads it); then it is
//               released to the compute stream's allocator once device.query(e) reports the event
//               complete. Deferred frees are polled after every op and at the end of the step.
//   5. record   if plan.record[i] >= 0: device.record(plan.stream[i], plan.record[i]).
// At the end: device.synchronize() (the only synchronisation of the step), the last deferred frees
// are released (every event is complete after it), then device.end_step().
// A tensor still live at the end, a CommStart/Send/Free of a tensor that is not live, or any device
// error ends the run with an error naming the rank's op ("op 12 (comm_start ...): ...").
//
// Memory: DeviceTensors maps (stage, mb, tensor) (tensor_key, runtime/executor.h) to a buffer of
// device.tensor_bytes(stage, tensor) bytes from device.allocate(stream, bytes). A release is
// stream-ordered: the device may hand the block to later allocations on the *same* stream at once
// (they run after every earlier op of that stream), and to other streams only after that stream has
// passed the release (the CUDA device: after the end-of-step synchronisation). live_bytes() counts tensors from their allocation to
// their release (a deferred free counts until its event completes); peak_bytes() is its
// high-water mark.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/desc/desc.h"
#include "model/units.h"
#include "runtime/executor.h"
#include "scheduler/lower.h"
#include "scheduler/streams.h"

namespace stp {

class DeviceTensors;

// The device side of the replay: streams, events, memory and the work of each op.
class StreamDevice {
 public:
  virtual ~StreamDevice() = default;
  // Called once per step before any op; `events` = plan.events.size().
  virtual std::string begin(int events) = 0;
  // Bytes of tensor t of a stage (the tensor table's elements times the device's element size).
  virtual int64_t tensor_bytes(int stage, int t) const = 0;
  virtual void* allocate(ExecStream s, size_t bytes) = 0;            // nullptr: out of memory
  virtual void release(ExecStream s, void* p, size_t bytes) = 0;     // stream-ordered (see Memory)
  // Issues op i of the program on stream s. "" or an error.
  virtual std::string run(ExecStream s, int op, DeviceTensors& tensors) = 0;
  virtual std::string record(ExecStream s, int event) = 0;
  virtual std::string wait(ExecStream s, int event) = 0;
  // Non-blocking: *done = the event's last record has completed. "" or an error.
  virtual std::string query(int event, bool* done) = 0;
  // Blocks until every stream is idle: the end of the step.
  virtual std::string synchronize() = 0;
  // After synchronize and the last releases: the device may return cached blocks to its allocator.
  virtual void end_step() {}
};

// The activation tensors of one rank on a device: the units' TensorSource (void*: each tensor has
// the device's own element type for it).
class DeviceTensors final : public TensorSource<void> {
 public:
  DeviceTensors(const ModelDesc& desc, StreamDevice& dev) : desc_(&desc), dev_(&dev) {}
  void* produce(int stage, int mb, int t) override;  // allocated on the compute stream if new
  void* read(int stage, int mb, int t) override;     // nullptr unless live
  void* post(int stage, int mb, int t, ExecStream s);  // a Recv's buffer, allocated on s
  int64_t bytes(int stage, int t) const { return dev_->tensor_bytes(stage, t); }
  // take() removes a live tensor from the table (no longer readable) and hands over its block,
  // which stays counted in live_bytes until release_block() gives it back to the device.
  struct Block {
    void* p = nullptr;
    size_t bytes = 0;
  };
  Block take(int stage, int mb, int t);
  void release_block(ExecStream s, const Block& b);  // to the device; stops counting it
  int64_t live_bytes() const { return live_bytes_; }
  int64_t peak_bytes() const { return peak_bytes_; }
  void reset_peak() { peak_bytes_ = live_bytes_; }
  std::vector<std::string> live_names() const;  // "s1 mb3 attn2.qkv", sorted
  std::string error() const { return error_; }  // the first allocation failure, if any

 private:
  void* allocate(int stage, int mb, int t, ExecStream s);
  const ModelDesc* desc_;
  StreamDevice* dev_;
  std::unordered_map<uint64_t, Block> map_;
  int64_t live_bytes_ = 0, peak_bytes_ = 0;
  std::string error_;
};

struct StreamExecStats {
  int waits = 0;            // device.wait calls (= plan.program_waits)
  int records = 0;          // device.record calls
  int deferred_frees = 0;   // frees released after their event
  int64_t peak_act_bytes = 0;
};

struct StreamExecResult {
  std::string error;  // empty = ok
  StreamExecStats stats;
  bool ok() const { return error.empty(); }
};

class StreamExecutor {
 public:
  // `prog` and `desc` must outlive the executor; the plan is computed here (an error is kept and
  // returned by every run).
  StreamExecutor(const ModelDesc& desc, const UnitProgram& prog, std::string who);
  const StreamPlan& plan() const { return plan_; }
  const std::string& plan_error() const { return plan_error_; }
  StreamExecResult run(StreamDevice& dev, DeviceTensors& tensors);

 private:
  struct Deferred {
    int op, event;
    DeviceTensors::Block block;
  };
  std::string step_op(StreamDevice& dev, DeviceTensors& tensors, int i, StreamExecStats& st);
  std::string poll(StreamDevice& dev, DeviceTensors& tensors, StreamExecStats& st, bool must_finish);
  std::string where(int i) const;

  const ModelDesc& desc_;
  const UnitProgram& prog_;
  std::string who_;
  StreamPlan plan_;
  std::string plan_error_;
  std::vector<Deferred> deferred_;
};

}  // namespace stp
