// test_simulator.cpp: the discrete-event simulator, its cost model and memory accounting
// (scheduler/simulator.h, scheduler/cost.h).
//
// References are independent of the simulator: the paper's closed forms (6M+P-1, 6M+3(P-1)), a
// slot-level run of the pipeline program written here, slopes counted from the model description,
// and timelines / memory peaks computed by hand in the comments.
#include <catch2/catch.hpp>

#include <algorithm>
#include <ctime>
#include <map>
#include <tuple>

#include <nlohmann/json.hpp>

#include "tests/scheduler/sched_test_util.h"
#include "scheduler/cost.h"
#include "scheduler/lower.h"
#include "scheduler/schedules.h"
#include "scheduler/simulator.h"

using namespace stp;
using stp_test::tiny_gpt_schedule;

namespace {

// A tiny GPT split into `layers_per_stage` layers on each of pp*chunks virtual stages.
Config tiny(const std::string& sched, int pp, int M, int tp = 2, int layers_per_stage = 1) {
  return tiny_gpt_schedule(sched, pp, M, tp, layers_per_stage);
}

SimResult run_unit(const Config& c, double t_ar = 0) { return stp_test::simulate_unit(c, t_ar); }

// Independent reference: a slot-level run of the pipeline program with unit costs and free,
// unordered communication. A pass is a list of slots: F one per unit with an F (1/nF each), B one
// per unit with a B (1/nB), W one per unit with a W (1/nW), BW the B slot plus that unit's W share;
// a braided step alternates the two passes' slots, the forward first. The first slot of a pass
// waits for its input: F(s,m) for F(s-1,m); B/BW(s,m) for B(s+1,m) (on the last stage for its own
// F); W for its B. A pass is done when its last slot ends.
struct SlotRun {
  const PipelineProgram& prog;
  const ModelDesc& desc;
  std::map<std::tuple<int, int, int>, double> done;  // (0 F | 1 B | 2 W, stage, mb) -> end

  std::vector<double> slots(const Pass& p) const {
    const StageDesc& s = desc.stages[p.stage];
    int n[3] = {0, 0, 0};
    for (const UnitDesc& u : s.units) n[0] += u.has_f, n[1] += u.has_b, n[2] += u.has_w;
    std::vector<double> out;
    for (int i = int(s.units.size()) - 1; i >= 0; --i) {
      const UnitDesc& u = s.units[i];
      if (p.kind == PassKind::B && u.has_b) out.push_back(1.0 / n[1]);
      if (p.kind == PassKind::W && u.has_w) out.push_back(1.0 / n[2]);
      if (p.kind == PassKind::BW && u.has_b) out.push_back(1.0 / n[1] + (u.has_w ? 1.0 / n[2] : 0.0));
    }
    if (p.kind == PassKind::F) out.assign(n[0], 1.0 / n[0]);
    return out;
  }
  // When the input of pass p is ready, or -1 if not yet known.
  double input(const Pass& p) const {
    auto get = [&](int k, int s, int m) {
      auto it = done.find({k, s, m});
      return it == done.end() ? -1.0 : it->second;
    };
    if (p.kind == PassKind::F) return p.stage == 0 ? 0.0 : get(0, p.stage - 1, p.mb);
    if (p.kind == PassKind::W) return get(1, p.stage, p.mb);
    return p.stage + 1 == prog.stages() ? get(0, p.stage, p.mb) : get(1, p.stage + 1, p.mb);
  }
  static int key_kind(PassKind k) { return k == PassKind::F ? 0 : k == PassKind::W ? 2 : 1; }

