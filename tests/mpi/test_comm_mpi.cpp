// test_comm_mpi.cpp: the MPI Communicator under mpirun (2 and 4 ranks), and the staged host
// communicator (comm/staged_comm.h) over it. Every expected value is a small integer designed so
// that fp32 sums are exact, computed here independently of comm/. The designed-answer cases run
// twice: on the MPI communicator, and through the staged wrapper with host staging, which is the
// CUDA trainer's host communicator under torchrun with NCCL swapped for MPI.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <thread>
#include <vector>

#include "comm/staged_comm.h"
#include "tests/mpi/mpi_test_util.h"

using namespace stp;

namespace {

constexpr double kTimeout = 20.0;  // a wait longer than this in a test means a hang

std::unique_ptr<Communicator> make_comm(int tp, int pp, int dp, bool v = false,
                                        CommProgress prog = CommProgress::Thread) {
  MpiOptions o;
  o.progress = prog;
  CommCreateResult r = comm_create_mpi(test_mpi_session(), test_topology(tp, pp, dp), v, o);
  INFO(r.error);
  REQUIRE(r.comm);
  return std::move(r.comm);
}

// Independent restatement of the grid: members of `g` for global rank r, in group-index order.
std::vector<int> expected_members(int TP, int PP, int DP, int r, GroupKind g, bool v) {
  const int tp = r % TP, pp = (r / TP) % PP, dp = r / (TP * PP);
  auto at = [&](int t, int p, int d) { return (d * PP + p) * TP + t; };
  std::vector<int> m;
  switch (g) {
    case GroupKind::World:
      for (int i = 0; i < TP * PP * DP; ++i) m.push_back(i);
      break;
    case GroupKind::Tp:
      for (int i = 0; i < TP; ++i) m.push_back(at(i, pp, dp));
      break;
    case GroupKind::Pp:
      for (int i = 0; i < PP; ++i) m.push_back(at(tp, i, dp));
      break;
    case GroupKind::Dp:
      for (int i = 0; i < DP; ++i) m.push_back(at(tp, pp, i));
      break;
    case GroupKind::Embed:
      if (!v && PP > 1 && (pp == 0 || pp == PP - 1)) m = {at(tp, 0, dp), at(tp, PP - 1, dp)};
      else m = {r};
      break;
  }
  return m;
}

const GroupKind kGroups[] = {GroupKind::World, GroupKind::Tp, GroupKind::Pp, GroupKind::Dp,
                             GroupKind::Embed};

// The communicator a designed-answer case runs on: the MPI one, or the staged wrapper over it.
struct TestComm {
  std::unique_ptr<Communicator> mpi, staged;
  Communicator* operator->() const { return staged ? staged.get() : mpi.get(); }
};

TestComm make_test_comm(int tp, int pp, int dp, bool staged) {
  TestComm t;
  t.mpi = make_comm(tp, pp, dp);
  if (staged) t.staged = comm_create_staged(*t.mpi, staging_host(), kTimeout);
  return t;
}

void require_ok(CommHandle& h) {
  const CommStatus st = h.wait(kTimeout);
  INFO(st.error);
  REQUIRE(st.ok());
}

}  // namespace

// Fails if a group's MPI communicator holds other ranks than the grid formula says, or in another
// order (each member's contribution to an all_gather shows who is where).
TEST_CASE("groups follow rank = ((dp*PP)+pp)*TP+tp for every grid of the world", "[mpi][comm]") {
  const int world = test_mpi_session().world_size();
  for (const auto& g : test_grids(world)) {
    for (bool v : {false, true}) {
      auto c = make_comm(g[0], g[1], g[2], v);
      for (GroupKind k : kGroups) {
        const std::vector<int> want = expected_members(g[0], g[1], g[2], c->world_rank(), k, v);
        INFO("grid tp" << g[0] << " pp" << g[1] << " dp" << g[2] << " group " << group_kind_name(k));
        CHECK(c->members(k) == want);
        REQUIRE(c->size(k) == int(want.size()));
        const int me = c->world_rank();
        std::vector<int> got(want.size(), -1);
        CommHandle h = c->all_gather(k, &me, got.data(), 1, DType::I32);
        require_ok(h);
        CHECK(got == want);
        CHECK(want[c->rank(k)] == me);
      }
    }
  }
}

