// test_nccl.cpp: the NCCL communicator (comm/nccl/nccl_comm.h) and its bootstrap decisions
// (comm/nccl/nccl_bootstrap.h).
//
// The bootstrap tests are pure and run everywhere: unique-id source and port arithmetic for each
// launcher, the device a local rank drives, and the ncclCommSplit colour/key of every group
// against group memberships written out by hand.
// The communicator tests need one GPU and run a one-rank world through real NCCL communicators
// (world + the four split groups). Without a device each prints "SKIPPED: no CUDA device (<test>)"
// and asserts nothing. In a world of one, a reduction over the group is the input itself, so the
// designed answer of every operation is exact: outputs start as 0xFF poison and must come back
// equal, byte for byte, to small-integer inputs of each dtype. Stream ordering is proven with a
// gate: a host callback holds the caller's stream until the test opens it, so an operation that
// did not wait for that stream (or a consumer stream that did not wait for the operation) would
// read poison. Run the whole file in declaration order: the fault tests abort their communicators.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <thread>

#include "comm/nccl/nccl_bootstrap.h"
#include "comm/nccl/nccl_comm.h"
#include "model/safetensors.h"
#include "tests/cuda/cuda_test_util.h"

using namespace stp;

namespace {

// A fake process environment for the pure functions.
struct FakeEnv {
  std::map<std::string, std::string> vars;
  GetEnv fn() const {
    return [this](const char* n) -> const char* {
      auto it = vars.find(n);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  }
};

LaunchEnv launch(const std::string& launcher, int rank, int world) {
  LaunchEnv e;
  e.launcher = launcher;
  e.rank = rank;
  e.world = world;
  return e;
}

NcclBootstrapPlan plan_ok(const LaunchEnv& e, const FakeEnv& env, int port, bool bcast) {
  NcclPlanResult r = nccl_bootstrap_plan(e, env.fn(), port, bcast);
  INFO(r.error);
  REQUIRE(r.plan);
  return *r.plan;
}

std::string plan_error(const LaunchEnv& e, const FakeEnv& env, int port, bool bcast) {
  NcclPlanResult r = nccl_bootstrap_plan(e, env.fn(), port, bcast);
  CHECK_FALSE(r.plan);
  return r.error;
}

Topology topo_of(int tp, int pp, int dp, int rank) {
  ParallelConfig p;
  p.tp = tp;
  p.pp = pp;
  p.dp = dp;
  LaunchEnv e = launch("none", rank, tp * pp * dp);
  return topology_build(p, e);
}

}  // namespace

// Fails if torchrun's id is not MASTER_ADDR:MASTER_PORT+1, if an override is ignored or may collide
// with torchrun's store port, if an MPI launcher does not use the broadcast, or if a launch with no
// way to share the id is accepted instead of told which variables to set.
TEST_CASE("nccl bootstrap: where the unique id comes from, per launcher", "[nccl][bootstrap]") {
  FakeEnv env;
  CHECK(plan_ok(launch("none", 0, 1), env, 0, false).source == NcclIdSource::Local);

  env.vars = {{"MASTER_ADDR", "node0"}, {"MASTER_PORT", "29500"}};
  NcclBootstrapPlan p = plan_ok(launch("torchrun", 3, 8), env, 0, false);
  CHECK(p.source == NcclIdSource::Env);
  CHECK(p.comm_id == "node0:29501");
  CHECK(p.describe == "torchrun: NCCL_COMM_ID=node0:29501 (MASTER_PORT 29500 + 1)");
  CHECK(plan_ok(launch("torchrun", 3, 8), env, 0, true).comm_id == "node0:29501");  // torchrun: never MPI
  CHECK(plan_ok(launch("torchrun", 3, 8), env, 31000, false).comm_id == "node0:31000");
  env.vars["STP_NCCL_PORT"] = "32000";  // the environment wins over the config
  CHECK(plan_ok(launch("torchrun", 3, 8), env, 31000, false).comm_id == "node0:32000");
  env.vars["STP_NCCL_PORT"] = "29500";
  CHECK(plan_error(launch("torchrun", 0, 8), env, 0, false) ==
        "the NCCL bootstrap port 29500 (STP_NCCL_PORT) equals MASTER_PORT, which torchrun's store holds; "
        "choose another STP_NCCL_PORT");
  env.vars["STP_NCCL_PORT"] = "70000";
  CHECK(plan_error(launch("torchrun", 0, 8), env, 0, false) == "STP_NCCL_PORT='70000' is not a TCP port (1..65535)");
  env.vars = {{"MASTER_ADDR", "node0"}, {"MASTER_PORT", "65535"}};
  CHECK(plan_error(launch("torchrun", 0, 8), env, 0, false) ==
        "MASTER_PORT 65535 + 1 = 65536 is not a TCP port; set STP_NCCL_PORT to a free port");

  // The Slurm script exports MASTER_ADDR/MASTER_PORT for srun tasks.
  env.vars = {{"MASTER_ADDR", "gpu-a01"}, {"MASTER_PORT", "29400"}};
  CHECK(plan_ok(launch("slurm", 5, 16), env, 0, false).comm_id == "gpu-a01:29401");
  // Under mpirun the id is broadcast with MPI when the caller can.
  CHECK(plan_ok(launch("openmpi", 5, 16), env, 0, true).source == NcclIdSource::Broadcast);
  // A user's NCCL_COMM_ID is taken as is.
  env.vars["NCCL_COMM_ID"] = "10.0.0.1:40000";
  p = plan_ok(launch("openmpi", 1, 2), env, 0, true);
  CHECK(p.source == NcclIdSource::Env);
  CHECK(p.comm_id == "10.0.0.1:40000");

  env.vars.clear();
  const std::string e = plan_error(launch("openmpi", 1, 4), env, 0, false);
  CHECK(e.find("openmpi started 4 ranks") == 0);
  CHECK(e.find("set MASTER_ADDR and MASTER_PORT") != std::string::npos);
  CHECK(e.find("mpirun") != std::string::npos);
}

// Fails if a rank drives another GPU than its local rank, if a one-GPU-per-task binding is not
// honoured, or if an impossible request is not an error naming CUDA_VISIBLE_DEVICES.
TEST_CASE("nccl bootstrap: the CUDA device of a local rank", "[nccl][bootstrap]") {
  FakeEnv env;
  env.vars["CUDA_VISIBLE_DEVICES"] = "0,1";
  CHECK(nccl_pick_device(1, 2, -1, env.fn()).device == 1);
  CHECK(nccl_pick_device(5, 8, -1, env.fn()).device == 5);
  CHECK(nccl_pick_device(3, 1, -1, env.fn()).device == 0);  // srun --gpus-per-task=1
  CHECK(nccl_pick_device(0, 8, 6, env.fn()).device == 6);
  NcclDeviceResult r = nccl_pick_device(3, 2, -1, env.fn());
  CHECK(r.device == -1);
  CHECK(r.error ==
        "local rank 3 needs CUDA device 3 but this process sees 2 (CUDA_VISIBLE_DEVICES=0,1): start at most one "
        "rank per GPU on each node");
  CHECK(nccl_pick_device(0, 2, 2, env.fn()).error ==
        "configured CUDA device 2 but this process sees 2 (CUDA_VISIBLE_DEVICES=0,1)");
  CHECK(nccl_pick_device(0, 0, -1, FakeEnv{}.fn()).error ==
        "this process sees no CUDA device (CUDA_VISIBLE_DEVICES=unset)");
}

// TP 2 x PP 2 x DP 2, rank 5 = (tp 1, pp 0, dp 1), and TP 1 x PP 3 for a middle pipeline rank.
// Fails if a colour or key differs from the groups written out here from rank = ((dp*PP)+pp)*TP+tp.
TEST_CASE("nccl bootstrap: split colour and key of every group", "[nccl][bootstrap]") {
  auto sp = [](const Topology& t, GroupKind g, bool v) {
    const NcclSplit s = nccl_split_of(t, g, v);
    return std::make_pair(s.color, s.key);
  };
  using P = std::pair<int, int>;
  const Topology r5 = topo_of(2, 2, 2, 5);
  CHECK(nccl_group_members(r5, GroupKind::Tp, false) == std::vector<int>{4, 5});
  CHECK(sp(r5, GroupKind::Tp, false) == P{4, 1});
  CHECK(nccl_group_members(r5, GroupKind::Pp, false) == std::vector<int>{5, 7});
  CHECK(sp(r5, GroupKind::Pp, false) == P{5, 0});
  CHECK(nccl_group_members(r5, GroupKind::Dp, false) == std::vector<int>{1, 5});
  CHECK(sp(r5, GroupKind::Dp, false) == P{1, 1});
  CHECK(nccl_group_members(r5, GroupKind::Embed, false) == std::vector<int>{5, 7});
  CHECK(sp(r5, GroupKind::Embed, false) == P{5, 0});
  CHECK(nccl_group_members(r5, GroupKind::Embed, true) == std::vector<int>{5});
  const Topology r7 = topo_of(2, 2, 2, 7);  // (tp 1, pp 1, dp 1): the head's rank
  CHECK(sp(r7, GroupKind::Embed, false) == P{5, 1});
  CHECK(sp(r7, GroupKind::Embed, true) == P{7, 0});  // V: embedding and head both on pp 0
  const Topology mid = topo_of(1, 3, 1, 1);
  CHECK(nccl_group_members(mid, GroupKind::Embed, false) == std::vector<int>{1});
  CHECK(sp(mid, GroupKind::Embed, false) == P{1, 0});
  CHECK(sp(mid, GroupKind::World, false) == P{0, 1});
  // Every rank of the grid: same colour <=> same group, and the key is the index in it.
  for (int r = 0; r < 8; ++r) {
    const Topology t = topo_of(2, 2, 2, r);
    for (int g = 0; g < kGroupKinds; ++g)
      for (int q = 0; q < 8; ++q) {
        const Topology u = topo_of(2, 2, 2, q);
        const std::vector<int> m = nccl_group_members(t, GroupKind(g), false);
        const bool same = std::find(m.begin(), m.end(), q) != m.end();
        CHECK((nccl_split_of(u, GroupKind(g), false).color == nccl_split_of(t, GroupKind(g), false).color) == same);
      }
  }
}

// ---- one-rank world on a GPU ------------------------------------------------------------------------

namespace {

using cuda::DeviceAllocator;
using cuda::DeviceBuffer;
using cuda::Stream;

// Holds a stream at a host callback until open() or until `max_hold_s` passed (so a test that goes
// wrong, or an abort that drains streams, can never hang the run); the destructor opens and drains.
class StreamGate {
 public:
  StreamGate(cudaStream_t s, double max_hold_s)
      : s_(s), deadline_(std::chrono::steady_clock::now() + std::chrono::milliseconds(int64_t(max_hold_s * 1000))) {
    CUDA_CHECK(cudaLaunchHostFunc(s_, &StreamGate::hold, this));
  }
  ~StreamGate() {
    open();
    cudaStreamSynchronize(s_);
  }
  StreamGate(const StreamGate&) = delete;
  StreamGate& operator=(const StreamGate&) = delete;
  void open() { open_.store(true); }

