// test_validate_pipeline.cpp: the pipeline validator, its unit-cost simulation and the ordered
// accumulation depth (scheduler/validate_pipeline.h).
//
// Mutations of the golden programs must be rejected with the right rule first (a validator that
// misses one, or blames the wrong rule, fails); designed small programs pin the exact unit-cost
// times, deadlock reports and side-buffer depths, computed by hand in the comments.
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

#include "tests/scheduler/sched_test_util.h"
#include "scheduler/schedules.h"
#include "scheduler/text_io.h"
#include "scheduler/validate_pipeline.h"

using namespace stp;
using stp_test::golden_program;

namespace {

PipelineProgram golden(const std::string& file, int pp) { return golden_program(file, pp); }

// Index of the first step on `rank` whose CSV form is `csv` (e.g. "0F5" or "(7F1;7I0)").
size_t find_step(const PipelineProgram& p, int rank, const std::string& csv) {
  for (size_t i = 0; i < p.ranks[rank].size(); ++i)
    if (step_to_csv(p.ranks[rank][i]) == csv) return i;
  FAIL("no step " << csv << " on rank " << rank);
  return 0;
}

Violation first_violation(const PipelineProgram& p) {
  auto v = validate_pipeline_first(p);
  REQUIRE(v.has_value());
  INFO(v->to_string());
  return *v;
}

PipelineProgram looped(int pp, int M, std::vector<std::vector<Step>> ranks) {
  PipelineProgram p;
  p.schedule = "test";
  p.pp = pp;
  p.chunks = 1;
  p.microbatches = M;
  p.placement = Placement::Looped;
  p.ranks = std::move(ranks);
  return p;
}

Step F(int s, int mb) { return step_single(PassKind::F, s, mb); }
Step B(int s, int mb) { return step_single(PassKind::B, s, mb); }
Step W(int s, int mb) { return step_single(PassKind::W, s, mb); }
Step BW(int s, int mb) { return step_single(PassKind::BW, s, mb); }

}  // namespace

TEST_CASE("the golden programs are valid", "[validate]") {
  CHECK(validate_pipeline(golden("stp_p4_m12.csv", 4)).empty());
  CHECK(validate_pipeline(golden("stp_p2_m9.csv", 2)).empty());
  CHECK(validate_pipeline(golden("dualpipev_4rank_10mb.csv", 4)).empty());
}

TEST_CASE("mutation: swapping two steps so a W precedes its B is an order violation", "[validate][mutation]") {
  PipelineProgram p = golden("stp_p4_m12.csv", 4);
  const size_t b = find_step(p, 0, "(7F1;7I0)"), w = find_step(p, 0, "(0F8;7W0)");
  std::swap(p.ranks[0][b], p.ranks[0][w]);
  const Violation v = first_violation(p);
  CHECK(v.rule == PipelineRule::Order);
  CHECK(v.rank == 0);
  CHECK(v.step == int(b));  // the W now sits where the B was
  CHECK_THAT(v.message, Catch::Contains("W7.0"));
}

TEST_CASE("mutation: a backward moved before its forward is an order violation", "[validate][mutation]") {
  PipelineProgram p = golden("stp_p2_m9.csv", 2);
  const size_t f = find_step(p, 1, "1F0"), b = find_step(p, 1, "(1F4;1B0)");
  std::swap(p.ranks[1][f], p.ranks[1][b]);
  const Violation v = first_violation(p);
  CHECK(v.rule == PipelineRule::Order);
  CHECK(v.rank == 1);
  CHECK_THAT(v.message, Catch::Contains("BW1.0"));
}

TEST_CASE("mutation: a dropped deferred W is a missing pass", "[validate][mutation]") {
  PipelineProgram p = golden("stp_p4_m12.csv", 4);
  p.ranks[3].erase(p.ranks[3].begin() + find_step(p, 3, "3W3"));
  const Violation v = first_violation(p);
  CHECK(v.rule == PipelineRule::Missing);
  CHECK(v.rank == 3);
  CHECK_THAT(v.message, Catch::Contains("stage 3 micro-batch 3 has a B but its deferred W never runs"));
}

TEST_CASE("mutation: a dropped forward is missing and starves its successors", "[validate][mutation]") {
  PipelineProgram p = golden("dualpipev_4rank_10mb.csv", 4);
  p.ranks[0].erase(p.ranks[0].begin() + find_step(p, 0, "0F0"));
  const auto all = validate_pipeline(p);
  REQUIRE_FALSE(all.empty());
  CHECK(all.front().rule == PipelineRule::Missing);
  CHECK_THAT(all.front().message, Catch::Contains("stage 0 micro-batch 0 has no forward"));
  CHECK(all.back().rule == PipelineRule::Deadlock);  // rank 1's F1.0 can never start
}