  double makespan() {
    const int P = prog.pp;
    std::vector<size_t> step(P, 0), slot(P, 0);
    std::vector<double> t(P, 0);
    for (bool progress = true; progress;) {
      progress = false;
      for (int r = 0; r < P; ++r)
        while (step[r] < prog.ranks[r].size() && run_slot(prog.ranks[r][step[r]], slot[r], t[r])) {
          progress = true;
          if (slot[r] == 0) ++step[r];
        }
    }
    double end = 0;
    for (int r = 0; r < P; ++r) {
      REQUIRE(step[r] == prog.ranks[r].size());  // the reference itself must not deadlock
      end = std::max(end, t[r]);
    }
    return end;
  }
  // Runs slot `j` of step `st` (interleaved order); false when its input is not ready yet.
  bool run_slot(const Step& st, size_t& j, double& t) {
    const std::vector<double> a = slots(st.a), b = st.braided ? slots(st.b) : std::vector<double>{};
    std::vector<std::pair<int, size_t>> order;  // (pass 0|1, index)
    for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
      if (i < a.size()) order.push_back({0, i});
      if (i < b.size()) order.push_back({1, i});
    }
    const auto [which, i] = order[j];
    const Pass& p = which == 0 ? st.a : st.b;
    const std::vector<double>& sl = which == 0 ? a : b;
    if (i == 0) {
      const double in = input(p);
      if (in < 0) return false;
      t = std::max(t, in);
    }
    t += sl[i];
    if (i + 1 == sl.size()) done[{key_kind(p.kind), p.stage, p.mb}] = t;
    j = (j + 1) % order.size();
    return true;
  }
};

double slot_makespan(const SimResult& r) { return SlotRun{r.program.pipeline, r.desc, {}}.makespan(); }

// Collectives after F and after B over the stages a rank holds.
std::pair<int, int> collectives_of_rank(const SimResult& r, int rank) {
  int f = 0, b = 0;
  const PipelineProgram& p = r.program.pipeline;
  for (int s = 0; s < p.stages(); ++s) {
    if (stage_rank(p.placement, p.pp, s) != rank) continue;
    for (const UnitDesc& u : r.desc.stages[s].units) {
      f += u.coll[0].kind != CollKind::None;
      b += u.coll[1].kind != CollKind::None;
    }
  }
  return {f, b};
}

}  // namespace

// Fails if the V schedules lose a unit anywhere: PAPER.md says STP and ZB-V take 6M + P - 1 with
// unit costs and free communication (the last rank waits P - 1 units for its first forward), and
// interleaved 1F1B with 2 chunks 6M + 3(P - 1) (P dividing M).
TEST_CASE("unit costs: STP and ZB-V take 6M+P-1, interleaved 1F1B 6M+3(P-1)", "[simulator]") {
  for (int P : {2, 3, 4}) {
    for (int M : {3 * P - 1, 3 * P, 4 * P + 1, 6 * P}) {
      for (const char* s : {"stp", "zb-v"}) {
        INFO(s << " P=" << P << " M=" << M);
        CHECK(run_unit(tiny(s, P, M)).iteration_time == Approx(6 * M + P - 1).epsilon(1e-12));
      }
    }
    for (int M : {P, 2 * P, 4 * P}) {
      INFO("1f1b-i P=" << P << " M=" << M);
      CHECK(run_unit(tiny("1f1b-i", P, M)).iteration_time == Approx(6 * M + 3 * (P - 1)).epsilon(1e-12));
    }
  }
}

// Fails if the unit-level simulation of the other schedules differs from the slot-level reference
// above (e.g. a lost dependency, a PP FIFO that blocks, a braid lowered in another order). For the
// unbraided ones it is also the known closed form: GPipe and 1F1B 3M+3(P-1), ZB-H1 3M+P-1.
// DualPipeV comes out *below* a step-level count, since a braided forward's output is ready
// before its step ends; the slot-level reference sees the same.
TEST_CASE("unit costs: other schedules equal an independent slot-level run", "[simulator]") {
  for (int P : {2, 3, 4}) {
    for (int M : {3 * P, 3 * P + 1, 4 * P + 2}) {
      for (const char* s : {"gpipe", "1f1b", "zb-h1", "dualpipe-v", "stp", "zb-v"}) {
        INFO(s << " P=" << P << " M=" << M);
        const SimResult r = run_unit(tiny(s, P, M, 2, 2));
        CHECK(r.iteration_time == Approx(slot_makespan(r)).epsilon(1e-12));
        if (std::string(s) == "gpipe" || std::string(s) == "1f1b") CHECK(r.iteration_time == Approx(3 * M + 3 * (P - 1)));
        if (std::string(s) == "zb-h1") CHECK(r.iteration_time == Approx(3 * M + P - 1));
      }
    }
  }
}

