// nccl_comm.h: the NCCL backend of the Communicator (comm/communicator.h) for the CUDA runtime.
// Only comm/nccl/*.cpp includes nccl.h; nothing here exposes an NCCL or CUDA type (streams travel
// as StreamRef, i.e. void* = cudaStream_t).
//
// Communicators: the world from ncclCommInitRank (unique id per nccl_bootstrap.h), then TP, PP, DP
// and embedding communicators from ncclCommSplit (colour = the group's smallest global rank, key =
// the rank's index in it, so NCCL ranks are group indices). The CUDA device is set from the local
// rank before anything else.
//
// Communicator options (NcclOptions, from the config's `nccl` section by nccl_options_of): every
// communicator gets the same ncclConfig_t (blocking, cgaClusterSize, minCTAs, maxCTAs; 0 leaves
// NCCL's default). With blocking = false NCCL calls may return ncclInProgress while they finish in
// the background; this backend then polls ncclCommGetAsyncError until the call is done (creation,
// each split, each operation before its completion event is recorded, each group end, and
// ncclCommFinalize before destruction), so the contract below is the same in both modes, and an
// abort can interrupt a peer that never connects.
//
// Streams and events: each group has its own communication stream (non-blocking; TP's at the
// highest priority, since a braid's critical path waits on TP collectives). An operation given a
// StreamRef is enqueued after an event recorded on that stream at the call, so it reads what the
// work queued there before the call produced; without one it is ordered only on its own stream.
// Completion is a CUDA event recorded after the operation: CommHandle::test() = cudaEventQuery,
// and stream_wait(seq, s) makes a device stream wait for operation #seq without blocking the host
// (the executor's CommWait). Handles stay valid after the communicator is destroyed.
//
// Point-to-point: NCCL matches sends and receives by order, and a send blocks its stream until the
// peer's receive runs. Where a send and a receive must progress together (exchanges, a rank
// talking to itself), issue them between group_begin() and group_end(): they are held and issued
// as one ncclGroupStart/End, each op ordered after its own StreamRef. A send or receive with this
// rank itself is allowed only inside a group (it would deadlock outside), and the group's sends
// and receives to itself must pair up in order with equal counts and types.
//
// Faults: an operation in flight longer than NcclOptions::op_timeout_s, or an asynchronous NCCL
// error (ncclCommGetAsyncError), aborts every communicator of this rank (ncclCommAbort); test()
// then reports an error naming the rank, the operation and the reason, and every later operation
// fails at once. CommHandle::wait's own timeout only reports: the trainer then calls abort(),
// which aborts the communicators and ends the process. The optional watchdog thread polls every
// communicator's async error and the age of the operations in flight every watchdog_poll_ms, so a
// fault is caught even while the host is busy elsewhere. Under the launchers, a process that exits
// makes torchrun/mpirun end the others.
//
// Contract differences from the MPI backend (both documented in the report): bf16 is reduced here
// (ncclBfloat16), while the MPI backend only moves it and refuses to reduce it; NCCL cannot detect
// a receive posted with another count than its send (the validator guarantees equal counts).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include "comm/communicator.h"
#include "comm/nccl/nccl_bootstrap.h"
#include "comm/staged_comm.h"
#include "runtime/core/config.h"
#include "runtime/core/topology.h"

