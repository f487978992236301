// bench_model.cpp: training-step benchmark of the CPU backend (hidden Catch tag [.bench], not
// part of the test run). For each config it times reference_step (tp = 1, one stage, one
// micro-batch: forward, backward, grad norm, AdamW) and prints one JSON line with the shapes and
// the median step time, which scripts/bench_cpu_model.py replays in PyTorch with the same shapes.
//   STP_BENCH_STEPS (default 7) timed steps after 2 warm-up steps; STP_BENCH_ONLY=name runs one.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "model_test_util.h"

using namespace stp;
using namespace stp::test;

namespace {

struct BenchCase {
  const char* name;
  const char* arch;
  int layers, hidden, heads, kv_heads, ffn, vocab, seq, batch;
};

// tiny-*: configs/models/tiny-{gpt,qwen2}.yaml; small-*: ~13M-parameter models.
const BenchCase kCases[] = {
    {"tiny-gpt", "gpt", 4, 64, 4, 0, 256, 256, 64, 8},
    {"tiny-qwen2", "qwen2", 4, 64, 4, 2, 128, 256, 32, 16},
    {"small-gpt", "gpt", 6, 384, 6, 0, 1536, 4096, 256, 4},
    {"small-qwen2", "qwen2", 6, 384, 6, 2, 1024, 4096, 256, 4},
};

Config bench_config(const BenchCase& b) {
  Config c = tiny_config(b.arch);
  ModelConfig& m = c.model;
  m.layers = b.layers;
  m.hidden = b.hidden;
  m.heads = b.heads;
  m.kv_heads = b.kv_heads;
  m.ffn_hidden = b.ffn;
  m.vocab = b.vocab;
  m.seq_len = b.seq;
  m.init_std = 0.02;
  c.schedule.micro_batch_size = b.batch;
  c.train.grad_clip = 1.0;
  return c;
}

void run_case(const BenchCase& b, int steps) {
  const Config c = bench_config(b);
  Reference<float> ref;
  REQUIRE(reference_init(ref, c, {}, ParamInit{1, 0.02, b.layers, false}) == "");
  const int64_t N = int64_t(b.batch) * b.seq;
  std::vector<double> ms;
  double loss = 0;
  for (int i = 0; i < steps + 2; ++i) {
    const std::vector<MicroBatch> mbs = {random_batch(N, b.vocab, uint64_t(i))};
    const auto t0 = std::chrono::steady_clock::now();
    RefStats st;
    REQUIRE(reference_step(ref, mbs, 1e-3, &st) == "");
    const double dt =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (i >= 2) ms.push_back(dt);
    loss = st.loss;
  }
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2];
  std::printf(
      "{\"name\": \"%s\", \"arch\": \"%s\", \"layers\": %d, \"hidden\": %d, \"heads\": %d, "
      "\"kv_heads\": %d, \"ffn\": %d, \"vocab\": %d, \"seq\": %d, \"batch\": %d, \"steps\": %d, "
      "\"step_ms_median\": %.3f, \"step_ms_min\": %.3f, \"tokens_per_s\": %.1f, \"loss\": %.4f}\n",
      b.name, b.arch, b.layers, b.hidden, b.heads, b.kv_heads, b.ffn, b.vocab, b.seq, b.batch,
      steps, med, ms.front(), double(N) / (med / 1000.0), loss);
  std::fflush(stdout);
}

}  // namespace

TEST_CASE("bench: CPU training step, tiny and small configs", "[.bench]") {
  const char* s = std::getenv("STP_BENCH_STEPS");
  const char* only = std::getenv("STP_BENCH_ONLY");
  const int steps = s ? std::max(1, std::atoi(s)) : 7;
  for (const BenchCase& b : kCases)
    if (!only || std::string(only) == b.name) run_case(b, steps);
}
