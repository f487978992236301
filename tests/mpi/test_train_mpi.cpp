// test_train_mpi.cpp: the trainer across real ranks. Proves, with the real CPU model:
//   - for fixed (tp, pp, dp) the per-step losses and gradient norms are bit-identical across every
//     schedule, with clipping active;
//   - every grid matches the single-rank reference (model/reference.h, an independent in-process
//     implementation) in loss per step and in gradients tensor by tensor;
//   - the executor runs exactly the lowered program, and the braid of STP is what runs;
//   - resume is bit-identical;
//   - a run whose every operation goes through the staged host communicator (comm/staged_comm.h,
//     the CUDA trainer's host path under torchrun) is bit-identical to one on MPI directly.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <set>
#include <tuple>

#include "model/reference.h"
#include "comm/staged_comm.h"
#include "runtime/checkpoint.h"
#include "runtime/optimizer.h"
#include "runtime/trainer.h"
#include "scheduler/schedules.h"
#include "scheduler/simulator.h"
#include "tests/model/model_test_util.h"
#include "tests/mpi/mpi_test_util.h"
#include "tests/runtime/exec_util.h"

using namespace stp;
using namespace stp_test;

namespace {

Config train_config(int tp, int pp, int dp, const std::string& schedule, int M) {
  Config c = tiny_config(tp, pp, dp, schedule, M);
  c.train.steps = 3;
  c.train.lr = 3e-3;
  c.train.warmup_steps = 1;
  c.train.grad_clip = 0.05;  // far below the initial norm: clipping is active on every step
  c.train.timeout_s = 30;
  c.data.seed = 11;
  return c;
}

struct Dist {
  std::unique_ptr<Communicator> mpi, staged;
  std::unique_ptr<Trainer> tr;
  Communicator& comm() const { return staged ? *staged : *mpi; }  // what the trainer uses
};

Dist make_trainer(const Config& cfg, bool staged = false) {
  Dist d;
  const Topology topo = test_topology(cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.dp);
  CommCreateResult c = comm_create_mpi(test_mpi_session(), topo,
                                       pipeline_placement(cfg.schedule.name) == Placement::V);
  REQUIRE(c.comm);
  d.mpi = std::move(c.comm);
  if (staged) d.staged = comm_create_staged(*d.mpi, staging_host(), cfg.train.timeout_s);
  Trainer::Result r = Trainer::create(cfg, topo, d.comm());
  INFO(r.error);
  REQUIRE(r.trainer);
  d.tr = std::move(r.trainer);
  return d;
}

using stp_test::run_steps;

// The single-rank reference: tp 1, pp 1, one stage, the same global batch (dp*M micro-batches).
struct RefRun {
  Config cfg;
  Reference<float> ref;
  explicit RefRun(const Config& dist) : cfg(dist) {
    cfg.parallel = ParallelConfig{};
    cfg.model.vision.placement = "front";  // one stage: placement changes no arithmetic
    cfg.schedule.microbatches = dist.schedule.microbatches * dist.parallel.dp;
    const ParamInit init = param_init_of(cfg);
    REQUIRE(reference_init(ref, cfg, {}, init).empty());
  }
  std::vector<MicroBatch> batches(int64_t step) const {
    const DataShape sh = data_shape_of(cfg);
    auto d = DataLoader::open(cfg.data, sh);
    REQUIRE(d.loader);
    std::vector<MicroBatch> mbs(size_t(sh.microbatches));
    const size_t N = size_t(sh.micro_batch) * sh.seq_len;
    for (int m = 0; m < sh.microbatches; ++m) {
      mbs[m].tokens.resize(N);
      mbs[m].targets.resize(N);
      mbs[m].pixels.resize(size_t(sh.micro_batch * sh.patch_values));
      REQUIRE(d.loader->load(step, 0, m, mbs[m].tokens.data(), mbs[m].targets.data(),
                             mbs[m].pixels.empty() ? nullptr : mbs[m].pixels.data()) == "");
    }
    return mbs;
  }
};

// The first schedule's run becomes the baseline; every later one must equal it bit for bit in
// loss and gradient norm at every step.
void check_same_steps(const std::vector<StepReport>& r, std::vector<StepReport>& first,
                      std::string& first_name, const std::string& name) {
  if (first.empty()) {
    first = r;
    first_name = name;
    return;
  }
  REQUIRE(r.size() == first.size());
  for (size_t s = 0; s < r.size(); ++s) {
    CHECK(r[s].loss == first[s].loss);
    CHECK(r[s].grad_norm == first[s].grad_norm);
  }
}

std::vector<std::vector<int>> match_grids(int world) {
  if (world == 2) return {{2, 1, 1}, {1, 2, 1}, {1, 1, 2}};
  if (world == 8) return {{2, 2, 2}};
  return {{2, 2, 1}, {1, 4, 1}, {2, 1, 2}};
}

std::vector<std::vector<int>> schedule_grids(int world) {
  if (world == 2) return {{1, 2, 1}};
  if (world == 8) return {{2, 2, 2}};
  return {{2, 2, 1}, {1, 2, 2}};
}

}  // namespace

