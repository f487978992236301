// communicator.h: the communication interface (DESIGN.md, "comm/").
//
// Contract:
// - Every operation is asynchronous: it is *issued* when called and returns a CommHandle; the
//   buffers belong to the operation until the handle reports completion (test() true, or wait() ok).
//   Dropping a handle does not cancel the operation.
// - Operations on one group are issued to the network in the order they are called on this rank,
//   and every member must call the collectives of a group in the same order (NCCL's rule; the
//   scheduler's validator checks it). Point-to-point messages between two ranks of a group match in
//   call order, with exact element counts (a size mismatch is an error, not a truncation).
// - Buffers are plain pointers + element counts + a DType: no backend types leak through, so the NCCL
//   backend (comm stream + events) implements the same interface; `StreamRef` names the compute
//   stream whose queued work produced the inputs (ignored on the CPU, where data is ready at call).
// - Groups come from the topology grid rank = ((dp*PP)+pp)*TP+tp (runtime/core/topology.h): TP, PP,
//   DP and the embedding group (first and last pipeline rank of a (tp, dp) when the tied embedding
//   lives on two ranks; a group of one otherwise). A rank's index in a group is its tp / pp / dp
//   coordinate (embedding group: its position in the member list).
// - wait() takes a timeout; an operation that does not finish in time returns an error naming the
//   operation, its sequence number on this rank, the group with its global ranks, the peer for
//   point-to-point, the size, and how long it waited. The caller decides (the trainer aborts the job).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace stp {

// BF16: bfloat16 (the CUDA path's activations); reduced by NCCL, moved (not reduced) by the MPI
// backend, whose host path is fp32.
enum class DType : uint8_t { F32, F64, I32, I64, U8, BF16 };
size_t dtype_size(DType t);
const char* dtype_name(DType t);  // "f32", ...

enum class ReduceOp : uint8_t { Sum, Max };
const char* reduce_op_name(ReduceOp op);  // "sum", "max"

enum class GroupKind : uint8_t { World, Tp, Pp, Dp, Embed };
constexpr int kGroupKinds = 5;
const char* group_kind_name(GroupKind g);  // "world", "tp", "pp", "dp", "embed"

enum class CommOpKind : uint8_t { AllReduce, AllGather, ReduceScatter, Broadcast, Send, Recv, Barrier };
const char* comm_op_kind_name(CommOpKind k);  // "all_reduce", "send", ...

// An error as a value: empty message = ok.
struct CommStatus {
  std::string error;
  bool ok() const { return error.empty(); }
  static CommStatus failure(std::string m) { return CommStatus{std::move(m)}; }
};

// The compute stream whose queued work produced an operation's inputs (CUDA: a cudaStream_t; the
// backend orders the operation after it). nullptr = the data is ready now (always so on the CPU).
struct StreamRef {
  void* stream = nullptr;
};

// One in-flight operation of a backend.
class CommRequest {
 public:
  virtual ~CommRequest() = default;
  // True once the operation finished (successfully or not); lets the backend progress if it must.
  virtual bool test() = 0;
  // After test() returned true: non-empty when the operation failed.
  virtual std::string error() const = 0;
  // "recv #12 on pp group [0 2] from pp peer 1 (global rank 2), 4096 x f32".
  virtual std::string describe() const = 0;
};

// A move-only handle on one operation. A default-constructed handle is already complete.
class CommHandle {
 public:
  CommHandle() = default;
  explicit CommHandle(std::unique_ptr<CommRequest> req) : req_(std::move(req)) {}
  CommHandle(CommHandle&&) noexcept = default;
  CommHandle& operator=(CommHandle&&) noexcept = default;
  CommHandle(const CommHandle&) = delete;
  CommHandle& operator=(const CommHandle&) = delete;

  bool valid() const { return req_ != nullptr; }
  // Non-blocking: true when the operation is complete.
  bool test();
  // Blocks until the operation completes or `timeout_s` passes (timeout_s <= 0: no limit). Returns
  // the operation's own error, or a timeout error that says what was waited on and for how long.
  CommStatus wait(double timeout_s);
  // After test() returned true: the operation's own error ("" = success), without the description
  // wait() puts in front of it (for wrappers that report it as their own).
  std::string error() const;
  std::string describe() const;

