// test_generators.cpp: the schedule generators (scheduler/schedules.h).
//
// What these prove, and what would fail them:
// - Golden equality: STP (P=4 M=12, P=2 M=9) and DualPipeV (P=4 M=10, PyTorch's own artifact) are
//   reproduced step for step; any change in a phase count, a braid or a W pop order fails.
// - Every generator, for P in {2,3,4,8} and M from its minimum to 4P+3, passes validate_pipeline and an
//   independent count/order check written here (each rank holds exactly its placement's stages, each
//   stage runs M forwards and M backwards in micro-batch order, W's follow the deferred-W FIFO).
// - Unit-cost makespans equal the closed forms of PAPER.md's analysis (a cross-check for the
//   simulator): a misplaced step that adds a bubble fails them.
// - Argument checks name the rule and show the arithmetic.
#include <catch2/catch.hpp>

#include <algorithm>
#include <deque>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "tests/scheduler/sched_test_util.h"
#include "scheduler/schedules.h"
#include "scheduler/text_io.h"
#include "scheduler/validate_pipeline.h"

using namespace stp;
using stp_test::read_golden;

namespace {

// Compares two programs step by step and names the first difference.
void require_same_steps(const PipelineProgram& got, const PipelineProgram& want) {
  REQUIRE(got.ranks.size() == want.ranks.size());
  for (size_t r = 0; r < want.ranks.size(); ++r) {
    const size_t n = std::min(got.ranks[r].size(), want.ranks[r].size());
    for (size_t i = 0; i < n; ++i) {
      INFO("rank " << r << " step " << i << ": got " << step_to_csv(got.ranks[r][i]) << ", want "
                   << step_to_csv(want.ranks[r][i]));
      REQUIRE(got.ranks[r][i] == want.ranks[r][i]);
    }
    INFO("rank " << r);
    REQUIRE(got.ranks[r].size() == want.ranks[r].size());
  }
}

void require_golden(const std::string& schedule, int pp, int M, const std::string& file) {
  const PipelineProgram got = pipeline_generate(schedule, pp, M);
  PipelineParseResult want = pipeline_from_csv(read_golden(file), pp, 2, Placement::V);
  INFO((want.error ? want.error->to_string() : std::string()));
  REQUIRE(want.ok());
  require_same_steps(got, *want.program);
  CHECK(validate_pipeline(got).empty());
}

struct Range {
  int pp, first_m, last_m;
};

std::vector<Range> ranges_for(const std::string& name) {
  std::vector<Range> out;
  for (int pp : {2, 3, 4, 8}) out.push_back({pp, pipeline_min_microbatches(name, pp), 4 * pp + 3});
  return out;
}

// Independent of validate_pipeline: stage sets, per-stage counts, micro-batch order, W FIFO order.
void check_counts_and_order(const PipelineProgram& p) {
  const int M = p.microbatches;
  for (int r = 0; r < p.pp; ++r) {
    std::set<int> want_stages;
    for (int c = 0; c < p.chunks; ++c)
      want_stages.insert(p.placement == Placement::V ? (c == 0 ? r : 2 * p.pp - 1 - r) : c * p.pp + r);
    std::map<int, int> next_f, next_b;  // per stage: next micro-batch expected
    std::map<int, int> last_w;          // per stage: micro-batch of the last W (-1: none yet)
    std::deque<Pass> fifo;                      // deferred W's, in B order
    auto visit = [&](const Pass& x) {
      INFO("rank " << r << " pass " << pass_to_csv(x));
      REQUIRE(want_stages.count(x.stage) == 1);
      if (x.kind == PassKind::F) REQUIRE(x.mb == next_f[x.stage]++);
      if (x.kind == PassKind::B || x.kind == PassKind::BW) REQUIRE(x.mb == next_b[x.stage]++);
      if (x.kind == PassKind::B) fifo.push_back(Pass{PassKind::W, x.stage, x.mb});
      if (x.kind == PassKind::W) {
        REQUIRE(x.mb > (last_w.count(x.stage) ? last_w[x.stage] : -1));  // W's of a stage in mb order
        last_w[x.stage] = x.mb;
        // ZB-V keeps W's per chunk; every other schedule pops the rank's oldest deferred W.
        auto it = p.schedule == "zb-v" ? std::find_if(fifo.begin(), fifo.end(), [&](const Pass& w) { return w.stage == x.stage; })
                                       : fifo.begin();
        REQUIRE(it != fifo.end());
        REQUIRE(*it == x);
        fifo.erase(it);
      }
    };
    for (const Step& s : p.ranks[r]) {
      visit(s.a);
      if (s.braided) visit(s.b);
    }
    INFO("rank " << r);
    REQUIRE(fifo.empty());
    for (int s : want_stages) {
      REQUIRE(next_f[s] == M);
      REQUIRE(next_b[s] == M);
    }
  }
}

int count_braided(const PipelineProgram& p) {
  int n = 0;
  for (const auto& rank : p.ranks)
    for (const Step& s : rank) n += s.braided ? 1 : 0;
  return n;
}

}  // namespace

