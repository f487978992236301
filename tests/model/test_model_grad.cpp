// test_model_grad.cpp: finite-difference checks in double precision of every unit (through the
// unit cut: residual gradient g plus norm-path dx) and of whole models, for each architecture
// variant (LayerNorm/RMSNorm, GELU/SwiGLU, learned/RoPE, MHA/GQA, biases, tied embeddings).
#include <catch2/catch.hpp>

#include "model/activations.h"
#include "model/units.h"
#include "model_test_util.h"

using namespace stp;
using namespace stp::test;
using Vec = std::vector<double>;

namespace {

// One single-stage, one-layer model (units In, Attn0, Mlp0, Head, Loss) on one TP rank, whose
// unit passes the test runs by hand; tensors are never freed.
struct UnitHarness {
  Config cfg;
  ModelDesc desc;
  ModelShape shape;
  StageParams<double> params;
  ActivationStore<double> store;
  Workspace<double> ws;
  MicroBatch mb;

  explicit UnitHarness(Config c)
      : cfg(std::move(c)),
        desc(make_desc(cfg)),
        shape(model_shape(cfg, 0)),
        params(desc.stages[0], 1, 0, ParamInit{7, cfg.model.init_std, 1, true}),
        store(desc),
        mb(random_batch(shape.N, cfg.model.vocab, 5)) {}

  static ModelDesc make_desc(Config& c) {
    c.model.layers = 1;
    return model_desc_build(c, 1, {1});
  }
  const StageDesc& stage() const { return desc.stages[0]; }
  int unit(UnitKind k) const {
    for (size_t i = 0; i < stage().units.size(); ++i)
      if (stage().units[i].kind == k) return int(i);
    return -1;
  }
  double* tensor(const char* field, int u) {
    return store.produce(0, 0, stage().find_tensor(field, u));
  }
  void set(const char* field, int u, const Vec& v) {
    std::copy(v.begin(), v.end(), tensor(field, u));
  }
  Vec get(const char* field, int u) {
    const double* p = tensor(field, u);
    return Vec(p, p + stage().tensors[size_t(stage().find_tensor(field, u))].elems);
  }
  void run(int u, UnitPass pass, bool acc = false, double* loss = nullptr) {
    UnitCtx<double> ctx;
    ctx.shape = &shape;
    ctx.stage = &stage();
    ctx.params = &params;
    ctx.store = &store;
    ctx.ws = &ws;
    ctx.tokens = mb.tokens.data();
    ctx.targets = mb.targets.data();
    ctx.accumulate = acc;
    const std::string e = unit_run(ctx, u, pass);
    REQUIRE(e == "");
    if (loss) *loss = ctx.loss_sum;
  }
};

// Checks every parameter gradient of unit u (left in params' grads) against FD of loss().
void check_unit_params(UnitHarness& h, int u, const std::function<double()>& loss) {
  for (Param<double>& p : h.params.all()) {
    if (p.desc.unit != u) continue;
    INFO("parameter " << p.desc.name);
    Vec grad = p.grad;
    CHECK(fd_max_rel_err(p.value, grad, loss, 24) < 1e-6);
  }
}

// Attn or Mlp: L = <x + partial, R> (the residual stream after the unit). The previous backward
// unit's g and dx are seeded with R1 and R - R1; the input gradient is the unit's g + dx.
void check_layer_unit(const std::string& arch, UnitKind kind) {
  UnitHarness h(tiny_config(arch));
  const int u = h.unit(kind), prev = u - 1;
  const int64_t NC = h.shape.N * h.shape.C;
  Vec in_out = random_vec(NC, 1), in_x = random_vec(NC, 2), R = random_vec(NC, 3),
      R1 = random_vec(NC, 4);
  const bool from_in = kind == UnitKind::Attn;
  auto forward = [&] {
    h.set(from_in ? "out" : "partial", prev, in_out);
    if (!from_in) h.set("x", prev, in_x);
    h.run(u, UnitPass::F);
    const Vec x = h.get("x", u), part = h.get("partial", u);
    double L = 0;
    for (int64_t i = 0; i < NC; ++i) L += (x[i] + part[i]) * R[i];
    return L;
  };
  forward();
  // The next backward unit in backward order (Mlp for Attn, Head for Mlp) hands over g and dx.
  const int next = u + 1;
  Vec R2(NC);
  for (int64_t i = 0; i < NC; ++i) R2[i] = R[i] - R1[i];
  if (kind == UnitKind::Attn) h.set("g", next, R1);
  h.set("dx", next, kind == UnitKind::Attn ? R2 : R);
  h.run(u, UnitPass::B);
  h.run(u, UnitPass::W);
  const Vec g = h.get("g", u), dx = h.get("dx", u);
  Vec din(NC);
  for (int64_t i = 0; i < NC; ++i) din[i] = g[i] + dx[i];
  CHECK(fd_max_rel_err(in_out, din, forward, 48) < 1e-6);
  if (!from_in) CHECK(fd_max_rel_err(in_x, din, forward, 48) < 1e-6);
  check_unit_params(h, u, forward);
}

}  // namespace

