// test_trainer.cpp: the trainer on one rank (self communicator) against the model's independent
// reference step (model/reference.h), checkpoint/resume, and bad inputs. Multi-rank equivalence is
// in tests/mpi/test_train_mpi.cpp.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "comm/self_comm.h"
#include "model/reference.h"
#include "runtime/checkpoint.h"
#include "runtime/optimizer.h"
#include "runtime/trainer.h"
#include "tests/runtime/exec_util.h"

using namespace stp;
using namespace stp_test;

namespace {

std::string temp_dir() {
  char tmpl[] = "/tmp/stp_trainer_XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  return tmpl;
}

struct Run {
  std::unique_ptr<Communicator> comm = comm_create_self();
  std::unique_ptr<Trainer> tr;
  std::string error;
  explicit Run(const Config& cfg) {
    Trainer::Result r = Trainer::create(cfg, topology_build(cfg.parallel, LaunchEnv{}), *comm);
    tr = std::move(r.trainer);
    error = r.error;
  }
};

std::vector<StepReport> train(Trainer& tr, int steps) { return stp_test::run_steps(tr, steps); }

// The micro-batches the trainer reads at `step` (dp 1), for the reference.
std::vector<MicroBatch> batches(const Config& cfg, int64_t step) {
  DataShape sh{cfg.model.seq_len, cfg.schedule.micro_batch_size, cfg.schedule.microbatches, 1, cfg.model.vocab};
  auto d = DataLoader::open(cfg.data, sh);
  REQUIRE(d.loader);
  std::vector<MicroBatch> mbs(size_t(cfg.schedule.microbatches));
  const size_t N = size_t(sh.micro_batch) * sh.seq_len;
  for (int m = 0; m < sh.microbatches; ++m) {
    mbs[m].tokens.resize(N);
    mbs[m].targets.resize(N);
    REQUIRE(d.loader->load(step, 0, m, mbs[m].tokens.data(), mbs[m].targets.data()).empty());
  }
  return mbs;
}

Config small(const std::string& schedule, int M) {
  Config c = tiny_config(1, 1, 1, schedule, M);
  c.schedule.micro_batch_size = 2;
  c.train.steps = 6;
  c.train.lr = 3e-3;
  c.train.warmup_steps = 2;
  c.train.grad_clip = 0.5;
  c.data.seed = 5;
  return c;
}

}  // namespace

// Fails if the trainer's step is not the reference's: same data order, loss scale, TP-free unit
// arithmetic, accumulation in micro-batch order, norm, clipping, AdamW and LR schedule. In arrival-
// order mode (beta 1, what the reference does) and with gpipe the operations are the same, so the
// losses and norms must be bit-identical; the deterministic (scratch + ordered add) mode rounds the
// sums differently and must agree to 1e-5 relative.
TEST_CASE("single-rank trainer equals the reference step, loss and norm", "[trainer]") {
  for (bool det : {false, true}) {
    Config cfg = small("gpipe", 3);
    cfg.model.tie_embeddings = true;
    cfg.train.deterministic = det;
    Run run(cfg);
    REQUIRE(run.error.empty());
    Reference<float> ref;
    const ParamInit init = param_init_of(cfg);
    REQUIRE(reference_init(ref, cfg, {}, init).empty());
    for (int s = 1; s <= 3; ++s) {
      RefStats rs;
      REQUIRE(reference_step(ref, batches(cfg, s), lr_at(cfg.train, s), &rs).empty());
      const StepReport r = train(*run.tr, 1)[0];
      INFO("deterministic " << det << " step " << s << ": loss " << r.loss << " vs " << rs.loss);
      if (!det) {
        CHECK(r.loss == rs.loss);
        CHECK(r.grad_norm == rs.grad_norm);
      } else {
        CHECK(r.loss == Approx(rs.loss).epsilon(1e-5));
        CHECK(r.grad_norm == Approx(rs.grad_norm).epsilon(1e-5));
      }
      if (s == 1) CHECK(r.clip_scale < 1.0);  // clipping is active
    }
  }
}