 private:
  static void hold(void* p) {
    auto* g = static_cast<StreamGate*>(p);
    while (!g->open_.load() && std::chrono::steady_clock::now() < g->deadline_)
      std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  cudaStream_t s_;
  std::chrono::steady_clock::time_point deadline_;
  std::atomic<bool> open_{false};
};

std::unique_ptr<NcclCommunicator> one_rank(const NcclOptions& opts = {}) {
  FakeEnv none;  // no launcher, no NCCL_COMM_ID from the test machine's environment
  NcclCreateResult r = comm_create_nccl(topo_of(1, 1, 1, 0), false, launch("none", 0, 1), opts, {}, none.fn());
  INFO(r.error);
  REQUIRE(r.comm);
  return std::move(r.comm);
}

// n elements of small integers (i*7+3) % 101 + base, as the bytes of dtype t (bf16 holds every
// integer up to 256 exactly, so f32_to_bf16 does not round them).
std::vector<uint8_t> pattern(DType t, int64_t n, int base) {
  std::vector<uint8_t> b(size_t(n) * dtype_size(t));
  for (int64_t i = 0; i < n; ++i) {
    const int v = int((i * 7 + 3) % 101) + base;
    uint8_t* p = b.data() + size_t(i) * dtype_size(t);
    switch (t) {
      case DType::F32: { const float x = float(v); std::memcpy(p, &x, 4); break; }
      case DType::F64: { const double x = double(v); std::memcpy(p, &x, 8); break; }
      case DType::I32: { const int32_t x = v; std::memcpy(p, &x, 4); break; }
      case DType::I64: { const int64_t x = v; std::memcpy(p, &x, 8); break; }
      case DType::U8: { *p = uint8_t(v); break; }
      case DType::BF16: { const uint16_t x = f32_to_bf16(float(v)); std::memcpy(p, &x, 2); break; }
    }
  }
  return b;
}

// Device buffers, filled on `stream` and synchronised: the communication streams are non-blocking,
// so nothing else orders them after a fill.
struct Bufs {
  DeviceAllocator alloc;
  Stream stream;
  DeviceBuffer<uint8_t> make(const std::vector<uint8_t>& h) {
    DeviceBuffer<uint8_t> d(alloc, std::max<size_t>(h.size(), 1));
    if (!h.empty()) cuda::copy_to_device(d.data(), h.data(), h.size(), stream.get());
    stream.synchronize();
    return d;
  }
  DeviceBuffer<uint8_t> poison(size_t bytes) {
    DeviceBuffer<uint8_t> d(alloc, std::max<size_t>(bytes, 1));
    CUDA_CHECK(cudaMemsetAsync(d.data(), 0xFF, d.size(), stream.get()));
    stream.synchronize();
    return d;
  }
  std::vector<uint8_t> get(const DeviceBuffer<uint8_t>& d, size_t bytes) {
    std::vector<uint8_t> h(bytes);
    if (bytes) cuda::copy_to_host_sync(h.data(), d.data(), bytes, stream.get());
    return h;
  }
};

// Index of the first byte where a and b differ, -1 when equal (keeps failure output short).
int64_t mismatch(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  if (a.size() != b.size()) return int64_t(std::min(a.size(), b.size()));
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return int64_t(i);
  return -1;
}

void wait_ok(CommHandle& h) {
  const CommStatus st = h.wait(30);
  INFO(st.error);
  REQUIRE(st.ok());
}

std::string wait_error(CommHandle h) {
  const CommStatus st = h.wait(30);
  CHECK_FALSE(st.ok());
  return st.error;
}

}  // namespace

// Fails if a split communicator is missing or has the wrong size/rank, or if any collective on any
// group, dtype, size (0, 1, odd, > 1 MiB) or in-place/out-of-place form returns anything but its
// input in a world of one (a wrong dtype mapping, count or buffer shows up as poison or garbage).
// Runs in both NCCL modes: blocking, and non-blocking (NcclOptions::blocking = false), where calls
// may return ncclInProgress and the communicator finishes them before anything depends on them.
TEST_CASE("nccl one rank: every collective on every group, exact", "[nccl][gpu]") {
  STP_REQUIRE_GPU();
  NcclOptions o;
  o.blocking = GENERATE(true, false);
  INFO((o.blocking ? "blocking" : "non-blocking") << " communicators");
  auto comm = one_rank(o);
  Bufs b;
  for (int g = 0; g < kGroupKinds; ++g) {
    CHECK(comm->size(GroupKind(g)) == 1);
    CHECK(comm->rank(GroupKind(g)) == 0);
    CHECK(comm->members(GroupKind(g)) == std::vector<int>{0});
  }
  const DType types[] = {DType::F32, DType::F64, DType::I32, DType::I64, DType::U8, DType::BF16};
  const int64_t sizes[] = {0, 1, 7, (1 << 20) + 3};
  const GroupKind groups[] = {GroupKind::World, GroupKind::Tp, GroupKind::Pp, GroupKind::Dp, GroupKind::Embed};
  int64_t ops = 0;
  for (GroupKind g : groups)
    for (DType t : types)
      for (int64_t n : sizes) {
        INFO(group_kind_name(g) << " " << dtype_name(t) << " n=" << n);
        const std::vector<uint8_t> in = pattern(t, n, 0);
        DeviceBuffer<uint8_t> src = b.make(in);
        auto run = [&](CommHandle h, const DeviceBuffer<uint8_t>& out) {
          wait_ok(h);
          ++ops;
          CHECK(mismatch(b.get(out, in.size()), in) == -1);
        };
        for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max}) {
          DeviceBuffer<uint8_t> out = b.poison(in.size());
          run(comm->all_reduce(g, src.data(), out.data(), n, t, op), out);
          DeviceBuffer<uint8_t> inplace = b.make(in);
          run(comm->all_reduce(g, inplace.data(), inplace.data(), n, t, op), inplace);
          DeviceBuffer<uint8_t> rs = b.poison(in.size());
          run(comm->reduce_scatter(g, src.data(), rs.data(), n, t, op), rs);
        }
        DeviceBuffer<uint8_t> ag = b.poison(in.size());
        run(comm->all_gather(g, src.data(), ag.data(), n, t), ag);
        DeviceBuffer<uint8_t> bc = b.make(in);
        run(comm->broadcast(g, bc.data(), n, t, 0), bc);
      }
  for (GroupKind g : groups) {
    CommHandle h = comm->barrier(g);
    wait_ok(h);
    ++ops;
  }
  CHECK(comm->stats().ops == ops);
}

