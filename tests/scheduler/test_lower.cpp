// test_lower.cpp: lowering pipeline steps to unit programs (scheduler/lower.h) and the unit-program
// validator (scheduler/validate_units.h).
//
// The golden unit programs below are written out by hand from the rules in lower.h: where each
// unit of a braid goes and exactly where each collective's wait lands. Whole-program tests pin the
// PP placement (send after the producer, receives posted early in the global message order, both
// ends in the same order), the frees, the V-turn handover, and that every generated schedule
// lowers to programs the validator accepts. Mutations must be caught by the right rule.
#include <catch2/catch.hpp>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "model/desc/desc.h"
#include "tests/scheduler/sched_test_util.h"
#include "scheduler/lower.h"
#include "scheduler/schedules.h"
#include "scheduler/simulator.h"
#include "scheduler/text_io.h"
#include "scheduler/validate_units.h"

using namespace stp;
using stp_test::read_golden;
using stp_test::tiny_gpt;

namespace {

ModelDesc desc_for(int tp, int pp, int chunks, int layers_per_stage) {
  const Config c = tiny_gpt(tp, pp, layers_per_stage * pp * chunks);
  return model_desc_build(c, chunks, std::vector<int>(pp * chunks, layers_per_stage));
}

// The test's own compact spelling of an op, independent of op_to_string.
std::string brief(const Op& o, const ModelDesc& d) {
  switch (o.kind) {
    case OpKind::Compute:
      return std::string(unit_pass_name(o.unit.pass)) + " " + unit_name(d.stages[o.stage].units[o.unit.unit]) + " " +
             std::to_string(o.mb);
    case OpKind::CommStart: return "start " + std::to_string(o.tag);
    case OpKind::CommWait: return "wait " + std::to_string(o.tag);
    case OpKind::Send: return "send " + std::to_string(o.peer) + " s" + std::to_string(o.stage) + " " + std::to_string(o.mb);
    case OpKind::Recv: return "recv " + std::to_string(o.peer) + " s" + std::to_string(o.stage) + " " + std::to_string(o.mb);
    case OpKind::Free: return "free " + d.stages[o.stage].tensors[o.tensor].name + " " + std::to_string(o.mb);
  }
  return "?";
}

std::vector<std::string> briefs(const std::vector<Op>& ops, const ModelDesc& d) {
  std::vector<std::string> out;
  for (const Op& o : ops) out.push_back(brief(o, d));
  return out;
}

LoweredProgram lower_ok(const PipelineProgram& p, const ModelDesc& d) {
  LowerResult r = lower(p, d);
  INFO(r.error);
  REQUIRE(r.ok());
  return *r.program;
}

int index_of(const std::vector<Op>& ops, const ModelDesc& d, const std::string& b, size_t from = 0) {
  for (size_t i = from; i < ops.size(); ++i)
    if (brief(ops[i], d) == b) return int(i);
  FAIL("no op '" << b << "'");
  return -1;
}

// 1F1B, pp = 2, M = 2, written by hand (rank 0: F F BW BW; rank 1: F BW F BW), tp = 2, one layer
// per stage.
PipelineProgram one_f_one_b_p2m2() {
  PipelineProgram p;
  p.schedule = "1f1b";
  p.pp = 2;
  p.microbatches = 2;
  p.ranks = {{step_single(PassKind::F, 0, 0), step_single(PassKind::F, 0, 1), step_single(PassKind::BW, 0, 0),
              step_single(PassKind::BW, 0, 1)},
             {step_single(PassKind::F, 1, 0), step_single(PassKind::BW, 1, 0), step_single(PassKind::F, 1, 1),
              step_single(PassKind::BW, 1, 1)}};
  return p;
}

}  // namespace

// ---- golden unit programs: a middle stage (pp = 3, stage 1) holding layers 2 and 3 ----------------
// Units of stage 1: in, attn2, mlp2, attn3, mlp3, out. F slots in that order, B slots in reverse;
// attn/mlp end in a TP all-reduce after F and after B; tags count from 0 in issue order.