namespace stp {

struct NcclOptions {
  int device = -1;             // CUDA device; -1 = from the local rank (nccl_pick_device)
  int port = 0;                // bootstrap port under torchrun; 0 = STP_NCCL_PORT or MASTER_PORT+1
  double op_timeout_s = 0;     // an operation in flight longer than this aborts (0 = never)
  bool watchdog = false;       // start the watchdog thread
  int watchdog_poll_ms = 100;
  // ncclConfig_t of every communicator; 0 = NCCL's default.
  bool blocking = true;        // false: non-blocking communicators (see above)
  int cga_cluster_size = 0;    // cgaClusterSize, 1..8
  int min_ctas = 0;            // minCTAs
  int max_ctas = 0;            // maxCTAs
};

// The options of a training run: the `nccl` section (validated by config_load), the watchdog on,
// and train.timeout_s as the per-operation timeout. Inline so that CPU-only builds can test it.
inline NcclOptions nccl_options_of(const Config& cfg) {
  NcclOptions o;
  o.port = cfg.nccl.port;
  o.op_timeout_s = cfg.train.timeout_s;
  o.watchdog = true;
  o.watchdog_poll_ms = std::max(1, int(std::ceil(cfg.nccl.watchdog_ms)));  // 0.5 ms polls every 1 ms
  o.blocking = cfg.nccl.blocking;
  o.cga_cluster_size = cfg.nccl.cga_cluster_size;
  o.min_ctas = cfg.nccl.min_ctas;
  o.max_ctas = cfg.nccl.max_ctas;
  return o;
}

struct NcclState;  // nccl_comm.cpp: communicators, streams, in-flight operations

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(std::shared_ptr<NcclState> st);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int world_rank() const override;
  int world_size() const override;
  int rank(GroupKind g) const override;
  int size(GroupKind g) const override;
  const std::vector<int>& members(GroupKind g) const override;

  CommHandle all_reduce(GroupKind g, const void* send, void* recv, int64_t count, DType t, ReduceOp op,
                        StreamRef s = {}) override;
  CommHandle all_gather(GroupKind g, const void* send, void* recv, int64_t send_count, DType t,
                        StreamRef s = {}) override;
  CommHandle reduce_scatter(GroupKind g, const void* send, void* recv, int64_t recv_count, DType t,
                            ReduceOp op, StreamRef s = {}) override;
  CommHandle broadcast(GroupKind g, void* buf, int64_t count, DType t, int root, StreamRef s = {}) override;
  CommHandle send(GroupKind g, const void* buf, int64_t count, DType t, int peer, StreamRef s = {}) override;
  CommHandle recv(GroupKind g, void* buf, int64_t count, DType t, int peer, StreamRef s = {}) override;
  // Completes when every member reached it (a one-element all-reduce on the group's stream).
  CommHandle barrier(GroupKind g) override;

  CommStats stats() const override;
  [[noreturn]] void abort(const std::string& message, int code) override;
  std::string whoami() const override;  // "rank 3 (tp 1, pp 1, dp 0) on cuda device 1"

  // ---- NCCL-specific -------------------------------------------------------------------------
  int device() const;
  std::string bootstrap() const;             // how the unique id was shared (for the start-up log)
  StreamRef comm_stream(GroupKind g) const;  // the group's communication stream
  // Makes `waiter` wait on the device for operation #seq (CommOpInfo::seq, = stats().ops right
  // after issuing it). Operations already complete need no wait. Errors: an unknown seq, an
  // operation still held in an open group, aborted communicators.
  CommStatus stream_wait(int64_t seq, StreamRef waiter);
  CommStatus group_begin();
  CommStatus group_end();  // issues the held sends/receives; on error every one of them fails
  // Aborts every communicator of this rank (idempotent); in-flight and later operations fail with
  // `reason`. abort() and the fault checks call it.
  void abort_communicators(const std::string& reason);
  bool aborted() const;

 private:
  CommHandle issue(CommOpInfo in, const void* send, void* recv, StreamRef s);
  std::shared_ptr<NcclState> st_;
};

struct NcclCreateResult {
  std::unique_ptr<NcclCommunicator> comm;
  std::string error;
};

// Builds this rank's communicators. `env` is the launcher's (its world must equal topo.world()).
// `id_broadcast` is required only under an MPI launcher (nccl_id_broadcast_over(mpi_world)).
// Collective over the job: every rank calls it at the same point.
NcclCreateResult comm_create_nccl(const Topology& topo, bool v_placement, const LaunchEnv& env,
                                  const NcclOptions& opts, const NcclIdBroadcast& id_broadcast = {},
                                  const GetEnv& getenv = nullptr);

// Staging in device memory of the current CUDA device, for a host-memory communicator over NCCL
// (comm_create_staged, comm/staged_comm.h): buffers from a caching allocator (no cudaFree, so no
// device-wide synchronisation), copies on a stream of its own and complete on return.
std::shared_ptr<Staging> staging_cuda();

}  // namespace stp