// Fails if self send/recv pairs inside a group do not deliver exactly (matched in order, different
// sizes, two groups at once), or if the byte count of stats() is not what was sent.
TEST_CASE("nccl one rank: grouped send/recv with itself", "[nccl][gpu]") {
  STP_REQUIRE_GPU();
  NcclOptions o;
  o.blocking = GENERATE(true, false);
  INFO((o.blocking ? "blocking" : "non-blocking") << " communicators");
  auto comm = one_rank(o);
  Bufs b;
  const std::vector<uint8_t> a = pattern(DType::F32, 1000, 0), c = pattern(DType::I64, 33, 5),
                             d = pattern(DType::U8, 3, 9);
  DeviceBuffer<uint8_t> sa = b.make(a), sc = b.make(c), sd = b.make(d);
  DeviceBuffer<uint8_t> ra = b.poison(a.size()), rc = b.poison(c.size()), rd = b.poison(d.size());
  REQUIRE(comm->group_begin().ok());
  CommHandle h1 = comm->recv(GroupKind::Pp, ra.data(), 1000, DType::F32, 0);
  CommHandle h2 = comm->send(GroupKind::Pp, sa.data(), 1000, DType::F32, 0);
  CommHandle h3 = comm->send(GroupKind::Pp, sc.data(), 33, DType::I64, 0);
  CommHandle h4 = comm->recv(GroupKind::Pp, rc.data(), 33, DType::I64, 0);
  CommHandle h5 = comm->send(GroupKind::Tp, sd.data(), 3, DType::U8, 0);
  CommHandle h6 = comm->recv(GroupKind::Tp, rd.data(), 3, DType::U8, 0);
  CHECK_FALSE(h1.test());  // held until group_end
  const CommStatus st = comm->group_end();
  INFO(st.error);
  REQUIRE(st.ok());
  for (CommHandle* h : {&h1, &h2, &h3, &h4, &h5, &h6}) wait_ok(*h);
  CHECK(b.get(ra, a.size()) == a);
  CHECK(b.get(rc, c.size()) == c);
  CHECK(b.get(rd, d.size()) == d);
  CHECK(comm->stats().ops == 6);
  CHECK(comm->stats().bytes == 1000 * 4 + 33 * 8 + 3);
}