// Fails if the braid interleaves in another order or a wait lands anywhere but right before the
// next unit of the *same* pass (so that one unit of the other pass sits between start and wait).
TEST_CASE("golden: braided F&B step (W deferred)", "[lower][golden]") {
  const ModelDesc d = desc_for(2, 3, 1, 2);
  const Step st = step_pair(Pass{PassKind::F, 1, 1}, Pass{PassKind::B, 1, 0});
  const std::vector<std::string> want = {
      "F in 1",    "B out 0",                          // no collective after either
      "F attn2 1", "start 0",                          // attn2 forward: all-reduce of its partial
      "B mlp3 0",  "start 1",                          // hides start 0
      "wait 0",    "F mlp2 1",  "start 2",             // mlp2 reads attn2's reduced output
      "wait 1",    "B attn3 0", "start 3",             // F mlp2 hid start 1
      "wait 2",    "F attn3 1", "start 4",  "wait 3", "B mlp2 0",  "start 5",
      "wait 4",    "F mlp3 1",  "start 6",  "wait 5", "B attn2 0", "start 7",
      "wait 6",    "F out 1",                          // B attn2 hid start 6
      "wait 7",    "B in 0"};                          // F out hid start 7
  CHECK(briefs(lower_step_units(st, d), d) == want);
  for (const Op& o : lower_step_units(st, d))
    if (o.kind == OpKind::CommStart) CHECK((o.coll == CollKind::AllReduceSum && o.group == CommGroup::TP && o.stream == Stream::TP));
}

// Fails if W units do not fill the F's gaps one by one, or if the forward's tail (longer than the
// W list: F has in and out, W has neither) is not lowered unbraided with its wait right away.
TEST_CASE("golden: braided F&W step", "[lower][golden]") {
  const ModelDesc d = desc_for(2, 3, 1, 2);
  const Step st = step_pair(Pass{PassKind::F, 1, 2}, Pass{PassKind::W, 1, 0});
  const std::vector<std::string> want = {
      "F in 2",    "W mlp3 0",
      "F attn2 2", "start 0",  "W attn3 0",
      "wait 0",    "F mlp2 2", "start 1", "W mlp2 0",
      "wait 1",    "F attn3 2", "start 2", "W attn2 0",
      "wait 2",    "F mlp3 2", "start 3",
      "wait 3",    "F out 2"};  // nothing left to hide start 3: exposed
  CHECK(briefs(lower_step_units(st, d), d) == want);
}

// Fails if an unsplit backward does not overlap each B unit's all-reduce with that unit's W work
// (Megatron: B_u, start, W_u, wait, B_next).
TEST_CASE("golden: unsplit BW of a two-layer chunk", "[lower][golden]") {
  const ModelDesc d = desc_for(2, 3, 1, 2);
  const Step st = step_single(PassKind::BW, 1, 0);
  const std::vector<std::string> want = {
      "B out 0",
      "B mlp3 0",  "start 0", "W mlp3 0",
      "wait 0",    "B attn3 0", "start 1", "W attn3 0",
      "wait 1",    "B mlp2 0", "start 2", "W mlp2 0",
      "wait 2",    "B attn2 0", "start 3", "W attn2 0",
      "wait 3",    "B in 0"};
  CHECK(briefs(lower_step_units(st, d), d) == want);
}

