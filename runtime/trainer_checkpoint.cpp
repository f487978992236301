// trainer_checkpoint.cpp: Trainer::save_checkpoint and Trainer::resume (layout in checkpoint.h).
#include <filesystem>

#include "runtime/checkpoint.h"
#include "runtime/core/metrics.h"
#include "runtime/trainer.h"

namespace stp {

namespace {

std::string shard_key(int stage, const std::string& name) { return "s" + std::to_string(stage) + "." + name; }

// True on every rank when `ok` is true on every rank; false (and an error) if the vote times out.
bool all_ok(Communicator& comm, bool ok, double timeout_s, std::string* error) {
  int32_t bad = ok ? 0 : 1;
  CommHandle h = comm.all_reduce(GroupKind::World, &bad, &bad, 1, DType::I32, ReduceOp::Max);
  CommStatus st = h.wait(timeout_s);
  if (!st.ok()) {
    *error = st.error;
    return false;
  }
  return bad == 0;
}

}  // namespace

std::string Trainer::save_checkpoint(const std::string& root) {
  const int64_t step = next_step_ - 1;
  if (root.empty() || step < 1) return {};
  const std::string dir = checkpoint_step_dir(root, step);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  std::string err = ec ? "cannot create '" + dir + "': " + ec.message() : std::string();
  if (err.empty()) {
    ShardMap shard;
    for (const LocalParam& lp : model_->local_params()) {
      const std::string k = shard_key(lp.stage, lp.p->desc.name);
      shard[k] = ShardTensor{lp.p->local_shape, lp.p->value};
      shard[k + ".adam_m"] = ShardTensor{lp.p->local_shape, lp.m};
      shard[k + ".adam_v"] = ShardTensor{lp.p->local_shape, lp.v};
    }
    err = checkpoint_write_shard((std::filesystem::path(dir) / checkpoint_shard_name(topo_.rank)).string(), shard);
  }
  std::string vote_err;
  const bool ok = all_ok(comm_, err.empty(), cfg_.train.timeout_s, &vote_err);
  if (!err.empty()) return "checkpoint step " + std::to_string(step) + ": " + err;
  if (!vote_err.empty()) return "checkpoint step " + std::to_string(step) + ": " + vote_err;
  if (!ok) return "checkpoint step " + std::to_string(step) + ": another rank failed to write its shard";
  if (topo_.rank != 0) return {};
  const int64_t next_seq = step * int64_t(cfg_.parallel.dp) * cfg_.schedule.microbatches * cfg_.schedule.micro_batch_size;
  const nlohmann::json man = checkpoint_manifest(cfg_, chunks_, placement_name(), step, next_seq, topo_.world());
  return write_file_atomic(dir, "manifest.json", man.dump(2));  // the step is complete from here on
}

std::string Trainer::resume() {
  if (!cfg_.train.resume) return {};
  const std::string& root = cfg_.output.checkpoint.dir;
  if (root.empty()) return "train.resume is true but output.checkpoint.dir is empty";
  // Rank 0's view of the latest complete checkpoint decides for everyone.
  int64_t latest = checkpoint_latest(root).value_or(-1);
  CommHandle h = comm_.broadcast(GroupKind::World, &latest, 1, DType::I64, 0);
  CommStatus st = h.wait(cfg_.train.timeout_s);
  if (!st.ok()) return "resume: " + st.error;
  if (latest < 0) return {};  // nothing to resume: start at step 1
  ManifestResult man = checkpoint_read_manifest(root, latest, checkpoint_compat(cfg_, chunks_, placement_name()));
  if (!man.error.empty()) return man.error;
  const std::string path = (std::filesystem::path(checkpoint_step_dir(root, latest)) / checkpoint_shard_name(topo_.rank)).string();
  ShardMap shard;
  std::string err = checkpoint_read_shard(path, &shard);
  if (!err.empty()) return err;
  for (LocalParam& lp : model_->local_params()) {
    const std::string k = shard_key(lp.stage, lp.p->desc.name);
    std::vector<float>* dst[3] = {&lp.p->value, &lp.m, &lp.v};
    const char* suffix[3] = {"", ".adam_m", ".adam_v"};
    for (int i = 0; i < 3; ++i) {
      auto it = shard.find(k + suffix[i]);
      if (it == shard.end()) return "checkpoint shard '" + path + "' lacks tensor " + k + suffix[i];
      if (it->second.shape != lp.p->local_shape || it->second.data.size() != dst[i]->size())
        return "checkpoint shard '" + path + "': tensor " + k + suffix[i] + " has another shape than this run's";
      *dst[i] = it->second.data;
    }
  }
  next_step_ = latest + 1;
  return {};
}

}  // namespace stp
