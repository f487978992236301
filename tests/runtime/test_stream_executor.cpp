// test_stream_executor.cpp: the stream replay of runtime/cuda/stream_executor.h against a host fake
// device that logs every call, on real lowered programs (tiny GPT, tp 2, pp 2: the braided STP
// step with dp 2, so the DP stream is used too, and a 1F1B step), every pipeline rank.
//
// What would make it fail:
// - an op issued on another stream than its plan stream, or out of order on its stream;
// - a wait missing, extra, on the wrong stream or naming the wrong event; an event recorded on the
//   wrong stream or not right after its op; more or fewer waits than plan.program_waits;
// - a deferred free released before the fake reported its event complete (the fake completes an
//   event only on the second query after its record, so an executor that releases on the first
//   poll, or at the Free op, is caught); the real programs free sent tensors on the pp stream, so a
//   hand-written slice with a compute-stream free of a tensor a send still reads covers this;
// - a unit reading a tensor that was already released (the fake checks every read of every op
//   through the tensor table: TensorAccess), or a block reused across streams within the step;
// - a synchronisation anywhere but as the last device call of the step; memory not returned;
// - on any generated schedule, a Recv whose pp stream is not ordered after every compute-stream op
//   issued before it (the CUDA device's shared allocator relies on it: cuda_device.h, Memory).
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <set>

#include "runtime/cuda/stream_executor.h"
#include "tests/runtime/exec_util.h"

using namespace stp;

namespace {

struct Call {
  enum Kind { Begin, Wait, Run, Record, Query, Sync, Alloc, Release, End } kind;
  ExecStream s = ExecStream::Compute;
  int op = -1, event = -1;
  const void* p = nullptr;
  bool done = false;
};

class FakeDevice final : public StreamDevice {
 public:
  FakeDevice(const ModelDesc& desc, const LoweredProgram& lp, int rank)
      : desc_(desc), prog_(lp.ranks[size_t(rank)]), access_(desc, &lp.pipeline), rank_(rank) {}
  // A hand-written program: compute op i produces tensors produces[i] of its stage and mb; no
  // table-based read check.
  FakeDevice(const ModelDesc& desc, const UnitProgram& prog, std::map<int, std::vector<int>> produces)
      : desc_(desc), prog_(prog), access_(desc, nullptr), rank_(-1), produces_(std::move(produces)) {}

  std::string begin(int events) override {
    calls.push_back({Call::Begin});
    recorded_.assign(size_t(events), false);
    polls_.assign(size_t(events), 0);
    return {};
  }
  int64_t tensor_bytes(int stage, int t) const override {
    return desc_.stages[size_t(stage)].tensors[size_t(t)].elems * 2;
  }
  void* allocate(ExecStream s, size_t bytes) override {
    void* p = nullptr;
    auto it = cache_[int(s)].find(bytes);
    if (it != cache_[int(s)].end()) {
      p = it->second;
      cache_[int(s)].erase(it);
    } else {
      storage_.emplace_back(bytes);
      p = storage_.back().data();
      in_use += int64_t(bytes);
      owner_[p] = s;
    }
    if (owner_[p] != s) cross_stream_reuse = true;
    calls.push_back({Call::Alloc, s, -1, -1, p});
    return p;
  }
  void release(ExecStream s, void* p, size_t bytes) override {
    calls.push_back({Call::Release, s, -1, -1, p});
    cache_[int(s)].emplace(bytes, p);
    owner_[p] = s;
  }
  std::string run(ExecStream s, int i, DeviceTensors& t) override {
    calls.push_back({Call::Run, s, i});
    const Op& op = prog_.ops[size_t(i)];
    if (op.kind == OpKind::Free) freed_ptr[i] = t.read(op.stage, op.mb, op.tensor);
    std::vector<TensorRef> reads, writes;
    if (rank_ >= 0)
      access_.touches(op, rank_, &reads, &writes);
    else if (produces_.count(i))
      for (int k : produces_[i]) writes.push_back(TensorRef{op.stage, op.mb, k});
    for (const TensorRef& r : reads)
      if (!t.read(r.stage, r.mb, r.tensor))
        bad_reads.push_back("op " + std::to_string(i) + " reads released " +
                            desc_.stages[size_t(r.stage)].tensors[size_t(r.tensor)].name);
    if (op.kind == OpKind::Compute)
      for (const TensorRef& w : writes) t.produce(w.stage, w.mb, w.tensor);
    return {};
  }
  std::string record(ExecStream s, int e) override {
    calls.push_back({Call::Record, s, -1, e});
    recorded_[size_t(e)] = true;
    polls_[size_t(e)] = 0;
    return {};
  }
  std::string wait(ExecStream s, int e) override {
    calls.push_back({Call::Wait, s, -1, e});
    if (!recorded_[size_t(e)]) bad_reads.push_back("wait on event e" + std::to_string(e) + " before its record");
    return {};
  }
  std::string query(int e, bool* done) override {
    // Late completion: an event is complete from its second query after the record on.
    *done = synced_ || (recorded_[size_t(e)] && ++polls_[size_t(e)] >= 2);
    calls.push_back({Call::Query, ExecStream::Compute, -1, e, nullptr, *done});
    return {};
  }
  std::string synchronize() override {
    calls.push_back({Call::Sync});
    synced_ = true;
    return {};
  }
  void end_step() override {
    calls.push_back({Call::End});
    for (auto& c : cache_) {
      for (auto& kv : c) in_use -= int64_t(kv.first);
      c.clear();
    }
  }