// Fails if a reduction is wrong, in place or not, for any dtype, or lands on the wrong group:
// member k contributes (k+1)*(i+1), so the sum is (i+1)*n(n+1)/2 and the max n*(i+1).
TEST_CASE("all_reduce sum and max give the designed integers", "[mpi][comm]") {
  const int world = test_mpi_session().world_size();
  const bool staged = GENERATE(false, true);
  INFO((staged ? "staged over mpi" : "mpi"));
  TestComm c = world >= 4 ? make_test_comm(2, 2, world / 4, staged) : make_test_comm(1, world, 1, staged);
  const int N = 1000;
  for (GroupKind g : kGroups) {
    const int n = c->size(g), k = c->rank(g);
    std::vector<float> a(N), out(N);
    std::vector<double> d(N);
    std::vector<int64_t> l(N);
    for (int i = 0; i < N; ++i) a[i] = float((k + 1) * (i + 1)), d[i] = a[i], l[i] = int64_t(a[i]);
    CommHandle h1 = c->all_reduce(g, a.data(), out.data(), N, DType::F32, ReduceOp::Sum);
    CommHandle h2 = c->all_reduce(g, d.data(), d.data(), N, DType::F64, ReduceOp::Max);
    CommHandle h3 = c->all_reduce(g, l.data(), l.data(), N, DType::I64, ReduceOp::Sum);
    require_ok(h1);
    require_ok(h2);
    require_ok(h3);
    INFO("group " << group_kind_name(g));
    for (int i = 0; i < N; ++i) {
      REQUIRE(out[i] == float((i + 1) * n * (n + 1) / 2));
      REQUIRE(d[i] == double(n * (i + 1)));
      REQUIRE(l[i] == int64_t((i + 1) * n * (n + 1) / 2));
    }
  }
}

// Fails if blocks land in the wrong order or the scatter hands out the wrong block.
TEST_CASE("all_gather, reduce_scatter and broadcast give the designed blocks", "[mpi][comm]") {
  const bool staged = GENERATE(false, true);
  INFO((staged ? "staged over mpi" : "mpi"));
  TestComm c = make_test_comm(1, 1, test_mpi_session().world_size(), staged);
  const GroupKind g = GroupKind::Dp;
  const int n = c->size(g), k = c->rank(g), B = 37;
  std::vector<float> mine(B), all(size_t(n) * B);
  for (int i = 0; i < B; ++i) mine[i] = float(100 * k + i);
  CommHandle h = c->all_gather(g, mine.data(), all.data(), B, DType::F32);
  require_ok(h);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < B; ++i) REQUIRE(all[size_t(j) * B + i] == float(100 * j + i));

  // send[j*B + i] = 1000*k + 10*j + i; block j summed over members k: 1000*n(n-1)/2 + n*(10j+i).
  std::vector<float> send(size_t(n) * B), got(B);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < B; ++i) send[size_t(j) * B + i] = float(1000 * k + 10 * j + i);
  h = c->reduce_scatter(g, send.data(), got.data(), B, DType::F32, ReduceOp::Sum);
  require_ok(h);
  for (int i = 0; i < B; ++i) REQUIRE(got[i] == float(1000 * n * (n - 1) / 2 + n * (10 * k + i)));

  std::vector<int32_t> buf(B, -1);
  const int root = n - 1;
  if (k == root)
    for (int i = 0; i < B; ++i) buf[i] = 7 * i + 3;
  h = c->broadcast(g, buf.data(), B, DType::I32, root);
  require_ok(h);
  for (int i = 0; i < B; ++i) REQUIRE(buf[i] == 7 * i + 3);
}