// Fails if the staged host communicator over NCCL (the CUDA trainer's host reductions under
// torchrun) does not hand back exactly the host values: every kind of operation the trainer uses,
// in place and not, for the dtypes it uses; or if the host input is read after the call.
TEST_CASE("nccl one rank: host values through device staging, exact", "[nccl][gpu]") {
  STP_REQUIRE_GPU();
  NcclOptions o;
  o.blocking = GENERATE(true, false);
  INFO((o.blocking ? "blocking" : "non-blocking") << " communicators");
  auto nccl = one_rank(o);
  auto host = comm_create_staged(*nccl, staging_cuda(), 30);
  std::vector<double> d = {1.5, -2.25, 1e300, 0.0}, dout(4, -1);
  CommHandle h = host->all_reduce(GroupKind::World, d.data(), dout.data(), 4, DType::F64, ReduceOp::Sum);
  d.assign(4, -9);  // the staged copy was taken at the call
  wait_ok(h);
  CHECK(dout == std::vector<double>{1.5, -2.25, 1e300, 0.0});
  int32_t vote = 7;
  h = host->all_reduce(GroupKind::World, &vote, &vote, 1, DType::I32, ReduceOp::Max);
  wait_ok(h);
  CHECK(vote == 7);
  std::vector<uint8_t> name = {'g', 'p', 'u', 0}, names(4, 0xFF);
  h = host->all_gather(GroupKind::World, name.data(), names.data(), 4, DType::U8);
  wait_ok(h);
  CHECK(names == name);
  std::vector<float> f = {3, 4, 5}, fr(3, -1);
  h = host->reduce_scatter(GroupKind::Dp, f.data(), fr.data(), 3, DType::F32, ReduceOp::Sum);
  wait_ok(h);
  CHECK(fr == f);
  h = host->broadcast(GroupKind::Tp, f.data(), 3, DType::F32, 0);
  wait_ok(h);
  CHECK(f == std::vector<float>{3, 4, 5});
  h = host->barrier(GroupKind::World);
  wait_ok(h);
  CHECK(host->whoami() == nccl->whoami());
}