// The PAPER.md table: exposed TP communication grows with m as 4m T_AR (ZB-V), 2m T_AR
// (interleaved 1F1B) and not at all for STP, with one collective per chunk pass. Here a chunk pass
// has one collective per unit that ends in one (2 per layer, plus the embedding on stage 0 and
// head/loss on the last stage), so the slopes per rank are T_AR times:
//   ZB-V    the collectives of F and B of both its chunks (W is deferred, nothing hides them);
//   1F1B-i  the collectives of F of both chunks (each BW hides B_u's collective behind W_u);
//   STP     0 (every steady-state block is braided; the O(p) unbraided warm-up is constant in m);
//   DualPipeV 0 as well (its steady state braids F with a full backward).
// Fails if a lowering rule exposes a collective that the method hides, or hides one it cannot.
TEST_CASE("exposed TP communication: slope in M per rank", "[simulator]") {
  const double t_ar = 0.05;  // below the smallest unit cost (1/7), so a slot of the other pass hides it
  const int P = 4, M1 = 4 * P, M2 = 6 * P;
  for (const char* s : {"zb-v", "1f1b-i", "stp", "dualpipe-v"}) {
    const SimResult a = run_unit(tiny(s, P, M1, 2, 2), t_ar), b = run_unit(tiny(s, P, M2, 2, 2), t_ar);
    for (int r = 0; r < P; ++r) {
      INFO(s << " rank " << r);
      const double slope = (b.ranks[r].tp_exposed - a.ranks[r].tp_exposed) / (M2 - M1);
      const auto [nf, nb] = collectives_of_rank(a, r);
      double want = 0;
      if (std::string(s) == "zb-v") want = t_ar * (nf + nb);
      if (std::string(s) == "1f1b-i") want = t_ar * nf;
      CHECK(slope == Approx(want).margin(1e-9));
    }
  }
}

// Hand-computed timeline (fails if "exposed" is charged to the wrong cause or an op costs the
// wrong amount): 1F1B, P = 2, M = 1, tp = 2, one layer per stage, unit costs, T_AR = 0.1.
//   rank 0 (stage 0: In Attn Mlp Out; F 1/4 each, In/Attn/Mlp end in an all-reduce):
//     In .25, wait .1, Attn .25, wait .1, Mlp .25, wait .1, Out .25 -> F ends 1.3 (tp 0.3).
//   rank 1 (stage 1: In Attn Mlp Head Loss; F 1/5 each): waits for the activation until 1.3,
//     In 1.5, Attn 1.7 +.1, Mlp 2.0 +.1, Head 2.3 +.1 (AR max), Loss 2.6; its AR is waited by
//     Head.B: 2.7. BW: B 1/4 per unit (Head Mlp Attn In), W 1/3 (Head Mlp Attn); each B_u's
//     all-reduce hides behind W_u: Head.B 2.95, W 3.2833, Mlp.B 3.5333, W 3.8667, Attn.B
//     4.1167, W 4.45, In.B 4.7 -> gradient sent. tp_exposed 0.4, busy 3.
//   rank 0 BW (B: Out Mlp Attn In 1/4, W: Mlp Attn In 1/3): 4.7 + 1 + 1 = 6.7, nothing exposed.
//   Iteration 6.7; pp_bubble = 6.7 - busy - tp: rank 0 3.4 (the gradient wait 1.3..4.7),
//   rank 1 3.3 (1.3 before its first op, 2.0 after its last).
TEST_CASE("exposed time is charged to what the compute stream waited for", "[simulator]") {
  Config c = tiny("1f1b", 2, 1, 2, 1);
  const SimResult r = run_unit(c, 0.1);
  CHECK(r.iteration_time == Approx(6.7));
  REQUIRE(r.ranks.size() == 2);
  CHECK(r.ranks[0].busy == Approx(3.0));
  CHECK(r.ranks[0].tp_exposed == Approx(0.3));
  CHECK(r.ranks[0].pp_bubble == Approx(3.4));
  CHECK(r.ranks[1].busy == Approx(3.0));
  CHECK(r.ranks[1].tp_exposed == Approx(0.4));
  CHECK(r.ranks[1].pp_bubble == Approx(3.3));
  CHECK(r.ranks[1].finish == Approx(4.7));
  CHECK(r.tp_exposed == Approx(0.35));
  CHECK(r.pp_bubble == Approx(3.35));
  CHECK(r.pp_bubble_fraction == Approx(3.35 / 6.7));
}

