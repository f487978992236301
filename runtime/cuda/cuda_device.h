// cuda_device.h: the StreamDevice (stream_executor.h) of one CUDA GPU: the plan's four streams,
// its events, the activation memory, and the work of each op -- unit passes through CudaRankModel,
// collectives and point-to-point through the NcclCommunicator.
//
// Streams. compute = the model's Ctx stream (every unit pass and the V-turn copies). tp, pp and dp
// ARE the communicator's own group streams (NcclCommunicator::comm_stream(Tp / Pp / Dp), TP's at the
// device's highest priority from cudaDeviceGetStreamPriorityRange, created by comm_create_nccl):
// NCCL enqueues an operation on its group's stream, so the plan's waits and records go directly on
// that stream, and every operation is issued with an empty StreamRef (ordered only on its own
// stream, where the plan's wait already sits). No event besides the plan's orders two streams.
// Events: one cudaEvent per plan event (timing disabled), re-recorded every step.
//
// Data types on the wire: fp32 tensors (statistics, gradients) travel as F32 and a TP collective on
// a bf16 activation (partials, input gradients) as BF16 (reduced by NCCL in bf16, as Megatron does);
// a Send/Recv moves a tensor as its bytes (DType::U8, count = bytes: point-to-point copies bits).
//
// Memory: allocate/release keep one cache of released blocks per stream over the DeviceAllocator:
// a block released on stream s is reused at once by allocations on s (stream order makes that
// safe) and never by another stream within the step; end_step(), after the synchronisation,
// returns every cached block to the allocator. A cache miss takes a block from the DeviceAllocator,
// whose free list may hold a workspace the compute stream released with its kernels still queued;
// for a Recv (the only non-compute allocation) that is safe because lowering posts each Recv right
// after this rank's previous Send, whose wait already orders the pp stream after every compute op
// issued so far (tests/runtime/test_stream_executor.cpp checks it on every schedule).
//
// Metrics (timings(), after the step's synchronisation): each op's start and end from timing
// events recorded around it on its stream; a CommWait has no work of its own: its span runs from
// the end of the previous compute-stream op to the moment the compute stream passed the wait, and
// that gap is the exposed communication, charged to the group of the op it waited for (tp, pp, dp).
// The result is an ExecResult (runtime/executor.h), so runtime/trace.h writes the Chrome trace.
#pragma once

#include <string>
#include <vector>

#include "comm/nccl/nccl_comm.h"
#include "runtime/cuda/cuda_model.h"
#include "runtime/cuda/stream_executor.h"

namespace stp::cuda {

class CudaStreamDevice final : public StreamDevice {
 public:
  // `timeout_s`: each communication's completion is waited with it at the end of the step.
  CudaStreamDevice(const ModelDesc& desc, const UnitProgram& prog, CudaRankModel& model,
                   NcclCommunicator& comm, Ctx& ctx, double timeout_s);
  ~CudaStreamDevice() override;

  std::string begin(int events) override;
  int64_t tensor_bytes(int stage, int t) const override;
  void* allocate(ExecStream s, size_t bytes) override;
  void release(ExecStream s, void* p, size_t bytes) override;
  std::string run(ExecStream s, int op, DeviceTensors& tensors) override;
  std::string record(ExecStream s, int event) override;
  std::string wait(ExecStream s, int event) override;
  std::string query(int event, bool* done) override;
  std::string synchronize() override;
  void end_step() override;

  // Per-op timings and exposed communication of the last step (after its synchronisation).
  ExecResult timings();
  cudaStream_t stream(ExecStream s) const { return streams_[int(s)]; }

 private:
  std::string comm_start(const Op& op, DeviceTensors& tensors);
  std::string p2p(const Op& op, DeviceTensors& tensors);

  const ModelDesc& desc_;
  const UnitProgram& prog_;
  CudaRankModel& model_;
  NcclCommunicator& comm_;
  Ctx& ctx_;
  double timeout_s_;
  cudaStream_t streams_[kExecStreams] = {};
  std::vector<Event> events_;             // plan events (no timing)
  std::vector<Event> t0_, t1_;            // per op: timing events around it
  std::vector<char> timed_;               // per op: t0/t1 recorded this step
  Event step_start_{true};
  std::vector<int> waited_op_;            // per CommWait: the op it waits for
  std::vector<CommHandle> handles_;       // this step's communications
  std::vector<std::multimap<size_t, void*>> cache_;  // per stream: released blocks
};

}  // namespace stp::cuda
