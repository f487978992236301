// init_from.h: the full model in and out of a run -- `stp-train export` (checkpoint -> one full
// model) and `train.init_from` (one full model -> this rank's shards).
//
// Contract:
// - checkpoint_full_state reads the latest complete checkpoint under a root (checkpoint.h) that
//   matches the config's compat object, and reassembles every parameter of the full model from the
//   shards of DP rank 0 (DP replicas are identical after the all-reduce): parameter (stage, name)
//   lives in the shard of global rank ((0*PP + stage_rank(stage)) * TP + tp) under
//   "s<stage>.<name>", and param_gather() puts the TP slices together (ParamDesc::segments
//   included). A name seen on an earlier stage (the tied embedding's head replica) is skipped.
// - init_from_file fills this rank's parameter values from a Hugging Face safetensors file
//   (hf_import, then param_scatter). AdamW moments stay zero: it is a new run from step 1.
//   When train.resume finds a checkpoint, the resume runs after this and overwrites everything:
//   resume wins.
// - Errors are strings ("" = ok) that name the file and the tensor.
#pragma once

#include <cstdint>
#include <string>

#include "model/params.h"
#include "runtime/core/config.h"
#include "runtime/rank_model.h"

namespace stp {

// The full model of the latest complete checkpoint under `root`; *step gets its step.
std::string checkpoint_full_state(const Config& cfg, const std::string& root, FullState* state,
                                  int64_t* step);

// train.init_from: this rank's shards (TP rank `tp_rank` of `tp`) from the file `path`.
std::string init_from_file(const Config& cfg, const std::string& path, RankModel& model, int tp,
                           int tp_rank);

}  // namespace stp