// Fails if a DualPipeV-style F&BW pair across chunks does not alternate F slots with (B_u, W_u)
// slots, or if an unbraided F does not wait at once ("everything else waits at once").
TEST_CASE("golden: F&BW across chunks and an unbraided F", "[lower][golden]") {
  const ModelDesc d = desc_for(2, 2, 2, 1);  // V-style: stage 1 (middle) and stage 2 (middle)
  const Step st = step_pair(Pass{PassKind::F, 1, 3}, Pass{PassKind::BW, 2, 0});
  const std::vector<std::string> want = {
      "F in 3",    "B out 0",
      "F attn1 3", "start 0",  "B mlp2 0", "start 1", "W mlp2 0",
      "wait 0",    "F mlp1 3", "start 2",
      "wait 1",    "B attn2 0", "start 3", "W attn2 0",
      "wait 2",    "F out 3",
      "wait 3",    "B in 0"};
  CHECK(briefs(lower_step_units(st, d), d) == want);
  const std::vector<std::string> f = {"F in 0", "F attn1 0", "start 0", "wait 0", "F mlp1 0", "start 1", "wait 1", "F out 0"};
  CHECK(briefs(lower_step_units(step_single(PassKind::F, 1, 0), d), d) == f);
}

// ---- whole programs -------------------------------------------------------------------------------

// Fails if sends are not right after the unit that completes the output, if a receive is not
// posted early (right after the rank's previous pp op in the global order), if the two ends of a
// channel disagree on the order, or if a wait for a receive is not right before its consumer.
TEST_CASE("PP placement: hand-written 1F1B, pp 2, M 2", "[lower][pp]") {
  const ModelDesc d = desc_for(2, 2, 1, 1);
  const LoweredProgram lp = lower_ok(one_f_one_b_p2m2(), d);
  auto pp_ops = [&](int r) {
    std::vector<std::string> v;
    for (const Op& o : lp.ranks[r].ops)
      if (o.kind == OpKind::Send || o.kind == OpKind::Recv) v.push_back(brief(o, d));
    return v;
  };
  // Global order by readiness in the unit-cost step timing: act mb0 (t=1), act mb1 (2),
  // grad mb0 (4), grad mb1 (7).
  CHECK(pp_ops(0) == std::vector<std::string>{"send 1 s0 0", "send 1 s0 1", "recv 1 s0 0", "recv 1 s0 1"});
  CHECK(pp_ops(1) == std::vector<std::string>{"recv 0 s1 0", "recv 0 s1 1", "send 0 s1 0", "send 0 s1 1"});
  const std::vector<Op>& r0 = lp.ranks[0].ops;
  const std::vector<Op>& r1 = lp.ranks[1].ops;
  // Rank 1 posts both activation receives before anything else.
  CHECK(brief(r1[0], d) == "recv 0 s1 0");
  CHECK(brief(r1[1], d) == "recv 0 s1 1");
  // Rank 0: each send right after the forward's last unit; the free of the sent tensor right
  // after it (on the pp stream); the gradient receives right after the second send.
  const int s1 = index_of(r0, d, "send 1 s0 1");
  int before = s1 - 1;
  while (r0[before].kind == OpKind::Free) --before;  // Out.F's own inputs are freed right after it
  CHECK(brief(r0[before], d) == "F out 1");
  CHECK(brief(r0[s1 + 1], d) == "free out.x 1");
  CHECK(r0[s1 + 1].stream == Stream::PP);
  CHECK(brief(r0[s1 + 2], d) == "recv 1 s0 0");
  CHECK(brief(r0[s1 + 3], d) == "recv 1 s0 1");
  // The wait for a receive sits right before its consumer.
  for (int r : {0, 1})
    for (size_t i = 0; i < lp.ranks[r].ops.size(); ++i) {
      const Op& o = lp.ranks[r].ops[i];
      if (o.kind != OpKind::Recv) continue;
      size_t w = i + 1;
      while (!(lp.ranks[r].ops[w].kind == OpKind::CommWait && lp.ranks[r].ops[w].tag == o.tag)) ++w;
      const Op& next = lp.ranks[r].ops[w + 1];
      CHECK(next.kind == OpKind::Compute);
      CHECK((next.mb == o.mb && next.stage == o.stage && next.unit == o.unit));
    }
  CHECK(lp.messages == 4);
  CHECK(validate_units(lp, d).empty());
}

