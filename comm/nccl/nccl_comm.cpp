// nccl_comm.cpp: the NCCL backend (see nccl_comm.h for the contract).
//
// Invariants:
// - NcclState owns every resource (communicators, streams, the barrier words) and is shared by the
//   communicator and every request, so a handle never points at freed state.
// - Two locks, always taken in this order: `issue_mu` is held by the thread that issues NCCL calls
//   (issue, group_end); `mu` guards the operation records, the abort flag and the open group, and
//   is never held across an NCCL call that may block. abort() takes `issue_mu` first, so it cannot
//   free a communicator that an issuing thread is about to use; if the issuer is stuck inside NCCL
//   (a peer that never connects) for longer than kAbortGrace, abort proceeds without it, which is
//   the documented way to unblock a thread blocked in NCCL. After an abort no ncclComm_t is touched.
// - An operation record is Held (in an open group, nothing enqueued yet), Issued (its `done` event
//   is recorded after it on its group's stream) or Done (its error, if any, is final). Issued ops
//   stay in `in_flight` until seen complete, so stream_wait() can find their event and the
//   watchdog can name what was in flight.
// - Streams are ordered after the caller's stream at the call (one reusable `ready` event: a
//   cudaStreamWaitEvent captures the event's state when it is called).
// - Non-blocking communicators (NcclOptions::blocking = false): a call that returns ncclInProgress
//   is finished by wait_ready() before anything depends on it, so the two modes look the same
//   from here on. wait_ready() queries under `mu` (the query never blocks), so it cannot race an
//   abort; the other fault checks skip the query while an issuer is inside an NCCL call.
#include "comm/nccl/nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/core/clock.h"

namespace stp {

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::chrono::seconds kAbortGrace(2);
constexpr double kFinalizeWait_s = 30;  // non-blocking communicators: ncclCommFinalize at destruction
constexpr double kHandleWait_s = 30;    // non-blocking split: the child's handle after the parent is done

ncclDataType_t nccl_dtype(DType t) {
  switch (t) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
    case DType::U8: return ncclUint8;
    case DType::BF16: return ncclBfloat16;
  }
  return ncclFloat32;
}

std::string nccl_error(ncclResult_t rc, ncclComm_t comm) {
  std::string s = std::string(ncclGetErrorString(rc)) + " (ncclResult " + std::to_string(int(rc)) + ")";
  const char* last = ncclGetLastError(comm);
  if (last && *last) s += ": " + std::string(last);
  return s;
}

std::string cuda_error(cudaError_t rc) {
  return std::string(cudaGetErrorName(rc)) + ": " + cudaGetErrorString(rc);
}

bool is_p2p(CommOpKind k) { return k == CommOpKind::Send || k == CommOpKind::Recv; }

struct NcclOp {
  enum State { Held, Issued, Done };
  CommOpInfo info;
  const void* send = nullptr;
  void* recv = nullptr;
  cudaEvent_t done = nullptr;
  Clock::time_point issued;
  State state = Held;
  std::string error;

  NcclOp() = default;
  NcclOp(const NcclOp&) = delete;
  NcclOp& operator=(const NcclOp&) = delete;
  ~NcclOp() {
    if (done) cudaEventDestroy(done);  // safe while pending: released once it completes
  }
  void finish(std::string err) {
    error = std::move(err);
    state = Done;
  }
};

using OpPtr = std::shared_ptr<NcclOp>;

}  // namespace

struct NcclState {
  Topology topo;
  NcclOptions opts;
  int device = 0;
  std::string bootstrap;
  ncclComm_t comms[kGroupKinds] = {};
  cudaStream_t streams[kGroupKinds] = {};
  std::vector<int> members[kGroupKinds];
  int index[kGroupKinds] = {};
  int* barrier = nullptr;  // one device int per group: a barrier is a 1-element all-reduce
  cudaEvent_t ready = nullptr;

  std::timed_mutex issue_mu;
  mutable std::mutex mu;
  CommStats stats;
  bool aborted = false;
  std::string abort_reason;
  bool in_group = false;
  // An issuing thread is inside an NCCL call without `mu` (issue, group_end): no other thread may
  // call NCCL meanwhile (ncclCommGetAsyncError of a non-blocking communicator completes the group
  // job that call is setting up), so the fault checks skip the async-error query until it is back.
  bool launching = false;
  std::vector<OpPtr> held;
  std::map<int64_t, OpPtr> in_flight;
  size_t prune_at = 256;  // in_flight size that triggers the next prune in issue()

  std::thread watchdog;
  std::condition_variable wake;
  bool stop = false;

  NcclState() = default;
  NcclState(const NcclState&) = delete;
  NcclState& operator=(const NcclState&) = delete;
  ~NcclState();