// Fails if a staged operation reports completion, or writes the caller's host buffer, while its
// device work is still held (the world stream is gated), or if a handle dropped in flight returns
// before its device work finished (the gate opens by itself after 0.3 s) or leaves the next
// operation anything but exact.
TEST_CASE("nccl one rank: staged results land only after the device work, a dropped handle waits", "[nccl][gpu]") {
  STP_REQUIRE_GPU();
  auto nccl = one_rank();
  auto host = comm_create_staged(*nccl, staging_cuda(), 30);
  const auto world = static_cast<cudaStream_t>(nccl->comm_stream(GroupKind::World).stream);
  const std::vector<double> v = {1, 2, 3};
  std::vector<double> out(3, -1);
  {
    StreamGate gate(world, 20.0);
    CommHandle h = host->all_reduce(GroupKind::World, v.data(), out.data(), 3, DType::F64, ReduceOp::Sum);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    CHECK_FALSE(h.test());
    CHECK(out == std::vector<double>(3, -1));
    gate.open();
    wait_ok(h);
    CHECK(out == v);
  }
  {
    StreamGate gate(world, 0.3);
    const auto t0 = std::chrono::steady_clock::now();
    { CommHandle dropped = host->all_reduce(GroupKind::World, v.data(), out.data(), 3, DType::F64, ReduceOp::Sum); }
    CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() >= 0.2);
  }
  std::vector<int64_t> w = {5, 6}, wout(2, -1);
  CommHandle h = host->all_reduce(GroupKind::World, w.data(), wout.data(), 2, DType::I64, ReduceOp::Max);
  wait_ok(h);
  CHECK(wout == w);
}

