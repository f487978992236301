// trainer_checkpoint.cpp: Trainer::save_checkpoint and Trainer::resume (layout in checkpoint.h).
#include "runtime/checkpoint.h"
#include "runtime/core/metrics.h"
#include "runtime/trainer.h"

namespace stp {

std::string Trainer::save_checkpoint(const std::string& root) {
  const int64_t step = next_step_ - 1;
  if (root.empty() || step < 1) return {};
  ShardMap shard;
  for (const LocalParam& lp : model_->local_params())
    checkpoint_put_param(&shard, lp.stage, lp.p->desc.name, lp.p->local_shape, lp.p->value, lp.m, lp.v);
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
    err = checkpoint_take_param(shard, path, lp.stage, lp.p->desc.name, lp.p->local_shape, &lp.p->value, &lp.m, &lp.v);
    if (!err.empty()) return err;
  }
  next_step_ = latest + 1;
  return {};
}

}  // namespace stp
