// train.cpp: `stp-train [train]`: the training loop (runtime/trainer.h) on this launcher's ranks.
#include "cmd/commands.h"
#include "runtime/trainer.h"

namespace stp {

int cmd_train(const Config& cfg, const LaunchEnv& env, const CommonOptions&) { return train_main(cfg, env); }

}  // namespace stp