// Fails if any schedule computes any other arithmetic than the others on the same grid: a
// different accumulation order of weight gradients, of the loss, or of the norm terms would change
// a bit of the loss or the norm at some step.
TEST_CASE("per-step losses are bit-identical across every schedule", "[mpi][train]") {
  for (const auto& g : schedule_grids(test_mpi_session().world_size())) {
    for (bool tie : {false, true}) {
      const int M = common_microbatches(g[1]);
      std::vector<StepReport> first;
      std::string first_name;
      for (const std::string& name : pipeline_schedule_names()) {
        Config cfg = train_config(g[0], g[1], g[2], name, M);
        cfg.model.tie_embeddings = tie;
        Dist d = make_trainer(cfg);
        const std::vector<StepReport> r = run_steps(*d.tr, cfg.train.steps);
        INFO("grid tp" << g[0] << " pp" << g[1] << " dp" << g[2] << " tied " << tie << ": " << name
                       << " vs " << first_name);
        CHECK(r[0].clip_scale < 1.0);
        check_same_steps(r, first, first_name, name);
      }
    }
  }
}

// Fails if a grid's run drifts from the single-rank reference beyond fp32 rounding: relative
// 1e-7 on the first loss (a forward pass: only TP-split sums differ), 1e-6 on later losses (Adam
// divides tiny gradient differences by tiny second moments), and per gradient tensor after step 1
// max |diff| <= 1e-5 * max |g|. Measured (printed): ~1e-9 on losses, <= 6.1e-7 on gradients. A
// wrong shard, a missing reduction or a dropped micro-batch is off by orders of magnitude more.
TEST_CASE("every grid matches the single-rank reference: losses and gradients", "[mpi][train]") {
  double worst_loss[2] = {0, 0}, worst_grad = 0;
  for (const auto& g : match_grids(test_mpi_session().world_size())) {
    for (const std::string name : {"stp", "1f1b"}) {
      const int M = common_microbatches(std::max(2, g[1]));
      Config cfg = train_config(g[0], g[1], g[2], g[1] == 1 ? "gpipe" : name, M);
      cfg.model.tie_embeddings = name == std::string("stp");
      INFO("grid tp" << g[0] << " pp" << g[1] << " dp" << g[2] << ", " << cfg.schedule.name);
      Dist d = make_trainer(cfg);
      RefRun ref(cfg);
      for (int s = 1; s <= cfg.train.steps; ++s) {
        RefStats rs;  // the reference's step leaves its gradients in place for the comparison
        REQUIRE(reference_step(ref.ref, ref.batches(s), lr_at(cfg.train, s), &rs).empty());
        const StepReport r = run_steps(*d.tr, 1)[0];
        CHECK(r.loss == Approx(rs.loss).epsilon(s == 1 ? 1e-7 : 1e-6));
        worst_loss[s == 1 ? 0 : 1] = std::max(worst_loss[s == 1 ? 0 : 1], std::fabs(r.loss / rs.loss - 1));
        CHECK(r.grad_norm == Approx(rs.grad_norm).epsilon(1e-5));
        if (s == 1) {
          std::string err;
          const FullState got = d.tr->gather_full(true, &err);
          REQUIRE(err.empty());
          const FullState want = reference_full_state(ref.ref, true);
          REQUIRE(got.size() == want.size());
          for (const auto& kv : want) {
            INFO("gradient " << kv.first);
            REQUIRE(got.count(kv.first));
            double scale = 0, diff = 0;
            for (size_t i = 0; i < kv.second.data.size(); ++i) {
              scale = std::max(scale, double(std::fabs(kv.second.data[i])));
              diff = std::max(diff, double(std::fabs(got.at(kv.first).data[i] - kv.second.data[i])));
            }
            CHECK(diff <= 1e-5 * scale + 1e-9);
            if (scale > 0) worst_grad = std::max(worst_grad, diff / scale);
          }
        }
      }
    }
  }
  if (test_mpi_session().world_rank() == 0)
    std::printf("# vs single-rank reference (%d ranks): max relative loss deviation step 1 %.2e, "
                "steps 2-3 %.2e; max gradient deviation / max |g| %.2e\n",
                test_mpi_session().world_size(), worst_loss[0], worst_loss[1], worst_grad);
}