// Fails if the trainer's gradients differ from the reference's, tensor by tensor (before the update
// of step 1): a wrong loss scale, a missing TP-partial or tied-replica sum, a dropped micro-batch.
TEST_CASE("single-rank gradients equal the reference tensor by tensor", "[trainer]") {
  Config cfg = small("1f1b", 4);
  cfg.model.tie_embeddings = true;
  Run run(cfg);
  REQUIRE(run.error.empty());
  train(*run.tr, 1);
  std::string err;
  const FullState got = run.tr->gather_full(true, &err);
  REQUIRE(err.empty());
  Reference<float> ref;
  const ParamInit init = param_init_of(cfg);
  REQUIRE(reference_init(ref, cfg, {}, init).empty());
  RefStats rs;
  REQUIRE(reference_forward_backward(ref, batches(cfg, 1), &rs).empty());
  const FullState want = reference_full_state(ref, true);
  REQUIRE(got.size() == want.size());
  for (const auto& kv : want) {
    INFO("tensor " << kv.first);
    REQUIRE(got.count(kv.first));
    const FullTensor& g = got.at(kv.first);
    REQUIRE(g.shape == kv.second.shape);
    double scale = 0, diff = 0;
    for (size_t i = 0; i < g.data.size(); ++i) {
      scale = std::max(scale, double(std::fabs(kv.second.data[i])));
      diff = std::max(diff, double(std::fabs(g.data[i] - kv.second.data[i])));
    }
    CHECK(diff <= 1e-5 * scale + 1e-9);
  }
}

// Fails if resuming from a checkpoint changes any later loss by even one bit (weights, AdamW
// moments, the step count, the data position or the LR schedule not restored exactly).
TEST_CASE("resume from a checkpoint is bit-identical", "[trainer][checkpoint]") {
  const std::string dir = temp_dir();
  Config cfg = small("1f1b", 2);
  cfg.output.checkpoint.dir = dir;
  cfg.output.checkpoint.every = 2;
  Run full(cfg);
  REQUIRE(full.error.empty());
  std::vector<StepReport> a;
  for (int s = 1; s <= 4; ++s) {
    a.push_back(train(*full.tr, 1)[0]);
    if (s % 2 == 0) REQUIRE(full.tr->save_checkpoint().empty());
  }
  REQUIRE(checkpoint_latest(dir).value_or(-1) == 4);
  std::filesystem::remove_all(checkpoint_step_dir(dir, 4));  // resume from step 2
  cfg.train.resume = true;
  Run resumed(cfg);
  REQUIRE(resumed.error.empty());
  REQUIRE(resumed.tr->resume().empty());
  CHECK(resumed.tr->next_step() == 3);
  const std::vector<StepReport> b = train(*resumed.tr, 2);
  CHECK(b[0].loss == a[2].loss);
  CHECK(b[1].loss == a[3].loss);
  CHECK(b[1].grad_norm == a[3].grad_norm);
  std::filesystem::remove_all(dir);
}

// Fails if a checkpoint of another model is loaded, or the error does not say which key differs.
TEST_CASE("a checkpoint from another config is refused naming the key", "[trainer][checkpoint]") {
  const std::string dir = temp_dir();
  Config cfg = small("gpipe", 1);
  cfg.output.checkpoint.dir = dir;
  Run a(cfg);
  REQUIRE(a.error.empty());
  train(*a.tr, 1);
  REQUIRE(a.tr->save_checkpoint().empty());
  cfg.model.hidden = 32;
  cfg.train.resume = true;
  Run b(cfg);
  REQUIRE(b.error.empty());
  const std::string err = b.tr->resume();
  CHECK_THAT(err, Catch::Contains("another configuration") && Catch::Contains("model.hidden is 16 there, 32 here"));
  std::filesystem::remove_all(dir);
}