TEST_CASE("mutation: a micro-batch run twice is a duplicate", "[validate][mutation]") {
  PipelineProgram p = golden("stp_p4_m12.csv", 4);
  const size_t i = find_step(p, 0, "0F5");
  p.ranks[0][i].a.mb = 4;  // 0F4 twice, 0F5 never
  const auto all = validate_pipeline(p);
  REQUIRE(all.size() >= 2);
  CHECK(all[0].rule == PipelineRule::Duplicate);
  CHECK(all[0].rank == 0);
  CHECK(all[0].step == int(i));
  CHECK_THAT(all[0].message, Catch::Contains("F0.4 appears more than once: first at rank 0, step 4"));
  CHECK(all[1].rule == PipelineRule::Missing);
}

TEST_CASE("mutation: a pass moved to another rank is on the wrong rank", "[validate][mutation]") {
  PipelineProgram p = golden("stp_p4_m12.csv", 4);
  const size_t i = find_step(p, 0, "0B11");
  const Step moved = p.ranks[0][i];
  p.ranks[0].erase(p.ranks[0].begin() + i);
  p.ranks[1].push_back(moved);
  const Violation v = first_violation(p);
  CHECK(v.rule == PipelineRule::WrongRank);
  CHECK(v.rank == 1);
  CHECK(v.step == int(p.ranks[1].size()) - 1);
  CHECK_THAT(v.message, Catch::Contains("stage 0 is on rank 0 (V placement)"));
}

TEST_CASE("mutation: a cross-rank wait cycle is a deadlock naming ranks and passes", "[validate][mutation]") {
  // 1F1B, P=4, M=8. Rank 0 runs BW0.0 before F0.2: BW0.0 needs BW1.0 from rank 1, whose program
  // reaches it only after F1.2, which needs F0.2 from rank 0. Ranks 2 and 3 then starve on F1.2.
  PipelineProgram p = pipeline_generate("1f1b", 4, 8);
  const size_t f2 = find_step(p, 0, "0F2"), bw0 = find_step(p, 0, "0B0");
  const Step moved = p.ranks[0][bw0];
  p.ranks[0].erase(p.ranks[0].begin() + bw0);
  p.ranks[0].insert(p.ranks[0].begin() + f2, moved);
  const auto all = validate_pipeline(p);
  REQUIRE(all.size() == 4);
  for (const Violation& v : all) CHECK(v.rule == PipelineRule::Deadlock);
  CHECK(all[0].rank == 0);
  CHECK(all[0].step == 2);
  CHECK_THAT(all[0].message, Catch::Contains("rank 0 can never start step 2 (BW0.0)") &&
                                 Catch::Contains("BW1.0 (rank 1, step 3)"));
  CHECK(all[1].rank == 1);
  CHECK_THAT(all[1].message, Catch::Contains("F0.2 (rank 0, step 3)"));
  CHECK(pipeline_unit_makespan(p) == -1);
}

TEST_CASE("a braided pair whose second pass needs the first deadlocks", "[validate]") {
  // V placement, P=1: stages 0 and 1 on rank 0. F1.0 braided with F0.0 would run both at once,
  // but F1.0 needs F0.0 finished.
  PipelineProgram p = looped(1, 1, {{step_pair(Pass{PassKind::F, 0, 0}, Pass{PassKind::F, 1, 0}), BW(1, 0), BW(0, 0)}});
  p.chunks = 2;
  p.placement = Placement::V;
  const Violation v = first_violation(p);
  CHECK(v.rule == PipelineRule::Deadlock);
  CHECK_THAT(v.message, Catch::Contains("F0.0 (rank 0, step 0)"));
}

TEST_CASE("rules for malformed programs: shape, range, braid, mixed", "[validate]") {
  PipelineProgram ok = looped(1, 1, {{F(0, 0), BW(0, 0)}});
  CHECK(validate_pipeline(ok).empty());

  PipelineProgram shape = ok;
  shape.pp = 2;
  CHECK(first_violation(shape).rule == PipelineRule::Shape);

  PipelineProgram v3 = ok;
  v3.placement = Placement::V;
  v3.chunks = 3;
  CHECK(first_violation(v3).rule == PipelineRule::Shape);
  CHECK(first_violation(v3).message == "the V placement holds exactly 2 chunks per rank, got chunks = 3");

  PipelineProgram range = looped(1, 1, {{F(0, 0), BW(0, 0), F(0, 1)}});
  CHECK(first_violation(range).rule == PipelineRule::Range);
  CHECK(first_violation(range).step == 2);

  PipelineProgram braid = looped(1, 2, {{F(0, 0), step_pair(Pass{PassKind::BW, 0, 0}, Pass{PassKind::F, 0, 1}), BW(0, 1)}});
  CHECK(first_violation(braid).rule == PipelineRule::Braid);

  PipelineProgram mixed = looped(1, 1, {{F(0, 0), BW(0, 0), W(0, 0)}});
  CHECK(first_violation(mixed).rule == PipelineRule::Mixed);

  PipelineProgram no_b = looped(1, 1, {{F(0, 0), W(0, 0)}});
  CHECK(first_violation(no_b).rule == PipelineRule::Missing);
  CHECK_THAT(first_violation(no_b).message, Catch::Contains("has a W but no B"));
}

