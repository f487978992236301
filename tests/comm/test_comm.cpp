// test_comm.cpp: the communicator interface on one process: names, the handle's wait loop and
// timeout, and the single-rank backend. Multi-rank behaviour is in tests/mpi/test_comm_mpi.cpp.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <vector>

#include "comm/communicator.h"
#include "comm/mpi_comm.h"
#include "comm/self_comm.h"

using namespace stp;

namespace {

// A request that completes after `polls` calls to test(), optionally with an error.
class CountdownRequest final : public CommRequest {
 public:
  CountdownRequest(int polls, std::string err) : left_(polls), err_(std::move(err)) {}
  bool test() override { return --left_ <= 0; }
  std::string error() const override { return err_; }
  std::string describe() const override { return "fake #1"; }

 private:
  int left_;
  std::string err_;
};

}  // namespace

// Fails if a wait outlives its timeout or its message loses what it waited on.
TEST_CASE("CommHandle::wait times out with the operation's description", "[comm]") {
  CommHandle h(std::make_unique<CountdownRequest>(1 << 30, ""));
  const auto t0 = std::chrono::steady_clock::now();
  const CommStatus st = h.wait(0.05);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(!st.ok());
  CHECK(s >= 0.05);
  CHECK(s < 0.5);
  CHECK_THAT(st.error, Catch::Contains("timed out after") && Catch::Contains("fake #1"));
}

// Fails if completion or an operation's own error is lost by the wait loop.
TEST_CASE("CommHandle::wait returns completion and the operation's error", "[comm]") {
  CommHandle ok(std::make_unique<CountdownRequest>(200, ""));
  CHECK(ok.wait(5.0).ok());
  CommHandle bad(std::make_unique<CountdownRequest>(3, "peer vanished"));
  CHECK_THAT(bad.wait(5.0).error, Catch::Equals("fake #1 failed: peer vanished"));
  CommHandle empty;
  CHECK(empty.test());
  CHECK(empty.wait(0.0).ok());
}

// Fails if timeout messages stop naming the group members, the peer's global rank or the size.
TEST_CASE("CommOpInfo::describe names op, sequence, group, peer and size", "[comm]") {
  CommOpInfo in;
  in.kind = CommOpKind::Recv;
  in.group = GroupKind::Pp;
  in.members = {0, 2};
  in.seq = 12;
  in.peer = 1;
  in.count = 4096;
  CHECK(in.describe() == "recv #12 on pp group [0 2] from pp peer 1 (global rank 2), 4096 x f32");
  in.kind = CommOpKind::AllReduce;
  in.op = ReduceOp::Max;
  in.group = GroupKind::Tp;
  in.peer = -1;
  in.members = {2, 3};
  in.seq = 17;
  in.count = 1024;
  CHECK(in.describe() == "all_reduce(max) #17 on tp group [2 3], 1024 x f32");
}

// Fails if the one-rank backend does not behave as a group of one (identity reductions, copies)
// or lets point-to-point through.
TEST_CASE("self communicator: collectives over one member, no peers", "[comm]") {
  auto c = comm_create_self();
  CHECK(c->size(GroupKind::Tp) == 1);
  CHECK(c->members(GroupKind::Embed) == std::vector<int>{0});
  std::vector<float> a{1, 2, 3}, b(3);
  CHECK(c->all_reduce(GroupKind::Dp, a.data(), b.data(), 3, DType::F32, ReduceOp::Sum).wait(1).ok());
  CHECK(b == a);
  std::vector<float> g(3);
  CHECK(c->all_gather(GroupKind::Tp, a.data(), g.data(), 3, DType::F32).wait(1).ok());
  CHECK(g == a);
  CHECK(c->broadcast(GroupKind::Tp, a.data(), 3, DType::F32, 0).wait(1).ok());
  CHECK_THAT(c->send(GroupKind::Pp, a.data(), 3, DType::F32, 1).wait(1).error,
             Catch::Contains("no peer"));
  CHECK(c->stats().ops == 4);
  CHECK(c->stats().bytes == 4 * 12);
}

TEST_CASE("dtype sizes and names", "[comm]") {
  CHECK(dtype_size(DType::F32) == 4);
  CHECK(dtype_size(DType::F64) == 8);
  CHECK(dtype_size(DType::I64) == 8);
  CHECK(dtype_size(DType::U8) == 1);
  CHECK(std::string(dtype_name(DType::I32)) == "i32");
  CHECK(std::string(group_kind_name(GroupKind::Embed)) == "embed");
}