TEST_CASE("STP reproduces the release's P=4 M=12 program step for step", "[generators][golden]") {
  require_golden("stp", 4, 12, "stp_p4_m12.csv");
}

TEST_CASE("STP reproduces the release's P=2 M=9 program step for step", "[generators][golden]") {
  require_golden("stp", 2, 9, "stp_p2_m9.csv");
}

TEST_CASE("DualPipeV reproduces PyTorch's 4-rank 10-micro-batch artifact step for step", "[generators][golden]") {
  require_golden("dualpipe-v", 4, 10, "dualpipev_4rank_10mb.csv");
}

TEST_CASE("STP's CSV output is byte-identical to the golden file", "[generators][golden]") {
  // Fails if the writer's notation drifts from the golden files' (e.g. B vs I, pair syntax).
  CHECK(pipeline_to_csv(pipeline_generate("stp", 4, 12)) == read_golden("stp_p4_m12.csv"));
  CHECK(pipeline_to_csv(pipeline_generate("stp", 2, 9)) == read_golden("stp_p2_m9.csv"));
}

TEST_CASE("every generator is valid over P in {2,3,4,8} and M from its minimum to 4P+3", "[generators]") {
  for (const std::string& name : pipeline_schedule_names()) {
    for (const Range& rg : ranges_for(name)) {
      for (int M = rg.first_m; M <= rg.last_m; ++M) {
        if (pipeline_check_args(name, rg.pp, M, 0)) continue;  // 1f1b-i: only multiples of pp
        INFO(name << " pp=" << rg.pp << " M=" << M);
        const PipelineProgram p = pipeline_generate(name, rg.pp, M);
        CHECK(p.placement == pipeline_placement(name));
        CHECK(p.chunks == pipeline_default_chunks(name));
        const auto v = validate_pipeline(p);
        INFO((v.empty() ? std::string() : v.front().to_string()));
        REQUIRE(v.empty());
        check_counts_and_order(p);
      }
    }
  }
}

TEST_CASE("interleaved 1F1B is valid with 3 and 4 chunks", "[generators]") {
  for (int chunks : {3, 4})
    for (int pp : {2, 4})
      for (int M : {pp, 2 * pp, 3 * pp}) {
        INFO("chunks=" << chunks << " pp=" << pp << " M=" << M);
        const PipelineProgram p = pipeline_generate("1f1b-i", pp, M, chunks);
        REQUIRE(validate_pipeline(p).empty());
        check_counts_and_order(p);
      }
}

TEST_CASE("ZB-V trims its padding correctly below 2P-1 micro-batches", "[generators]") {
  // PyTorch generates for max(2P-1, M) and drops the extra micro-batches; a trim that left a
  // dependency dangling would deadlock or leave a B without its W.
  for (int pp : {2, 3, 4, 8})
    for (int M = 1; M < 2 * pp - 1; ++M) {
      INFO("pp=" << pp << " M=" << M);
      const PipelineProgram p = pipeline_generate("zb-v", pp, M);
      REQUIRE(validate_pipeline(p).empty());
      check_counts_and_order(p);
    }
}