// Fails if the loss statistics' all-reduce is waited in its own step (where nothing reads it)
// instead of right before the head's backward of the same micro-batch.
TEST_CASE("loss statistics are waited right before Head.B", "[lower]") {
  const ModelDesc d = desc_for(2, 2, 1, 1);
  const LoweredProgram lp = lower_ok(one_f_one_b_p2m2(), d);
  const std::vector<Op>& ops = lp.ranks[1].ops;
  for (int mb : {0, 1}) {
    const int loss = index_of(ops, d, "F loss " + std::to_string(mb));
    REQUIRE(ops[loss + 1].kind == OpKind::CommStart);
    const int tag = ops[loss + 1].tag;
    const int head_b = index_of(ops, d, "B head " + std::to_string(mb));
    CHECK(ops[head_b - 1].kind == OpKind::CommWait);
    CHECK(ops[head_b - 1].tag == tag);
    CHECK(ops[head_b - 1].step == ops[head_b].step);
    CHECK(ops[head_b].step > ops[loss].step);
  }
}

// Fails if the V turn sends a message to its own rank, or if the handed-over tensors are not
// freed right after their local reader (In.F of stage pp, Out.B of stage pp-1).
TEST_CASE("V turn: local handover without send/recv", "[lower][pp]") {
  const ModelDesc d = desc_for(2, 2, 2, 1);
  const LoweredProgram lp = lower_ok(pipeline_generate("stp", 2, 5), d);
  for (const UnitProgram& up : lp.ranks)
    for (const Op& o : up.ops)
      if (o.kind == OpKind::Send || o.kind == OpKind::Recv) CHECK(o.peer != up.rank);
  const std::vector<Op>& ops = lp.ranks[1].ops;  // rank 1 holds stages 1 and 2
  for (int mb = 0; mb < 5; ++mb) {
    const std::string m = std::to_string(mb);
    const int in_f = index_of(ops, d, "F in " + m, size_t(index_of(ops, d, "F out " + m)));
    CHECK(ops[in_f].stage == 2);
    CHECK(brief(ops[in_f + 1], d) == "free out.x " + m);
    CHECK(ops[in_f + 1].stage == 1);
    int out_b = -1;
    for (size_t i = 0; i < ops.size(); ++i)
      if (brief(ops[i], d) == "B out " + m && ops[i].stage == 1) out_b = int(i);
    REQUIRE(out_b >= 0);
    CHECK(brief(ops[out_b + 1], d) == "free in.g " + m);
    CHECK(ops[out_b + 1].stage == 2);
  }
}

// Fails if a tensor read only by the weight gradient is freed before a deferred W runs, or kept
// after it.
TEST_CASE("frees: W-only tensors live until the deferred W", "[lower]") {
  const ModelDesc d = desc_for(2, 2, 1, 1);
  const LoweredProgram lp = lower_ok(pipeline_generate("zb-h1", 2, 4), d);
  for (const UnitProgram& up : lp.ranks) {
    const int s = up.rank;
    const int n = d.stages[s].find_tensor("n", 1);  // attn's normed input, read by attn.W only
    REQUIRE(n >= 0);
    for (size_t i = 0; i < up.ops.size(); ++i) {
      const Op& o = up.ops[i];
      if (o.kind != OpKind::Free || o.tensor != n || o.stage != s) continue;
      size_t j = i - 1;
      while (up.ops[j].kind == OpKind::Free) --j;  // the frees after one op come together
      CHECK(brief(up.ops[j], d) == "W " + unit_name(d.stages[s].units[1]) + " " + std::to_string(o.mb));
    }
  }
}