// Fails if the operation does not wait for the work queued on the caller's stream before the call
// (it would reduce the poison), if test() reports completion while that stream is held, or if
// stream_wait() does not make a consumer stream wait for the result on the device.
TEST_CASE("nccl one rank: ordered after the caller's stream, stream_wait orders a consumer", "[nccl][gpu]") {
  STP_REQUIRE_GPU();
  auto comm = one_rank();
  Bufs b;
  const int64_t n = 4096;
  const std::vector<uint8_t> fresh = pattern(DType::F32, n, 1);
  DeviceBuffer<uint8_t> x = b.poison(n * 4), y = b.poison(n * 4);
  Stream consumer;
  uint8_t *host = nullptr, *src = nullptr;  // pinned: async copies never block the host
  CUDA_CHECK(cudaMallocHost(&host, n * 4));
  CUDA_CHECK(cudaMallocHost(&src, n * 4));
  std::memset(host, 0, n * 4);
  std::memcpy(src, fresh.data(), n * 4);
  {
    StreamGate gate(b.stream.get(), 20.0);
    // The producer's work: lands in x only after the gate opens.
    CUDA_CHECK(cudaMemcpyAsync(x.data(), src, n * 4, cudaMemcpyHostToDevice, b.stream.get()));
    CommHandle h = comm->all_reduce(GroupKind::Tp, x.data(), y.data(), n, DType::F32, ReduceOp::Sum,
                                    StreamRef{b.stream.get()});
    const int64_t seq = comm->stats().ops;
    REQUIRE(comm->stream_wait(seq, StreamRef{consumer.get()}).ok());
    CUDA_CHECK(cudaMemcpyAsync(host, y.data(), n * 4, cudaMemcpyDeviceToHost, consumer.get()));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    CHECK_FALSE(h.test());
    gate.open();
    wait_ok(h);
    consumer.synchronize();
    CHECK(std::vector<uint8_t>(host, host + n * 4) == fresh);
    // Complete operations need no wait; unknown ones are errors.
    CHECK(comm->stream_wait(seq, StreamRef{consumer.get()}).ok());
    CHECK(comm->stream_wait(seq + 1, StreamRef{consumer.get()}).error ==
          "stream_wait: no operation #2 (this communicator issued 1)");
  }
  cudaFreeHost(host);
  cudaFreeHost(src);
}

