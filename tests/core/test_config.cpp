// Config loading and validation. The corpus test runs the real binary on every file in
// tests/corpus/bad/ and checks exit code 2 and that stderr names the key and the rule, as the file's
// "# expect:" header says; a file that loads, crashes, or gives a vaguer message fails it.
#include <sys/wait.h>

#include <array>
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "runtime/core/config.h"
#include "tests/fuzz_util.h"
#include "tests/run_util.h"

namespace fs = std::filesystem;
using namespace stp;

namespace {

using stp_test::RunResult;
RunResult run(const std::string& cmd) { return stp_test::run_command(cmd); }

std::string base_yaml() {
  return "model: {layers: 4, hidden: 64, heads: 4, vocab: 256, seq_len: 16}\n"
         "parallel: {tp: 2, pp: 2, dp: 1}\n"
         "schedule: {name: stp, microbatches: 6}\n";
}

}  // namespace

TEST_CASE("every malformed corpus file exits 2 naming the key and the rule", "[config][corpus]") {
  const fs::path dir = fs::path(STP_TEST_DIR) / "corpus" / "bad";
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    std::ifstream in(entry.path());
    std::string header;
    std::getline(in, header);
    INFO("corpus file " << entry.path().filename().string() << " header: " << header);
    REQUIRE(header.rfind("# expect: key=", 0) == 0);
    const std::string rest = header.substr(std::string("# expect: key=").size());
    const auto msg_at = rest.find(" msg=");
    REQUIRE(msg_at != std::string::npos);
    const std::string key = rest.substr(0, msg_at), msg = rest.substr(msg_at + 5);
    const RunResult r = run(std::string(STP_BINARY) + " --config " + entry.path().string() + " --dry-run");
    INFO("output: " << r.out);
    CHECK(r.rc == 2);
    if (!key.empty()) CHECK(r.out.find("'" + key + "'") != std::string::npos);
    CHECK(r.out.find(msg) != std::string::npos);
    CHECK(r.out.find("error: ") == 0);
    ++files;
  }
  CHECK(files >= 25);
}

TEST_CASE("a valid config loads with defaults and derived values", "[config]") {
  const ConfigResult r = config_load_string(base_yaml(), "t.yaml");
  REQUIRE(r.ok());
  const Config& c = *r.config;
  CHECK(c.model.kv() == 4);
  CHECK(c.model.ffn() == 256);
  CHECK(c.model.head_dim() == 16);
  CHECK(config_stage_layers(c) == std::vector<int>{1, 1, 1, 1});  // pp 2 x 2 chunks (stp)
  CHECK(c.train.deterministic);
}

TEST_CASE("a --set override replaces any key, with types checked", "[config]") {
  auto r = config_load_string(base_yaml(), "t.yaml", {"schedule.name=zb-v", "train.lr=0.5", "parallel.stage_layers=[2,1,0,1]"});
  REQUIRE_FALSE(r.ok());  // a stage with 0 layers is rejected
  CHECK(r.error->key == "parallel.stage_layers");
  r = config_load_string(base_yaml(), "t.yaml", {"schedule.name=zb-v", "train.lr=0.5", "parallel.stage_layers=[1,1,1,1]"});
  REQUIRE(r.ok());
  CHECK(r.config->schedule.name == "zb-v");
  CHECK(r.config->train.lr == 0.5);
  r = config_load_string(base_yaml(), "t.yaml", {"train.lr=fast"});
  REQUIRE_FALSE(r.ok());
  CHECK(r.error->key == "train.lr");
  CHECK(r.error->file == "--set");
  r = config_load_string(base_yaml(), "t.yaml", {"no_equals_sign"});
  REQUIRE_FALSE(r.ok());
  CHECK(r.error->message.find("key.path=value") != std::string::npos);
}

