// test_text_io.cpp: CSV and text forms of pipeline programs (scheduler/text_io.h).
//
// Round trips must give back the identical program for every schedule (a writer/reader mismatch in
// any kind, pair or placement fails); PyTorch's CSV dialect must import to exactly our program
// (OVERLAP_F_B, spaces, empty cells, communication actions); malformed input must fail with the
// exact line, column, token and reason.
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

#include "tests/scheduler/sched_test_util.h"
#include "scheduler/schedules.h"
#include "scheduler/text_io.h"
#include "scheduler/validate_pipeline.h"

using namespace stp;
using stp_test::read_golden;

namespace {

void require_same_program(const PipelineProgram& got, const PipelineProgram& want) {
  CHECK(got.pp == want.pp);
  CHECK(got.chunks == want.chunks);
  CHECK(got.microbatches == want.microbatches);
  CHECK(got.placement == want.placement);
  REQUIRE(got.ranks == want.ranks);
}

CsvError parse_error(const std::string& text, int pp, int chunks) {
  PipelineParseResult r = pipeline_from_csv(text, pp, chunks, Placement::V);
  REQUIRE_FALSE(r.ok());
  REQUIRE(r.error.has_value());
  return *r.error;
}

}  // namespace

TEST_CASE("CSV round trip of every schedule, placement given and inferred", "[text_io]") {
  for (const std::string& name : pipeline_schedule_names())
    for (int pp : {1, 2, 3, 4, 8}) {
      const int M = std::max(pipeline_min_microbatches(name, pp), 2 * pp);
      INFO(name << " pp=" << pp << " M=" << M);
      const PipelineProgram p = pipeline_generate(name, pp, M);
      const std::string csv = pipeline_to_csv(p);
      PipelineParseResult given = pipeline_from_csv(csv, pp, p.chunks, p.placement);
      REQUIRE(given.ok());
      require_same_program(*given.program, p);
      CHECK(given.program->schedule == "csv");
      PipelineParseResult inferred = pipeline_from_csv(csv, pp, p.chunks);
      REQUIRE(inferred.ok());
      // With pp = 1 both placements put every stage on rank 0; the reader then says looped.
      if (pp > 1) CHECK(inferred.program->placement == p.placement);
      CHECK(inferred.program->ranks == p.ranks);
      CHECK(pipeline_to_csv(*given.program) == csv);
    }
}

TEST_CASE("PyTorch's DualPipeV artifact imports to our dualpipe-v program", "[text_io][pytorch]") {
  const std::string text = read_golden("dualpipev_4rank_10mb.csv");
  REQUIRE(text.find("OVERLAP_F_B") != std::string::npos);
  PipelineParseResult r = pipeline_from_csv(text, 4, 2);  // placement inferred: V
  REQUIRE(r.ok());
  require_same_program(*r.program, pipeline_generate("dualpipe-v", 4, 10));
  // Writing it back drops only the suffix.
  std::string want = text;
  for (size_t at; (at = want.find("OVERLAP_F_B")) != std::string::npos;) want.erase(at, 11);
  CHECK(pipeline_to_csv(*r.program) == want);
}

TEST_CASE("PyTorch dialect: spaces, empty cells and communication actions are dropped", "[text_io][pytorch]") {
  // A 2-rank 1F1B with one micro-batch in PyTorch's comm-annotated form (as _dump_csv writes it
  // after _add_send_recv), plus idle cells and stray spaces.
  const std::string text =
      "0F0, 0SEND_F0 ,,0RECV_B0,0B0, 0REDUCE_GRAD\n"
      " 1RECV_F0,1F0,,1B0,1SEND_B0,1UNSHARD,1RESHARD\n";
  PipelineParseResult r = pipeline_from_csv(text, 2, 1);
  REQUIRE(r.ok());
  require_same_program(*r.program, pipeline_generate("1f1b", 2, 1));
}

TEST_CASE("comment lines, blank lines and CRLF endings are accepted", "[text_io]") {
  PipelineParseResult r = pipeline_from_csv("# 1f1b pp=2\r\n\r\n0F0,0B0\r\n1F0,1B0\r\n\n", 2, 1);
  REQUIRE(r.ok());
  require_same_program(*r.program, pipeline_generate("1f1b", 2, 1));
}

TEST_CASE("the text form: one readable line per rank", "[text_io]") {
  CHECK(pipeline_to_text(pipeline_generate("1f1b", 2, 2)) ==
        "# 1f1b: pp=2 chunks=1 microbatches=2 placement=looped (F forward, B input-grad with W deferred, "
        "W deferred weight-grad, BW full backward; stage.mb)\n"
        "rank 0: F0.0 F0.1 BW0.0 BW0.1\n"
        "rank 1: F1.0 BW1.0 F1.1 BW1.1\n");
  const std::string stp = pipeline_to_text(pipeline_generate("stp", 4, 12));
  CHECK_THAT(stp, Catch::StartsWith("# stp: pp=4 chunks=2 microbatches=12 placement=v"));
  CHECK_THAT(stp, Catch::Contains("\nrank 0: F0.0 F0.1 F0.2 F0.3 F0.4 F0.5 F0.6 F7.0 F0.7 [F7.1 & B7.0] [F0.8 & W7.0]"));
  CHECK_THAT(stp, Catch::Contains("\nrank 3: F3.0 F4.0 F3.1 F4.1 F3.2 F4.2 F3.3 F4.3 [F3.4 & F3.5]"));
}