  std::string whoami() const;
  void abort(const std::string& reason);  // takes both locks; idempotent
  // The functions below run with `mu` held and return a reason to abort ("" = none).
  std::string poll_locked(NcclOp& op);
  std::string check_faults_locked();
  std::string prune_locked();
  void run_watchdog();
  // Waits until the pending call of communicator `c` (non-blocking mode) is done: "" or why not
  // (its error, still pending after timeout_s > 0, or an abort). Takes `mu`.
  std::string wait_ready(ncclComm_t c, double timeout_s);

 private:
  void abort_locked(const std::string& reason);
};

NcclState::~NcclState() {
  {
    std::lock_guard<std::mutex> lk(mu);
    stop = true;
  }
  wake.notify_all();
  if (watchdog.joinable()) watchdog.join();
  cudaSetDevice(device);
  if (!aborted) {
    for (cudaStream_t s : streams)
      if (s) cudaStreamSynchronize(s);
    for (int g = kGroupKinds - 1; g >= 0; --g) {  // children before the world they were split from
      if (!comms[g]) continue;
      if (!opts.blocking) {
        // ncclCommFinalize flushes a non-blocking communicator's work; one that does not finish
        // (a peer is gone) is aborted rather than destroyed.
        const ncclResult_t rc = ncclCommFinalize(comms[g]);
        const bool done = rc == ncclSuccess || (rc == ncclInProgress && wait_ready(comms[g], kFinalizeWait_s).empty());
        if (!done) {
          ncclCommAbort(comms[g]);
          continue;
        }
      }
      ncclCommDestroy(comms[g]);
    }
  }
  for (cudaStream_t s : streams)
    if (s) cudaStreamDestroy(s);
  if (barrier) cudaFree(barrier);
  if (ready) cudaEventDestroy(ready);
}