TEST_CASE("unit-cost makespans match the closed forms of the analysis", "[generators][makespan]") {
  // F = B = W = 1, BW = 2, braided = sum, free communication (PAPER.md "The analysis"):
  // STP and ZB-V 6M+P-1; interleaved 1F1B (2 chunks) 6M+3(P-1); 1F1B and GPipe 3M+3(P-1);
  // ZB-H1 3M+P-1; DualPipeV 6M+2(P-1) (its last rank starts with an unbraided F, BW pair).
  // ZB-H1 needs M >= P and ZB-V M >= 2P-1 to fill the pipeline; below that the ramp shows.
  auto closed_form = [](const std::string& n, int P, int M) {
    if (n == "stp" || n == "zb-v") return 6 * M + P - 1;
    if (n == "1f1b-i") return 6 * M + 3 * (P - 1);
    if (n == "1f1b" || n == "gpipe") return 3 * M + 3 * (P - 1);
    if (n == "zb-h1") return 3 * M + P - 1;
    return 6 * M + 2 * (P - 1);  // dualpipe-v
  };
  for (const std::string& name : pipeline_schedule_names())
    for (int pp : {2, 3, 4, 8}) {
      const int first = name == "zb-h1" ? pp : name == "zb-v" ? 2 * pp - 1 : pipeline_min_microbatches(name, pp);
      for (int M = first; M <= 4 * pp + 3; ++M) {
        if (pipeline_check_args(name, pp, M, 0)) continue;
        INFO(name << " pp=" << pp << " M=" << M);
        REQUIRE(pipeline_unit_makespan(pipeline_generate(name, pp, M)) == closed_form(name, pp, M));
      }
    }
  // Below the fill point the chain of one micro-batch decides (ZB-V, P=4, M=1): 8 forwards and 8
  // input-gradient backwards in a row, with rank 3's W4.0 between B4.0 and B3.0 and rank 0's W0.0
  // after B0.0: 8 + 8 + 1 + 1 = 18.
  CHECK(pipeline_unit_makespan(pipeline_generate("zb-v", 4, 1)) == 18);
}

TEST_CASE("braids: STP pairs passes of one chunk, DualPipeV pairs F with the other chunk's BW", "[generators]") {
  for (int pp : {2, 3, 4, 8}) {
    INFO("pp=" << pp);
    const PipelineProgram stp = pipeline_generate("stp", pp, 3 * pp + 2);
    for (const auto& rank : stp.ranks)
      for (const Step& s : rank) {
        if (!s.braided) continue;
        REQUIRE(s.a.kind == PassKind::F);
        // F&F and F&B(W deferred or not) stay in the chunk; only F&W may reach the other chunk.
        if (s.b.kind != PassKind::W) REQUIRE(s.b.stage == s.a.stage);
      }
    const PipelineProgram dpv = pipeline_generate("dualpipe-v", pp, 2 * pp + 3);
    for (const auto& rank : dpv.ranks)
      for (const Step& s : rank) {
        if (!s.braided) continue;
        REQUIRE(s.a.kind == PassKind::F);
        REQUIRE(s.b.kind == PassKind::BW);
        REQUIRE(stage_chunk(pp, s.a.stage) != stage_chunk(pp, s.b.stage));
      }
    for (const char* name : {"gpipe", "1f1b", "1f1b-i", "zb-h1", "zb-v"})
      CHECK(count_braided(pipeline_generate(name, pp, 2 * pp)) == 0);
  }
}

TEST_CASE("1F1B and ZB-H1 keep at most P-r micro-batches in flight on rank r", "[generators]") {
  // The memory bound that defines 1F1B (and that ZB-H1 keeps): forwards done minus input-gradient
  // backwards done never exceeds P - r. GPipe, which holds all M, must exceed it.
  auto peak_in_flight = [](const PipelineProgram& p, int r) {
    int live = 0, peak = 0;
    for (const Step& s : p.ranks[r]) {
      live += s.a.kind == PassKind::F ? 1 : (s.a.kind == PassKind::B || s.a.kind == PassKind::BW) ? -1 : 0;
      peak = std::max(peak, live);
    }
    return peak;
  };
  for (int pp : {2, 4, 8})
    for (int r = 0; r < pp; ++r) {
      INFO("pp=" << pp << " rank " << r);
      CHECK(peak_in_flight(pipeline_generate("1f1b", pp, 3 * pp), r) == pp - r);
      CHECK(peak_in_flight(pipeline_generate("zb-h1", pp, 3 * pp), r) == pp - r);
      CHECK(peak_in_flight(pipeline_generate("gpipe", pp, 3 * pp), r) == 3 * pp);
    }
}

