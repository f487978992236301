// test_table.cpp: the model stores exactly the tensor table (model/desc). Every unit pass touches
// only table tensors -- it produces exactly the tensors whose producer it is and reads exactly the
// tensors that list it as a reader -- and the activation store's measured bytes after every pass
// equal a walk of the table alone (what the simulator charges).
#include <catch2/catch.hpp>
#include <map>
#include <set>

#include "model/activations.h"
#include "model/units.h"
#include "model_test_util.h"

using namespace stp;
using namespace stp::test;

namespace {

using Access = std::pair<int, int>;  // (stage, tensor)

// Forwards to an ActivationStore and records which pass touched which tensor, and how.
class RecordingSource final : public TensorSource<float> {
 public:
  explicit RecordingSource(ActivationStore<float>& s) : store_(s) {}
  float* produce(int stage, int mb, int t) override {
    produced[{current_stage, current}].insert({stage, t});
    return store_.produce(stage, mb, t);
  }
  float* read(int stage, int mb, int t) override {
    read_by[{current_stage, current}].insert({stage, t});
    return store_.read(stage, mb, t);
  }
  struct Key {
    int stage;
    UnitRef pass;
    bool operator<(const Key& o) const {
      return std::tie(stage, pass.unit, pass.pass) < std::tie(o.stage, o.pass.unit, o.pass.pass);
    }
  };
  int current_stage = 0;
  UnitRef current;
  std::map<Key, std::set<Access>> produced, read_by;

 private:
  ActivationStore<float>& store_;
};

// Bytes live after each pass, by a walk of the table alone (independent of ActivationStore).
struct TableWalk {
  const ModelDesc& desc;
  std::map<Access, std::vector<UnitRef>> waiting;
  int64_t live = 0, peak = 0;  // a pass's outputs coexist with its inputs: peak before frees
  void produced(int s, int t) {
    waiting[{s, t}] = desc.stages[size_t(s)].tensors[size_t(t)].readers;
    live += 4 * desc.stages[size_t(s)].tensors[size_t(t)].elems;
    peak = std::max(peak, live);
  }
  void released(int s, int t) {
    waiting.erase({s, t});
    live -= 4 * desc.stages[size_t(s)].tensors[size_t(t)].elems;
  }
  void pass_done(int s, UnitRef p) {
    const StageDesc& sd = desc.stages[size_t(s)];
    for (int t = 0; t < int(sd.tensors.size()); ++t) {
      if (sd.tensors[size_t(t)].producer == p && !waiting.count({s, t})) produced(s, t);
    }
    std::vector<int> drop;
    for (auto& [k, w] : waiting) {
      if (k.first != s) continue;
      const TensorDesc& td = sd.tensors[size_t(k.second)];
      const size_t before = w.size();
      w.erase(std::remove(w.begin(), w.end(), p), w.end());
      if ((td.readers.empty() && td.producer == p && !td.sent) || (before > 0 && w.empty()))
        drop.push_back(k.second);
    }
    for (int t : drop) released(s, t);
  }
};

struct Driver {
  const ModelDesc& desc;
  std::vector<ModelShape> shapes, vshapes;
  std::vector<StageParams<float>> params;
  ActivationStore<float> store;
  RecordingSource rec;
  Workspace<float> ws;
  MicroBatch mb;
  TableWalk walk;