// Fails if any generated schedule lowers to a program the validator rejects (order on a channel,
// tags, units, tensors, deadlock), with and without TP collectives, with and without DP.
TEST_CASE("every schedule lowers to valid unit programs", "[lower][validate]") {
  for (const std::string& s : pipeline_schedule_names())
    for (int P : {2, 3, 4})
      for (int M : {2 * P, 3 * P, 4 * P + 1})
        for (int tp : {1, 2}) {
          if (pipeline_check_args(s, P, M, 0)) continue;
          const int chunks = pipeline_default_chunks(s);
          const ModelDesc d = desc_for(tp, P, chunks, 2);
          LowerOptions opt;
          opt.dp = 2;
          LowerResult r = lower(pipeline_generate(s, P, M), d, opt);
          INFO(s << " P=" << P << " M=" << M << " tp=" << tp << ": " << r.error);
          REQUIRE(r.ok());
          const auto issues = validate_units(*r.program, d);
          CHECK(issues.empty());
          if (!issues.empty()) FAIL(issues.front().to_string());
        }
}

// Fails if a golden program (the STP release's figures, PyTorch's DualPipeV artifact) does not
// lower to valid unit programs: the import path (CSV) must work as well as the generators.
TEST_CASE("golden CSV programs lower to valid unit programs", "[lower][validate]") {
  const std::pair<const char*, int> files[] = {{"stp_p4_m12.csv", 4}, {"stp_p2_m9.csv", 2}, {"dualpipev_4rank_10mb.csv", 4}};
  for (const auto& [file, pp] : files) {
    PipelineParseResult pr = pipeline_from_csv(read_golden(file), pp, 2, Placement::V);
    INFO(file);
    REQUIRE(pr.ok());
    const ModelDesc d = desc_for(2, pp, 2, 1);
    const LoweredProgram lp = lower_ok(*pr.program, d);
    CHECK(validate_units(lp, d).empty());
  }
}

// ---- the validator catches broken programs, with the right rule, rank and op --------------------
// Each test breaks one thing in a valid lowered program; it fails if the validator accepts the
// result, blames another rule, or points at another rank or op.

// Rank 1 receives mb 1 before mb 0 while rank 0 sends mb 0 first: NCCL would hand mb 0's data to
// the buffer of mb 1.
TEST_CASE("validator: receives out of order on a channel", "[validate]") {
  const ModelDesc d = desc_for(2, 2, 1, 1);
  LoweredProgram lp = lower_ok(one_f_one_b_p2m2(), d);
  std::swap(lp.ranks[1].ops[0], lp.ranks[1].ops[1]);  // rank 1 now receives mb 1 first
  const auto v = validate_units_first(lp, d);
  REQUIRE(v.has_value());
  CHECK(v->rule == UnitRule::Channel);
  CHECK(v->rank == 1);
  CHECK(v->op == 0);
  CHECK(v->message.find("activation of stage 0 mb 1") != std::string::npos);  // what rank 1 expects
  CHECK(v->message.find("activation of stage 0 mb 0") != std::string::npos);  // what rank 0 sends
}

// One element more on the send than the receive expects.
TEST_CASE("validator: a send whose size differs from the receive", "[validate]") {
  const ModelDesc d = desc_for(2, 2, 1, 1);
  LoweredProgram lp = lower_ok(one_f_one_b_p2m2(), d);
  const int s = index_of(lp.ranks[0].ops, d, "send 1 s0 0");
  lp.ranks[0].ops[s].elems += 1;
  const auto v = validate_units_first(lp, d);
  REQUIRE(v.has_value());
  CHECK(v->rule == UnitRule::Channel);
  CHECK(v->rank == 1);
  CHECK(v->op == 0);
  CHECK(v->message.find(std::to_string(lp.ranks[0].ops[s].elems) + " elems") != std::string::npos);
}