 private:
  std::unique_ptr<CommRequest> req_;
};

// What an operation is, for messages: backends fill one per operation and use describe().
struct CommOpInfo {
  CommOpKind kind = CommOpKind::Barrier;
  GroupKind group = GroupKind::World;
  std::vector<int> members;    // global ranks of the group
  int64_t seq = 0;             // 1-based count of operations issued by this rank's communicator
  int peer = -1;               // group index of the peer (send/recv) or root (broadcast)
  int64_t count = 0;
  DType dtype = DType::F32;
  ReduceOp op = ReduceOp::Sum;
  // "all_reduce(sum) #17 on tp group [2 3], 1024 x f32"; "recv #12 on pp group [0 2] from pp
  // peer 1 (global rank 2), 4096 x f32".
  std::string describe() const;
};

// A handle that is already complete with `error` (argument errors found before issuing).
CommHandle comm_failed_handle(const CommOpInfo& info, std::string error);

// Counters of one communicator (for metrics and tests).
struct CommStats {
  int64_t ops = 0;          // operations issued
  int64_t bytes = 0;        // payload bytes issued (per rank: what this rank contributes/sends)
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int world_rank() const = 0;
  virtual int world_size() const = 0;
  virtual int rank(GroupKind g) const = 0;   // this rank's index in the group
  virtual int size(GroupKind g) const = 0;
  // Global ranks of the group's members, in group-index order.
  virtual const std::vector<int>& members(GroupKind g) const = 0;

  // recv[i] = op over members of send[i], count elements. send == recv means in place.
  virtual CommHandle all_reduce(GroupKind g, const void* send, void* recv, int64_t count, DType t,
                                ReduceOp op, StreamRef s = {}) = 0;
  // recv = concat over members (group order) of each member's send_count elements.
  virtual CommHandle all_gather(GroupKind g, const void* send, void* recv, int64_t send_count,
                                DType t, StreamRef s = {}) = 0;
  // send holds size*recv_count elements; member k receives block k of the reduction.
  virtual CommHandle reduce_scatter(GroupKind g, const void* send, void* recv, int64_t recv_count,
                                    DType t, ReduceOp op, StreamRef s = {}) = 0;
  // buf on every member = buf on member `root` (a group index).
  virtual CommHandle broadcast(GroupKind g, void* buf, int64_t count, DType t, int root,
                               StreamRef s = {}) = 0;
  // Point-to-point with a group index as peer; matched in call order, exact counts.
  virtual CommHandle send(GroupKind g, const void* buf, int64_t count, DType t, int peer,
                          StreamRef s = {}) = 0;
  virtual CommHandle recv(GroupKind g, void* buf, int64_t count, DType t, int peer,
                          StreamRef s = {}) = 0;
  virtual CommHandle barrier(GroupKind g) = 0;

  // Lets in-flight operations advance. Backends with their own progress engine ignore it; the
  // executor calls it between units so an inline-progress backend still overlaps.
  virtual void progress() {}
  virtual CommStats stats() const = 0;
  // After a timeout: asks every other rank of the world for a sign of life (answered by its
  // progress engine even while it is blocked) and names those that give none within `wait_s`:
  // "rank 2 (tp 0, pp 2, dp 0) did not answer ... (hung or dead)". Empty when all answer.
  virtual std::string diagnose(double wait_s) { return {}; }
  // Prints `message` (naming this rank) and ends every process of the job with `code`.
  [[noreturn]] virtual void abort(const std::string& message, int code) = 0;
  // "rank 3 (tp 1, pp 1, dp 0)" for messages.
  virtual std::string whoami() const = 0;
};

// Collective over the world: *any = whether `mine` is true on some rank (a one-element max
// all-reduce of an int32 in host memory, so a host backend). Returns the vote's status.
CommStatus comm_any(Communicator& comm, bool mine, double timeout_s, bool* any);

}  // namespace stp