  std::vector<Call> calls;
  std::map<int, const void*> freed_ptr;  // Free op -> the buffer it freed
  std::vector<std::string> bad_reads;
  int64_t in_use = 0;
  bool cross_stream_reuse = false;

 private:
  const ModelDesc& desc_;
  const UnitProgram& prog_;
  TensorAccess access_;
  int rank_;
  std::map<int, std::vector<int>> produces_;
  std::vector<bool> recorded_;
  std::vector<int> polls_;
  bool synced_ = false;
  std::vector<std::vector<char>> storage_;
  std::multimap<size_t, void*> cache_[kExecStreams];
  std::map<const void*, ExecStream> owner_;
};

// Index of the Run call of every op.
std::vector<size_t> run_positions(const std::vector<Call>& calls, size_t ops) {
  std::vector<size_t> pos(ops, calls.size());
  for (size_t k = 0; k < calls.size(); ++k)
    if (calls[k].kind == Call::Run) pos[size_t(calls[k].op)] = k;
  return pos;
}

// Runs `prog` on `dev` and checks every property of the header comment.
void check_replay(const ModelDesc& desc, const UnitProgram& prog, FakeDevice& dev, int* deferred_total) {
  StreamExecutor ex(desc, prog, "rank " + std::to_string(prog.rank));
  REQUIRE(ex.plan_error().empty());
  const StreamPlan& plan = ex.plan();
  DeviceTensors tensors(desc, dev);
  const StreamExecResult res = ex.run(dev, tensors);
  INFO("rank " << prog.rank << ": " << res.error);
  REQUIRE(res.ok());
  INFO((dev.bad_reads.empty() ? std::string() : dev.bad_reads.front()));
  CHECK(dev.bad_reads.empty());
  const std::vector<Call>& calls = dev.calls;
  const std::vector<size_t> at = run_positions(calls, prog.ops.size());
  const int deferred_before = *deferred_total;

  // Each stream receives exactly its plan ops, in program order.
  for (int s = 0; s < kExecStreams; ++s) {
    std::vector<int> got;
    for (const Call& c : calls)
      if (c.kind == Call::Run && c.s == ExecStream(s)) got.push_back(c.op);
    CHECK(got == plan.ops_on(ExecStream(s)));
  }
  // Waits: between the previous op's run and this op's run, exactly the plan's wait (or none).
  int waits = 0;
  for (size_t i = 0; i < prog.ops.size(); ++i) {
    const size_t from = i == 0 ? 0 : at[i - 1];
    std::vector<Call> w;
    for (size_t k = from; k < at[i]; ++k)
      if (calls[k].kind == Call::Wait) w.push_back(calls[k]);
    waits += int(w.size());
    if (plan.wait[i] < 0) {
      CHECK(w.empty());
    } else {
      REQUIRE(w.size() == 1);
      CHECK(w[0].s == plan.stream[i]);
      CHECK(w[0].event == plan.wait[i]);
    }
  }
  CHECK(waits == plan.program_waits);
  CHECK(res.stats.waits == plan.program_waits);
  // Records: event e right after its op's run (before the next op's run), on the op's stream.
  for (size_t k = 0; k < calls.size(); ++k) {
    if (calls[k].kind != Call::Record) continue;
    const StreamEvent& ev = plan.events[size_t(calls[k].event)];
    CHECK(calls[k].s == ev.stream);
    CHECK(at[size_t(ev.after_op)] < k);
    if (size_t(ev.after_op) + 1 < prog.ops.size()) CHECK(k < at[size_t(ev.after_op) + 1]);
  }
  CHECK(res.stats.records == int(plan.events.size()));
  // Deferred frees: released only after a query reported their event complete.
  for (size_t i = 0; i < prog.ops.size(); ++i) {
    const int e = plan.free_after[i];
    if (e < 0) continue;
    ++*deferred_total;
    const void* p = dev.freed_ptr.at(int(i));
    bool done_seen = false, released = false;
    for (size_t k = at[i]; k < calls.size() && !released; ++k) {
      if (calls[k].kind == Call::Query && calls[k].event == e && calls[k].done) done_seen = true;
      if (calls[k].kind == Call::Release && calls[k].p == p) {
        released = true;
        CHECK(done_seen);
        CHECK(calls[k].s == ExecStream::Compute);
      }
    }
    CHECK(released);
  }
  // One synchronisation, the last device call before end_step; memory back; no cross-stream reuse.
  int syncs = 0;
  for (const Call& c : calls) syncs += c.kind == Call::Sync;
  CHECK(syncs == 1);
  size_t sync_at = 0;
  for (size_t k = 0; k < calls.size(); ++k)
    if (calls[k].kind == Call::Sync) sync_at = k;
  for (size_t k = sync_at + 1; k < calls.size(); ++k)
    CHECK((calls[k].kind == Call::Query || calls[k].kind == Call::Release || calls[k].kind == Call::End));
  CHECK(calls.back().kind == Call::End);
  CHECK(tensors.live_bytes() == 0);
  CHECK(tensors.peak_bytes() > 0);
  CHECK(dev.in_use == 0);
  CHECK_FALSE(dev.cross_stream_reuse);
  CHECK(res.stats.deferred_frees == *deferred_total - deferred_before);
}

Op make_op(OpKind k, int stage, int mb, int tensor, int tag, int unit = 0, UnitPass pass = UnitPass::F) {
  Op o;
  o.kind = k;
  o.stage = stage;
  o.mb = mb;
  o.tensor = tensor;
  o.tag = tag;
  o.unit = UnitRef{unit, pass};
  o.elems = 8;
  o.peer = 0;
  if (k == OpKind::Send || k == OpKind::Recv) o.stream = Stream::PP, o.group = CommGroup::PP;
  if (k == OpKind::CommStart) o.stream = Stream::TP, o.coll = CollKind::AllReduceSum;
  return o;
}

}  // namespace

