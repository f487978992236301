// communicator.cpp: names of the interface's enums and the handle's wait loop.
// The wait loop polls test(): a short spin (a collective that is about to land costs no sleep),
// then sleeps that double up to 100 us, so a rank blocked on a slow peer leaves its core to the
// ranks that compute (on the CPU the job often runs more ranks than cores).
#include "comm/communicator.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "runtime/core/clock.h"

namespace stp {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
    case DType::BF16: return 2;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F64: return "f64";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
    case DType::BF16: return "bf16";
  }
  return "?";
}

const char* reduce_op_name(ReduceOp op) { return op == ReduceOp::Sum ? "sum" : "max"; }

const char* group_kind_name(GroupKind g) {
  switch (g) {
    case GroupKind::World: return "world";
    case GroupKind::Tp: return "tp";
    case GroupKind::Pp: return "pp";
    case GroupKind::Dp: return "dp";
    case GroupKind::Embed: return "embed";
  }
  return "?";
}

const char* comm_op_kind_name(CommOpKind k) {
  switch (k) {
    case CommOpKind::AllReduce: return "all_reduce";
    case CommOpKind::AllGather: return "all_gather";
    case CommOpKind::ReduceScatter: return "reduce_scatter";
    case CommOpKind::Broadcast: return "broadcast";
    case CommOpKind::Send: return "send";
    case CommOpKind::Recv: return "recv";
    case CommOpKind::Barrier: return "barrier";
  }
  return "?";
}

std::string CommOpInfo::describe() const {
  std::string s = comm_op_kind_name(kind);
  if (kind == CommOpKind::AllReduce || kind == CommOpKind::ReduceScatter)
    s += std::string("(") + reduce_op_name(op) + ")";
  s += " #" + std::to_string(seq) + " on " + group_kind_name(group) + " group [";
  for (size_t i = 0; i < members.size(); ++i) s += (i ? " " : "") + std::to_string(members[i]);
  s += "]";
  if (peer >= 0) {
    const char* rel = kind == CommOpKind::Send ? " to " : kind == CommOpKind::Recv ? " from " : " root ";
    s += rel + std::string(group_kind_name(group)) + " peer " + std::to_string(peer);
    if (peer < int(members.size())) s += " (global rank " + std::to_string(members[peer]) + ")";
  }
  if (kind != CommOpKind::Barrier) s += ", " + std::to_string(count) + " x " + dtype_name(dtype);
  return s;
}

namespace {
class FailedRequest final : public CommRequest {
 public:
  FailedRequest(std::string what, std::string error) : what_(std::move(what)), error_(std::move(error)) {}
  bool test() override { return true; }
  std::string error() const override { return error_; }
  std::string describe() const override { return what_; }

 private:
  std::string what_, error_;
};
}  // namespace

CommHandle comm_failed_handle(const CommOpInfo& info, std::string error) {
  return CommHandle(std::make_unique<FailedRequest>(info.describe(), std::move(error)));
}

CommStatus comm_any(Communicator& comm, bool mine, double timeout_s, bool* any) {
  int32_t v = mine ? 1 : 0;
  const CommStatus st = comm.all_reduce(GroupKind::World, &v, &v, 1, DType::I32, ReduceOp::Max).wait(timeout_s);
  *any = st.ok() && v != 0;
  return st;
}

bool CommHandle::test() { return !req_ || req_->test(); }

std::string CommHandle::error() const { return req_ ? req_->error() : std::string(); }

std::string CommHandle::describe() const { return req_ ? req_->describe() : "(no operation)"; }

CommStatus CommHandle::wait(double timeout_s) {
  if (!req_) return {};
  const auto start = std::chrono::steady_clock::now();
  int spins = 0;
  auto sleep = std::chrono::microseconds(2);
  while (!req_->test()) {
    if (++spins < 64) continue;
    const double waited = seconds_since(start);
    if (timeout_s > 0 && waited > timeout_s) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.1f", waited);
      return CommStatus::failure("timed out after " + std::string(buf) + " s waiting for " +
                                 req_->describe() +
                                 " (a peer is hung, dead, or issued a different operation)");
    }
    std::this_thread::sleep_for(sleep);
    sleep = std::min(sleep * 2, std::chrono::microseconds(100));
  }
  const std::string err = req_->error();
  if (!err.empty()) return CommStatus::failure(req_->describe() + " failed: " + err);
  return {};
}

}  // namespace stp