namespace {

// Logs the unit passes the model really ran, then runs them.
class RecordingBackend final : public ExecBackend {
 public:
  explicit RecordingBackend(ExecBackend& inner) : inner_(inner) {}
  struct Call {
    int stage, mb;
    UnitRef u;
  };
  std::vector<Call> calls;
  std::string compute(int stage, int mb, UnitRef u, TensorStore& store) override {
    calls.push_back({stage, mb, u});
    return inner_.compute(stage, mb, u, store);
  }
  std::vector<FloatSpan> grad_sync_spans(CommGroup g) override { return inner_.grad_sync_spans(g); }

 private:
  ExecBackend& inner_;
};

// Places where the compute stream runs F(mb a), then a backward unit of mb b != a, then F(mb a)
// again: the braid of two passes.
int braid_points(const std::vector<RecordingBackend::Call>& c) {
  int n = 0;
  for (size_t i = 2; i < c.size(); ++i)
    n += c[i - 2].u.pass == UnitPass::F && c[i].u.pass == UnitPass::F && c[i - 2].mb == c[i].mb &&
         c[i - 2].stage == c[i].stage && c[i - 1].u.pass != UnitPass::F && c[i - 1].mb != c[i].mb;
  return n;
}

}  // namespace

// Fails if the executor runs anything but the lowered program on a rank: the executed op list and
// the sequence of unit passes the real model ran must equal the program, op for op; for STP the
// compute stream must really alternate the forward of one micro-batch with the backward of another
// (the braid), for 1F1B never.
TEST_CASE("the executor runs the lowered program op for op, STP's braid is executed", "[mpi][train][braid]") {
  const int world = test_mpi_session().world_size();
  const int tp = world >= 4 ? 2 : 1, pp = 2, dp = world >= 4 ? world / 4 : 1;
  for (const std::string name : {"stp", "1f1b"}) {
    Config cfg = train_config(tp, pp, dp, name, common_microbatches(pp));
    Dist d = make_trainer(cfg);
    run_steps(*d.tr, 1);  // a real step first: the model state is that of training
    d.tr->model().begin_step(1.0f / 1024);
    RecordingBackend rec(d.tr->model());
    TensorStore store(d.tr->desc());
    Executor ex(d.tr->desc(), d.tr->program().pipeline, d.tr->topology().me.pp, d.comm(), ExecOptions{30.0, true});
    const UnitProgram& prog = d.tr->rank_program();
    const ExecResult r = ex.run(prog, rec, store);
    INFO(name << ": " << r.error);
    REQUIRE(r.ok());
    REQUIRE(r.executed.size() == prog.ops.size());
    for (size_t i = 0; i < prog.ops.size(); ++i) REQUIRE(r.executed[i].op == int(i));
    size_t k = 0;
    for (const Op& op : prog.ops) {
      if (op.kind != OpKind::Compute) continue;
      REQUIRE(k < rec.calls.size());
      REQUIRE(rec.calls[k].stage == op.stage);
      REQUIRE(rec.calls[k].mb == op.mb);
      REQUIRE(rec.calls[k].u == op.unit);
      ++k;
    }
    REQUIRE(k == rec.calls.size());
    if (name == std::string("stp")) CHECK(braid_points(rec.calls) > 0);
    else CHECK(braid_points(rec.calls) == 0);
  }
}

// Fails if the staged host communicator changes a bit of any step when it carries all of a run's
// traffic (TP all-reduces, early-posted PP receives, DP and embedding reductions, the loss, norm
// and statistics reductions): a result copied back too early, to the wrong place or not at all,
// or a staging buffer reused while in flight, would change the loss or the norm.
TEST_CASE("a run through the staged host communicator is bit-identical to MPI", "[mpi][train][staged]") {
  const int world = test_mpi_session().world_size();
  const int tp = world >= 4 ? 2 : 1, pp = 2, dp = world >= 8 ? 2 : 1;
  if (tp * pp * dp != world) {
    SUCCEED("no grid for this world size");
    return;
  }
  for (const std::string name : {"stp", "zb-v"}) {
    Config cfg = train_config(tp, pp, dp, name, common_microbatches(pp));
    cfg.model.tie_embeddings = true;
    std::vector<StepReport> first;
    std::string first_name;
    for (bool staged : {false, true}) {
      Dist d = make_trainer(cfg, staged);
      const std::vector<StepReport> r = run_steps(*d.tr, cfg.train.steps);
      INFO(name << ": staged vs mpi");
      check_same_steps(r, first, first_name, staged ? "staged" : "mpi");
    }
  }
}