TEST_CASE("unit Attn: F/B/W match FD through the unit cut (g + dx) for every variant", "[grad]") {
  // Fails if the residual add, norm, qkv GEMM/bias, RoPE, attention, out projection (or its
  // bias), or the B/W split of any of them is wrong.
  for (const char* arch : {"gpt", "llama", "qwen2"}) {
    INFO(arch);
    check_layer_unit(arch, UnitKind::Attn);
  }
}

TEST_CASE("unit Mlp: F/B/W match FD through the unit cut (g + dx) for every variant", "[grad]") {
  // Fails if the residual add of (x, partial), norm, fc1, GELU/SwiGLU, fc2 or a gradient is wrong.
  for (const char* arch : {"gpt", "llama", "qwen2"}) {
    INFO(arch);
    check_layer_unit(arch, UnitKind::Mlp);
  }
}

TEST_CASE("unit Head + Loss: summed token loss and gradients match FD", "[grad]") {
  // Fails if the final norm, the logits GEMM, the loss pieces, softmax - onehot or the head's
  // weight gradients are wrong.
  for (const char* arch : {"gpt", "llama"}) {
    INFO(arch);
    UnitHarness h(tiny_config(arch));
    const int hu = h.unit(UnitKind::Head), lo = h.unit(UnitKind::Loss), prev = hu - 1;
    const int64_t NC = h.shape.N * h.shape.C;
    Vec in_out = random_vec(NC, 11), in_x = random_vec(NC, 12);
    auto forward = [&] {
      h.set("partial", prev, in_out);
      h.set("x", prev, in_x);
      h.run(hu, UnitPass::F);
      h.run(lo, UnitPass::F);
      double L = 0;
      UnitCtx<double> ctx;
      ctx.shape = &h.shape;
      ctx.stage = &h.stage();
      ctx.store = &h.store;
      ctx.params = &h.params;
      ctx.ws = &h.ws;
      ctx.targets = h.mb.targets.data();
      REQUIRE(unit_loss_sum(ctx, &L) == "");
      return L;
    };
    const double L0 = forward();
    double Lb = 0;
    h.run(hu, UnitPass::B, false, &Lb);
    CHECK(Lb == Approx(L0).epsilon(1e-14));
    h.run(hu, UnitPass::W);
    const Vec dx = h.get("dx", hu);
    CHECK(fd_max_rel_err(in_out, dx, forward, 48) < 1e-6);
    CHECK(fd_max_rel_err(in_x, dx, forward, 48) < 1e-6);
    check_unit_params(h, hu, forward);
  }
}

TEST_CASE("unit In: embedding (and positions) gradients match FD", "[grad]") {
  // Fails if the lookup, the position embedding, the residual gradient In.B forms from the first
  // layer's g and dx, or the scatter backward is wrong.
  UnitHarness h(tiny_config("gpt"));
  const int in = h.unit(UnitKind::In), a = h.unit(UnitKind::Attn);
  const int64_t NC = h.shape.N * h.shape.C;
  Vec R = random_vec(NC, 21), R1 = random_vec(NC, 22), R2(NC);
  for (int64_t i = 0; i < NC; ++i) R2[i] = R[i] - R1[i];
  auto forward = [&] {
    h.run(in, UnitPass::F);
    return dot(R, h.tensor("out", in));
  };
  forward();
  h.set("g", a, R1);
  h.set("dx", a, R2);
  h.run(in, UnitPass::B);
  h.run(in, UnitPass::W);
  check_unit_params(h, in, forward);
}