namespace {

// A hand-made one-stage model for the memory test: In{F,B} and X{F,B,W}; element counts chosen so
// that every partial sum is recognisable.
ModelDesc memory_desc() {
  StageDesc s;
  s.first = s.last = true;
  s.units.resize(2);
  s.units[0].kind = UnitKind::In;
  s.units[0].has_f = s.units[0].has_b = true;
  s.units[1].kind = UnitKind::Attn;
  s.units[1].layer = 0;
  s.units[1].has_f = s.units[1].has_b = s.units[1].has_w = true;
  auto tensor = [&](const char* name, int64_t elems, UnitRef producer, std::vector<UnitRef> readers) {
    s.tensors.push_back(TensorDesc{name, elems, producer, std::move(readers), false});
  };
  const UnitPass F = UnitPass::F, B = UnitPass::B, W = UnitPass::W;
  tensor("in.out", 100, {0, F}, {{1, F}});
  tensor("attn0.act", 1000, {1, F}, {{1, B}, {1, W}});
  tensor("attn0.tmp", 10, {1, F}, {});
  tensor("attn0.g", 200, {1, B}, {{1, W}});
  tensor("attn0.dx", 20, {1, B}, {{0, B}});
  tensor("in.g", 50, {0, B}, {});
  ParamDesc p;
  p.name = "w";
  p.shape = {64};
  p.unit = 1;
  s.params.push_back(p);
  ModelDesc d;
  d.stages.push_back(s);
  return d;
}

}  // namespace

// GPipe, M = 2, unit costs (F: 1/2 per unit, B: 1/2, W: 1). Activation elements over time:
//   In.F(0) +100 | X.F(0) +1010 = 1110 | free in.out, tmp -> 1000 | In.F(1) 1100 | X.F(1) 2110 |
//   free -> 2000 | X.B(0) +200 +20 = 2220 (peak) | X.W(0), free act, g -> 1020 | In.B(0) +50,
//   then free dx, in.g -> 1000 | mb 1 the same from 1000 -> 1220 peak of the tail.
// Peak 2220 elements: fp32 8880 bytes + 64 params * 16 = 9904; bf16 4440 + 64 * 18 = 5592.
// Fails if a tensor is charged at the wrong time, freed late or early, or the state bytes differ.
TEST_CASE("memory: hand-computed peak of a tiny program", "[simulator][memory]") {
  const ModelDesc d = memory_desc();
  PipelineProgram prog;
  prog.schedule = "gpipe";
  prog.microbatches = 2;
  prog.ranks = {{step_single(PassKind::F, 0, 0), step_single(PassKind::F, 0, 1), step_single(PassKind::BW, 0, 0),
                 step_single(PassKind::BW, 0, 1)}};
  const LowerResult lr = lower(prog, d);
  INFO(lr.error);
  REQUIRE(lr.ok());
  for (double act_bytes : {4.0, 2.0}) {
    CostModel cm = cost_model_unit(d, 1, 0.0);
    cm.act_bytes = act_bytes;
    cm.state_bytes_per_param = act_bytes == 4.0 ? 16 : 18;
    const EngineResult e = simulate_program(*lr.program, d, cm);
    REQUIRE(e.ok());
    CHECK(e.makespan == Approx(2 * 1 + 2 * 2));
    CHECK(e.ranks[0].activation_peak_bytes == int64_t(2220 * act_bytes));
    CHECK(rank_static_memory(d, prog, 0, cm).state_bytes == (act_bytes == 4.0 ? 64 * 16 : 64 * 18));
  }
}