TEST_CASE("malformed CSV: errors name line, column, token and why", "[text_io][errors]") {
  SECTION("unknown action kind") {
    CsvError e = parse_error("0F0,0F1, 0Q2\n1F0\n", 2, 2);
    CHECK(e.line == 1);
    CHECK(e.column == 10);
    CHECK(e.token == "0Q2");
    CHECK(e.to_string() == "line 1, column 10, token '0Q2': unknown action kind 'Q' (expected F, I, W, B or a "
                           "PyTorch communication action such as SEND_F)");
  }
  SECTION("missing micro-batch") {
    CsvError e = parse_error("0F0\n1F0,3F\n", 2, 2);
    CHECK(e.line == 2);
    CHECK(e.column == 5);
    CHECK(e.message == "missing micro-batch number after 'F'");
  }
  SECTION("stage out of range") {
    CsvError e = parse_error("0F0,9F0\n1F0\n", 2, 2);
    CHECK(e.token == "9F0");
    CHECK(e.message == "stage 9 is out of range: there are 4 stages (0..3)");
  }
  SECTION("no stage number") {
    CHECK(parse_error("F0\n1F0\n", 2, 2).message == "an action starts with its stage number (e.g. 0F3)");
  }
  SECTION("trailing characters") {
    CHECK(parse_error("0F0x\n1F0\n", 2, 2).message == "unexpected 'x' after the action");
  }
  SECTION("unclosed pair") {
    CsvError e = parse_error("(0F1;3I0\n1F0\n", 2, 2);
    CHECK(e.column == 1);
    CHECK(e.message == "unclosed '(' in a braided pair");
  }
  SECTION("pair of three") {
    CHECK(parse_error("(0F1;3I0;3W0)\n1F0\n", 2, 2).message == "a braided pair holds exactly two actions, got 3");
  }
  SECTION("pair not led by a forward") {
    CHECK(parse_error("(3I0;0F1)\n1F0\n", 2, 2).message ==
          "the first action of a braided pair must be a forward (F), got '3I0'");
  }
  SECTION("bad suffix after a pair") {
    CHECK(parse_error("(0F1;3B0)OVERLAP\n1F0\n", 2, 2).message ==
          "unexpected 'OVERLAP' after a braided pair (only OVERLAP_F_B may follow)");
  }
  SECTION("communication inside a pair") {
    CHECK_THAT(parse_error("(0F1;0SEND_F1)\n1F0\n", 2, 2).message, Catch::Contains("not a compute action"));
  }
  SECTION("bad action inside a pair") {
    CHECK(parse_error("(0F1;3Z0)\n1F0\n", 2, 2).message ==
          "in '3Z0': unknown action kind 'Z' (expected F, I, W, B or a PyTorch communication action such as SEND_F)");
  }
  SECTION("too few rank lines") {
    CsvError e = parse_error("0F0\n1F0\n", 3, 2);
    CHECK(e.message == "found 2 rank lines, expected one per rank: pp = 3");
  }
  SECTION("too many rank lines") {
    CsvError e = parse_error("0F0\n1F0\n2F0\n", 2, 2);
    CHECK(e.line == 3);
    CHECK(e.message == "more rank lines than pp = 2");
  }
  SECTION("V placement with other than 2 chunks") {
    PipelineParseResult r = pipeline_from_csv("0F0\n1F0\n", 2, 3, Placement::V);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error->message == "the V placement holds exactly 2 chunks per rank, got chunks = 3");
  }
  SECTION("only idle cells and communication") {
    CHECK(parse_error("0SEND_F0,,\n1RECV_F0\n", 2, 2).message == "the CSV holds no compute action");
  }
  SECTION("number too large") {
    CHECK(parse_error("0F12345678901\n1F0\n", 2, 2).message == "number '12345678901' is too large");
  }
}

TEST_CASE("placement inference fails when no placement fits every line", "[text_io][errors]") {
  // pp=2, chunks=2: looped puts stages {0,2} on rank 0, V puts {0,3}. "2F0" fits only looped and
  // "3F0" only V, both on line 1.
  PipelineParseResult r = pipeline_from_csv("0F0,2F0,3F0\n1F0\n", 2, 2);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error->line == 1);
  CHECK(r.error->token == "2F0");
  CHECK_THAT(r.error->message, Catch::Contains("no placement puts every action on the rank of its line") &&
                                   Catch::Contains("'3F0' (line 1) is off rank 0 under the looped placement"));
}

TEST_CASE("an imported program with a misplaced pass reaches the validator when placement is given",
          "[text_io]") {
  // The reader only parses; rank rules are the validator's (so a CSV from elsewhere is diagnosed
  // with the same rules as our own programs).
  PipelineParseResult r = pipeline_from_csv("0F0,1F0,1B0,0B0\n\n", 2, 1, Placement::Looped);
  REQUIRE_FALSE(r.ok());  // one line for two ranks
  r = pipeline_from_csv("0F0,1F0,1B0,0B0\n\n#\n1F1\n", 2, 1, Placement::Looped);
  REQUIRE(r.ok());
  auto v = validate_pipeline_first(*r.program);
  REQUIRE(v.has_value());
  CHECK(v->rule == PipelineRule::WrongRank);
}
