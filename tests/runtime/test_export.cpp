// test_export.cpp: `stp-train export` and `train.init_from` (runtime/init_from.h).
//
// What would make these fail:
// - reassembly: a TP slice put in the wrong place (fused qkv / fc1 segments), a shard read from
//   the wrong pipeline rank (V placement), the tied head replica exported instead of the embedding
//   -> the in-process tp=2 x pp=2 test differs from the same counter-based init at tp=1;
// - export naming or values: the exported file, imported back, differs bit-for-bit from the shard;
// - init_from: a run initialised from the export does not compute the same first loss as the run
//   that resumed from the checkpoint it was exported from (same weights, same batch);
// - errors: a wrong-shaped tensor, a missing or mismatched checkpoint not reported with exit 2.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/run_util.h"
#include "model/hf_io.h"
#include "runtime/checkpoint.h"
#include "runtime/init_from.h"
#include "scheduler/schedules.h"

using namespace stp;
namespace fs = std::filesystem;

namespace {

std::string temp_dir() {
  char tmpl[] = "/tmp/stp_export_XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  return tmpl;
}

using stp_test::RunResult;
RunResult run(const std::string& cmd) { return stp_test::run_command(cmd); }

// step -> loss from a run's metrics.jsonl (the summary line has no "loss" per step and is skipped).
std::map<int64_t, double> losses(const std::string& out_dir) {
  std::map<int64_t, double> m;
  std::ifstream f(out_dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(f, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("step") && j.contains("loss") && j["step"].is_number_integer()) m[j["step"]] = j["loss"].get<double>();
  }
  return m;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The single-rank run: tiny GPT, tp=pp=dp=1, 1f1b, M=2, b=1, and a token file of exactly M*b = 2
// sequences, so that every step reads the same batch (data.h: i is taken mod n). Then "the loss of
// weights W" is one number whatever the step, which makes resume and init_from comparable exactly.
struct SingleRank {
  std::string dir = temp_dir();
  std::string config = dir + "/run.yaml";
  SingleRank() {
    const int T = 64, n = 2;
    std::vector<uint16_t> tok(size_t(n * T + 1));
    for (size_t i = 0; i < tok.size(); ++i) tok[i] = uint16_t((i * 37 + 11) % 256);
    std::ofstream(dir + "/tokens.bin", std::ios::binary)
        .write(reinterpret_cast<const char*>(tok.data()), std::streamsize(tok.size() * sizeof(uint16_t)));
    std::ofstream(config) << "include: " << STP_TEST_DIR << "/../configs/models/tiny-gpt.yaml\n"
                          << "parallel: {tp: 1, pp: 1, dp: 1}\n"
                          << "schedule: {name: 1f1b, microbatches: 2, micro_batch_size: 1}\n"
                          << "data: {kind: tokens, path: " << dir << "/tokens.bin, dtype: uint16}\n"
                          << "train: {steps: 1}\n"
                          << "output: {dir: " << dir << "/out_a, checkpoint: {dir: " << dir << "/ckpt}}\n";
  }
  ~SingleRank() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string cmd(const std::string& sub, const std::string& args) const {
    return std::string(STP_BINARY) + " " + sub + " --config " + config + " " + args;
  }
  Config cfg() const {
    ConfigResult r = config_load(config, {});
    REQUIRE(r.ok());
    return *r.config;
  }
};

}  // namespace

TEST_CASE("export equals the checkpoint bit for bit, and init_from continues exactly as resume", "[export]") {
  SingleRank s;
  const std::string d = s.dir;
  // A: one step, checkpoint step 1 (weights W1).
  const RunResult a = run(s.cmd("train", ""));
  INFO(a.out);
  REQUIRE(a.rc == 0);
  const RunResult e = run(s.cmd("export", "--checkpoint " + d + "/ckpt --out " + d + "/w1.safetensors"));
  INFO(e.out);
  REQUIRE(e.rc == 0);

  // The export, imported back, is the shard's tensors exactly (tp = 1: the shard is the full tensor).
  FullState imported;
  REQUIRE(hf_import(s.cfg(), d + "/w1.safetensors", &imported) == "");
  ShardMap shard;
  REQUIRE(checkpoint_read_shard(checkpoint_step_dir(d + "/ckpt", 1) + "/" + checkpoint_shard_name(0), &shard) == "");
  REQUIRE(imported.size() * 3 == shard.size());  // weight, adam_m, adam_v per parameter
  for (const auto& [name, t] : imported) {
    INFO(name);
    const auto it = shard.find("s0." + name);
    REQUIRE(it != shard.end());
    CHECK(t.shape == it->second.shape);
    CHECK(same_bits(t.data, it->second.data));
  }

  // B: resume from step 1, run step 2: the loss of W1 on the (only) batch.
  RunResult b = run(s.cmd("train", "--set train.steps=2 --set train.resume=true --set output.dir=" + d + "/out_b"));
  INFO(b.out);
  REQUIRE(b.rc == 0);
  // C: a new run initialised from the export, step 1: the loss of W1 on the same batch.
  RunResult c = run(s.cmd("train", "--set train.init_from=" + d + "/w1.safetensors --set output.dir=" + d +
                                       "/out_c --set output.checkpoint.dir=" + d + "/ckpt_c"));
  INFO(c.out);
  REQUIRE(c.rc == 0);
  const auto la = losses(d + "/out_a"), lb = losses(d + "/out_b"), lc = losses(d + "/out_c");
  REQUIRE(la.count(1));
  REQUIRE(lb.count(2));
  REQUIRE(lc.count(1));
  CHECK(lb.at(2) == lc.at(1));  // bit-identical: same weights, same batch, same code path
  CHECK(la.at(1) != lc.at(1));  // and init_from really replaced the seed init (W0 != W1)

  // Resume wins: a run with both, whose checkpoint dir (C's) holds step 1, starts at step 2 from
  // C's updated weights, not from the file's.
  RunResult r = run(s.cmd("train", "--set train.steps=2 --set train.resume=true --set train.init_from=" + d +
                                       "/w1.safetensors --set output.dir=" + d + "/out_r --set output.checkpoint.dir=" +
                                       d + "/ckpt_c"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("resumed from") != std::string::npos);
  const auto lr = losses(d + "/out_r");
  CHECK(lr.count(1) == 0);
  REQUIRE(lr.count(2));
  CHECK(lr.at(2) != lc.at(1));  // the checkpoint's weights (C after one update), not the file's
}

TEST_CASE("init_from with a wrong-shaped tensor and bad export inputs exit 2 naming the problem", "[export]") {
  SingleRank s;
  const std::string d = s.dir;
  // A file for hidden 32 fed to a hidden-64 model: every tensor has the wrong shape.
  ConfigResult small = config_load(s.config, {"model.hidden=32"});
  REQUIRE(small.ok());
  FullState st = hf_expected_state(*small.config);
  for (auto& [name, t] : st) {
    int64_t n = 1;
    for (int64_t x : t.shape) n *= x;
    t.data.assign(size_t(n), 0.5f);
  }
  REQUIRE(hf_export(*small.config, st, d + "/small.safetensors") == "");
  const RunResult bad = run(s.cmd("train", "--set train.init_from=" + d + "/small.safetensors"));
  INFO(bad.out);
  CHECK(bad.rc == 2);
  CHECK(bad.out.find("small.safetensors") != std::string::npos);
  CHECK(bad.out.find("64") != std::string::npos);  // the expected shape is shown

  const RunResult missing = run(s.cmd("export", "--checkpoint " + d + "/nope --out " + d + "/x.safetensors"));
  CHECK(missing.rc == 2);
  CHECK(missing.out.find("error: ") == 0);
  CHECK(missing.out.find(d + "/nope") != std::string::npos);
  fs::create_directories(d + "/empty");
  const RunResult none = run(s.cmd("export", "--checkpoint " + d + "/empty --out " + d + "/x.safetensors"));
  CHECK(none.rc == 2);
  CHECK(none.out.find("no complete checkpoint") != std::string::npos);

  REQUIRE(run(s.cmd("train", "")).rc == 0);
  const RunResult other = run(s.cmd("export", "--set model.hidden=32 --checkpoint " + d + "/ckpt --out " + d + "/x.safetensors"));
  CHECK(other.rc == 2);
  CHECK(other.out.find("model.hidden") != std::string::npos);
  // A shard without one of its tensors: the error names the file and the tensor.
  const std::string shard_path = checkpoint_step_dir(d + "/ckpt", 1) + "/" + checkpoint_shard_name(0);
  ShardMap shard;
  REQUIRE(checkpoint_read_shard(shard_path, &shard) == "");
  shard.erase("s0.final_norm.weight");
  REQUIRE(checkpoint_write_shard(shard_path, shard) == "");
  const RunResult lacks = run(s.cmd("export", "--checkpoint " + d + "/ckpt --out " + d + "/x.safetensors"));
  CHECK(lacks.rc == 2);
  CHECK(lacks.out.find("s0.final_norm.weight") != std::string::npos);
  CHECK(lacks.out.find(checkpoint_shard_name(0)) != std::string::npos);
  CHECK_FALSE(fs::exists(d + "/x.safetensors"));
}

TEST_CASE("checkpoint_full_state reassembles tp=2 x pp=2 (V placement, fused, tied) shards exactly", "[export]") {
  // Shards written as four ranks would write them, from the counter-based init at tp = 2; the
  // reassembled tensors must equal that init laid out at tp = 1 (the full tensor), bit for bit.
  const std::string d = temp_dir();
  ConfigResult r = config_load(std::string(STP_TEST_DIR) + "/corpus/base.yaml", {"model.tie_embeddings=true"});
  REQUIRE(r.ok());
  Config cfg = *r.config;
  const int chunks = pipeline_default_chunks(cfg.schedule.name);
  cfg.parallel.chunks = chunks;
  const Placement pl = pipeline_placement(cfg.schedule.name);
  REQUIRE(pl == Placement::V);
  const ModelDesc desc = model_desc_build(cfg, chunks, config_stage_layers(cfg));
  ParamInit init;
  init.randomize_all = true;
  init.seed = 99;
  const int TP = cfg.parallel.tp, PP = cfg.parallel.pp;
  const std::string step_dir = checkpoint_step_dir(d, 3);
  fs::create_directories(step_dir);
  for (int pp = 0; pp < PP; ++pp)
    for (int t = 0; t < TP; ++t) {
      ShardMap shard;
      for (const StageDesc& sd : desc.stages) {
        if (stage_rank(pl, PP, sd.stage) != pp) continue;
        StageParams<float> sp(sd, TP, t, init);
        for (const Param<float>& p : sp.all())
          shard["s" + std::to_string(sd.stage) + "." + p.desc.name] = ShardTensor{p.local_shape, p.value};
      }
      REQUIRE(checkpoint_write_shard(step_dir + "/" + checkpoint_shard_name(pp * TP + t), shard) == "");
    }
  std::ofstream(step_dir + "/manifest.json")
      << checkpoint_manifest(cfg, chunks, "v", 3, 0, TP * PP * cfg.parallel.dp).dump();

  FullState full;
  int64_t step = 0;
  REQUIRE(checkpoint_full_state(cfg, d, &full, &step) == "");
  CHECK(step == 3);
  size_t expected = 0;
  for (const StageDesc& sd : desc.stages) {
    StageParams<float> ref(sd, 1, 0, init);  // tp = 1: each tensor whole
    for (const Param<float>& p : ref.all()) {
      INFO("stage " << sd.stage << " " << p.desc.name);
      REQUIRE(full.count(p.desc.name));
      CHECK(full.at(p.desc.name).shape == p.desc.shape);
      CHECK(same_bits(full.at(p.desc.name).data, p.value));
    }
  }
  for (const StageDesc& sd : desc.stages) expected += sd.params.size();
  CHECK(full.size() == expected - 1);  // the tied head replica is the embedding, counted once
  std::error_code ec;
  fs::remove_all(d, ec);
}