// Fails if resuming on several ranks changes a bit of any later loss (a shard written or read by
// the wrong rank, AdamW state or step count lost).
TEST_CASE("multi-rank resume is bit-identical", "[mpi][train][checkpoint]") {
  const int world = test_mpi_session().world_size();
  const int tp = world >= 4 ? 2 : 1, pp = 2, dp = world >= 4 ? world / 4 : 1;
  // One directory for all ranks: rank 0's pid, broadcast.
  int64_t pid = getpid();
  {
    auto c = comm_create_mpi(test_mpi_session(), test_topology(world, 1, 1), false);
    REQUIRE(c.comm->broadcast(GroupKind::World, &pid, 1, DType::I64, 0).wait(30).ok());
  }
  const std::string dir = "/tmp/stp_mpi_resume_" + std::to_string(pid);
  Config cfg = train_config(tp, pp, dp, "stp", common_microbatches(pp));
  cfg.train.steps = 4;
  cfg.model.tie_embeddings = true;
  cfg.output.checkpoint.dir = dir;
  std::vector<StepReport> a;
  {
    Dist d = make_trainer(cfg);
    for (int s = 1; s <= 4; ++s) {
      a.push_back(run_steps(*d.tr, 1)[0]);
      if (s == 2) REQUIRE(d.tr->save_checkpoint().empty());
    }
  }
  cfg.train.resume = true;
  Dist d = make_trainer(cfg);
  REQUIRE(d.tr->resume().empty());
  REQUIRE(d.tr->next_step() == 3);
  const std::vector<StepReport> b = run_steps(*d.tr, 2);
  CHECK(b[0].loss == a[2].loss);
  CHECK(b[1].loss == a[3].loss);
  CHECK(b[1].grad_norm == a[3].grad_norm);
  auto c = comm_create_mpi(test_mpi_session(), test_topology(world, 1, 1), false);
  REQUIRE(c.comm->barrier(GroupKind::World).wait(30).ok());
  if (test_mpi_session().world_rank() == 0) std::filesystem::remove_all(dir);
}

namespace {

// Independent restatement of the executor's accounting: walk the program, +bytes at the op that
// first needs a tensor (its producing unit pass, or the Recv that posts it), -bytes at its Free.
int64_t program_order_peak(const UnitProgram& prog, const ModelDesc& desc) {
  std::set<std::tuple<int, int, int>> live;
  int64_t cur = 0, peak = 0;
  auto add = [&](int s, int mb, int t) {
    if (live.insert({s, mb, t}).second) peak = std::max(peak, cur += 4 * desc.stages[s].tensors[t].elems);
  };
  for (const Op& op : prog.ops) {
    if (op.kind == OpKind::Compute) {
      const StageDesc& sd = desc.stages[op.stage];
      for (size_t t = 0; t < sd.tensors.size(); ++t)
        if (sd.tensors[t].producer == op.unit) add(op.stage, op.mb, int(t));
    } else if (op.kind == OpKind::Recv) {
      add(op.stage, op.mb, op.tensor);
    } else if (op.kind == OpKind::Free && live.erase({op.stage, op.mb, op.tensor})) {
      cur -= 4 * desc.stages[op.stage].tensors[op.tensor].elems;
    }
  }
  return peak;
}

}  // namespace