std::string NcclState::wait_ready(ncclComm_t c, double timeout_s) {
  const Clock::time_point t0 = Clock::now();
  for (int polls = 0;; ++polls) {
    {
      std::lock_guard<std::mutex> lk(mu);
      if (aborted) return "aborted: " + abort_reason;
      ncclResult_t state = ncclSuccess;
      const ncclResult_t rc = ncclCommGetAsyncError(c, &state);
      if (rc != ncclSuccess) return "ncclCommGetAsyncError: " + nccl_error(rc, c);
      if (state == ncclSuccess) return {};
      if (state != ncclInProgress) return nccl_error(state, c);
    }
    if (timeout_s > 0 && seconds_since(t0) > timeout_s) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.1f", timeout_s);
      return std::string("still in progress after ") + buf + " s (a peer is hung, dead, or called something else)";
    }
    // Enqueueing takes microseconds, a creation or a first connection much longer.
    if (polls < 1000)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

std::string NcclState::whoami() const {
  return "rank " + std::to_string(topo.rank) + " (tp " + std::to_string(topo.me.tp) + ", pp " +
         std::to_string(topo.me.pp) + ", dp " + std::to_string(topo.me.dp) + ") on cuda device " +
         std::to_string(device);
}

void NcclState::abort(const std::string& reason) {
  // An issuer blocked inside NCCL keeps issue_mu; after the grace period abort without it.
  const bool got = issue_mu.try_lock_for(kAbortGrace);
  {
    std::lock_guard<std::mutex> lk(mu);
    abort_locked(reason);
  }
  if (got) issue_mu.unlock();
}

void NcclState::abort_locked(const std::string& reason) {
  if (aborted) return;
  aborted = true;
  abort_reason = reason;
  std::fprintf(stderr, "[stp] NCCL abort: %s\n", reason.c_str());
  std::fflush(stderr);
  cudaSetDevice(device);
  for (int g = kGroupKinds - 1; g >= 0; --g) {
    if (comms[g]) ncclCommAbort(comms[g]);
    comms[g] = nullptr;
  }
  for (auto& kv : in_flight) kv.second->finish("aborted: " + reason);
  for (OpPtr& op : held) op->finish("aborted: " + reason);
  in_flight.clear();
  held.clear();
  in_group = false;
}

// Advances one operation: completion by its event; a fault (the communicators' async error, or
// its age past op_timeout_s) is returned as the reason to abort, naming this rank and the op.
std::string NcclState::poll_locked(NcclOp& op) {
  if (op.state == NcclOp::Done) return {};
  if (aborted) {
    op.finish("aborted: " + abort_reason);
    return {};
  }
  if (op.state == NcclOp::Held) return {};
  const cudaError_t rc = cudaEventQuery(op.done);
  if (rc == cudaSuccess || rc != cudaErrorNotReady) {
    op.finish(rc == cudaSuccess ? "" : "CUDA reported " + cuda_error(rc));
    in_flight.erase(op.info.seq);
    return {};
  }
  ncclResult_t async = ncclSuccess;
  ncclComm_t c = comms[int(op.info.group)];
  if (c && !launching && ncclCommGetAsyncError(c, &async) == ncclSuccess && async != ncclSuccess &&
      async != ncclInProgress)
    return whoami() + ": NCCL error on the " + group_kind_name(op.info.group) + " communicator while " +
           op.info.describe() + " was in flight: " + nccl_error(async, c);
  const double age = seconds_since(op.issued);
  if (opts.op_timeout_s > 0 && age > opts.op_timeout_s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", age);
    return whoami() + ": " + op.info.describe() + " did not complete in " + buf +
           " s (a peer is hung, dead, or issued a different operation)";
  }
  return {};
}

std::string NcclState::prune_locked() {
  std::vector<OpPtr> ops;
  for (auto& kv : in_flight) ops.push_back(kv.second);
  std::string first;
  for (OpPtr& op : ops) {
    std::string reason = poll_locked(*op);
    if (first.empty()) first = std::move(reason);
  }
  return first;
}

// The watchdog's pass: every communicator's async error (even with nothing in flight), then the
// operations in flight (completion and age).
std::string NcclState::check_faults_locked() {
  if (aborted) return {};
  for (int g = 0; g < kGroupKinds && !launching; ++g) {
    ncclResult_t async = ncclSuccess;
    if (!comms[g] || ncclCommGetAsyncError(comms[g], &async) != ncclSuccess) continue;
    if (async == ncclSuccess || async == ncclInProgress) continue;
    std::string what = "no operation in flight";
    for (auto& kv : in_flight)
      if (kv.second->info.group == GroupKind(g)) {
        what = kv.second->info.describe() + " in flight";
        break;
      }
    return "watchdog: " + whoami() + ": NCCL error on the " + group_kind_name(GroupKind(g)) + " communicator (" +
           what + "): " + nccl_error(async, comms[g]);
  }
  return prune_locked();
}

void NcclState::run_watchdog() {
  cudaSetDevice(device);
  std::unique_lock<std::mutex> lk(mu);
  while (!stop) {
    wake.wait_for(lk, std::chrono::milliseconds(opts.watchdog_poll_ms), [&] { return stop; });
    if (stop) break;
    const std::string reason = check_faults_locked();
    if (reason.empty()) continue;
    lk.unlock();  // abort() takes issue_mu before mu
    abort(reason);
    lk.lock();
  }
}

namespace {

class NcclRequest final : public CommRequest {
 public:
  NcclRequest(std::shared_ptr<NcclState> st, OpPtr op) : st_(std::move(st)), op_(std::move(op)) {}
  bool test() override {
    std::string reason;
    {
      std::lock_guard<std::mutex> lk(st_->mu);
      reason = st_->poll_locked(*op_);
      if (reason.empty()) return op_->state == NcclOp::Done;
    }
    st_->abort(reason);  // fails every operation in flight, this one included
    std::lock_guard<std::mutex> lk(st_->mu);
    return op_->state == NcclOp::Done;
  }
  std::string error() const override {
    std::lock_guard<std::mutex> lk(st_->mu);
    return op_->error;
  }
  std::string describe() const override { return op_->info.describe(); }

 private:
  std::shared_ptr<NcclState> st_;  // declared first: the op (and its event) goes before the state
  OpPtr op_;
};

// Enqueues one operation's NCCL call on `s` (inside or outside a group).
ncclResult_t nccl_launch(const NcclOp& op, ncclComm_t c, cudaStream_t s, int* barrier_word) {
  const CommOpInfo& in = op.info;
  const size_t n = size_t(in.count);
  const ncclDataType_t dt = nccl_dtype(in.dtype);
  const ncclRedOp_t rop = in.op == ReduceOp::Sum ? ncclSum : ncclMax;
  switch (in.kind) {
    case CommOpKind::AllReduce: return ncclAllReduce(op.send, op.recv, n, dt, rop, c, s);
    case CommOpKind::AllGather: return ncclAllGather(op.send, op.recv, n, dt, c, s);
    case CommOpKind::ReduceScatter: return ncclReduceScatter(op.send, op.recv, n, dt, rop, c, s);
    case CommOpKind::Broadcast: return ncclBroadcast(op.recv, op.recv, n, dt, in.peer, c, s);
    case CommOpKind::Send: return ncclSend(op.send, n, dt, in.peer, c, s);
    case CommOpKind::Recv: return ncclRecv(op.recv, n, dt, in.peer, c, s);
    case CommOpKind::Barrier: return ncclAllReduce(barrier_word, barrier_word, 1, ncclInt32, ncclSum, c, s);
  }
  return ncclInvalidArgument;
}

// "" when `p` is device memory of `device` (or managed memory); otherwise why not.
std::string check_device_buffer(const void* p, const char* which, int device) {
  cudaPointerAttributes a{};
  const cudaError_t rc = cudaPointerGetAttributes(&a, p);
  if (rc != cudaSuccess) {
    cudaGetLastError();  // clear it, so the next CUDA call does not report this query's error
    return std::string(which) + " buffer is not CUDA memory (" + cuda_error(rc) + ")";
  }
  if (a.type == cudaMemoryTypeManaged) return {};
  if (a.type != cudaMemoryTypeDevice)
    return std::string(which) + " buffer is host memory; NCCL needs device memory";
  if (a.device != device)
    return std::string(which) + " buffer is on cuda device " + std::to_string(a.device) +
           " but this communicator drives device " + std::to_string(device);
  return {};
}

// Self send/receive pairs of a group, per group kind, must match in order, count and type.
std::string check_self_pairs(const std::vector<OpPtr>& ops, const int* index) {
  for (int g = 0; g < kGroupKinds; ++g) {
    std::vector<const NcclOp*> sends, recvs;
    for (const OpPtr& op : ops)
      if (int(op->info.group) == g && op->info.peer == index[g])
        (op->info.kind == CommOpKind::Send ? sends : recvs).push_back(op.get());
    if (sends.size() != recvs.size())
      return "the group holds " + std::to_string(sends.size()) + " sends and " + std::to_string(recvs.size()) +
             " receives between this rank and itself on the " + group_kind_name(GroupKind(g)) +
             " group; they must pair up";
    for (size_t i = 0; i < sends.size(); ++i)
      if (sends[i]->info.count != recvs[i]->info.count || sends[i]->info.dtype != recvs[i]->info.dtype)
        return sends[i]->info.describe() + " is matched by " + recvs[i]->info.describe() +
               ": counts and types must be equal";
  }
  return {};
}

}  // namespace

// ---- the communicator ------------------------------------------------------------------------------

NcclCommunicator::NcclCommunicator(std::shared_ptr<NcclState> st) : st_(std::move(st)) {}
NcclCommunicator::~NcclCommunicator() = default;

int NcclCommunicator::world_rank() const { return st_->topo.rank; }
int NcclCommunicator::world_size() const { return st_->topo.world(); }
int NcclCommunicator::rank(GroupKind g) const { return st_->index[int(g)]; }
int NcclCommunicator::size(GroupKind g) const { return int(st_->members[int(g)].size()); }
const std::vector<int>& NcclCommunicator::members(GroupKind g) const { return st_->members[int(g)]; }
int NcclCommunicator::device() const { return st_->device; }
std::string NcclCommunicator::bootstrap() const { return st_->bootstrap; }
std::string NcclCommunicator::whoami() const { return st_->whoami(); }
StreamRef NcclCommunicator::comm_stream(GroupKind g) const { return StreamRef{st_->streams[int(g)]}; }

CommStats NcclCommunicator::stats() const {
  std::lock_guard<std::mutex> lk(st_->mu);
  return st_->stats;
}

bool NcclCommunicator::aborted() const {
  std::lock_guard<std::mutex> lk(st_->mu);
  return st_->aborted;
}

void NcclCommunicator::abort_communicators(const std::string& reason) { st_->abort(reason); }

void NcclCommunicator::abort(const std::string& message, int code) {
  std::fprintf(stderr, "[stp] FATAL %s: %s\n", whoami().c_str(), message.c_str());
  std::fflush(stderr);
  abort_communicators(whoami() + ": " + message);
  std::_Exit(code);
}

namespace {

CommOpInfo make_info(CommOpKind k, GroupKind g, int64_t count, DType t, ReduceOp op, int peer) {
  CommOpInfo in;
  in.kind = k;
  in.group = g;
  in.count = count;
  in.dtype = t;
  in.op = op;
  in.peer = peer;
  return in;
}

}  // namespace

CommHandle NcclCommunicator::all_reduce(GroupKind g, const void* send, void* recv, int64_t count, DType t,
                                        ReduceOp op, StreamRef s) {
  return issue(make_info(CommOpKind::AllReduce, g, count, t, op, -1), send, recv, s);
}
CommHandle NcclCommunicator::all_gather(GroupKind g, const void* send, void* recv, int64_t n, DType t,
                                        StreamRef s) {
  return issue(make_info(CommOpKind::AllGather, g, n, t, ReduceOp::Sum, -1), send, recv, s);
}
CommHandle NcclCommunicator::reduce_scatter(GroupKind g, const void* send, void* recv, int64_t n, DType t,
                                            ReduceOp op, StreamRef s) {
  return issue(make_info(CommOpKind::ReduceScatter, g, n, t, op, -1), send, recv, s);
}
CommHandle NcclCommunicator::broadcast(GroupKind g, void* buf, int64_t count, DType t, int root, StreamRef s) {
  return issue(make_info(CommOpKind::Broadcast, g, count, t, ReduceOp::Sum, root), buf, buf, s);
}
CommHandle NcclCommunicator::send(GroupKind g, const void* buf, int64_t count, DType t, int peer, StreamRef s) {
  return issue(make_info(CommOpKind::Send, g, count, t, ReduceOp::Sum, peer), buf, nullptr, s);
}
CommHandle NcclCommunicator::recv(GroupKind g, void* buf, int64_t count, DType t, int peer, StreamRef s) {
  return issue(make_info(CommOpKind::Recv, g, count, t, ReduceOp::Sum, peer), nullptr, buf, s);
}
CommHandle NcclCommunicator::barrier(GroupKind g) {
  return issue(make_info(CommOpKind::Barrier, g, 0, DType::I32, ReduceOp::Sum, -1), nullptr, nullptr, {});
}

namespace {

// Argument errors found before anything is enqueued ("" = fine). Called with the state locked.
std::string check_args(const NcclState& st, const CommOpInfo& in, const void* send, const void* recv) {
  if (st.aborted) return "the communicators of " + st.whoami() + " were aborted: " + st.abort_reason;
  if (in.count < 0) return "element count " + std::to_string(in.count) + " is negative";
  const int n = int(st.members[int(in.group)].size());
  const bool p2p = is_p2p(in.kind);
  if ((p2p || in.kind == CommOpKind::Broadcast) && (in.peer < 0 || in.peer >= n))
    return "peer/root " + std::to_string(in.peer) + " is not a member index of a group of " + std::to_string(n);
  if (p2p && in.peer == st.index[int(in.group)] && !st.in_group)
    return "point-to-point with itself outside group_begin/group_end would deadlock (NCCL needs the send and "
           "the receive in one group)";
  if (!p2p && st.in_group) return "a collective inside group_begin/group_end (only sends and receives are held)";
  if ((in.kind == CommOpKind::AllGather || in.kind == CommOpKind::ReduceScatter) && send == recv)
    return "send and recv must be different buffers";
  if (in.kind == CommOpKind::Barrier || in.count == 0) return {};
  const bool reads = in.kind != CommOpKind::Recv && in.kind != CommOpKind::Broadcast;
  const bool writes = in.kind != CommOpKind::Send;
  if ((reads && !send) || (writes && !recv)) return "a null buffer for " + std::to_string(in.count) + " elements";
  std::string bad = reads ? check_device_buffer(send, "send", st.device) : "";
  if (bad.empty() && writes && recv != send) bad = check_device_buffer(recv, "recv", st.device);
  return bad;
}

}  // namespace

namespace {

// Under `mu`: checks the operation, creates its completion event and orders its group's stream
// after the caller's stream. "" or the error.
std::string prepare_locked(NcclState& st, NcclOp& op, StreamRef s) {
  std::string bad = check_args(st, op.info, op.send, op.recv);
  if (!bad.empty()) return bad;
  cudaError_t rc = cudaEventCreateWithFlags(&op.done, cudaEventDisableTiming);
  if (rc == cudaSuccess && s.stream) {
    rc = cudaEventRecord(st.ready, static_cast<cudaStream_t>(s.stream));
    if (rc == cudaSuccess) rc = cudaStreamWaitEvent(st.streams[int(op.info.group)], st.ready, 0);
  }
  return rc == cudaSuccess ? "" : "ordering it after the caller's stream: " + cuda_error(rc);
}

}  // namespace

CommHandle NcclCommunicator::issue(CommOpInfo in, const void* send, void* recv, StreamRef s) {
  NcclState& st = *st_;
  std::lock_guard<std::timed_mutex> ilk(st.issue_mu);
  std::unique_lock<std::mutex> lk(st.mu);
  cudaSetDevice(st.device);
  auto op = std::make_shared<NcclOp>();
  op->info = std::move(in);
  op->info.members = st.members[int(op->info.group)];
  op->info.seq = ++st.stats.ops;
  op->send = send;
  op->recv = recv;
  const std::string bad = prepare_locked(st, *op, s);
  if (!bad.empty()) return comm_failed_handle(op->info, bad);
  if (op->info.kind != CommOpKind::Recv && op->info.kind != CommOpKind::Barrier)
    st.stats.bytes += op->info.count * int64_t(dtype_size(op->info.dtype));
  if (st.in_group) {
    st.held.push_back(op);
    return CommHandle(std::make_unique<NcclRequest>(st_, op));
  }
  const int g = int(op->info.group);
  ncclComm_t c = st.comms[g];
  cudaStream_t cs = st.streams[g];
  st.launching = true;
  lk.unlock();  // the call may block (a first connection to a peer); the watchdog stays free to abort
  const ncclResult_t nr = nccl_launch(*op, c, cs, st.barrier + g);
  // Non-blocking: the work may still be on its way to the stream; the completion event must follow it.
  const std::string pending = nr == ncclInProgress ? st.wait_ready(c, st.opts.op_timeout_s) : "";
  const bool launched = nr == ncclSuccess || (nr == ncclInProgress && pending.empty());
  const cudaError_t rc = launched ? cudaEventRecord(op->done, cs) : cudaSuccess;
  lk.lock();
  st.launching = false;
  if (st.aborted) return comm_failed_handle(op->info, "aborted: " + st.abort_reason);
  if (!pending.empty()) return comm_failed_handle(op->info, "enqueueing it: " + pending);
  if (!launched) return comm_failed_handle(op->info, "NCCL refused it: " + nccl_error(nr, c));
  if (rc != cudaSuccess) return comm_failed_handle(op->info, "recording its completion event: " + cuda_error(rc));
  op->state = NcclOp::Issued;
  op->issued = Clock::now();
  st.in_flight[op->info.seq] = op;
  // Handles dropped untested (faults: test()/watchdog). The threshold doubles with what stays in
  // flight, so a host far ahead of the device does not query every event at every issue.
  if (st.in_flight.size() > st.prune_at) {
    st.prune_locked();
    st.prune_at = std::max<size_t>(256, 2 * st.in_flight.size());
  }
  return CommHandle(std::make_unique<NcclRequest>(st_, op));
}

CommStatus NcclCommunicator::group_begin() {
  std::lock_guard<std::mutex> lk(st_->mu);
  if (st_->aborted) return CommStatus::failure("the communicators were aborted: " + st_->abort_reason);
  if (st_->in_group) return CommStatus::failure("group_begin inside an open group (groups do not nest)");
  st_->in_group = true;
  return {};
}

namespace {

// One ncclGroupStart/End over the held operations, each on its group's stream, then their
// completion events. "" or the first error (the group is then failed as a whole).
std::string launch_group(NcclState& st, const std::vector<OpPtr>& ops, ncclComm_t const* comms) {
  const cudaStream_t* streams = st.streams;
  std::string err;
  bool used[kGroupKinds] = {};
  ncclGroupStart();
  for (const OpPtr& op : ops) {
    const int g = int(op->info.group);
    used[g] = true;
    const ncclResult_t nr = nccl_launch(*op, comms[g], streams[g], nullptr);
    if (nr != ncclSuccess && nr != ncclInProgress && err.empty())
      err = op->info.describe() + ": " + nccl_error(nr, comms[g]);
  }
  const ncclResult_t nr = ncclGroupEnd();
  if (nr == ncclInProgress) {  // non-blocking: every communicator of the group finishes enqueueing
    for (int g = 0; g < kGroupKinds && err.empty(); ++g)
      if (used[g]) {
        const std::string pending = st.wait_ready(comms[g], st.opts.op_timeout_s);
        if (!pending.empty()) err = "ncclGroupEnd on the " + std::string(group_kind_name(GroupKind(g))) + " communicator: " + pending;
      }
  } else if (nr != ncclSuccess && err.empty()) {
    err = "ncclGroupEnd: " + nccl_error(nr, nullptr);
  }
  for (const OpPtr& op : ops) {
    const cudaError_t rc = err.empty() ? cudaEventRecord(op->done, streams[int(op->info.group)]) : cudaSuccess;
    if (rc != cudaSuccess && err.empty()) err = "recording a completion event: " + cuda_error(rc);
  }
  return err;
}

}  // namespace

CommStatus NcclCommunicator::group_end() {
  NcclState& st = *st_;
  std::lock_guard<std::timed_mutex> ilk(st.issue_mu);
  std::unique_lock<std::mutex> lk(st.mu);
  if (st.aborted) return CommStatus::failure("the communicators were aborted: " + st.abort_reason);
  if (!st.in_group) return CommStatus::failure("group_end without group_begin");
  st.in_group = false;
  std::vector<OpPtr> ops = std::move(st.held);
  st.held.clear();
  std::string err = check_self_pairs(ops, st.index);
  ncclComm_t comms[kGroupKinds];
  std::copy(std::begin(st.comms), std::end(st.comms), comms);
  st.launching = true;
  lk.unlock();
  if (err.empty() && !ops.empty()) {
    cudaSetDevice(st.device);
    err = launch_group(st, ops, comms);
  }
  lk.lock();
  st.launching = false;
  if (st.aborted) err = "aborted: " + st.abort_reason;
  for (const OpPtr& op : ops) {
    if (!err.empty()) {
      op->finish("group failed: " + err);
      continue;
    }
    op->state = NcclOp::Issued;
    op->issued = Clock::now();
    st.in_flight[op->info.seq] = op;
  }
  return err.empty() ? CommStatus{} : CommStatus::failure(err);
}

CommStatus NcclCommunicator::stream_wait(int64_t seq, StreamRef waiter) {
  NcclState& st = *st_;
  std::lock_guard<std::mutex> lk(st.mu);
  if (st.aborted) return CommStatus::failure("the communicators were aborted: " + st.abort_reason);
  if (seq <= 0 || seq > st.stats.ops)
    return CommStatus::failure("stream_wait: no operation #" + std::to_string(seq) + " (this communicator issued " +
                               std::to_string(st.stats.ops) + ")");
  for (const OpPtr& op : st.held)
    if (op->info.seq == seq)
      return CommStatus::failure("stream_wait: " + op->info.describe() + " is held in an open group; call group_end first");
  auto it = st.in_flight.find(seq);
  if (it == st.in_flight.end()) return {};  // complete (a failure is reported by its handle)
  if (!waiter.stream) return CommStatus::failure("stream_wait: no stream given to wait for " + it->second->info.describe());
  cudaSetDevice(st.device);
  const cudaError_t rc = cudaStreamWaitEvent(static_cast<cudaStream_t>(waiter.stream), it->second->done, 0);
  if (rc != cudaSuccess) return CommStatus::failure("stream_wait for " + it->second->info.describe() + ": " + cuda_error(rc));
  return {};
}

// ---- creation ----------------------------------------------------------------------------------------

namespace {

// The world's unique id, from the bootstrap plan. "" or an error.
std::string get_unique_id(const NcclBootstrapPlan& plan, int rank, const NcclIdBroadcast& bcast, ncclUniqueId* id) {
  if (plan.source == NcclIdSource::Env) {
    // NCCL reads NCCL_COMM_ID in ncclGetUniqueId (same id everywhere) and in init (rank 0 hosts the root).
    if (setenv("NCCL_COMM_ID", plan.comm_id.c_str(), 1) != 0) return "setenv NCCL_COMM_ID failed";
  }
  if (plan.source != NcclIdSource::Broadcast || rank == 0) {
    const ncclResult_t rc = ncclGetUniqueId(id);
    if (rc != ncclSuccess) return "ncclGetUniqueId (" + plan.describe + "): " + nccl_error(rc, nullptr);
  }
  if (plan.source == NcclIdSource::Broadcast) {
    if (!bcast) return "the bootstrap plan needs an MPI broadcast but none was given";
    return bcast(id, sizeof(ncclUniqueId));
  }
  return {};
}

// The world communicator, then one ncclCommSplit per group kind (collective: same order everywhere).
// The ncclConfig_t every communicator of this rank gets (NcclOptions; 0 leaves NCCL's default).
ncclConfig_t nccl_config_of(const NcclOptions& o) {
  ncclConfig_t c = NCCL_CONFIG_INITIALIZER;
  c.blocking = o.blocking ? 1 : 0;
  if (o.cga_cluster_size > 0) c.cgaClusterSize = o.cga_cluster_size;
  if (o.min_ctas > 0) c.minCTAs = o.min_ctas;
  if (o.max_ctas > 0) c.maxCTAs = o.max_ctas;
  return c;
}

// A creation call's outcome, finished (non-blocking mode) within the set-up bound. "" or the error.
// `c` must be read after the call returned (the call writes it).
std::string created(NcclState& st, ncclResult_t rc, ncclComm_t c) {
  if (rc == ncclInProgress) return st.wait_ready(c, st.opts.op_timeout_s);
  return rc == ncclSuccess ? "" : nccl_error(rc, nullptr);
}

// A non-blocking ncclCommSplit that returned ncclInProgress: NCCL writes the child's handle only once
// the split finished (NCCL issue #1472, PyTorch waits the same way), so the parent is waited first,
// then the handle's appearance (written by NCCL's thread: an atomic read), then the child itself.
std::string split_finished(NcclState& st, ncclComm_t parent, ncclComm_t* child) {
  std::string err = st.wait_ready(parent, st.opts.op_timeout_s);
  const Clock::time_point t0 = Clock::now();
  while (err.empty() && !__atomic_load_n(child, __ATOMIC_ACQUIRE)) {
    if (seconds_since(t0) > kHandleWait_s)
      return "the parent finished but NCCL did not hand out the new communicator";
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  return err.empty() ? st.wait_ready(*child, st.opts.op_timeout_s) : err;
}

std::string make_communicators(NcclState& st, const ncclUniqueId& id, bool v_placement) {
  const Topology& t = st.topo;
  ncclConfig_t config = nccl_config_of(st.opts);
  ncclComm_t& world = st.comms[int(GroupKind::World)];
  const ncclResult_t init = ncclCommInitRankConfig(&world, t.world(), id, t.rank, &config);
  std::string err = created(st, init, world);
  if (!err.empty())
    return "ncclCommInitRankConfig(" + std::to_string(t.world()) + " ranks, rank " + std::to_string(t.rank) +
           ", " + st.bootstrap + "): " + err;
  for (int g = 0; g < kGroupKinds; ++g) {
    st.members[g] = nccl_group_members(t, GroupKind(g), v_placement);
    const NcclSplit sp = nccl_split_of(t, GroupKind(g), v_placement);
    st.index[g] = sp.key;
    if (GroupKind(g) == GroupKind::World) continue;
    config = nccl_config_of(st.opts);
    const ncclResult_t rc = ncclCommSplit(world, sp.color, sp.key, &st.comms[g], &config);
    err = rc == ncclInProgress ? split_finished(st, world, &st.comms[g]) : created(st, rc, st.comms[g]);
    if (!err.empty())
      return std::string("ncclCommSplit for the ") + group_kind_name(GroupKind(g)) + " group (colour " +
             std::to_string(sp.color) + ", key " + std::to_string(sp.key) + "): " + err;
    int n = 0, r = -1;
    ncclCommCount(st.comms[g], &n);
    ncclCommUserRank(st.comms[g], &r);
    if (n != int(st.members[g].size()) || r != sp.key)
      return std::string(group_kind_name(GroupKind(g))) + " communicator has rank " + std::to_string(r) + " of " +
             std::to_string(n) + " but the topology says index " + std::to_string(sp.key) + " of " +
             std::to_string(st.members[g].size());
  }
  return {};
}

// One non-blocking stream per group (TP at the highest priority), the barrier words, the ready event.
std::string make_streams(NcclState& st) {
  int least = 0, greatest = 0;
  cudaError_t rc = cudaDeviceGetStreamPriorityRange(&least, &greatest);
  for (int g = 0; g < kGroupKinds && rc == cudaSuccess; ++g)
    rc = cudaStreamCreateWithPriority(&st.streams[g], cudaStreamNonBlocking,
                                      GroupKind(g) == GroupKind::Tp ? greatest : least);
  if (rc == cudaSuccess) rc = cudaMalloc(&st.barrier, kGroupKinds * sizeof(int));
  if (rc == cudaSuccess) rc = cudaMemset(st.barrier, 0, kGroupKinds * sizeof(int));
  if (rc == cudaSuccess) rc = cudaEventCreateWithFlags(&st.ready, cudaEventDisableTiming);
  return rc == cudaSuccess ? "" : "creating the communication streams: " + cuda_error(rc);
}

const char* real_getenv(const char* name) { return std::getenv(name); }

}  // namespace

NcclCreateResult comm_create_nccl(const Topology& topo, bool v_placement, const LaunchEnv& env,
                                  const NcclOptions& opts, const NcclIdBroadcast& id_broadcast,
                                  const GetEnv& getenv_in) {
  const GetEnv getenv = getenv_in ? getenv_in : GetEnv(real_getenv);
  if (env.world != topo.world())
    return {nullptr, "tp*pp*dp = " + std::to_string(topo.TP) + "*" + std::to_string(topo.PP) + "*" +
                         std::to_string(topo.DP) + " = " + std::to_string(topo.world()) + ", but the launcher (" +
                         env.launcher + ") started " + std::to_string(env.world) + " ranks"};
  NcclPlanResult plan = nccl_bootstrap_plan(env, getenv, opts.port, bool(id_broadcast));
  if (!plan.plan) return {nullptr, "NCCL bootstrap: " + plan.error};
  int visible = 0;
  if (cudaGetDeviceCount(&visible) != cudaSuccess) visible = 0;
  const NcclDeviceResult dev = nccl_pick_device(topo.local_rank, visible, opts.device, getenv);
  if (!dev.error.empty()) return {nullptr, "rank " + std::to_string(topo.rank) + ": " + dev.error};
  const cudaError_t rc = cudaSetDevice(dev.device);
  if (rc != cudaSuccess) return {nullptr, "cudaSetDevice(" + std::to_string(dev.device) + "): " + cuda_error(rc)};

  auto st = std::make_shared<NcclState>();
  st->topo = topo;
  st->opts = opts;
  st->device = dev.device;
  st->bootstrap = plan.plan->describe;
  ncclUniqueId id{};
  std::string err = get_unique_id(*plan.plan, topo.rank, id_broadcast, &id);
  if (err.empty()) err = make_communicators(*st, id, v_placement);
  if (err.empty()) err = make_streams(*st);
  if (!err.empty()) return {nullptr, "rank " + std::to_string(topo.rank) + ": " + err};
  if (opts.watchdog) {
    NcclState* raw = st.get();  // the state joins the thread before it goes
    st->watchdog = std::thread([raw] { raw->run_watchdog(); });
  }
  return {std::make_unique<NcclCommunicator>(std::move(st)), ""};
}

}  // namespace stp