TEST_CASE("unit timing: exact start times of a hand-timed 1F1B", "[validate][timing]") {
  // P=2, M=2, F=1, BW=2. Rank 0: F0.0 [0,1) F0.1 [1,2) BW0.0 waits BW1.0 (ends 4) [4,6) BW0.1
  // waits BW1.1 (ends 7) [7,9). Rank 1: F1.0 [1,2) BW1.0 [2,4) F1.1 [4,5) BW1.1 [5,7).
  const PipelineProgram p = pipeline_generate("1f1b", 2, 2);
  const UnitTiming t = pipeline_unit_timing(p);
  REQUIRE(t.deadlocks.empty());
  CHECK(t.start[0] == std::vector<int>{0, 1, 4, 7});
  CHECK(t.start[1] == std::vector<int>{1, 2, 4, 5});
  CHECK(t.finish == std::vector<int>{9, 7});
  CHECK(t.makespan == 9);  // 3M + 3(P-1)
}

TEST_CASE("unit timing: the golden STP programs take 6M + P - 1", "[validate][timing]") {
  CHECK(pipeline_unit_makespan(golden("stp_p4_m12.csv", 4)) == 6 * 12 + 4 - 1);
  CHECK(pipeline_unit_makespan(golden("stp_p2_m9.csv", 2)) == 6 * 9 + 2 - 1);
}

TEST_CASE("accumulation depth: designed programs", "[validate][accum]") {
  // One stage, W's finish in mb order 2, 1, 0: mb 2 waits (1), mb 1 waits (2), mb 0 drains both.
  CHECK(pipeline_accum_depth(looped(1, 3, {{F(0, 0), F(0, 1), F(0, 2), B(0, 0), B(0, 1), B(0, 2), W(0, 2), W(0, 1), W(0, 0)}})) ==
        std::vector<int>{2});
  // In order: nothing ever waits.
  CHECK(pipeline_accum_depth(looped(1, 2, {{F(0, 0), F(0, 1), BW(0, 0), BW(0, 1)}})) == std::vector<int>{0});
  // A deferred W (B0.0 ... W0.0) behind two unsplit backwards: BW0.1 and BW0.2 wait for W0.0.
  CHECK(pipeline_accum_depth(looped(1, 3, {{F(0, 0), F(0, 1), F(0, 2), B(0, 0), BW(0, 1), BW(0, 2), W(0, 0)}})) ==
        std::vector<int>{2});
}

TEST_CASE("accumulation depth of the golden STP P=4 M=12 program, derived by hand", "[validate][accum]") {
  // rank 0: BW7.11 waits for W7.5..W7.10 -> 1.  rank 1: BW6.10, BW6.11 wait for W6.4.. -> 2.
  // rank 2: BW2.3..BW2.10 wait for W2.2 (8) while BW5.9..BW5.11 wait for W5.4 (3) -> 11.
  // rank 3: BW3.4..BW3.11 wait for W3.3 (8) while BW4.8..BW4.11 wait for W4.3 (4) -> 12.
  CHECK(pipeline_accum_depth(golden("stp_p4_m12.csv", 4)) == std::vector<int>{1, 2, 11, 12});
  // DualPipeV's W's always trail in order: no contribution ever waits.
  CHECK(pipeline_accum_depth(golden("dualpipev_4rank_10mb.csv", 4)) == std::vector<int>{0, 0, 0, 0});
}

TEST_CASE("violations print rank, step and rule", "[validate]") {
  Violation v{PipelineRule::Order, 1, 5, "W3.0 runs at step 5, not after its B (step 7)"};
  CHECK(v.to_string() == "rank 1, step 5 [order]: W3.0 runs at step 5, not after its B (step 7)");
  CHECK(std::string(pipeline_rule_name(PipelineRule::WrongRank)) == "wrong-rank");
}
