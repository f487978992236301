// The interfaces scripts rely on, through the real binary: `schedule --format csv` prints the golden
// programs; `simulate --json` has the documented keys, and with --cost unit STP takes 6M+P-1.
#include <sys/wait.h>

#include <array>
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "runtime/core/config.h"
#include "scheduler/schedules.h"
#include "tests/run_util.h"
#include "tests/scheduler/sched_test_util.h"

using stp_test::read_golden;

namespace {

std::pair<int, std::string> run(const std::string& args) {
  const stp_test::RunResult r = stp_test::run_command(std::string(STP_BINARY) + " " + args, false);
  return {r.rc, r.out};
}

const std::string kBase = std::string(" --config ") + STP_TEST_DIR + "/corpus/base.yaml";

}  // namespace

TEST_CASE("schedule --format csv prints the golden STP programs", "[cli]") {
  auto [rc, out] = run("schedule" + kBase + " --set schedule.microbatches=9 --format csv");
  CHECK(rc == 0);
  CHECK(out == read_golden("stp_p2_m9.csv"));
  auto [rc4, out4] = run("schedule" + kBase + " --set parallel.pp=4 --set model.layers=8 --set schedule.microbatches=12 --format csv");
  CHECK(rc4 == 0);
  CHECK(out4 == read_golden("stp_p4_m12.csv"));
}

TEST_CASE("simulate --json has the documented keys, unit cost gives 6M+P-1 for STP", "[cli]") {
  auto [rc, out] = run("simulate" + kBase + " --cost unit --json");
  REQUIRE(rc == 0);
  const auto j = nlohmann::json::parse(out);
  for (const char* k : {"schedule", "iteration_time", "tokens_per_s", "tflops_per_gpu", "mfu", "pp_bubble",
                        "tp_exposed", "peak_mem_bytes"})
    CHECK(j.contains(k));
  CHECK(j["schedule"] == "stp");
  CHECK(j["iteration_time"].get<double>() == Approx(6 * 6 + 2 - 1));
  CHECK(j["peak_mem_bytes"].size() == 2);
}

TEST_CASE("simulate --compare --json lists every schedule valid for the config", "[cli]") {
  auto [rc, out] = run("simulate" + kBase + " --set schedule.microbatches=8 --compare --json");
  REQUIRE(rc == 0);
  const auto j = nlohmann::json::parse(out);
  REQUIRE(j.is_array());
  CHECK(j.size() == 7);
  for (size_t i = 1; i < j.size(); ++i)
    CHECK(j[i - 1]["iteration_time"].get<double>() <= j[i]["iteration_time"].get<double>());
}

TEST_CASE("schedule rejects an invalid imported CSV naming the rank and step", "[cli]") {
  const std::string path = "/tmp/stp_cli_bad.csv";
  std::ofstream(path, std::ios::trunc) << "0B0,0F0\n1F0,1B0\n";  // rank 0 runs B before F
  auto [rc, out] = run("schedule" + kBase + " --set schedule.name=csv --set schedule.file=" + path +
                       " --set parallel.chunks=1 --set schedule.microbatches=1 --set model.layers=2 --format csv");
  CHECK(rc == 2);
  CHECK(out.empty());
}

// The config loader (runtime/core, which cannot see the scheduler) keeps its own table of schedule
// defaults for validation; fails if it drifts from the generators' table.
TEST_CASE("the config's schedule rules agree with the generators'", "[cli][config]") {
  for (const std::string& name : stp::pipeline_schedule_names()) {
    INFO(name);
    CHECK(stp::schedule_default_chunks(name) == stp::pipeline_default_chunks(name));
    for (int pp : {1, 2, 3, 4, 8})
      CHECK(stp::schedule_min_microbatches(name, pp, stp::pipeline_default_chunks(name)) ==
            stp::pipeline_min_microbatches(name, pp));
  }
}