// Fails if activations are not released by the lowered frees: 1F1B keeps at most P micro-batches
// in flight, so its peak does not grow with M, while GPipe holds all M forwards.
TEST_CASE("memory: 1F1B peak is bounded in M, GPipe's grows", "[simulator][memory]") {
  auto act = [](const char* s, int M) { return run_unit(tiny(s, 2, M, 2, 2)).ranks[0].activation_peak_bytes; };
  CHECK(act("1f1b", 8) == act("1f1b", 16));
  CHECK(act("gpipe", 16) > act("gpipe", 8));
  CHECK(act("gpipe", 8) > act("1f1b", 8));
}

// Fails if peak_mem_bytes is not state + activations + side buffer, or if the side buffer is
// charged without deterministic accumulation.
TEST_CASE("memory: peak = model state + activation peak + side buffer", "[simulator][memory]") {
  Config c = tiny("stp", 4, 12, 2, 2);
  const SimResult det = run_unit(c);
  c.train.deterministic = false;
  const SimResult fast = run_unit(c);
  for (const RankReport& k : det.ranks) {
    CHECK(k.peak_mem_bytes == k.state_bytes + k.activation_peak_bytes + k.side_buffer_bytes);
    CHECK(k.state_bytes > 0);
  }
  int64_t side = 0;
  for (size_t r = 0; r < det.ranks.size(); ++r) {
    side += det.ranks[r].side_buffer_bytes;
    CHECK(fast.ranks[r].side_buffer_bytes == 0);
    CHECK(fast.ranks[r].peak_mem_bytes == det.ranks[r].peak_mem_bytes - det.ranks[r].side_buffer_bytes);
  }
  CHECK(side > 0);  // STP defers W's, so some contributions wait
}

// PAPER.md's price of STP: more activation memory than ZB-V (3p vs 2p M_a in its table). Fails if
// deferred W's or braided forwards stop holding their activations (or ZB-V starts holding more).
TEST_CASE("memory: STP holds more activations than ZB-V", "[simulator][memory]") {
  for (int P : {2, 4}) {
    auto peak = [&](const char* s) {
      int64_t m = 0;
      for (const RankReport& k : run_unit(tiny(s, P, 4 * P, 2, 2)).ranks) m = std::max(m, k.activation_peak_bytes);
      return double(m);
    };
    INFO("P=" << P);
    CHECK(peak("stp") > 1.25 * peak("zb-v"));
  }
}

// Fails if a rank above the device memory is reported as fitting, or one below as not.
TEST_CASE("memory: ranks above the device memory are flagged", "[simulator][memory]") {
  Config c = tiny("gpipe", 2, 8);
  const SimResult ok = run_unit(c);
  c.cluster.gpu.hbm_gb = double(ok.ranks[0].peak_mem_bytes - 1) / 1e9;  // rank 0 (all forwards first) no longer fits
  const SimResult tight = run_unit(c);
  CHECK(ok.ranks[0].fits);
  CHECK_FALSE(tight.ranks[0].fits);
  CHECK(tight.ranks[1].fits == (tight.ranks[1].peak_mem_bytes <= tight.device_mem_bytes));
  CHECK(nlohmann::json::parse(sim_result_to_json(tight))["fits"] == false);
}