// Fails if messages between one pair overtake each other, or a ring pass mixes up peers.
TEST_CASE("send/recv match in call order between a pair, around the PP ring", "[mpi][comm]") {
  const bool staged = GENERATE(false, true);
  INFO((staged ? "staged over mpi" : "mpi"));
  TestComm c = make_test_comm(1, test_mpi_session().world_size(), 1, staged);
  const GroupKind g = GroupKind::Pp;
  const int n = c->size(g), k = c->rank(g), next = (k + 1) % n, prev = (k + n - 1) % n;
  const int M = 3, B = 64;
  std::vector<std::vector<float>> out(M, std::vector<float>(B)), in(M, std::vector<float>(B, -1));
  std::vector<CommHandle> hs;
  for (int m = 0; m < M; ++m) {  // receives first: the order of posting must not matter
    hs.push_back(c->recv(g, in[m].data(), B, DType::F32, prev));
  }
  for (int m = 0; m < M; ++m) {
    for (int i = 0; i < B; ++i) out[m][i] = float(10000 * k + 100 * m + i);
    hs.push_back(c->send(g, out[m].data(), B, DType::F32, next));
  }
  for (CommHandle& h : hs) require_ok(h);
  for (int m = 0; m < M; ++m)
    for (int i = 0; i < B; ++i) REQUIRE(in[m][i] == float(10000 * prev + 100 * m + i));
}

namespace {

// Host staging that counts its live buffers and can be told to refuse every allocation.
class CountingStaging final : public Staging {
 public:
  std::shared_ptr<Staging> host = staging_host();
  bool refuse = false;
  int live = 0, allocs = 0;
  std::shared_ptr<void> alloc(size_t bytes, std::string* error) override {
    if (refuse) {
      *error = "refused by the test";
      return nullptr;
    }
    std::shared_ptr<void> p = host->alloc(bytes, error);
    ++live, ++allocs;
    return std::shared_ptr<void>(p.get(), [this, p](void*) { --live; });
  }
  std::string put(void* s, const void* h, size_t n) override { return host->put(s, h, n); }
  std::string get(void* h, const void* s, size_t n) override { return host->get(h, s, n); }
};

}  // namespace

// Fails if the staged wrapper reads the caller's input after the call returns (the source is
// overwritten at once), loses a message whose handle was dropped in flight, keeps a staging buffer
// after its operation finished, or issues an operation whose staging failed (the next collective
// would then mismatch across ranks).
TEST_CASE("staged: input copied at the call, dropped handles still deliver, staging failures named", "[mpi][comm]") {
  auto mpi = make_comm(1, test_mpi_session().world_size(), 1);
  auto staging = std::make_shared<CountingStaging>();
  auto c = comm_create_staged(*mpi, staging, kTimeout);
  const GroupKind g = GroupKind::Pp;
  const int n = c->size(g), k = c->rank(g), next = (k + 1) % n, prev = (k + n - 1) % n;
  const int B = 1000;
  std::vector<float> out(B), in(B, -1);
  for (int i = 0; i < B; ++i) out[i] = float(1000 * k + i);
  CommHandle r = c->recv(g, in.data(), B, DType::F32, prev);
  c->send(g, out.data(), B, DType::F32, next);  // handle dropped: waits for the send, buffer then freed
  std::fill(out.begin(), out.end(), -7.0f);
  require_ok(r);
  for (int i = 0; i < B; ++i) REQUIRE(in[i] == float(1000 * prev + i));
  CHECK(staging->live == 0);
  CHECK(staging->allocs == 2);

  const int64_t issued = mpi->stats().ops;
  staging->refuse = true;
  int32_t x = k;
  CommHandle bad = c->all_reduce(GroupKind::World, &x, &x, 1, DType::I32, ReduceOp::Max);
  const CommStatus st = bad.wait(kTimeout);
  CHECK(st.error == "all_reduce(max) #0 on world group [" + [&] {
          std::string m;
          for (int i = 0; i < mpi->world_size(); ++i) m += (i ? " " : "") + std::to_string(i);
          return m;
        }() + "], 1 x i32 failed: staging 4 bytes: refused by the test");
  CHECK(mpi->stats().ops == issued);
  staging->refuse = false;
  CommHandle ok = c->all_reduce(GroupKind::World, &x, &x, 1, DType::I32, ReduceOp::Max);
  require_ok(ok);
  CHECK(x == mpi->world_size() - 1);
}