// Fails if the executor's measured activation peak is not what the program implies, or differs
// from the simulator's prediction by a single byte, for any schedule at pp = 1 or pp = 2. Both
// count in program order (runtime/executor.h "Memory", scheduler/cost.h): a receive buffer from
// the Recv that posts it, a sent tensor until its Free op.
TEST_CASE("measured activation peak equals the simulator's prediction", "[mpi][train][memory]") {
  const int world = test_mpi_session().world_size();
  const std::vector<std::vector<int>> grids = world >= 4 ? std::vector<std::vector<int>>{{2, 1, world / 2}, {2, 2, world / 4}}
                                                         : std::vector<std::vector<int>>{{2, 1, 1}, {1, 2, 1}};
  for (const auto& g : grids) {
    for (const std::string& name : pipeline_schedule_names()) {
      Config cfg = train_config(g[0], g[1], g[2], name, common_microbatches(std::max(2, g[1])));
      Dist d = make_trainer(cfg);
      run_steps(*d.tr, 1);
      const int pr = d.tr->topology().me.pp;
      const int64_t measured = d.tr->last_exec().peak_act_bytes;
      const EngineResult e = simulate_program(d.tr->program(), d.tr->desc(), cost_model_unit(d.tr->desc(), g[1], 0));
      const int64_t predicted = e.ranks[size_t(pr)].activation_peak_bytes;
      INFO(name << " grid tp" << g[0] << " pp" << g[1] << " dp" << g[2] << " pipeline rank " << pr
                << ": measured " << measured << ", simulated " << predicted);
      CHECK(measured == program_order_peak(d.tr->rank_program(), d.tr->desc()));
      CHECK(measured == predicted);
      if (d.tr->topology().me.tp == 0 && d.tr->topology().me.dp == 0)
        std::printf("# memory %-10s pp %d rank %d: measured %7lld B, simulated %7lld B\n", name.c_str(),
                    g[1], pr, (long long)measured, (long long)predicted);
    }
  }
}

namespace {

// train_config's tiny GPT behind a 2-layer vision tower (8x8 images of 2x2 patches, 4 visual
// tokens at positions 1..4 of the 8-token sequence), on seeded synthetic image-text data. `spread`
// puts one vision layer on each of the first two virtual stages (stage 0 holds vision only) and
// the merger plus the LLM after it.
Config vlm_config(int tp, int pp, int dp, const std::string& schedule, int M, bool spread) {
  Config c = train_config(tp, pp, dp, schedule, M);
  // LLM layers divisible over the LLM stages of 1 or 2 chunks per rank at pp 2: front 2 or 4
  // stages, spread 1 or 3.
  c.model.layers = spread ? 6 : 4;
  VisionConfig& v = c.model.vision;
  v = stp::test::tiny_vlm_config().model.vision;
  if (spread) {
    v.placement = "spread";
    v.spread_stages = 2;
  }
  return c;
}

}  // namespace

// The VLM under mpirun: fails if any schedule computes other arithmetic than the others on the
// same grid (bit-identical losses and norms, as for the LLM), or the distributed run drifts from
// the single-rank reference (same bounds as the LLM test above) -- with the vision tower at the
// front of stage 0 and spread over the first two stages.
TEST_CASE("VLM: losses bit-identical across every schedule and equal to the single-rank reference",
          "[mpi][train][vlm]") {
  const int world = test_mpi_session().world_size();
  const std::vector<int> g = world == 2 ? std::vector<int>{1, 2, 1}
                             : world == 8 ? std::vector<int>{2, 2, 2}
                                          : std::vector<int>{2, 2, 1};
  for (bool spread : {false, true}) {
    const int M = common_microbatches(g[1]);
    std::vector<StepReport> first;
    std::string first_name;
    for (const std::string& name : pipeline_schedule_names()) {
      Config cfg = vlm_config(g[0], g[1], g[2], name, M, spread);
      INFO("VLM grid tp" << g[0] << " pp" << g[1] << " dp" << g[2] << (spread ? " spread" : " front")
                         << ", layers " << cfg.model.layers << ": " << name << " vs " << first_name);
      Dist d = make_trainer(cfg);
      std::vector<StepReport> r;
      if (name == "stp") {  // also against the single-rank reference, step by step
        RefRun ref(cfg);
        for (int s = 1; s <= cfg.train.steps; ++s) {
          RefStats rs;
          REQUIRE(reference_step(ref.ref, ref.batches(s), lr_at(cfg.train, s), &rs).empty());
          r.push_back(run_steps(*d.tr, 1)[0]);
          CHECK(r.back().loss == Approx(rs.loss).epsilon(s == 1 ? 1e-7 : 1e-6));
          CHECK(r.back().grad_norm == Approx(rs.grad_norm).epsilon(1e-5));
        }
      } else {
        r = run_steps(*d.tr, cfg.train.steps);
      }
      CHECK(r[0].clip_scale < 1.0);
      check_same_steps(r, first, first_name, name);
    }
  }
}