TEST_CASE("DualPipeV's bound is PyTorch's: M = 2P-1 would be valid but is rejected", "[generators][args]") {
  // Documents gen_dualpipe_v.cpp's claim; if PyTorch's rule changes, this shows the slack.
  for (int pp : {2, 3, 4, 8}) {
    PipelineProgram p;
    p.schedule = "dualpipe-v";
    p.pp = pp;
    p.chunks = 2;
    p.microbatches = 2 * pp - 1;
    p.placement = Placement::V;
    for (int r = 0; r < pp; ++r) p.ranks.push_back(gen_dualpipe_v(pp, r, 2 * pp - 1, 2));
    INFO("pp=" << pp);
    CHECK(validate_pipeline(p).empty());
    CHECK(pipeline_check_args("dualpipe-v", pp, 2 * pp - 1, 2).has_value());
  }
}

TEST_CASE("argument checks name the rule with the arithmetic", "[generators][args]") {
  auto msg = [](const std::string& n, int pp, int M, int chunks) {
    auto e = pipeline_check_args(n, pp, M, chunks);
    REQUIRE(e.has_value());
    return *e;
  };
  CHECK(msg("stp", 4, 9, 0) == "stp needs microbatches >= 3*pp-1 = 3*4-1 = 11 (PAPER.md: the phase counts only "
                               "come out right from there), got 9");
  CHECK_FALSE(pipeline_check_args("stp", 4, 11, 0));
  CHECK_THAT(msg("1f1b-i", 4, 10, 0), Catch::Contains("10 % 4 = 2"));
  CHECK_FALSE(pipeline_check_args("1f1b-i", 4, 12, 2));
  CHECK_THAT(msg("dualpipe-v", 4, 7, 0), Catch::Contains("2*pp = 2*4 = 8") && Catch::Contains("got 7"));
  CHECK_FALSE(pipeline_check_args("dualpipe-v", 4, 8, 0));
  CHECK_THAT(msg("zb-v", 4, 8, 3), Catch::Contains("exactly 2 chunks per rank, got 3"));
  CHECK_THAT(msg("1f1b", 4, 8, 2), Catch::Contains("one chunk per rank"));
  CHECK_THAT(msg("1f1b-i", 4, 8, 1), Catch::Contains("chunks >= 2, got 1"));
  CHECK_THAT(msg("pipedream", 4, 8, 0), Catch::Contains("unknown schedule 'pipedream'") && Catch::Contains("stp"));
  CHECK_THAT(msg("gpipe", 0, 8, 0), Catch::Contains("pp >= 1, got 0"));
  CHECK_THAT(msg("gpipe", 2, 0, 0), Catch::Contains("microbatches >= 1, got 0"));
  CHECK_THROWS_WITH(pipeline_generate("stp", 2, 4), Catch::Contains("3*2-1 = 5"));
  CHECK_THROWS_AS(pipeline_generate("stp", 2, 4), std::invalid_argument);
}

TEST_CASE("the schedule table: names, placements, default chunks", "[generators]") {
  CHECK(pipeline_schedule_names() ==
        std::vector<std::string>{"gpipe", "1f1b", "1f1b-i", "zb-h1", "zb-v", "dualpipe-v", "stp"});
  for (const char* v : {"zb-v", "dualpipe-v", "stp"}) {
    CHECK(pipeline_placement(v) == Placement::V);
    CHECK(pipeline_default_chunks(v) == 2);
  }
  for (const char* l : {"gpipe", "1f1b", "zb-h1"}) {
    CHECK(pipeline_placement(l) == Placement::Looped);
    CHECK(pipeline_default_chunks(l) == 1);
  }
  CHECK(pipeline_default_chunks("1f1b-i") == 2);
  CHECK(pipeline_min_microbatches("stp", 4) == 11);
  CHECK(pipeline_min_microbatches("dualpipe-v", 4) == 8);
}
