// test_cuda_train.cpp: train.device = cuda end to end (runtime/cuda/cuda_train.h) against the CPU
// trainer, 20 steps through NCCL with one rank (comm_create_nccl with no launcher: a local unique
// id) and the same config on the CPU (fp32), synthetic data, seed 1234. Two models at tp = pp = dp = 1
// (one GPU), 2 micro-batches of 2 x 64 tokens:
// - the tiny GPT of configs/models/tiny-gpt.yaml (LayerNorm, GELU, learned positions, biases) on
//   1F1B: one stage, the plain unit passes;
// - its llama-style twin (RMSNorm, SwiGLU, RoPE, no biases, tied embeddings) on ZB-V: two virtual
//   stages on the one rank, so the V-turn hand-over copies, deferred W passes and the tied
//   embedding's two replicas summed on the rank (CudaTrainer::sync_tied) all run.
//
// Bounds, and why:
// - Step 1 runs the same weights (the CUDA parameters are copies of the CPU initialisation) on the
//   same tokens; only the forward differs, by bf16 rounding of every activation (8 significant bits,
//   relative rounding <= 2^-9). Logits of these models are O(1), so each row's log-sum-exp and target
//   logit move by ~1e-2 at most and the mean loss by less: |loss_cuda - loss_cpu| <= 0.02. A wrong
//   forward (a missing bias, residual, norm or position term) moves it by tenths.
// - Later steps: AdamW turns small gradient differences into weight differences of up to lr per
//   element per step, so the two runs drift apart slowly; the bound is 2% of the CPU loss (about
//   0.1 nats), an order of magnitude under the decrease the CPU runs show over these 20 steps
//   (GPT 5.58 -> 4.47, llama-style 5.59 -> 4.21), so a wrong gradient, which bends the
//   trajectory by tenths of a nat, fails it.
// - The CUDA loss decreases by at least 0.5 over the run.
// Per-parameter gradients (the third case): after one step with clipping off, AdamW's first moment
// is m = (1 - beta1) g, and both trainers checkpoint it under the same name, so the step-1
// checkpoints of the two runs hold every parameter's gradient, the CPU's in fp32. Each tensor's
// relative L2 difference is printed (the table that locates a wrong unit pass) and bounded by
// 0.1: bf16 activations and weights move a gradient by about 1e-2, a wrong or missing term by
// order 1.
// Without a GPU the test prints "SKIPPED: no CUDA device" and asserts nothing.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "comm/self_comm.h"
#include "runtime/checkpoint.h"
#include "runtime/cuda/cuda_train.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/runtime/exec_util.h"

using namespace stp;

