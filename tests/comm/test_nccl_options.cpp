// test_nccl_options.cpp: the config's `nccl` section and train.timeout_s reach NcclOptions
// (nccl_options_of, inline in comm/nccl/nccl_comm.h, so it is tested without CUDA). What the options
// do to ncclConfig_t needs a GPU: tests/cuda/test_nccl.cpp.
#include <catch2/catch.hpp>

#include <string>

#include "comm/nccl/nccl_comm.h"
#include "runtime/core/config.h"

using namespace stp;

namespace {

// A valid config without an `nccl` section; the tests append their keys.
const std::string kBase =
    "model: {layers: 4, hidden: 64, heads: 4, vocab: 256, seq_len: 16}\n"
    "parallel: {tp: 2, pp: 2, dp: 1}\n"
    "schedule: {name: stp, microbatches: 6}\n";

Config load(const std::string& extra) {
  const ConfigResult r = config_load_string(kBase + extra, "t.yaml");
  INFO((r.error ? r.error->to_string() : std::string()));
  REQUIRE(r.ok());
  return *r.config;
}

}  // namespace

// Fails if a key is dropped, lands in another field, or the timeout is not the per-op timeout.
TEST_CASE("nccl_options_of maps every nccl key and train.timeout_s", "[comm][nccl]") {
  const Config cfg = load(
      "train: {timeout_s: 7.5}\n"
      "nccl: {port: 29600, watchdog_ms: 20, blocking: false, cga_cluster_size: 2, min_ctas: 4, max_ctas: 16}\n");
  const NcclOptions o = nccl_options_of(cfg);
  CHECK(o.port == 29600);
  CHECK(o.op_timeout_s == 7.5);
  CHECK(o.watchdog);
  CHECK(o.watchdog_poll_ms == 20);
  CHECK_FALSE(o.blocking);
  CHECK(o.cga_cluster_size == 2);
  CHECK(o.min_ctas == 4);
  CHECK(o.max_ctas == 16);
  CHECK(o.device == -1);  // from the local rank
}

// Fails if the config's defaults (blocking, 100 ms polls, NCCL's own CTA and CGA choices) change
// on the way, or a sub-millisecond poll period becomes 0 (a busy loop).
TEST_CASE("nccl_options_of: defaults, and poll periods round up to whole milliseconds", "[comm][nccl]") {
  const NcclOptions d = nccl_options_of(load(""));
  CHECK(d.port == 0);
  CHECK(d.op_timeout_s == 60.0);
  CHECK(d.watchdog_poll_ms == 100);
  CHECK(d.blocking);
  CHECK(d.cga_cluster_size == 0);
  CHECK(d.min_ctas == 0);
  CHECK(d.max_ctas == 0);
  CHECK(nccl_options_of(load("nccl: {watchdog_ms: 0.25}\n")).watchdog_poll_ms == 1);
  CHECK(nccl_options_of(load("nccl: {watchdog_ms: 2.5}\n")).watchdog_poll_ms == 3);
}

// Fails if a bad value loads (the corpus files in tests/corpus/bad/nccl_*.yaml check the messages
// through the binary).
TEST_CASE("invalid nccl keys are refused naming the key", "[comm][nccl]") {
  const std::pair<const char*, const char*> cases[] = {
      {"nccl: {port: -1}", "nccl.port"},
      {"nccl: {port: 65536}", "nccl.port"},
      {"nccl: {watchdog_ms: 0}", "nccl.watchdog_ms"},
      {"nccl: {cga_cluster_size: -1}", "nccl.cga_cluster_size"},
      {"nccl: {min_ctas: -2}", "nccl.min_ctas"},
      {"nccl: {min_ctas: 5, max_ctas: 4}", "nccl.min_ctas"},
  };
  for (const auto& [yaml, key] : cases) {
    INFO(yaml);
    const ConfigResult r = config_load_string(kBase + yaml + "\n", "t.yaml");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error->key == key);
  }
  // The edges are allowed: port 65535, cga 8, min_ctas == max_ctas, one side unset.
  CHECK(config_load_string(kBase + "nccl: {port: 65535, cga_cluster_size: 8, min_ctas: 4, max_ctas: 4}\n", "t.yaml").ok());
  CHECK(config_load_string(kBase + "nccl: {min_ctas: 32}\n", "t.yaml").ok());
}
