// test_streams.cpp: stream assignment and event wiring of a rank's unit program (scheduler/streams.h).
//
// The hand-written programs below are what lower.h's rules give for a stage of two units (attn0 =
// unit 0, mlp0 = unit 1), each ending its F and its B with a TP all-reduce. Tensors: 0 attn0.out
// (read by mlp0.F), 1 mlp0.out (no reader in the step), 2 mlp0.g (read by attn0.B), 3 attn0.g.
// For each program the exact ops of every stream, every event (stream, after which op) and every
// wait (which stream, before which op, on which event) are written out by hand: a wait on the
// wrong event, an extra or a missing wait, an op on the wrong stream fails them.
// The last test runs every schedule's real lowered programs through the plan and proves, with
// vector clocks over the streams and events, that each tensor's producer happens before each of
// its consumers across streams, and that a deferred free comes after every comm use.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <map>
#include <tuple>

#include "model/desc/desc.h"
#include "tests/scheduler/sched_test_util.h"
#include "scheduler/lower.h"
#include "scheduler/schedules.h"
#include "scheduler/streams.h"

using namespace stp;
using stp_test::tiny_gpt;

namespace {

constexpr int kAttn = 0, kMlp = 1;

Op compute(UnitPass pass, int unit, int stage, int mb) {
  Op o;
  o.kind = OpKind::Compute;
  o.unit = UnitRef{unit, pass};
  o.stage = stage;
  o.mb = mb;
  return o;
}

Op start(CommGroup g, int tag, int stage, int mb, int tensor) {
  Op o;
  o.kind = OpKind::CommStart;
  o.stream = Stream::TP;
  o.coll = CollKind::AllReduceSum;
  o.group = g;
  o.tag = tag;
  o.stage = stage;
  o.mb = mb;
  o.tensor = tensor;
  o.elems = 8;
  return o;
}

Op wait(int tag) {
  Op o;
  o.kind = OpKind::CommWait;
  o.tag = tag;
  return o;
}

Op p2p(OpKind k, int tag, int stage, int mb, int tensor) {
  Op o;
  o.kind = k;
  o.stream = Stream::PP;
  o.group = CommGroup::PP;
  o.tag = tag;
  o.peer = 0;
  o.stage = stage;
  o.mb = mb;
  o.tensor = tensor;
  o.elems = 8;
  return o;
}

Op free_op(Stream s, int stage, int mb, int tensor) {
  Op o;
  o.kind = OpKind::Free;
  o.stream = s;
  o.stage = stage;
  o.mb = mb;
  o.tensor = tensor;
  return o;
}

StreamPlan plan_ok(const std::vector<Op>& ops) {
  StreamPlanResult r = streams_assign(ops);
  INFO(r.error);
  REQUIRE(r.ok());
  return *r.plan;
}

using EventSpec = std::pair<ExecStream, int>;                   // (stream, after op)
using WaitSpec = std::tuple<ExecStream, int, int>;              // (stream, before op, event)

std::vector<EventSpec> events_of(const StreamPlan& p) {
  std::vector<EventSpec> out;
  for (const StreamEvent& e : p.events) out.push_back({e.stream, e.after_op});
  return out;
}

std::vector<WaitSpec> waits_of(const StreamPlan& p) {
  std::vector<WaitSpec> out;
  for (const StreamWait& w : p.waits) out.push_back({w.stream, w.before_op, w.event});
  return out;
}

int count_kind(const std::vector<Op>& ops, OpKind k) {
  return int(std::count_if(ops.begin(), ops.end(), [&](const Op& o) { return o.kind == k; }));
}

constexpr ExecStream C = ExecStream::Compute, TP = ExecStream::Tp, PP = ExecStream::Pp, DP = ExecStream::Dp;

}  // namespace