// Fails if bf16 payloads are not moved bit for bit (every 16-bit pattern, NaNs included), or the
// MPI backend pretends to reduce them.
TEST_CASE("bf16: moved bit for bit around the ring, reductions refused with a clear error", "[mpi][comm]") {
  auto c = make_comm(1, test_mpi_session().world_size(), 1);
  const GroupKind g = GroupKind::Pp;
  const int n = c->size(g), k = c->rank(g), next = (k + 1) % n, prev = (k + n - 1) % n;
  std::vector<uint16_t> out(65536), in(65536, 0);
  for (size_t i = 0; i < out.size(); ++i) out[i] = uint16_t(i + 7 * k);
  CommHandle r = c->recv(g, in.data(), int64_t(in.size()), DType::BF16, prev);
  CommHandle s = c->send(g, out.data(), int64_t(out.size()), DType::BF16, next);
  require_ok(s);
  require_ok(r);
  for (size_t i = 0; i < in.size(); ++i) REQUIRE(in[i] == uint16_t(i + 7 * prev));
  CommHandle a = c->all_reduce(g, out.data(), out.data(), 4, DType::BF16, ReduceOp::Sum);
  CHECK_THAT(a.wait(kTimeout).error, Catch::Contains("does not reduce bf16"));
}

// Fails if a receive of the wrong size silently truncates or under-fills.
TEST_CASE("a point-to-point size mismatch is an error naming the counts", "[mpi][comm]") {
  auto c = make_comm(1, test_mpi_session().world_size(), 1);
  const GroupKind g = GroupKind::Pp;
  const int k = c->rank(g);
  std::vector<float> buf(8, 1.0f);
  if (k == 0) {
    CommHandle a = c->send(g, buf.data(), 5, DType::F32, 1);
    CommHandle b = c->send(g, buf.data(), 5, DType::F32, 1);
    require_ok(a);
    require_ok(b);
  } else if (k == 1) {
    CommHandle a = c->recv(g, buf.data(), 4, DType::F32, 0);
    CommStatus s = a.wait(kTimeout);
    CHECK(!s.ok());
    CHECK_THAT(s.error, Catch::Contains("4 elements"));
    CommHandle b = c->recv(g, buf.data(), 6, DType::F32, 0);
    s = b.wait(kTimeout);
    CHECK_THAT(s.error, Catch::Contains("received 5 elements, expected exactly 6"));
  }
  CommHandle bar = c->barrier(GroupKind::World);
  require_ok(bar);
  CommHandle self = c->send(g, buf.data(), 1, DType::F32, k);
  CHECK_THAT(self.wait(1.0).error, Catch::Contains("itself"));
}

// Fails if a wait on a late peer blocks past its timeout, or the message does not say which
// operation, group and peer it waited on; and if the operation cannot still complete afterwards.
TEST_CASE("a wait times out with a message naming op, group and peer", "[mpi][comm]") {
  auto c = make_comm(1, test_mpi_session().world_size(), 1);
  const GroupKind g = GroupKind::Pp;
  const int k = c->rank(g);
  float x = 0;
  if (k == 1) {
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
    x = 42;
    CommHandle h = c->send(g, &x, 1, DType::F32, 0);
    require_ok(h);
  } else if (k == 0) {
    CommHandle h = c->recv(g, &x, 1, DType::F32, 1);
    const auto t0 = std::chrono::steady_clock::now();
    CommStatus s = h.wait(0.2);
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(waited < 0.6);
    CHECK_THAT(s.error, Catch::Contains("timed out") && Catch::Contains("recv") &&
                            Catch::Contains("pp group") && Catch::Contains("global rank 1"));
    require_ok(h);  // the late message still arrives
    CHECK(x == 42);
  }
  CommHandle bar = c->barrier(GroupKind::World);
  require_ok(bar);
}

