// test_render.cpp: the text, SVG and Chrome-trace views of a simulated iteration
// (scheduler/render.h). Each test checks the view against the SimResult it came from (counts,
// times, idle columns designed by hand), so a renderer that drops, shifts or invents work fails.
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "tests/scheduler/sched_test_util.h"
#include "scheduler/render.h"
#include "scheduler/schedules.h"

using namespace stp;
using stp_test::tiny_gpt_schedule;

namespace {

SimResult sim(const std::string& sched, int pp, int M, int tp, double t_ar = 0) {
  return stp_test::simulate_unit(tiny_gpt_schedule(sched, pp, M, tp), t_ar);
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream is(s);
  for (std::string l; std::getline(is, l);) out.push_back(l);
  return out;
}

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

// '=' marks in the rows under the timelines (the rows that start with spaces).
size_t braid_marks(const std::string& text) {
  size_t n = 0;
  for (const std::string& l : lines_of(text))
    if (l.rfind("   ", 0) == 0) n += count(l, "=");
  return n;
}

// The timeline part of "rank r |....|".
std::string row(const std::vector<std::string>& lines, int rank) {
  const std::string head = "rank " + std::to_string(rank);
  for (const std::string& l : lines)
    if (l.rfind(head, 0) == 0) return l.substr(l.find('|') + 1, l.rfind('|') - l.find('|') - 1);
  FAIL("no row for rank " << rank);
  return "";
}

}  // namespace

// GPipe, P = 2, M = 2, unit costs: the iteration takes 3M + 3(P-1) = 9 units, so 9 columns are one
// unit each. Rank 0: F F, idle 3 (waiting for rank 1's backwards), then 4 units of BW. Rank 1:
// idle 1, F F, 4 units of BW, idle 2. Fails if a column shows work where the rank was idle (or
// the reverse), or the table misses a rank.
TEST_CASE("text: columns show work and idle where the timeline has them", "[render]") {
  const SimResult r = sim("gpipe", 2, 2, 1);
  REQUIRE(r.iteration_time == Approx(9));
  const auto lines = lines_of(render_text(r, 9));
  CHECK(lines[0].rfind("# gpipe: pp 2, tp 1", 0) == 0);
  const std::string r0 = row(lines, 0), r1 = row(lines, 1);
  REQUIRE(r0.size() == 9);
  CHECK(r0.substr(0, 5) == "FF...");
  CHECK(std::count(r0.begin(), r0.end(), '.') == 3);
  CHECK(r0.find_first_not_of("BW", 5) == std::string::npos);
  CHECK(r1.substr(0, 3) == ".FF");
  CHECK(r1.substr(7) == "..");
  CHECK(r1.substr(3, 4).find_first_not_of("BW") == std::string::npos);
  CHECK(braid_marks(render_text(r, 9)) == 0);  // GPipe braids nothing
  int table_rows = 0;
  for (const std::string& l : lines) table_rows += l.rfind("  0 ", 0) == 0 || l.rfind("  1 ", 0) == 0;
  CHECK(table_rows == 2);
}

// Fails if exposed TP waits are not drawn as '~', chunk 1 not in lower case, or braided steps not
// marked: STP braids from its first steady block and has chunk-1 passes on every rank.
TEST_CASE("text: chunk case, TP waits and braid marks", "[render]") {
  const SimResult r = sim("stp", 2, 5, 2, 0.2);
  const auto lines = lines_of(render_text(r, 400));
  for (int rank = 0; rank < 2; ++rank) {
    const std::string t = row(lines, rank);
    CHECK(t.find('f') != std::string::npos);
    CHECK(t.find('F') != std::string::npos);
    CHECK(t.find('~') != std::string::npos);  // the unbraided warm-up forwards expose T_AR
  }
  CHECK(braid_marks(render_text(r, 400)) > 0);
}

