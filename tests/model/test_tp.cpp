// test_tp.cpp: tensor-parallel equivalence without a communication library. The reference runs
// tp = 2 and 4 shards of the model in one process and sums the partials (max for the row max)
// exactly where the collectives would be; loss, logits, every gradient gathered by the sharding
// table, and the parameters after an AdamW step must match tp = 1 to fp32 rounding.
#include <catch2/catch.hpp>

#include "model_test_util.h"

using namespace stp;
using namespace stp::test;

namespace {

Config tp_config(const std::string& arch) {
  Config c = tiny_config(arch);
  c.model.hidden = 32;
  c.model.heads = 8;
  c.model.kv_heads = arch == "gpt" ? 0 : 4;
  c.model.ffn_hidden = 64;
  c.model.vocab = 64;
  c.model.init_std = 0.1;
  c.train.grad_clip = 1.0;  // the clip factor depends on the global norm: counted once per tensor
  return c;
}

// The bound: fp32 sums over K = C..F elements reassociated across shards differ by a few ulps
// of the partial sums; relative to each tensor's largest element that stays below 2e-5 here
// (measured max 6.5e-7 over all cases), while a wrong shard mapping or a partial counted twice
// gives O(1).
constexpr double kTpBound = 2e-5;

// tp_config's LLM behind tiny_vlm_config's tower with 4 vision heads (so tp 4 splits them).
Config tp_vlm_config(const std::string& arch) {
  Config c = tp_config(arch);
  c.model.vision = tiny_vlm_config(arch).model.vision;
  c.model.vision.hidden = 32;
  c.model.vision.heads = 4;
  c.model.vision.ffn_hidden = 64;
  return c;
}

void check_tp(const Config& base, int tp, std::vector<int> split) {
  const std::string arch = base.model.arch + (base.model.vision.enabled ? "-vl" : "");
  INFO(arch << " tp=" << tp << " stages=" << split.size());
  Config c1 = base, ck = c1;
  ck.parallel.tp = tp;
  const ParamInit init{42, c1.model.init_std, c1.model.layers, true};
  Reference<float> r1, rk;
  REQUIRE(reference_init(r1, c1, split, init) == "");
  REQUIRE(reference_init(rk, ck, split, init) == "");
  // Same full model at init, bit for bit (counter-based init per full element).
  const FullState v1 = reference_full_state(r1, false), vk = reference_full_state(rk, false);
  for (const auto& [name, t] : v1) REQUIRE(vk.at(name).data == t.data);
  const int64_t N = r1.shapes[0].N;
  std::vector<MicroBatch> mbs = {make_batch(c1, 7), make_batch(c1, 8)};
  REQUIRE(int64_t(mbs[0].tokens.size()) == N);
  std::vector<double> l1, lk;
  REQUIRE(reference_logits(r1, mbs[0], &l1) == "");
  REQUIRE(reference_logits(rk, mbs[0], &lk) == "");
  for (size_t i = 0; i < l1.size(); ++i) REQUIRE(std::abs(l1[i] - lk[i]) < 1e-4);
  RefStats s1, sk;
  REQUIRE(reference_step(r1, mbs, 1e-2, &s1) == "");
  REQUIRE(reference_step(rk, mbs, 1e-2, &sk) == "");
  CHECK(sk.loss == Approx(s1.loss).epsilon(1e-6));
  CHECK(sk.grad_norm == Approx(s1.grad_norm).epsilon(1e-5));
  const FullState g1 = reference_full_state(r1, true), gk = reference_full_state(rk, true);
  for (const auto& [name, t] : g1) {
    INFO("gradient of " << name);
    CHECK(max_scaled_diff(gk.at(name).data, t.data) < kTpBound);
  }
  // AdamW's first step moves each element by ~lr * sign(g): where g is zero in exact arithmetic
  // (the key bias: softmax is shift-invariant) the sign is rounding noise on both sides. Compare
  // the elements whose gradient is resolved (|g| >= 1e-3 of the tensor's largest).
  const FullState p1 = reference_full_state(r1, false), pk = reference_full_state(rk, false);
  for (const auto& [name, t] : p1) {
    INFO("parameter after AdamW " << name);
    const std::vector<float>& g = g1.at(name).data;
    double gmax = 0, worst = 0;
    for (float x : g) gmax = std::max(gmax, double(std::abs(x)));
    for (size_t i = 0; i < g.size(); ++i)
      if (std::abs(g[i]) >= 1e-3 * gmax)
        worst = std::max(worst, double(std::abs(pk.at(name).data[i] - t.data[i])));
    CHECK(worst < 1e-6);  // parameters are O(0.1); one fp32 ulp of them is ~1e-8
  }
}

}  // namespace

TEST_CASE("TP equivalence: tp=2 and tp=4 match tp=1 (loss, logits, all gradients, AdamW step)",
          "[tp]") {
  // Fails if a shard reads the wrong rows/columns (fused qkv, SwiGLU gate|up, vocab), a replicated
  // bias or position embedding is added on more than one rank, a TP-partial norm gradient is not
  // summed, or the global gradient norm counts a replicated tensor more than once.
  for (const char* arch : {"gpt", "llama", "qwen2"})
    for (int tp : {2, 4}) check_tp(tp_config(arch), tp, {});
  check_tp(tp_config("llama"), 2, {1, 1});
}

TEST_CASE("TP equivalence of the VLM: vision tower, merger and LLM at tp=2 and tp=4", "[tp][vlm]") {
  // Fails if the row-parallel patch embedding reads the wrong patch columns, the vision qkv or MLP
  // shards are mis-split, the merger's column/row-parallel pair or its bias (added once) is
  // wrong, the TP-partial merger norm gradient is not summed, or the splice misplaces a shard.
  for (const char* arch : {"qwen2", "gpt"})
    for (int tp : {2, 4}) check_tp(tp_vlm_config(arch), tp, {});
  Config spread = tp_vlm_config("qwen2");
  spread.model.vision.placement = "spread";
  spread.model.vision.spread_stages = 2;
  check_tp(spread, 2, {0, 2});
}

TEST_CASE("TP equivalence with tied embeddings over two stages", "[tp]") {
  // Fails if the two embed.weight replicas (stage 0 and the head's stage) are not summed.
  Config c = tp_config("gpt");
  c.model.tie_embeddings = true;
  Reference<float> r1, r2;
  Config c2 = c;
  c2.parallel.tp = 2;
  REQUIRE(reference_init(r1, c, {}, ParamInit{1, 0.1, 2, true}) == "");
  REQUIRE(reference_init(r2, c2, {1, 1}, ParamInit{1, 0.1, 2, true}) == "");
  std::vector<MicroBatch> mbs = {random_batch(r1.shapes[0].N, 64, 3)};
  RefStats a, b;
  REQUIRE(reference_step(r1, mbs, 1e-2, &a) == "");
  REQUIRE(reference_step(r2, mbs, 1e-2, &b) == "");
  CHECK(b.loss == Approx(a.loss).epsilon(1e-6));
  const FullState g1 = reference_full_state(r1, true), g2 = reference_full_state(r2, true);
  CHECK(max_scaled_diff(g2.at("embed.weight").data, g1.at("embed.weight").data) < kTpBound);
}