namespace {

// Independent loss: mean cross-entropy over the targets that are not -1 of all micro-batches,
// from the full logits.
double loss_from_logits(Reference<double>& ref, const std::vector<MicroBatch>& mbs) {
  double L = 0;
  int64_t count = 0;
  const int V = ref.cfg.model.vocab;
  for (const MicroBatch& mb : mbs) {
    Vec logits;
    REQUIRE(reference_logits(ref, mb, &logits) == "");
    for (size_t n = 0; n < mb.tokens.size(); ++n) {
      if (mb.targets[n] < 0) continue;
      ++count;
      double m = -1e300, z = 0;
      for (int v = 0; v < V; ++v) m = std::max(m, logits[n * V + v]);
      for (int v = 0; v < V; ++v) z += std::exp(logits[n * V + v] - m);
      L += std::log(z) + m - logits[n * V + size_t(mb.targets[n])];
    }
  }
  return L / double(count);
}

void check_model(Config cfg, std::vector<int> split) {
  Reference<double> ref;
  REQUIRE(reference_init(ref, cfg, split,
                         ParamInit{3, cfg.model.init_std, cfg.model.layers, true}) == "");
  std::vector<MicroBatch> mbs = {make_batch(cfg, 1), make_batch(cfg, 2)};
  RefStats st;
  REQUIRE(reference_forward_backward(ref, mbs, &st) == "");
  CHECK(st.loss == Approx(loss_from_logits(ref, mbs)).epsilon(1e-12));
  auto loss = [&] { return loss_from_logits(ref, mbs); };
  for (size_t s = 0; s < ref.params[0].size(); ++s)
    for (Param<double>& p : ref.params[0][s].all()) {
      INFO("stage " << s << " parameter " << p.desc.name);
      Vec grad = p.grad;
      CHECK(fd_max_rel_err(p.value, grad, loss, 12) < 1e-6);
    }
}

}  // namespace

TEST_CASE("whole model: every parameter gradient matches FD of an independent loss", "[grad]") {
  // Fails if any unit, the hand-over between units or stages, the micro-batch accumulation, the
  // loss scale, or (tied) the sum of the embedding's two uses is wrong. The loss itself is
  // recomputed from the logits by a separate cross-entropy.
  SECTION("gpt, one stage") { check_model(tiny_config("gpt"), {}); }
  SECTION("llama, two stages") { check_model(tiny_config("llama"), {1, 1}); }
  SECTION("qwen2, one stage") { check_model(tiny_config("qwen2"), {}); }
  SECTION("gpt, tied embeddings, one stage") {
    Config c = tiny_config("gpt");
    c.model.tie_embeddings = true;
    check_model(c, {});
  }
}

TEST_CASE("whole VLM: every vision, merger and LLM gradient matches FD of an independent loss",
          "[grad][vlm]") {
  // The gradient checks of the vision units: the patch embedding, the bidirectional 2-D-rotary
  // vision blocks, the merger (LayerNorm, the 2x2 window reshape, fc1/GELU/fc2) and its splice
  // into the text embedding are all upstream of the loss, which is recomputed from the logits
  // over the text targets only. Fails if any of them, the visual-row gather/scatter, the
  // exclusion of the visual rows from the embedding gradient, or the -1 targets is wrong.
  SECTION("qwen2 LLM, tower in front, one stage") { check_model(tiny_vlm_config("qwen2"), {}); }
  SECTION("gpt LLM (learned positions), tower in front of two stages") {
    check_model(tiny_vlm_config("gpt"), {1, 1});
  }
  SECTION("tower spread over two stages (stage 0: vision only)") {
    Config c = tiny_vlm_config("llama");
    c.model.vision.placement = "spread";
    c.model.vision.spread_stages = 2;
    check_model(c, {0, 2});
  }
  SECTION("two images per sample, tied embeddings") {
    Config c = tiny_vlm_config("gpt");
    c.model.seq_len = 12;
    c.model.vision.images_per_sample = 2;
    c.model.tie_embeddings = true;
    check_model(c, {});
  }
}