// F(s0, mb1) braided with B(s0, mb0), W deferred. Fails if a collective does not wait for the unit
// that produced its tensor, if the compute stream waits for the other pass's collective (tag 1)
// where it should wait for its own (tag 0), i.e. the braid would not hide anything, or if a free
// of an already-waited tensor is deferred.
TEST_CASE("streams: braided F&B step, each collective hidden behind the other pass's unit", "[streams]") {
  const std::vector<Op> ops = {
      compute(UnitPass::F, kAttn, 0, 1),      // 0
      start(CommGroup::TP, 0, 0, 1, 0),       // 1  attn0.out mb1
      compute(UnitPass::B, kMlp, 0, 0),       // 2
      start(CommGroup::TP, 1, 0, 0, 2),       // 3  mlp0.g mb0
      wait(0),                                // 4
      compute(UnitPass::F, kMlp, 0, 1),       // 5
      start(CommGroup::TP, 2, 0, 1, 1),       // 6  mlp0.out mb1
      free_op(Stream::Compute, 0, 1, 0),      // 7  attn0.out mb1 (its collective was waited)
      wait(1),                                // 8
      compute(UnitPass::B, kAttn, 0, 0),      // 9
      start(CommGroup::TP, 3, 0, 0, 3),       // 10 attn0.g mb0
      free_op(Stream::Compute, 0, 0, 2),      // 11 mlp0.g mb0
      wait(3),                                // 12
      wait(2),                                // 13
  };
  const StreamPlan p = plan_ok(ops);
  INFO(stream_plan_to_string(p, ops));
  CHECK(p.ops_on(C) == std::vector<int>{0, 2, 4, 5, 7, 8, 9, 11, 12, 13});
  CHECK(p.ops_on(TP) == std::vector<int>{1, 3, 6, 10});
  CHECK(p.ops_on(PP).empty());
  CHECK(p.ops_on(DP).empty());
  CHECK(events_of(p) == std::vector<EventSpec>{{C, 0}, {TP, 1}, {C, 2}, {TP, 3}, {C, 5}, {TP, 6}, {C, 9}, {TP, 10}});
  CHECK(waits_of(p) == std::vector<WaitSpec>{{TP, 1, 0}, {TP, 3, 2}, {C, 4, 1}, {TP, 6, 4}, {C, 8, 3},
                                             {TP, 10, 6}, {C, 12, 7}, {C, 13, 5}});
  CHECK(p.free_after[7] == -1);
  CHECK(p.free_after[11] == -1);
  CHECK(p.program_waits == 8);
  CHECK(int(p.waits.size()) == count_kind(ops, OpKind::CommWait) + count_kind(ops, OpKind::CommStart));
}

// Unsplit BW(s0, mb0): Megatron's overlap. Fails if W_u waits for B_u's all-reduce (the compute
// stream would stall before the W GEMMs), or if B of the next unit does not.
TEST_CASE("streams: unsplit BW, the input-gradient all-reduce hides behind the W unit", "[streams]") {
  const std::vector<Op> ops = {
      compute(UnitPass::B, kMlp, 0, 0),   // 0
      start(CommGroup::TP, 0, 0, 0, 2),   // 1
      compute(UnitPass::W, kMlp, 0, 0),   // 2
      wait(0),                            // 3
      compute(UnitPass::B, kAttn, 0, 0),  // 4
      start(CommGroup::TP, 1, 0, 0, 3),   // 5
      compute(UnitPass::W, kAttn, 0, 0),  // 6
      wait(1),                            // 7
  };
  const StreamPlan p = plan_ok(ops);
  INFO(stream_plan_to_string(p, ops));
  CHECK(p.ops_on(C) == std::vector<int>{0, 2, 3, 4, 6, 7});
  CHECK(p.ops_on(TP) == std::vector<int>{1, 5});
  CHECK(events_of(p) == std::vector<EventSpec>{{C, 0}, {TP, 1}, {C, 4}, {TP, 5}});
  CHECK(waits_of(p) == std::vector<WaitSpec>{{TP, 1, 0}, {C, 3, 1}, {TP, 5, 2}, {C, 7, 3}});
  CHECK(p.wait[2] == -1);  // W mlp runs while the all-reduce is in flight
  CHECK(p.program_waits == 4);
  CHECK(int(p.waits.size()) == p.program_waits);
}