namespace {

// Busy arithmetic for about `seconds` with no MPI call; `poll` (if set) runs every ~1 ms, as the
// executor calls progress() between units.
double compute_for(double seconds, Communicator* poll) {
  const auto t0 = std::chrono::steady_clock::now();
  double acc = 0, last = 0;
  for (long i = 1;; ++i) {
    acc += std::sqrt(double(i));
    if (i % 4096) continue;
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (t > seconds) break;
    if (poll && t - last > 1e-3) poll->progress(), last = t;
  }
  return acc;
}

// Seconds a caller stays blocked in wait() after `compute` seconds of work following the start.
double exposed_after(Communicator& c, std::vector<float>& buf, double compute, bool poll) {
  CommHandle bar = c.barrier(GroupKind::World);
  REQUIRE(bar.wait(kTimeout).ok());
  CommHandle h = c.all_reduce(GroupKind::World, buf.data(), buf.data(), int64_t(buf.size()),
                              DType::F32, ReduceOp::Sum);
  volatile double sink = compute > 0 ? compute_for(compute, poll ? &c : nullptr) : 0;
  (void)sink;
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(h.wait(kTimeout).ok());
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

// Fails if the engine the executor uses (the progress thread, plus progress() between units) does
// not advance a collective while the rank computes: the wait after enough compute must be a small
// part of the collective's own time. Prints the measurement behind that choice (mpi_comm.h).
TEST_CASE("progress engines overlap a collective with compute", "[mpi][comm][progress]") {
  const int world = test_mpi_session().world_size();
  std::vector<float> buf(size_t(4) << 20, 1.0f);  // 16 MiB
  const CommProgress modes[4] = {CommProgress::Thread, CommProgress::Thread, CommProgress::Inline,
                                 CommProgress::Inline};
  const bool polls[4] = {true, false, false, true};
  double exposed[4] = {0, 0, 0, 0}, alone[4] = {0, 0, 0, 0};
  for (int m = 0; m < 4; ++m) {
    auto c = make_comm(1, 1, world, false, modes[m]);
    exposed_after(*c, buf, 0, false);  // warm-up
    alone[m] = exposed_after(*c, buf, 0, false);
    exposed[m] = exposed_after(*c, buf, std::max(0.05, 3 * alone[m]), polls[m]);
  }
  if (test_mpi_session().world_rank() == 0)
    std::printf("# progress (%d ranks, 16 MiB all_reduce): alone %.1f ms; blocked after compute: "
                "thread+poll/1ms %.1f ms, thread %.1f ms, inline %.1f ms, inline+poll/1ms %.1f ms\n",
                world, 1e3 * alone[0], 1e3 * exposed[0], 1e3 * exposed[1], 1e3 * exposed[2], 1e3 * exposed[3]);
  CHECK(exposed[0] < 0.5 * alone[0]);
}

// Fails if a liveness ping is not answered by healthy ranks (their progress engines answer even
// while the main thread sleeps), which would make every timeout message blame innocent ranks.
TEST_CASE("diagnose finds every rank alive", "[mpi][comm]") {
  for (CommProgress prog : {CommProgress::Thread}) {
    auto c = make_comm(1, 1, test_mpi_session().world_size(), false, prog);
    if (c->world_rank() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(c->diagnose(5.0).empty());
    CommHandle bar = c->barrier(GroupKind::World);
    require_ok(bar);
  }
}