// Fails if resume loads a shard whose data was damaged, or a shard copied in from another step or
// rank, instead of refusing it with the file named.
TEST_CASE("resume refuses a damaged shard or one from another step or rank", "[trainer][checkpoint]") {
  const std::string dir = temp_dir();
  Config cfg = small("1f1b", 2);
  cfg.output.checkpoint.dir = dir;
  Run a(cfg);
  REQUIRE(a.error.empty());
  for (int s = 1; s <= 2; ++s) {
    train(*a.tr, 1);
    REQUIRE(a.tr->save_checkpoint().empty());
  }
  const std::string shard2 = checkpoint_step_dir(dir, 2) + "/" + checkpoint_shard_name(0);
  const std::string shard1 = checkpoint_step_dir(dir, 1) + "/" + checkpoint_shard_name(0);
  cfg.train.resume = true;
  auto resume_error = [&] {
    Run b(cfg);
    REQUIRE(b.error.empty());
    return b.tr->resume();
  };
  SECTION("one flipped bit in the data") {
    std::fstream f(shard2, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-5, std::ios::end);
    const char c = char(f.get() ^ 0x01);
    f.seekp(-5, std::ios::end);
    f.put(c);
    f.close();
    CHECK_THAT(resume_error(), Catch::Contains(shard2) && Catch::Contains("checksum mismatch"));
  }
  SECTION("step 1's shard copied into step 2") {
    std::filesystem::copy_file(shard1, shard2, std::filesystem::copy_options::overwrite_existing);
    CHECK_THAT(resume_error(), Catch::Contains(shard2) && Catch::Contains("holds step 1, expected step 2"));
  }
  SECTION("another rank's shard") {
    ShardMap m;
    REQUIRE(checkpoint_read_shard(shard2, &m, ShardOrigin{2, 0}).empty());
    const std::string other = dir + "/other.safetensors";
    REQUIRE(checkpoint_write_shard(other, m, ShardOrigin{2, 3}).empty());
    CHECK_THAT(checkpoint_read_shard(other, &m, ShardOrigin{2, 0}),
               Catch::Contains(other) && Catch::Contains("holds rank 3, expected rank 0"));
  }
  SECTION("the intact shard resumes") {
    CHECK(resume_error().empty());
  }
  std::filesystem::remove_all(dir);
}

// Fails if bad data is accepted or its error loses the file name.
TEST_CASE("bad data inputs are refused at set-up with the file named", "[trainer]") {
  Config cfg = small("gpipe", 1);
  cfg.data.kind = "tokens";
  cfg.data.path = "/nonexistent/corpus.u16";
  Run missing(cfg);
  CHECK_THAT(missing.error, Catch::Contains("data.path '/nonexistent/corpus.u16'") && Catch::Contains("cannot open"));
  const std::string dir = temp_dir();
  cfg.data.path = dir + "/bad.u16";
  {
    std::ofstream f(cfg.data.path, std::ios::binary);
    for (int i = 0; i < 64; ++i) {
      const uint16_t id = i == 9 ? 40 : 3;  // vocab is 32
      f.write(reinterpret_cast<const char*>(&id), 2);
    }
  }
  Run over(cfg);
  CHECK_THAT(over.error, Catch::Contains("bad.u16") && Catch::Contains("token 9") && Catch::Contains("is 40"));
  std::filesystem::remove_all(dir);
}

// Fails if a diverging run updates the weights with a non-finite step, or does not say so.
TEST_CASE("a non-finite loss stops the step before the update", "[trainer]") {
  Config cfg = small("gpipe", 1);
  cfg.train.lr = 1e30;
  cfg.train.warmup_steps = 0;
  cfg.train.lr_schedule = "constant";
  cfg.train.grad_clip = 0;
  Run run(cfg);
  REQUIRE(run.error.empty());
  std::string err;
  for (int s = 0; s < 5 && err.empty(); ++s) {
    StepReport r;
    bool fatal = true;
    err = run.tr->step(&r, &fatal);
    if (!err.empty()) CHECK(!fatal);
  }
  CHECK_THAT(err, Catch::Contains("not finite") && Catch::Contains("before the update"));
}
