// staged_comm.cpp: a host-memory Communicator over a device-memory one (see staged_comm.h).
#include "comm/staged_comm.h"

#include <cstdlib>
#include <cstring>

namespace stp {

namespace {

class HostStaging final : public Staging {
 public:
  std::shared_ptr<void> alloc(size_t bytes, std::string* error) override {
    void* p = std::malloc(bytes ? bytes : 1);
    if (!p) *error = "out of host memory for " + std::to_string(bytes) + " bytes";
    return p ? std::shared_ptr<void>(p, std::free) : nullptr;
  }
  std::string put(void* staged, const void* host, size_t bytes) override {
    if (bytes) std::memcpy(staged, host, bytes);
    return {};
  }
  std::string get(void* host, const void* staged, size_t bytes) override {
    if (bytes) std::memcpy(host, staged, bytes);
    return {};
  }
};

// One operation: the inner handle, the staging buffer it uses, and where its result goes.
class StagedRequest final : public CommRequest {
 public:
  StagedRequest(CommHandle inner, std::shared_ptr<void> buf, std::shared_ptr<Staging> staging, void* host_out,
                size_t out_offset, size_t out_bytes, double drop_wait_s)
      : inner_(std::move(inner)), buf_(std::move(buf)), staging_(std::move(staging)), host_out_(host_out),
        out_offset_(out_offset), out_bytes_(out_bytes), drop_wait_s_(drop_wait_s) {}
  ~StagedRequest() override {
    if (done_) return;
    inner_.wait(drop_wait_s_);  // the inner operation still uses buf_
    // Still running after drop_wait_s: the block must not go back to the staging, where the next
    // operation would get it while the device still writes it; it is leaked instead.
    if (!inner_.test()) new std::shared_ptr<void>(std::move(buf_));
  }
  bool test() override {
    if (done_) return true;
    if (!inner_.test()) return false;
    done_ = true;
    error_ = inner_.error();
    if (error_.empty() && host_out_) {
      const std::string e = staging_->get(host_out_, static_cast<char*>(buf_.get()) + out_offset_, out_bytes_);
      if (!e.empty()) error_ = "copying the result to the host: " + e;
    }
    buf_.reset();  // back to the staging now, not when the handle goes
    return true;
  }
  std::string error() const override { return error_; }
  std::string describe() const override { return inner_.describe(); }

 private:
  CommHandle inner_;
  std::shared_ptr<void> buf_;
  std::shared_ptr<Staging> staging_;
  void* host_out_;
  size_t out_offset_, out_bytes_;
  double drop_wait_s_;
  bool done_ = false;
  std::string error_;
};

class StagedCommunicator final : public Communicator {
 public:
  StagedCommunicator(Communicator& inner, std::shared_ptr<Staging> staging, double drop_wait_s)
      : inner_(inner), staging_(std::move(staging)), drop_wait_s_(drop_wait_s) {}

  int world_rank() const override { return inner_.world_rank(); }
  int world_size() const override { return inner_.world_size(); }
  int rank(GroupKind g) const override { return inner_.rank(g); }
  int size(GroupKind g) const override { return inner_.size(g); }
  const std::vector<int>& members(GroupKind g) const override { return inner_.members(g); }