namespace {

Config tiny_gpt_1x1x1() {
  Config c;
  c.model.layers = 4;
  c.model.hidden = 64;
  c.model.heads = 4;
  c.model.ffn_hidden = 256;
  c.model.vocab = 256;
  c.model.seq_len = 64;
  c.model.norm = "layernorm";
  c.model.activation = "gelu";
  c.model.position = "learned";
  c.schedule.name = "1f1b";
  c.schedule.microbatches = 2;
  c.schedule.micro_batch_size = 2;
  c.train.steps = 20;
  c.train.lr = 3e-3;
  c.train.min_lr = 3e-4;
  c.train.warmup_steps = 10;
  c.train.weight_decay = 0.0;
  c.train.grad_clip = 1.0;
  c.train.seed = 1234;
  c.output.trace = false;
  return c;
}

// The llama-style twin of tiny_gpt_1x1x1() on ZB-V (two virtual stages on the one rank, tied).
Config tiny_llama_zbv_1x1x1() {
  Config c = tiny_gpt_1x1x1();
  c.model.norm = "rmsnorm";
  c.model.activation = "swiglu";
  c.model.position = "rope";
  c.model.qkv_bias = false;
  c.model.bias = false;
  c.model.tie_embeddings = true;
  c.schedule.name = "zb-v";
  return c;
}

std::vector<double> read_losses(const std::string& path) {
  std::vector<double> out;
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (!j.contains("summary")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

// Trains `cfg` on the CPU and on the GPU and checks the bounds of the header comment.
void check_tracks_cpu(Config cfg, const std::string& name) {
  const LaunchEnv env;
  const Topology topo = topology_build(cfg.parallel, env);
  std::unique_ptr<Communicator> self = comm_create_self();
  Trainer::Result tr = Trainer::create(cfg, topo, *self);
  INFO(name << ": " << tr.error);
  REQUIRE(tr.trainer);
  std::vector<double> cpu;
  for (const StepReport& r : stp_test::run_steps(*tr.trainer, cfg.train.steps)) cpu.push_back(r.loss);
  // CUDA run: metrics.jsonl in a scratch directory.
  const std::string dir = (std::filesystem::temp_directory_path() / ("stp_test_cuda_train_" + name)).string();
  std::filesystem::remove_all(dir);
  cfg.train.device = "cuda";
  cfg.output.dir = dir;
  REQUIRE(cuda_train_main(cfg, env) == 0);
  const std::vector<double> gpu = read_losses(dir + "/metrics.jsonl");
  REQUIRE(gpu.size() == cpu.size());
  for (size_t s = 0; s < cpu.size(); ++s) {
    std::printf("# %s step %2zu  loss cpu %.5f  cuda %.5f  diff %+.5f\n", name.c_str(), s + 1, cpu[s], gpu[s],
                gpu[s] - cpu[s]);
    INFO("step " << s + 1);
    CHECK(std::abs(gpu[s] - cpu[s]) <= (s == 0 ? 0.02 : 0.02 * cpu[s]));
  }
  CHECK(gpu.back() < gpu.front() - 0.5);
}

}  // namespace

TEST_CASE("cuda train: tp=pp=dp=1 through NCCL tracks the CPU trainer's loss", "[cuda][train]") {
  STP_REQUIRE_GPU();
  check_tracks_cpu(tiny_gpt_1x1x1(), "gpt");
}

TEST_CASE("cuda train: a llama-style model on ZB-V (two stages on one rank, tied) tracks the CPU", "[cuda][train]") {
  STP_REQUIRE_GPU();
  check_tracks_cpu(tiny_llama_zbv_1x1x1(), "llama_zbv");
}

TEST_CASE("cuda train: every parameter's step-1 gradient matches the CPU's", "[cuda][train]") {
  STP_REQUIRE_GPU();
  for (const bool llama : {false, true}) {
    Config cfg = llama ? tiny_llama_zbv_1x1x1() : tiny_gpt_1x1x1();
    const std::string name = llama ? "llama_zbv" : "gpt";
    cfg.train.steps = 1;
    cfg.train.grad_clip = 0;  // m = (1 - beta1) g exactly, no norm-dependent factor
    const std::string dir = (std::filesystem::temp_directory_path() / ("stp_test_cuda_grad_" + name)).string();
    std::filesystem::remove_all(dir);
    const LaunchEnv env;
    const Topology topo = topology_build(cfg.parallel, env);
    std::unique_ptr<Communicator> self = comm_create_self();
    cfg.output.checkpoint.dir = dir + "/cpu";
    Trainer::Result tr = Trainer::create(cfg, topo, *self);
    INFO(name << ": " << tr.error);
    REQUIRE(tr.trainer);
    stp_test::run_steps(*tr.trainer, 1);
    REQUIRE(tr.trainer->save_checkpoint().empty());
    cfg.train.device = "cuda";
    cfg.output.dir = dir + "/run";
    cfg.output.checkpoint.dir = dir + "/cuda";
    cfg.output.checkpoint.every = 1;
    REQUIRE(cuda_train_main(cfg, env) == 0);
    ShardMap cpu, gpu;
    const std::string shard = "/" + checkpoint_shard_name(0);
    REQUIRE(checkpoint_read_shard(checkpoint_step_dir(dir + "/cpu", 1) + shard, &cpu) == "");
    REQUIRE(checkpoint_read_shard(checkpoint_step_dir(dir + "/cuda", 1) + shard, &gpu) == "");
    int compared = 0;
    for (const auto& [key, c] : cpu) {
      if (key.size() < 7 || key.compare(key.size() - 7, 7, ".adam_m") != 0) continue;
      INFO(name << " " << key);
      REQUIRE(gpu.count(key) == 1);
      const ShardTensor& g = gpu.at(key);
      REQUIRE(g.data.size() == c.data.size());
      double num = 0, den = 0;
      for (size_t i = 0; i < c.data.size(); ++i) {
        num += std::pow(double(g.data[i]) - double(c.data[i]), 2);
        den += std::pow(double(c.data[i]), 2);
      }
      const double rel = std::sqrt(num / std::max(den, 1e-300));
      std::printf("# %s step-1 gradient %-40s rel L2 diff %.2e  |g_cpu| %.3e\n", name.c_str(),
                  key.substr(0, key.size() - 7).c_str(), rel, std::sqrt(den) / (1 - cfg.train.beta1));
      CHECK(rel <= 0.1);
      ++compared;
    }
    CHECK(compared >= 10);
    std::filesystem::remove_all(dir);
  }
}