// Fails if the SVG drops or invents boxes: one box per compute op that takes time (by colour), one
// bold frame per braided step, one label per rank; tags balanced.
TEST_CASE("svg: one box per unit pass, bold frames for braided steps", "[render]") {
  const SimResult r = sim("stp", 2, 5, 2, 0.05);
  const std::string svg = render_svg(r);
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.substr(svg.size() - 7) == "</svg>\n");
  CHECK(count(svg, "<text") == count(svg, "</text>"));
  CHECK(count(svg, "class=\"rl\"") == 2);
  std::map<std::pair<int, int>, size_t> boxes;  // (pass, chunk) -> compute ops with a duration
  size_t braided = 0;
  for (int rank = 0; rank < 2; ++rank) {
    for (size_t i = 0; i < r.program.ranks[rank].ops.size(); ++i) {
      const Op& o = r.program.ranks[rank].ops[i];
      if (o.kind == OpKind::Compute && r.times[rank][i].end > r.times[rank][i].start)
        ++boxes[{int(o.unit.pass), stage_chunk(r.pp, o.stage)}];
    }
    for (const Step& s : r.program.pipeline.ranks[rank]) braided += s.braided;
  }
  const std::map<std::pair<int, int>, std::string> colour = {
      {{0, 0}, "#4e79a7"}, {{0, 1}, "#a0cbe8"}, {{1, 0}, "#f28e2b"}, {{1, 1}, "#ffbe7d"}, {{2, 0}, "#59a14f"}, {{2, 1}, "#8cd17d"}};
  for (const auto& [k, c] : colour) {
    INFO("pass " << k.first << " chunk " << k.second);
    CHECK(count(svg, "fill=\"" + c + "\"") == boxes[k] + 1);  // + its legend swatch
  }
  CHECK(count(svg, "stroke-width=\"1.6\"") == braided);
  CHECK(braided > 0);
}

// Fails if the trace is not loadable trace-event JSON, misplaces an op in time, puts two things on
// the compute stream or one pp channel at once, or disagrees with the exposed time of the
// simulation.
TEST_CASE("chrome trace: processes, threads, times and exposed waits", "[render]") {
  const SimResult r = sim("zb-v", 2, 4, 2, 0.1);
  const nlohmann::json j = nlohmann::json::parse(render_chrome_trace(r));
  REQUIRE(j.contains("traceEvents"));
  std::map<std::pair<int, int>, std::vector<std::pair<double, double>>> spans;  // (pid, tid) -> (ts, end)
  std::map<int, double> tp_wait;
  std::map<std::string, int> threads;  // name -> how many processes have it
  size_t compute_events = 0;
  for (const auto& e : j["traceEvents"]) {
    if (e["ph"] == "M") {
      if (e["name"] == "thread_name") ++threads[e["args"]["name"].get<std::string>()];
      continue;
    }
    REQUIRE(e["ph"] == "X");
    const int pid = e["pid"], tid = e["tid"];
    const double ts = e["ts"], dur = e["dur"];
    REQUIRE((pid >= 0 && pid < 2));
    const std::string cat = e["cat"];
    if (tid != 1) spans[{pid, tid}].push_back({ts, ts + dur});  // compute and each pp channel are FIFOs
    if (cat == "F" || cat == "B" || cat == "W") {
      ++compute_events;
      const int op = e["args"]["op"];
      CHECK(ts == Approx(r.times[pid][op].start * 1000));  // unit mode: one unit = 1000 us
      CHECK(dur == Approx((r.times[pid][op].end - r.times[pid][op].start) * 1000));
    }
    if (e["name"] == "wait tp") tp_wait[pid] += dur;
  }
  // ZB-V on 2 ranks: activations 0 -> 1 (chunk 0) and 1 -> 0 (chunk 1), gradients back: each rank
  // sends to and receives from the other.
  CHECK(threads == std::map<std::string, int>{{"compute", 2}, {"tp", 2}, {"pp send->0", 1}, {"pp recv<-0", 1},
                                              {"pp send->1", 1}, {"pp recv<-1", 1}});
  size_t want = 0;
  for (const UnitProgram& up : r.program.ranks)
    for (const Op& o : up.ops) want += o.kind == OpKind::Compute;
  CHECK(compute_events == want);
  for (auto& [key, v] : spans) {
    std::sort(v.begin(), v.end());
    for (size_t i = 1; i < v.size(); ++i) CHECK(v[i - 1].second <= v[i].first + 1e-6);
  }
  for (int pid : {0, 1}) CHECK(tp_wait[pid] == Approx(r.ranks[pid].tp_exposed * 1000));
}

// Fails if an error result renders as an empty or malformed view instead of saying what is wrong.
TEST_CASE("renderers say what went wrong for a failed simulation", "[render]") {
  SimResult bad;
  bad.error = "schedule: stp needs microbatches >= 11 & more";
  CHECK(render_text(bad).find("# error: schedule: stp needs") == 0);
  CHECK(render_svg(bad).find("stp needs microbatches &gt;= 11 &amp; more") != std::string::npos);
  const nlohmann::json j = nlohmann::json::parse(render_chrome_trace(bad));
  CHECK(j["otherData"]["error"] == bad.error);
  CHECK(j["traceEvents"].empty());
}