TEST_CASE("stream executor: braided STP and 1F1B steps replay their stream plans exactly", "[stream_exec]") {
  struct Case {
    const char* schedule;
    int dp;
  };
  for (const Case& c : {Case{"stp", 2}, Case{"1f1b", 1}}) {
    const Config cfg = stp_test::tiny_config(2, 2, c.dp, c.schedule, stp_test::common_microbatches(2));
    const stp_test::Built b = stp_test::build_program(cfg);
    INFO(c.schedule << ": " << b.error);
    REQUIRE(b.error.empty());
    int deferred = 0;
    for (int r = 0; r < 2; ++r) {
      INFO(c.schedule << " rank " << r);
      FakeDevice dev(b.desc, b.prog, r);
      check_replay(b.desc, b.prog.ranks[size_t(r)], dev, &deferred);
    }
  }
}

// Lowering frees a sent tensor on the pp stream, so the real programs above have no deferred
// free; this slice (scheduler/tests' streams case) has one: tensor 1 is sent (op 4) and still read
// by compute (op 5), so its compute-stream free (op 6) must wait for the send's event.
TEST_CASE("stream executor: a free deferred to a send's event is released after the event", "[stream_exec]") {
  const Config cfg = stp_test::tiny_config(2, 2, 1, "1f1b", 4);
  const stp_test::Built b = stp_test::build_program(cfg);
  REQUIRE(b.error.empty());
  UnitProgram prog;
  prog.rank = 1;
  const int s = 1;
  Op tp = make_op(OpKind::CommStart, -1, -1, -1, 3), dp = make_op(OpKind::CommStart, -1, -1, -1, 4);
  tp.group = CommGroup::TP;
  dp.group = CommGroup::DP;
  Op wait0 = make_op(OpKind::CommWait, -1, -1, -1, 0), wait3 = wait0, wait4 = wait0;
  wait3.tag = 3, wait4.tag = 4;
  Op free2 = make_op(OpKind::Free, s, 0, 2, -1);
  free2.stream = Stream::PP;
  prog.ops = {make_op(OpKind::Recv, s, 0, 0, 0),  wait0,
              make_op(OpKind::Compute, s, 0, -1, -1, 0), make_op(OpKind::Compute, s, 0, -1, -1, 1),
              make_op(OpKind::Send, s, 0, 1, 1),  make_op(OpKind::Compute, s, 0, -1, -1, 2),
              make_op(OpKind::Free, s, 0, 1, -1), make_op(OpKind::Free, s, 0, 0, -1),
              make_op(OpKind::Compute, s, 0, -1, -1, 1, UnitPass::B), make_op(OpKind::Send, s, 0, 2, 2),
              free2, tp, dp, wait3, wait4};
  FakeDevice dev(b.desc, prog, {{3, {1}}, {8, {2}}});
  int deferred = 0;
  check_replay(b.desc, prog, dev, &deferred);
  CHECK(deferred == 1);
}

