// checkpoint.h: checkpoint layout, manifest and compatibility (output.checkpoint.*, train.resume).
//
// Layout under output.checkpoint.dir:
//   step_00000012/rank_00003.safetensors   every rank's own tensors (weights, AdamW m and v) under
//                                          "s<stage>.<param name>[.adam_m|.adam_v]", fp32
//   step_00000012/manifest.json            written by rank 0 after every rank wrote its shard (a
//                                          barrier), atomically (temp file + rename): a step
//                                          directory without it is incomplete and never resumed
// Manifest: {"format": "stp-checkpoint-1", "step": last completed step, "next_step",
//   "data": {kind, path, dtype, shuffle, seed, "next_sequence"}, "rng": {train.seed, data.seed},
//   "grid": {tp, pp, dp, chunks, placement, schedule}, "compat": {...}, "config": full config,
//   "shards": [file names by global rank]}.
// A resume needs the same "compat" object: the model section and the (tp, pp, dp, chunks,
// placement, stage layer split) layout; anything else (steps, lr, schedule within the same
// placement and chunks, ...) may change. The error names the first key that differs.
// Training is deterministic given (weights, AdamW state, step): the data position and the learning
// rate are functions of the step, and no other randomness exists, so resume is bit-identical.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <map>
#include <optional>
#include <vector>
#include <string>

#include "runtime/core/config.h"

namespace stp {

std::string checkpoint_step_dir(const std::string& root, int64_t step);  // root/step_00000012
std::string checkpoint_shard_name(int global_rank);                       // rank_00003.safetensors

// The keys that must match between a checkpoint and the run resuming it.
nlohmann::json checkpoint_compat(const Config& cfg, int chunks, const std::string& placement);

nlohmann::json checkpoint_manifest(const Config& cfg, int chunks, const std::string& placement,
                                   int64_t step, int64_t next_sequence, int world);

// The latest complete checkpoint under root (highest step with a manifest), or nullopt.
std::optional<int64_t> checkpoint_latest(const std::string& root);

struct ManifestResult {
  nlohmann::json manifest;
  std::string error;
};
// Reads root/step_N/manifest.json and checks it against this run's compat object; the error names
// the checkpoint and the first key that differs ("model.hidden is 32 there, 16 here").
ManifestResult checkpoint_read_manifest(const std::string& root, int64_t step,
                                        const nlohmann::json& compat);

// One rank's shard: named fp32 tensors in a safetensors file (model/safetensors.h: atomic write,
// validated read).
struct ShardTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
using ShardMap = std::map<std::string, ShardTensor>;
std::string checkpoint_write_shard(const std::string& path, const ShardMap& tensors);
// Reads every tensor; errors name the file and what is malformed.
std::string checkpoint_read_shard(const std::string& path, ShardMap* tensors);

}  // namespace stp