  CommHandle all_reduce(GroupKind g, const void* send, void* recv, int64_t count, DType t, ReduceOp op,
                        StreamRef) override {
    Op o = stage(info(CommOpKind::AllReduce, g, count, t, -1, op), count, send, 0);
    if (!o.ok()) return o.failed();
    return o.finish(inner_.all_reduce(g, o.at(0), o.at(0), count, t, op), recv, 0, o.in);
  }
  CommHandle all_gather(GroupKind g, const void* send, void* recv, int64_t n, DType t, StreamRef) override {
    Op o = stage(info(CommOpKind::AllGather, g, n, t, -1), n, send, n * inner_.size(g));
    if (!o.ok()) return o.failed();
    return o.finish(inner_.all_gather(g, o.at(0), o.at(o.in), n, t), recv, o.in, o.out);
  }
  CommHandle reduce_scatter(GroupKind g, const void* send, void* recv, int64_t n, DType t, ReduceOp op,
                            StreamRef) override {
    Op o = stage(info(CommOpKind::ReduceScatter, g, n, t, -1, op), n * inner_.size(g), send, n);
    if (!o.ok()) return o.failed();
    return o.finish(inner_.reduce_scatter(g, o.at(0), o.at(o.in), n, t, op), recv, o.in, o.out);
  }
  CommHandle broadcast(GroupKind g, void* buf, int64_t count, DType t, int root, StreamRef) override {
    Op o = stage(info(CommOpKind::Broadcast, g, count, t, root), count, buf, 0);
    if (!o.ok()) return o.failed();
    return o.finish(inner_.broadcast(g, o.at(0), count, t, root), buf, 0, o.in);
  }
  CommHandle send(GroupKind g, const void* buf, int64_t count, DType t, int peer, StreamRef) override {
    Op o = stage(info(CommOpKind::Send, g, count, t, peer), count, buf, 0);
    if (!o.ok()) return o.failed();
    return o.finish(inner_.send(g, o.at(0), count, t, peer), nullptr, 0, 0);
  }
  CommHandle recv(GroupKind g, void* buf, int64_t count, DType t, int peer, StreamRef) override {
    Op o = stage(info(CommOpKind::Recv, g, count, t, peer), 0, nullptr, count);
    if (!o.ok()) return o.failed();
    return o.finish(inner_.recv(g, o.at(0), count, t, peer), buf, 0, o.out);
  }
  CommHandle barrier(GroupKind g) override { return inner_.barrier(g); }

  void progress() override { inner_.progress(); }
  CommStats stats() const override { return inner_.stats(); }
  std::string diagnose(double wait_s) override { return inner_.diagnose(wait_s); }
  [[noreturn]] void abort(const std::string& message, int code) override {
    inner_.abort(message, code);
    std::_Exit(code);  // not reached: the attribute is not part of the virtual call's type
  }
  std::string whoami() const override { return inner_.whoami(); }

 private:
  // A staged operation before it is issued: [0, in) holds the input, [in, in + out) the output
  // (byte offsets into one buffer). error names what went wrong before issuing.
  struct Op {
    const StagedCommunicator* self = nullptr;
    CommOpInfo info;
    std::shared_ptr<void> buf;
    size_t in = 0, out = 0;
    std::string error;
    bool ok() const { return error.empty(); }
    CommHandle failed() const { return comm_failed_handle(info, error); }
    void* at(size_t offset) const { return static_cast<char*>(buf.get()) + offset; }
    CommHandle finish(CommHandle inner, void* host_out, size_t offset, size_t bytes) {
      return CommHandle(std::make_unique<StagedRequest>(std::move(inner), std::move(buf), self->staging_,
                                                        host_out, offset, bytes, self->drop_wait_s_));
    }
  };

  // For messages about refused work only: the inner communicator numbers what it issues.
  CommOpInfo info(CommOpKind k, GroupKind g, int64_t count, DType t, int peer, ReduceOp op = ReduceOp::Sum) const {
    CommOpInfo in;
    in.kind = k;
    in.group = g;
    in.members = inner_.members(g);
    in.peer = peer;
    in.count = count;
    in.dtype = t;
    in.op = op;
    return in;
  }

  Op stage(CommOpInfo in, int64_t in_count, const void* host_in, int64_t out_count) const {
    Op o;
    o.self = this;
    o.info = std::move(in);
    if (in_count < 0 || out_count < 0) {
      o.error = "negative element count";
      return o;
    }
    const size_t es = dtype_size(o.info.dtype);
    o.in = size_t(in_count) * es;
    o.out = size_t(out_count) * es;
    std::string err;
    o.buf = staging_->alloc(o.in + o.out, &err);
    if (!o.buf) {
      o.error = "staging " + std::to_string(o.in + o.out) + " bytes: " + err;
      return o;
    }
    if (o.in) err = staging_->put(o.buf.get(), host_in, o.in);
    if (!err.empty()) o.error = "copying the input to the staging buffer: " + err;
    return o;
  }

  Communicator& inner_;
  std::shared_ptr<Staging> staging_;
  double drop_wait_s_;
};

}  // namespace

std::shared_ptr<Staging> staging_host() { return std::make_shared<HostStaging>(); }

std::unique_ptr<Communicator> comm_create_staged(Communicator& inner, std::shared_ptr<Staging> staging,
                                                 double drop_wait_s) {
  return std::make_unique<StagedCommunicator>(inner, std::move(staging), drop_wait_s);
}

}  // namespace stp