TEST_CASE("stream executor: a device error names the rank and the op", "[stream_exec]") {
  const Config cfg = stp_test::tiny_config(2, 2, 1, "1f1b", 4);
  const stp_test::Built b = stp_test::build_program(cfg);
  REQUIRE(b.error.empty());
  struct Failing final : StreamDevice {
    std::string begin(int) override { return {}; }
    int64_t tensor_bytes(int, int) const override { return 8; }
    void* allocate(ExecStream, size_t) override { return nullptr; }  // always out of memory
    void release(ExecStream, void*, size_t) override {}
    std::string run(ExecStream, int, DeviceTensors&) override { return {}; }
    std::string record(ExecStream, int) override { return {}; }
    std::string wait(ExecStream, int) override { return {}; }
    std::string query(int, bool* d) override { return *d = true, std::string(); }
    std::string synchronize() override { return {}; }
  } dev;
  // Rank 1's first op posts a Recv, whose buffer cannot be allocated.
  StreamExecutor ex(b.desc, b.prog.ranks[1], "rank 1");
  DeviceTensors tensors(b.desc, dev);
  const StreamExecResult res = ex.run(dev, tensors);
  REQUIRE_FALSE(res.ok());
  INFO(res.error);
  CHECK(res.error.rfind("rank 1, op ", 0) == 0);
  CHECK(res.error.find("out of device memory") != std::string::npos);
}

// The CUDA device (cuda_device.h, Memory) lets a Recv take a block from the shared caching
// allocator, whose free list may hold a workspace the compute stream released while its kernels
// are still queued. That is safe only because the pp stream is already ordered after every
// compute-stream op issued before the Recv: lowering posts a Recv right after this rank's previous
// Send (which waited on the compute stream's last op) or at the start of the program. This checks
// that property on every generated schedule: the last compute-stream op before each Recv is
// covered by the compute event some earlier pp op waited on.
TEST_CASE("stream executor: every Recv is ordered after all compute work issued before it", "[stream_exec]") {
  for (const std::string& name : pipeline_schedule_names()) {
    if (name == "csv") continue;
    for (int pp : {2, 3, 4}) {
      const Config cfg = stp_test::tiny_config(2, pp, 2, name, stp_test::common_microbatches(pp));
      const stp_test::Built b = stp_test::build_program(cfg);
      if (!b.error.empty()) continue;  // a schedule that does not take this pp
      for (const UnitProgram& prog : b.prog.ranks) {
        StreamExecutor ex(b.desc, prog, "rank " + std::to_string(prog.rank));
        REQUIRE(ex.plan_error().empty());
        const StreamPlan& plan = ex.plan();
        int last_compute = -1, covered = -1, recvs = 0;
        for (int i = 0; i < int(prog.ops.size()); ++i) {
          const Op& op = prog.ops[size_t(i)];
          if (op.kind == OpKind::Compute || op.kind == OpKind::CommWait) last_compute = i;
          if (plan.stream[size_t(i)] != ExecStream::Pp) continue;
          const int e = plan.wait[size_t(i)];
          if (e >= 0 && plan.events[size_t(e)].stream == ExecStream::Compute)
            covered = std::max(covered, plan.events[size_t(e)].after_op);
          if (op.kind != OpKind::Recv) continue;
          ++recvs;
          INFO(name << " pp " << pp << " rank " << prog.rank << " op " << i << ": last compute op " << last_compute
                    << ", pp stream ordered after op " << covered);
          CHECK(last_compute <= covered);
        }
        CHECK(recvs > 0);
      }
    }
  }
}