// Flops mode: the op spans equal the cost formulas of cost.h computed here by hand from the model
// description and the cluster numbers (fails if a formula, a unit conversion, the intra/inter
// node choice or the bf16 byte size is wrong).
TEST_CASE("flops costs: unit pass, TP all-reduce and PP send times", "[simulator][cost]") {
  Config c = tiny("1f1b", 2, 2, 4, 1);
  c.cluster.gpus_per_node = 2;  // tp = 4 spans two nodes: inter-node link
  c.cluster.gpu.peak_tflops = 100;
  c.cluster.compute_efficiency = 0.5;
  c.cluster.gpu.hbm_bw_gbs = 1000;
  c.cluster.gpu.intra_bw_gbs = 200;
  c.cluster.gpu.inter_bw_gbs = 25;
  c.cluster.gpu.intra_latency_us = 3;
  c.cluster.gpu.inter_latency_us = 7;
  c.train.precision = "bf16";
  const SimResult r = simulate(c, SimOptions{});
  REQUIRE(r.ok());
  const UnitProgram& up = r.program.ranks[0];
  bool saw_compute = false, saw_ar = false, saw_send = false;
  for (size_t i = 0; i < up.ops.size(); ++i) {
    const Op& o = up.ops[i];
    const double dur = r.times[0][i].end - r.times[0][i].start;
    if (o.kind == OpKind::Compute && o.unit.pass == UnitPass::F && r.desc.stages[0].units[o.unit.unit].kind == UnitKind::Attn) {
      const UnitDesc& u = r.desc.stages[0].units[o.unit.unit];
      CHECK(dur == Approx(u.flops[0] / (100e12 * 0.5) + u.bytes[0] * 0.5 / 1000e9));
      saw_compute = true;
    }
    if (o.kind == OpKind::CommStart && o.coll == CollKind::AllReduceSum && o.stage >= 0) {
      CHECK(dur == Approx(2.0 * 3 / 4 * o.elems * 2 / 25e9 + 7e-6));
      saw_ar = true;
    }
    if (o.kind == OpKind::Send) {  // pipeline ranks 0 and 1 are global ranks 0 and 4: nodes 0 and 2
      CHECK(dur == Approx(double(o.elems) * 2 / 25e9 + 7e-6));
      saw_send = true;
    }
  }
  CHECK((saw_compute && saw_ar && saw_send));
  const double tokens = 2.0 * 1 * 16;
  CHECK(r.tokens_per_s == Approx(tokens / r.iteration_time));
  CHECK(r.tflops_per_gpu == Approx(3 * r.desc.flops_per_token_fwd * tokens / r.iteration_time / 8 / 1e12));
  CHECK(r.mfu == Approx(r.tflops_per_gpu / 100));
}

// Fails if overlap slowdown is ignored, or applied to compute that no collective overlaps.
TEST_CASE("flops costs: compute overlapped by a collective runs slower", "[simulator][cost]") {
  Config c = tiny("stp", 2, 5, 2, 2);
  c.cluster.gpu.intra_bw_gbs = 0.5;  // slow collectives: they overlap whole units
  SimResult base = simulate(c, SimOptions{});
  c.cluster.overlap_slowdown = 0.5;
  SimResult slow = simulate(c, SimOptions{});
  REQUIRE((base.ok() && slow.ok()));
  CHECK(slow.ranks[0].busy > base.ranks[0].busy);
  // Each compute op of `slow` takes its nominal time plus half of the time it overlaps a
  // collective of its rank.
  const UnitProgram& up = slow.program.ranks[0];
  std::vector<std::pair<double, double>> colls;
  for (size_t i = 0; i < up.ops.size(); ++i)
    if (up.ops[i].kind == OpKind::CommStart) colls.push_back({slow.times[0][i].start, slow.times[0][i].end});
  for (size_t i = 0; i < up.ops.size(); ++i) {
    if (up.ops[i].kind != OpKind::Compute) continue;
    const OpTime& t = slow.times[0][i];
    const OpTime& t0 = base.times[0][i];
    double overlap = 0;
    for (const auto& [a, b] : colls) overlap += std::max(0.0, std::min(b, t.end) - std::max(a, t.start));
    CHECK((t.end - t.start) == Approx((t0.end - t0.start) + overlap / 3).epsilon(1e-9));  // k = 1.5: d = w + ov/3
  }
}