  Driver(const Config& cfg, const ModelDesc& d)
      : desc(d),
        store(d),
        rec(store),
        mb(make_batch(cfg, 3)),
        walk{d, {}, 0, 0} {
    shapes.push_back(model_shape(cfg, 0));
    if (cfg.model.vision.enabled) vshapes.push_back(vision_shape(cfg, 0));
    for (const StageDesc& s : d.stages) params.emplace_back(s, 1, 0, ParamInit{});
  }
  void run(int s, UnitRef p) {
    rec.current_stage = s;
    rec.current = p;
    UnitCtx<float> ctx;
    ctx.shape = &shapes[0];
    ctx.vshape = vshapes.empty() ? nullptr : &vshapes[0];
    ctx.pixels = mb.pixels.empty() ? nullptr : mb.pixels.data();
    ctx.stage = &desc.stages[size_t(s)];
    ctx.params = &params[size_t(s)];
    ctx.store = &rec;
    ctx.ws = &ws;
    ctx.tokens = mb.tokens.data();
    ctx.targets = mb.targets.data();
    REQUIRE(unit_run(ctx, p.unit, p.pass) == "");
    REQUIRE(store.pass_done(s, 0, p) == "");
    walk.pass_done(s, p);
    INFO("after stage " << s << " " << unit_name(desc.stages[size_t(s)].units[size_t(p.unit)])
                        << "." << unit_pass_name(p.pass));
    REQUIRE(store.live_bytes() == walk.live);
  }
  // The hand-over a PP send/receive does: copy, then release the sent tensor.
  void hand_over(int s1, int from, int s2, UnitRef to_pass, int to) {
    rec.current_stage = s2;
    rec.current = to_pass;
    const float* src = store.read(s1, 0, from);
    REQUIRE(src != nullptr);
    std::copy(src, src + desc.stages[size_t(s1)].tensors[size_t(from)].elems,
              rec.produce(s2, 0, to));
    REQUIRE(store.release(s1, 0, from) == "");
    walk.produced(s2, to);
    walk.released(s1, from);
  }
  void run_all() {
    const int S = int(desc.stages.size());
    for (int s = 0; s < S; ++s) {
      const StageDesc& sd = desc.stages[size_t(s)];
      if (s > 0) {
        const StageDesc& prev = desc.stages[size_t(s - 1)];
        hand_over(s - 1, prev.find_tensor("x", int(prev.units.size()) - 1), s, {0, UnitPass::F},
                  sd.find_tensor("out", 0));
      }
      for (int u = 0; u < int(sd.units.size()); ++u) run(s, {u, UnitPass::F});
    }
    for (int s = S - 1; s >= 0; --s) {
      const StageDesc& sd = desc.stages[size_t(s)];
      for (int u : sd.backward_order()) {
        if (sd.units[size_t(u)].kind == UnitKind::Out)
          hand_over(s + 1, desc.stages[size_t(s + 1)].find_tensor("g", 0), s, {u, UnitPass::B},
                    sd.find_tensor("g", u));
        run(s, {u, UnitPass::B});
        if (sd.units[size_t(u)].has_w) run(s, {u, UnitPass::W});
      }
    }
  }
};

void check_table(const Config& cfg, const std::vector<int>& split) {
  Config c = cfg;
  c.parallel.pp = int(split.size());
  const ModelDesc desc = model_desc_build(c, 1, split);
  Driver d(cfg, desc);
  d.run_all();
  CHECK(d.store.live_names().empty());
  CHECK(d.store.peak_bytes() == d.walk.peak);
  // Exactly the table: what each pass produced / read equals what the table lists for it.
  for (int s = 0; s < int(desc.stages.size()); ++s) {
    const StageDesc& sd = desc.stages[size_t(s)];
    std::map<RecordingSource::Key, std::set<Access>> want_prod, want_read;
    for (int t = 0; t < int(sd.tensors.size()); ++t) {
      want_prod[{s, sd.tensors[size_t(t)].producer}].insert({s, t});
      for (const UnitRef& r : sd.tensors[size_t(t)].readers) want_read[{s, r}].insert({s, t});
    }
    for (int u = 0; u < int(sd.units.size()); ++u)
      for (UnitPass p : {UnitPass::F, UnitPass::B, UnitPass::W}) {
        const RecordingSource::Key k{s, {u, p}};
        INFO("stage " << s << " " << unit_name(sd.units[size_t(u)]) << "." << unit_pass_name(p));
        CHECK(d.rec.produced[k] == want_prod[k]);
        CHECK(d.rec.read_by[k] == want_read[k]);
      }
  }
}

}  // namespace

TEST_CASE("units produce and read exactly the tensor table, bytes match a table walk", "[table]") {
  // Fails if a unit keeps a tensor the table does not list (or skips one it lists), reads a
  // tensor it is not a listed reader of (the lowering would have freed it), or the store's byte
  // count drifts from elems * 4 of the live table tensors.
  for (const char* arch : {"gpt", "llama", "qwen2"}) {
    INFO(arch);
    check_table(tiny_config(arch), {2});
    check_table(tiny_config(arch), {1, 1});
    check_table(tiny_config(arch), {0, 2});  // a stage with no layers: In feeds Out directly
  }
  INFO("vlm");
  check_table(tiny_vlm_config("qwen2"), {2});
  check_table(tiny_vlm_config("gpt"), {1, 1});
  Config spread = tiny_vlm_config("llama");
  spread.model.vision.placement = "spread";
  spread.model.vision.spread_stages = 2;
  check_table(spread, {0, 2});  // stage 0 sends the vision stream, stage 1 merges
}

TEST_CASE("activation store: a write past a tensor's elements is reported by name", "[table]") {
  // Fails if the sentinel guard is missing or the message does not name the tensor.
  Config cfg = tiny_config("gpt");
  const ModelDesc desc = model_desc_build(cfg, 1, {2});
  ActivationStore<float> st(desc);
  const int t = desc.stages[0].find_tensor("qkv", 1);
  float* p = st.produce(0, 0, t);
  CHECK(st.live_bytes() == 4 * desc.stages[0].tensors[size_t(t)].elems);
  p[desc.stages[0].tensors[size_t(t)].elems] = 1.0f;
  const std::string e = st.release(0, 0, t);
  CHECK(e.find("attn0.qkv") != std::string::npos);
  CHECK(e.find("wrote past") != std::string::npos);
  CHECK(st.live_bytes() == 0);
}

TEST_CASE("unit_run: a tensor that is not live is an error naming it", "[table]") {
  // Fails if a unit reads freed memory silently instead of reporting the missing tensor.
  Config cfg = tiny_config("llama");
  const ModelDesc desc = model_desc_build(cfg, 1, {2});
  ActivationStore<float> st(desc);
  StageParams<float> params(desc.stages[0], 1, 0, ParamInit{});
  Workspace<float> ws;
  const ModelShape shape = model_shape(cfg, 0);
  UnitCtx<float> ctx;
  ctx.shape = &shape;
  ctx.stage = &desc.stages[0];
  ctx.params = &params;
  ctx.store = &st;
  ctx.ws = &ws;
  const std::string e = unit_run(ctx, 1, UnitPass::F);  // Attn0.F without In.out
  CHECK(e.find("in.out") != std::string::npos);
  CHECK(e.find("attn0.F") != std::string::npos);
}
