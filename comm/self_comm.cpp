// self_comm.cpp: single-rank Communicator (see self_comm.h).
#include "comm/self_comm.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace stp {
namespace {

class SelfCommunicator final : public Communicator {
 public:
  int world_rank() const override { return 0; }
  int world_size() const override { return 1; }
  int rank(GroupKind) const override { return 0; }
  int size(GroupKind) const override { return 1; }
  const std::vector<int>& members(GroupKind) const override { return members_; }

  CommHandle all_reduce(GroupKind g, const void* send, void* recv, int64_t count, DType t,
                        ReduceOp op, StreamRef) override {
    return copy(info(CommOpKind::AllReduce, g, count, t, -1), send, recv);
  }
  CommHandle all_gather(GroupKind g, const void* send, void* recv, int64_t n, DType t,
                        StreamRef) override {
    return copy(info(CommOpKind::AllGather, g, n, t, -1), send, recv);
  }
  CommHandle reduce_scatter(GroupKind g, const void* send, void* recv, int64_t n, DType t,
                            ReduceOp, StreamRef) override {
    return copy(info(CommOpKind::ReduceScatter, g, n, t, -1), send, recv);
  }
  CommHandle broadcast(GroupKind g, void* buf, int64_t count, DType t, int root, StreamRef) override {
    CommOpInfo in = info(CommOpKind::Broadcast, g, count, t, root);
    if (root != 0) return comm_failed_handle(in, "root " + std::to_string(root) + " is not in a group of 1");
    return {};
  }
  CommHandle send(GroupKind g, const void*, int64_t count, DType t, int peer, StreamRef) override {
    return comm_failed_handle(info(CommOpKind::Send, g, count, t, peer),
                              "a single-rank job has no peer to send to");
  }
  CommHandle recv(GroupKind g, void*, int64_t count, DType t, int peer, StreamRef) override {
    return comm_failed_handle(info(CommOpKind::Recv, g, count, t, peer),
                              "a single-rank job has no peer to receive from");
  }
  CommHandle barrier(GroupKind g) override {
    info(CommOpKind::Barrier, g, 0, DType::U8, -1);
    return {};
  }
  CommStats stats() const override { return stats_; }
  std::string whoami() const override { return "rank 0 (tp 0, pp 0, dp 0)"; }
  [[noreturn]] void abort(const std::string& message, int code) override {
    std::fprintf(stderr, "[stp] FATAL %s: %s\n", whoami().c_str(), message.c_str());
    std::fflush(stderr);
    std::_Exit(code);
  }

 private:
  CommOpInfo info(CommOpKind k, GroupKind g, int64_t count, DType t, int peer) {
    CommOpInfo in;
    in.kind = k;
    in.group = g;
    in.members = members_;
    in.seq = ++stats_.ops;
    in.peer = peer;
    in.count = count;
    in.dtype = t;
    if (k != CommOpKind::Barrier) stats_.bytes += count * int64_t(dtype_size(t));
    return in;
  }
  CommHandle copy(const CommOpInfo& in, const void* send, void* recv) {
    if (in.count < 0) return comm_failed_handle(in, "negative element count");
    if (send != recv) std::memmove(recv, send, size_t(in.count) * dtype_size(in.dtype));
    return {};
  }

  std::vector<int> members_{0};
  CommStats stats_;
};

}  // namespace

std::unique_ptr<Communicator> comm_create_self() { return std::make_unique<SelfCommunicator>(); }

}  // namespace stp
