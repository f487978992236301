// trainer_checkpoint.cpp: Trainer::save_checkpoint and Trainer::resume (layout in checkpoint.h).
#include "runtime/checkpoint.h"
#include "runtime/core/metrics.h"
#include "runtime/trainer.h"

namespace stp {

std::string Trainer::save_checkpoint(const std::string& root) {
  const int64_t step = next_step_ - 1;
  if (root.empty() || step < 1) return {};
  ShardMap shard;
  for (const LocalParam& lp : model_->local_params()) {
    const std::string k = checkpoint_shard_key(lp.stage, lp.p->desc.name);
    shard[k] = ShardTensor{lp.p->local_shape, lp.p->value};
    shard[k + ".adam_m"] = ShardTensor{lp.p->local_shape, lp.m};
    shard[k + ".adam_v"] = ShardTensor{lp.p->local_shape, lp.v};
  }
  return checkpoint_save(checkpoint_site(), root, step, shard);
}

std::string Trainer::resume() {
  if (!cfg_.train.resume) return {};
  int64_t latest = -1;
  ShardMap shard;
  std::string path;
  std::string err = checkpoint_load(checkpoint_site(), &latest, &shard, &path);
  if (!err.empty() || latest < 0) return err;
  for (LocalParam& lp : model_->local_params()) {
    const std::string k = checkpoint_shard_key(lp.stage, lp.p->desc.name);
    if (!(err = checkpoint_take(shard, path, k, lp.p->local_shape, &lp.p->value)).empty() ||
        !(err = checkpoint_take(shard, path, k + ".adam_m", lp.p->local_shape, &lp.m)).empty() ||
        !(err = checkpoint_take(shard, path, k + ".adam_v", lp.p->local_shape, &lp.v)).empty())
      return err;
  }
  next_step_ = latest + 1;
  return {};
}

}  // namespace stp