// A pipeline rank's slice with a receive posted early, two sends, frees and the end-of-iteration
// gradient reductions. Fails if a Recv waits for compute (it must be postable early), if a send
// does not wait for its producer, if a free of a tensor that a send still reads is not deferred to
// that send's event (or one that was waited on is), if a free on the pp stream gets an event, or
// if the DP all-reduce of the gradients does not wait for the TP all-reduce that rewrites them.
TEST_CASE("streams: sends, receives, deferred frees and the gradient reductions", "[streams]") {
  const std::vector<Op> ops = {
      p2p(OpKind::Recv, 0, 1, 0, 0),            // 0  posted early
      wait(0),                                  // 1
      compute(UnitPass::F, 0, 1, 0),            // 2
      compute(UnitPass::F, 1, 1, 0),            // 3  produces tensor 1
      p2p(OpKind::Send, 1, 1, 0, 1),            // 4
      compute(UnitPass::F, 2, 1, 0),            // 5  still reads tensor 1
      free_op(Stream::Compute, 1, 0, 1),        // 6  the send may still be reading it
      free_op(Stream::Compute, 1, 0, 0),        // 7  received and waited for
      compute(UnitPass::B, 1, 1, 0),            // 8  produces tensor 2
      p2p(OpKind::Send, 2, 1, 0, 2),            // 9
      free_op(Stream::PP, 1, 0, 2),             // 10 after its send, on the pp stream
      start(CommGroup::TP, 3, -1, -1, -1),      // 11 TP-partial gradients
      start(CommGroup::DP, 4, -1, -1, -1),      // 12 all gradients
      wait(3),                                  // 13
      wait(4),                                  // 14
  };
  const StreamPlan p = plan_ok(ops);
  INFO(stream_plan_to_string(p, ops));
  CHECK(p.ops_on(C) == std::vector<int>{1, 2, 3, 5, 6, 7, 8, 13, 14});
  CHECK(p.ops_on(PP) == std::vector<int>{0, 4, 9, 10});
  CHECK(p.ops_on(TP) == std::vector<int>{11});
  CHECK(p.ops_on(DP) == std::vector<int>{12});
  CHECK(events_of(p) == std::vector<EventSpec>{{PP, 0}, {C, 3}, {PP, 4}, {C, 8}, {TP, 11}, {DP, 12}});
  CHECK(waits_of(p) == std::vector<WaitSpec>{{C, 1, 0}, {PP, 4, 1}, {PP, 9, 3}, {TP, 11, 3}, {DP, 12, 4},
                                             {C, 13, 4}, {C, 14, 5}});
  CHECK(p.wait[0] == -1);
  CHECK(p.free_after[6] == 2);
  CHECK(p.free_after[7] == -1);
  CHECK(p.free_after[10] == -1);
  CHECK(p.program_waits == 7);
  CHECK(int(p.waits.size()) ==
        count_kind(ops, OpKind::CommWait) + count_kind(ops, OpKind::CommStart) + count_kind(ops, OpKind::Send));
}

// Fails if a malformed program is planned instead of reported with the op and the reason.
TEST_CASE("streams: malformed programs are errors that name the op", "[streams]") {
  auto err = [](const std::vector<Op>& ops) {
    StreamPlanResult r = streams_assign(ops);
    CHECK_FALSE(r.ok());
    return r.error;
  };
  CHECK(err({compute(UnitPass::F, 0, 0, 0), wait(5)}) == "op 1 (comm_wait): no earlier comm_start or recv has tag 5");
  CHECK(err({compute(UnitPass::F, 0, 0, 0), start(CommGroup::TP, 1, 0, 0, 0), wait(1), wait(1)}) ==
        "op 3 (comm_wait): tag 1 was waited on already");
  CHECK(err({compute(UnitPass::F, 0, 0, 0), start(CommGroup::PP, 1, 0, 0, 0)}) ==
        "op 1 (comm_start): a collective on group pp (only tp and dp have a stream)");
  CHECK(err({start(CommGroup::TP, 1, 0, 0, 0), p2p(OpKind::Recv, 1, 0, 0, 1)}) ==
        "op 1 (recv): tag 1 is already used by op 0");
  // Gradients reduced on tp, more compute, then reduced on dp: would need two waits.
  CHECK(err({compute(UnitPass::W, 0, 0, 0), start(CommGroup::TP, 0, -1, -1, -1), compute(UnitPass::W, 1, 0, 0),
             start(CommGroup::DP, 1, -1, -1, -1)})
            .find("op 3 (comm_start): reads a tensor that tp op 1 still reduces") == 0);
}