// Fails if a misuse is issued to NCCL (where it could hang or corrupt) instead of failing its
// handle with a message that names the operation and the rule, or if a bad group poisons later work.
TEST_CASE("nccl one rank: mismatched usage is an error naming the operation", "[nccl][gpu]") {
  STP_REQUIRE_GPU();
  auto comm = one_rank();
  Bufs b;
  DeviceBuffer<uint8_t> x = b.make(pattern(DType::F32, 16, 0)), y = b.poison(64);
  std::vector<float> host(16);
  CHECK(wait_error(comm->send(GroupKind::Pp, x.data(), 16, DType::F32, 1)) ==
        "send #1 on pp group [0] to pp peer 1, 16 x f32 failed: peer/root 1 is not a member index of a group of 1");
  CHECK(wait_error(comm->broadcast(GroupKind::Tp, x.data(), 16, DType::F32, -1)).find(
            "failed: peer/root -1 is not a member index") != std::string::npos);
  CHECK(wait_error(comm->all_reduce(GroupKind::Tp, x.data(), y.data(), -4, DType::F32, ReduceOp::Sum))
            .find("element count -4 is negative") != std::string::npos);
  CHECK(wait_error(comm->send(GroupKind::Pp, x.data(), 16, DType::F32, 0))
            .find("point-to-point with itself outside group_begin/group_end would deadlock") != std::string::npos);
  CHECK(wait_error(comm->all_gather(GroupKind::Tp, x.data(), x.data(), 16, DType::F32))
            .find("send and recv must be different buffers") != std::string::npos);
  CHECK(wait_error(comm->all_reduce(GroupKind::Dp, host.data(), y.data(), 16, DType::F32, ReduceOp::Sum))
            .find("send buffer is host memory; NCCL needs device memory") != std::string::npos);
  CHECK(comm->group_end().error == "group_end without group_begin");
  REQUIRE(comm->group_begin().ok());
  CHECK(comm->group_begin().error == "group_begin inside an open group (groups do not nest)");
  CHECK(wait_error(comm->all_reduce(GroupKind::Tp, x.data(), y.data(), 16, DType::F32, ReduceOp::Sum))
            .find("a collective inside group_begin/group_end") != std::string::npos);
  CommHandle s = comm->send(GroupKind::Pp, x.data(), 16, DType::F32, 0);
  CommHandle r = comm->recv(GroupKind::Pp, y.data(), 8, DType::F32, 0);
  CommHandle lone = comm->send(GroupKind::Tp, x.data(), 4, DType::F32, 0);
  const std::string ge = comm->group_end().error;
  CHECK(ge == "the group holds 1 sends and 0 receives between this rank and itself on the tp group; they must pair up");
  for (CommHandle* h : {&s, &r, &lone}) CHECK(wait_error(std::move(*h)).find("group failed: ") != std::string::npos);
  REQUIRE(comm->group_begin().ok());
  CommHandle s2 = comm->send(GroupKind::Pp, x.data(), 16, DType::F32, 0);
  CommHandle r2 = comm->recv(GroupKind::Pp, y.data(), 8, DType::F32, 0);
  CHECK(comm->group_end().error ==
        "send #11 on pp group [0] to pp peer 0 (global rank 0), 16 x f32 is matched by recv #12 on pp group [0] "
        "from pp peer 0 (global rank 0), 8 x f32: counts and types must be equal");
  for (CommHandle* h : {&s2, &r2}) CHECK(wait_error(std::move(*h)).find("group failed: ") != std::string::npos);
  // The communicator is still usable after refused work.
  CommHandle ok = comm->all_reduce(GroupKind::World, x.data(), y.data(), 16, DType::F32, ReduceOp::Max);
  wait_ok(ok);
  CHECK(b.get(y, 64) == pattern(DType::F32, 16, 0));
  CHECK_FALSE(comm->aborted());
}