TEST_CASE("include: is relative to the including file and later keys win", "[config]") {
  const fs::path dir = fs::temp_directory_path() / "stp_cfg_inc";
  fs::create_directories(dir / "sub");
  std::ofstream(dir / "sub" / "model.yaml") << "model: {layers: 4, hidden: 64, heads: 4, vocab: 256, seq_len: 16}\n";
  std::ofstream(dir / "run.yaml") << "include: sub/model.yaml\nmodel: {seq_len: 32}\n"
                                     "schedule: {name: 1f1b, microbatches: 2}\n";
  const ConfigResult r = config_load((dir / "run.yaml").string(), {});
  REQUIRE(r.ok());
  CHECK(r.config->model.seq_len == 32);   // the including file overrides
  CHECK(r.config->model.hidden == 64);    // the included file provides
}

TEST_CASE("the launcher's world size must equal tp*pp*dp", "[config]") {
  const ConfigResult r = config_load_string(base_yaml(), "t.yaml");
  REQUIRE(r.ok());
  CHECK_FALSE(config_validate_world(*r.config, 4));
  const auto e = config_validate_world(*r.config, 8);
  REQUIRE(e);
  CHECK(e->message == "tp*pp*dp = 2*2*1 = 4, but the launcher started 8 ranks");
  // Through the binary: exit 2 and the arithmetic.
  const RunResult b = run("RANK=0 WORLD_SIZE=8 " + std::string(STP_BINARY) + " --config " + STP_TEST_DIR +
                          "/corpus/base.yaml --dry-run");
  CHECK(b.rc == 2);
  CHECK(b.out.find("tp*pp*dp = 2*2*1 = 4, but the launcher started 8 ranks") != std::string::npos);
}

TEST_CASE("minimum micro-batches per schedule", "[config]") {
  CHECK(schedule_min_microbatches("stp", 4, 2) == 11);
  CHECK(schedule_min_microbatches("stp", 2, 2) == 5);
  CHECK(schedule_min_microbatches("1f1b", 8, 1) == 1);
}

TEST_CASE("config_to_json round-trips the resolved values", "[config]") {
  const ConfigResult r = config_load_string(base_yaml(), "t.yaml", {"train.seed=7"});
  REQUIRE(r.ok());
  const std::string j = config_to_json(*r.config);
  CHECK(j.find("\"seed\": 7") != std::string::npos);
  CHECK(j.find("\"stage_layers\": []") != std::string::npos);
}

TEST_CASE("unknown flags and a missing --config are usage errors (exit 2)", "[cli]") {
  CHECK(run(std::string(STP_BINARY) + " --bogus").rc == 2);
  CHECK(run(std::string(STP_BINARY) + " simulate").rc == 2);
  const RunResult v = run(std::string(STP_BINARY) + " --version");
  CHECK(v.rc == 0);
  CHECK(v.out.find("stp-train ") == 0);
  const RunResult h = run(std::string(STP_BINARY) + " --help");
  CHECK(h.rc == 0);
  CHECK(h.out.find("Examples:") != std::string::npos);
}

// Fails if any byte-level mutation of a valid config crashes the binary or exits with anything but
// 0 or 2 (with an "error: " line): the loader must turn every input into a config or a clear error.
TEST_CASE("mutated config files never crash the loader", "[config][fuzz]") {
  std::ifstream in(std::string(STP_TEST_DIR) + "/corpus/base.yaml");
  std::string base((std::istreambuf_iterator<char>(in)), {});
  const std::string inc = "../../configs/models/tiny-gpt.yaml";
  base.replace(base.find(inc), inc.size(), std::string(STP_TEST_DIR) + "/../configs/models/tiny-gpt.yaml");
  const std::string alphabet = ":{}[],-?&*!|>'\"%@`#\t\n 0123456789abcxyz.";
  std::mt19937 rng(7);
  const fs::path path = fs::temp_directory_path() / "stp_fuzz.yaml";
  for (int i = 0; i < 120; ++i) {
    std::string s = base;
    stp_test::mutate_text(s, rng, alphabet, 6);
    std::ofstream(path) << s;
    const RunResult r = run(std::string(STP_BINARY) + " --config " + path.string() + " --dry-run");
    INFO("mutation " << i << ":\n" << s << "\noutput: " << r.out);
    REQUIRE((r.rc == 0 || r.rc == 2));
    if (r.rc == 2) CHECK(r.out.find("error: ") != std::string::npos);
  }
}