namespace {

// Vector clocks over the plan: clock[i][s] = how many ops of stream s are known complete when op i
// runs (its own stream's ops before it, and through waits, the other streams' ops before events).
struct Clocks {
  std::vector<std::array<int, kExecStreams>> at;  // per op, including itself
  std::vector<int> seq;                           // per op: 1-based position on its stream
  bool before(int a, int b) const { return a < int(at.size()) && at[b][int(stream_of[a])] >= seq[a]; }
  std::vector<ExecStream> stream_of;
};

Clocks clocks_of(const StreamPlan& p) {
  Clocks c;
  const size_t n = p.stream.size();
  c.at.resize(n);
  c.seq.resize(n);
  c.stream_of = p.stream;
  std::array<std::array<int, kExecStreams>, kExecStreams> cur{};  // per stream: its current clock
  for (size_t i = 0; i < n; ++i) {
    auto& clk = cur[int(p.stream[i])];
    if (p.wait[i] >= 0) {
      const auto& ev = c.at[p.events[p.wait[i]].after_op];
      for (int s = 0; s < kExecStreams; ++s) clk[s] = std::max(clk[s], ev[s]);
    }
    c.seq[i] = ++clk[int(p.stream[i])];
    c.at[i] = clk;
  }
  return c;
}

// Checks one rank's plan against the data flow of its program (TensorAccess: what each op reads
// and writes). Returns the first violation, or "".
std::string check_data_flow(const std::vector<Op>& ops, const StreamPlan& p, const TensorAccess& access, int rank) {
  const Clocks clk = clocks_of(p);
  std::map<std::tuple<int, int, int>, int> last_writer;                // tensor -> op that last wrote it
  std::map<std::tuple<int, int, int>, std::vector<int>> comm_users;    // tensor -> comm ops touching it
  std::vector<TensorRef> reads, writes;
  int last_compute = -1, last_grad = -1;
  auto key = [](const TensorRef& t) { return std::make_tuple(t.stage, t.mb, t.tensor); };
  for (int i = 0; i < int(ops.size()); ++i) {
    const Op& o = ops[i];
    reads.clear();
    writes.clear();
    access.touches(o, rank, &reads, &writes);
    if (o.kind == OpKind::CommStart && o.tensor >= 0) writes.push_back(reads.back());  // in place
    for (const TensorRef& t : reads) {
      auto w = last_writer.find(key(t));
      if (w != last_writer.end() && !clk.before(w->second, i))
        return "op " + std::to_string(i) + " reads a tensor before its writer op " + std::to_string(w->second) + " is ordered";
    }
    if (o.kind == OpKind::Free) {
      for (int u : comm_users[std::make_tuple(o.stage, o.mb, o.tensor)]) {
        const bool covered = clk.before(u, i) ||
                             (p.free_after[i] >= 0 && clk.before(u, p.events[p.free_after[i]].after_op));
        if (!covered) return "free op " + std::to_string(i) + " may release a buffer comm op " + std::to_string(u) + " uses";
      }
    }
    if (o.kind == OpKind::CommStart && o.tensor < 0) {  // gradients: every W before, the other reduction
      if (last_compute >= 0 && !clk.before(last_compute, i))
        return "gradient reduction op " + std::to_string(i) + " is not ordered after compute op " + std::to_string(last_compute);
      if (last_grad >= 0 && !clk.before(last_grad, i))
        return "gradient reduction op " + std::to_string(i) + " may overlap gradient reduction op " + std::to_string(last_grad);
      last_grad = i;
    }
    if (o.kind == OpKind::Compute) last_compute = i;
    for (const TensorRef& t : writes) last_writer[key(t)] = i;
    if (o.kind == OpKind::CommStart || o.kind == OpKind::Send || o.kind == OpKind::Recv)
      for (const TensorRef& t : reads.empty() ? writes : reads) comm_users[key(t)].push_back(i);
  }
  return "";
}

}  // namespace

// Every schedule, tp 2 x pp {2, 4} (x dp 2 gradient all-reduce), every rank. Fails if a rank's program
// cannot be planned, if the number of cross-stream waits differs from the program's waits, if a
// wait is not cross-stream or waits on an event recorded later, or if any consumer of a tensor
// (compute after a collective or a receive, a collective or send after the producing unit) is not
// ordered after its producer by the streams and events, or a free can overtake a comm use.
TEST_CASE("streams: every schedule's lowered programs, one cross-stream wait per program wait", "[streams]") {
  const int tp = 2;
  for (int P : {2, 4}) {
    for (const std::string& name : pipeline_schedule_names()) {
      const int chunks = pipeline_default_chunks(name);
      const int M = std::max(pipeline_min_microbatches(name, P), 2 * P);
      const Config cfg = tiny_gpt(tp, P, 2 * P * chunks);
      const ModelDesc desc = model_desc_build(cfg, chunks, std::vector<int>(P * chunks, 2));
      const PipelineProgram prog = pipeline_generate(name, P, M, chunks);
      LowerOptions lo;
      lo.dp = 2;
      const LowerResult lr = lower(prog, desc, lo);
      INFO(name << " pp " << P << ": " << lr.error);
      REQUIRE(lr.ok());
      const TensorAccess access(desc, &lr.program->pipeline);
      for (const UnitProgram& up : lr.program->ranks) {
        INFO(name << " pp " << P << " rank " << up.rank);
        const StreamPlan p = plan_ok(up.ops);
        const int expect = count_kind(up.ops, OpKind::CommWait) + count_kind(up.ops, OpKind::CommStart) +
                           count_kind(up.ops, OpKind::Send);
        CHECK(p.program_waits == expect);
        CHECK(int(p.waits.size()) == expect);
        for (const StreamWait& w : p.waits) {
          CHECK(p.events[w.event].stream != w.stream);
          CHECK(p.events[w.event].after_op < w.before_op);
        }
        for (size_t i = 0; i < up.ops.size(); ++i) {
          const Op& o = up.ops[i];
          const ExecStream want = o.kind == OpKind::CommStart ? (o.group == CommGroup::DP ? DP : TP)
                                  : o.stream == Stream::PP   ? PP
                                                             : C;
          CHECK(p.stream[i] == want);
        }
        CHECK(check_data_flow(up.ops, p, access, up.rank) == "");
      }
    }
  }
}