// Channel orders still agree, but rank 0 posts its first gradient receive before its activation
// sends: with one blocking pp stream per rank (the validator's model) its stream waits for rank 1,
// which waits for those activations (plain ncclSend/ncclRecv on one stream would hang). With one
// FIFO per channel the same program runs (simulator.h).
TEST_CASE("validator: deadlock names the blocked ranks and ops", "[validate]") {
  const ModelDesc d = desc_for(2, 2, 1, 1);
  LoweredProgram lp = lower_ok(one_f_one_b_p2m2(), d);
  std::vector<Op>& ops = lp.ranks[0].ops;
  const int rv = index_of(ops, d, "recv 1 s0 0");
  const Op moved = ops[rv];
  ops.erase(ops.begin() + rv);
  ops.insert(ops.begin(), moved);
  const auto all = validate_units(lp, d);
  REQUIRE(all.size() == 1);
  CHECK(all[0].rule == UnitRule::Deadlock);
  CHECK(all[0].rank == 0);
  CHECK(all[0].op == 0);
  CHECK(all[0].message.find("rank 0 blocked at op 0 (recv <- 1") != std::string::npos);
  CHECK(all[0].message.find("rank 1 blocked at op 0 (recv <- 0") != std::string::npos);
  CHECK(simulate_program(lp, d, cost_model_unit(d, 2, 0), PPStreams::Channel).ok());
}

// The embedding all-reduce of rank 0 is started and never waited for: attn0 would read a partial sum.
TEST_CASE("validator: a collective that is never waited for", "[validate]") {
  const ModelDesc d = desc_for(2, 2, 1, 1);
  LoweredProgram lp = lower_ok(one_f_one_b_p2m2(), d);
  std::vector<Op>& ops = lp.ranks[0].ops;
  const int w = index_of(ops, d, "wait 0");
  ops.erase(ops.begin() + w);
  const auto v = validate_units_first(lp, d);
  REQUIRE(v.has_value());
  CHECK(v->rule == UnitRule::Tag);
  CHECK(v->rank == 0);
  CHECK(v->message.find("never waited") != std::string::npos);
}

// A weight gradient is dropped.
TEST_CASE("validator: a unit pass that never runs", "[validate]") {
  const ModelDesc d = desc_for(2, 2, 1, 1);
  LoweredProgram lp = lower_ok(one_f_one_b_p2m2(), d);
  std::vector<Op>& ops = lp.ranks[1].ops;
  ops.erase(ops.begin() + index_of(ops, d, "W mlp1 1"));
  const auto v = validate_units_first(lp, d);
  REQUIRE(v.has_value());
  CHECK(v->rule == UnitRule::Unit);
  CHECK(v->message == "W of unit mlp1 stage 1 mb 1 never runs");
}

// attn0.n, read only by attn0's W, is freed right before that W.
TEST_CASE("validator: a tensor freed before its last reader", "[validate]") {
  const ModelDesc d = desc_for(2, 2, 1, 1);
  LoweredProgram lp = lower_ok(one_f_one_b_p2m2(), d);
  std::vector<Op>& ops = lp.ranks[0].ops;
  const int f = index_of(ops, d, "free attn0.n 0");  // read by W attn0 of mb 0
  const Op moved = ops[f];
  ops.erase(ops.begin() + f);
  const int wu = index_of(ops, d, "W attn0 0");
  ops.insert(ops.begin() + wu, moved);
  const auto v = validate_units_first(lp, d);
  REQUIRE(v.has_value());
  CHECK(v->rule == UnitRule::Tensor);
  CHECK(v->rank == 0);
  CHECK(v->op == wu + 1);
  CHECK(v->message == "reads attn0.n (stage 0 mb 0) after its free");
}

// A micro-batch index past M: reported alone, since no later rule could index its tables.
TEST_CASE("validator: out-of-range fields stop the other checks", "[validate]") {
  const ModelDesc d = desc_for(2, 2, 1, 1);
  LoweredProgram lp = lower_ok(one_f_one_b_p2m2(), d);
  lp.ranks[1].ops[3].mb = 7;
  const auto all = validate_units(lp, d);
  REQUIRE(all.size() == 1);
  CHECK(all[0].rule == UnitRule::Range);
  CHECK(all[0].to_string() == "rank 1, op 3 [range]: mb 7 is not in 0..1");
}