// The two pp models (simulator.h). Fails if the channel model is ever slower than one blocking
// stream per rank (it only removes waits), or if the two differ with free communication on a
// schedule whose messages never queue behind each other (1F1B: one channel each way).
TEST_CASE("pp streams: per-channel FIFOs never lose to one blocking stream", "[simulator][pp]") {
  for (const std::string& s : pipeline_schedule_names()) {
    Config c = tiny(s, 4, 12, 2, 1);
    c.cluster.gpu.inter_bw_gbs = c.cluster.gpu.intra_bw_gbs = 0.05;  // slow links: transfers matter
    SimOptions single, channel;
    channel.pp_streams = PPStreams::Channel;
    const SimResult a = simulate(c, single), b = simulate(c, channel);
    INFO(s);
    REQUIRE((a.ok() && b.ok()));
    CHECK(b.iteration_time <= a.iteration_time * (1 + 1e-12));
  }
  SimOptions channel;
  channel.pp_streams = PPStreams::Channel;
  channel.cost = CostMode::Unit;
  CHECK(simulate(tiny("1f1b", 4, 8), channel).iteration_time == Approx(run_unit(tiny("1f1b", 4, 8)).iteration_time));
}

// Fails if the channel model misses a deadlock: rank 0 waits for the gradient of mb 0 before it
// computes anything, so it never sends the activation rank 1 needs first.
TEST_CASE("pp streams: a wait before the data it needs is a deadlock in both models", "[simulator][pp]") {
  const Config c = tiny("1f1b", 2, 2, 2, 1);
  const ModelDesc d = model_desc_build(c, 1, {1, 1});
  LowerResult lr = lower(pipeline_generate("1f1b", 2, 2), d);
  REQUIRE(lr.ok());
  std::vector<Op>& ops = lr.program->ranks[0].ops;
  const auto is_recv = [](const Op& o) { return o.kind == OpKind::Recv; };
  const Op rv = *std::find_if(ops.begin(), ops.end(), is_recv);  // the gradient of mb 0
  ops.erase(std::find_if(ops.begin(), ops.end(), is_recv));
  const auto is_wait = [&](const Op& o) { return o.kind == OpKind::CommWait && o.tag == rv.tag; };
  const Op w = *std::find_if(ops.begin(), ops.end(), is_wait);
  ops.erase(std::find_if(ops.begin(), ops.end(), is_wait));
  ops.insert(ops.begin(), w);
  ops.insert(ops.begin(), rv);  // recv, wait, then everything else
  for (PPStreams m : {PPStreams::Channel, PPStreams::Single}) {
    const EngineResult e = simulate_program(*lr.program, d, cost_model_unit(d, 2, 0), m);
    INFO(pp_streams_name(m));
    REQUIRE_FALSE(e.ok());
    // channel: the recv is posted and the rank stops at the wait; single: the recv blocks the stream
    const std::string at = m == PPStreams::Channel ? "rank 0 blocked at op 1 (comm_wait" : "rank 0 blocked at op 0 (recv";
    CHECK(e.deadlock.find(at) != std::string::npos);
    CHECK(e.deadlock.find("waiting for rank 1 to reach the matching send") != std::string::npos);
  }
}

