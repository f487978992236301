// metrics.jsonl: one parseable JSON object per line, flushed as written (readable before close).
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/core/metrics.h"

namespace fs = std::filesystem;

TEST_CASE("metrics lines are complete JSON objects, flushed per line", "[metrics]") {
  const fs::path dir = fs::temp_directory_path() / "stp_metrics_test";
  fs::remove_all(dir);
  stp::MetricsWriter w;
  REQUIRE(w.open(dir.string()).empty());
  w.write({{"step", 1}, {"loss", 2.5}});
  w.write({{"step", 2}, {"loss", 2.25}});
  std::ifstream in(dir / "metrics.jsonl");  // read while the writer is still open
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    CHECK(j["step"] == ++n);
  }
  CHECK(n == 2);
}

TEST_CASE("atomic file write leaves no temporary behind and replaces the old file", "[metrics]") {
  const fs::path dir = fs::temp_directory_path() / "stp_atomic_test";
  fs::remove_all(dir);
  REQUIRE(stp::write_file_atomic(dir.string(), "a.json", "old").empty());
  REQUIRE(stp::write_file_atomic(dir.string(), "a.json", "new").empty());
  std::ifstream in(dir / "a.json");
  std::string s((std::istreambuf_iterator<char>(in)), {});
  CHECK(s == "new");
  int files = 0;
  for (auto& e : fs::directory_iterator(dir)) files += e.is_regular_file();
  CHECK(files == 1);
  CHECK_FALSE(stp::write_file_atomic("/proc/definitely/not/writable", "x", "y").empty());
}