// Fails if an operation stuck past op_timeout_s is not aborted with an error naming the rank and
// the operation, if the communicators are not aborted, or if later work is not refused.
TEST_CASE("nccl one rank: an operation past its timeout aborts the communicators", "[nccl][gpu][fault]") {
  STP_REQUIRE_GPU();
  NcclOptions o;
  o.op_timeout_s = 0.3;
  auto comm = one_rank(o);
  Bufs b;
  DeviceBuffer<uint8_t> x = b.make(pattern(DType::F32, 256, 0)), y = b.poison(1024);
  std::string err;
  {
    StreamGate gate(b.stream.get(), 3.0);  // the producer outlasts the 0.3 s timeout
    CommHandle h = comm->all_reduce(GroupKind::Tp, x.data(), y.data(), 256, DType::F32, ReduceOp::Sum,
                                    StreamRef{b.stream.get()});
    err = wait_error(std::move(h));
  }
  INFO(err);
  CHECK(err.find("all_reduce(sum) #1 on tp group [0], 256 x f32 failed: aborted: rank 0 (tp 0, pp 0, dp 0) on cuda "
                 "device ") == 0);
  CHECK(err.find("did not complete in ") != std::string::npos);
  CHECK(comm->aborted());
  CHECK(wait_error(comm->barrier(GroupKind::World)).find("were aborted") != std::string::npos);
}

// Fails if the watchdog thread does not abort a stuck operation on its own (nobody calls test()).
TEST_CASE("nccl one rank: the watchdog aborts a stuck operation by itself", "[nccl][gpu][fault]") {
  STP_REQUIRE_GPU();
  NcclOptions o;
  o.op_timeout_s = 0.2;
  o.watchdog = true;
  o.watchdog_poll_ms = 20;
  auto comm = one_rank(o);
  Bufs b;
  DeviceBuffer<uint8_t> x = b.make(pattern(DType::F32, 64, 0)), y = b.poison(256);
  {
    StreamGate gate(b.stream.get(), 3.0);
    CommHandle h = comm->broadcast(GroupKind::Dp, x.data(), 64, DType::F32, 0, StreamRef{b.stream.get()});
    for (int i = 0; i < 250 && !comm->aborted(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK(comm->aborted());
    const std::string err = wait_error(std::move(h));
    CHECK(err.find("broadcast #1 on dp group [0] root dp peer 0 (global rank 0), 64 x f32 failed: aborted: rank 0") == 0);
  }
}