// Fails if a rank's time does not add up: busy + tp + dp + pp = iteration, for every schedule.
TEST_CASE("per-rank breakdown adds up to the iteration time", "[simulator]") {
  for (const std::string& s : pipeline_schedule_names()) {
    Config c = tiny(s, 3, 12, 2, 1);
    c.parallel.dp = 2;
    const SimResult r = simulate(c, SimOptions{});
    INFO(s << ": " << r.error);
    REQUIRE(r.ok());
    for (const RankReport& k : r.ranks) {
      CHECK(k.busy + k.tp_exposed + k.dp_exposed + k.pp_bubble == Approx(r.iteration_time));
      CHECK(k.dp_exposed > 0);  // dp = 2: the gradient all-reduce at the end is waited for
    }
  }
}

// Fails if the JSON lacks a documented field or disagrees with the struct.
TEST_CASE("simulate output as JSON", "[simulator]") {
  const SimResult r = run_unit(tiny("stp", 2, 5));
  const nlohmann::json j = nlohmann::json::parse(sim_result_to_json(r));
  for (const char* k : {"schedule", "iteration_time", "tokens_per_s", "samples_per_s", "tflops_per_gpu", "mfu",
                        "pp_bubble", "tp_exposed", "peak_mem_bytes", "ranks"})
    CHECK(j.contains(k));
  CHECK(j["schedule"] == "stp");
  CHECK(j["iteration_time"].get<double>() == Approx(6 * 5 + 2 - 1));
  CHECK(j["pp_bubble"]["fraction"].get<double>() == Approx(r.pp_bubble_fraction));
  CHECK(j["peak_mem_bytes"].size() == 2);
  CHECK(j["ranks"][1]["peak_mem_bytes"].get<int64_t>() == r.ranks[1].peak_mem_bytes);
  const nlohmann::json e = nlohmann::json::parse(sim_result_to_json(simulate(tiny("stp", 4, 5), SimOptions{})));
  CHECK(e["error"].get<std::string>().find("3*pp-1") != std::string::npos);  // M = 5 < 3*4-1
}

// Fails if compare drops a valid schedule or keeps an invalid one without saying why.
TEST_CASE("simulate_compare runs every schedule valid for the config", "[simulator]") {
  std::vector<std::string> skipped;
  SimOptions unit;
  unit.cost = CostMode::Unit;
  const auto all = simulate_compare(tiny("stp", 2, 6), unit, &skipped);
  CHECK(all.size() == pipeline_schedule_names().size());
  CHECK(skipped.empty());
  skipped.clear();
  const auto some = simulate_compare(tiny("stp", 2, 5), unit, &skipped);
  REQUIRE(skipped.size() == 1);  // 5 % 2 != 0: interleaved 1F1B
  CHECK(skipped[0].rfind("1f1b-i", 0) == 0);
  CHECK(some.size() + 1 == pipeline_schedule_names().size());
  for (const SimResult& r : some) CHECK(r.microbatches == 5);
}

// Fails if the simulator is too slow for sweeps: 256 micro-batches on PP 8 (a few hundred thousand
// ops with lowering and validation) must take well under a second.
TEST_CASE("simulating 256 micro-batches at PP 8 takes well under a second", "[simulator][speed]") {
  for (const char* s : {"stp", "zb-v"}) {
    Config c = tiny(s, 8, 256, 4, 2);
    const std::clock_t t0 = std::clock();  // CPU time: other processes on the machine do not count
    const SimResult r = simulate(c, SimOptions{});
    const double dt = double(std::clock() - t0) / CLOCKS_PER_SEC;
    REQUIRE(r.ok());
    INFO(s << " took " << dt << " s");
#if defined(NDEBUG) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    CHECK(dt < 0.5);  // Release: about 0.13 s on the 2-core CI machine
#else
    CHECK(dt < 10.0);  // unoptimized or sanitizer builds only guard against blow-ups
#endif
  }
}
