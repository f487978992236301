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

class Communicator;

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
// validated read, checksum over header content and data).
struct ShardTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
using ShardMap = std::map<std::string, ShardTensor>;
// Which step and global rank a shard holds, recorded in its metadata ("step", "rank"); -1 = none.
struct ShardOrigin {
  int64_t step = -1;
  int rank = -1;
};
std::string checkpoint_write_shard(const std::string& path, const ShardMap& tensors, ShardOrigin origin = {});
// Reads every tensor; errors name the file and what is malformed. Where `expect` names a step or a
// rank (>= 0) and the file records one, they must agree, so a shard copied in from another step or
// another rank is refused instead of loaded.
std::string checkpoint_read_shard(const std::string& path, ShardMap* tensors, ShardOrigin expect = {});


// Where a run saves and resumes (every trainer: the CPU one and the CUDA one).
struct CheckpointSite {
  const Config* cfg = nullptr;
  int chunks = 1;
  std::string placement;      // "v" | "looped"
  int rank = 0, world = 1;    // global
  Communicator* comm = nullptr;  // a host communicator over the world
};

// Collective: writes this rank's shard of step `step` under root, votes over the world, and rank 0
// then writes the manifest (the step is complete from there on). Errors name the step.
std::string checkpoint_save(const CheckpointSite& site, const std::string& root, int64_t step,
                            const ShardMap& shard);
// Collective: the latest complete checkpoint under output.checkpoint.dir (rank 0's view decides),
// checked against this run's compat object, and this rank's shard of it. *step = -1 when there is
// none. *path is the shard file, for messages.
std::string checkpoint_load(const CheckpointSite& site, int64_t* step, ShardMap* shard, std::string* path);
// A parameter's key in a shard: "s<stage>.<param name>".
std::string checkpoint_shard_key(int stage, const std::string& name);
// A parameter's three tensors in a shard: its fp32 value under checkpoint_shard_key, AdamW's m and
// v under the same key + ".adam_m" / ".adam_v" (every trainer saves and resumes through these).
void checkpoint_put_param(ShardMap* shard, int stage, const std::string& name, const std::vector<int64_t>& shape,
                          std::vector<float> value, std::vector<float> m, std::vector<float> v);
// Moves a parameter's three tensors out of the shard into value, m and v, which must already have
// the element count of `shape`; errors name the file and the tensor.
std::string checkpoint_take_param(ShardMap& shard, const std::string& path, int stage, const std::string& name,
                                  const std::vector<int64_t>& shape, std::vector<float>* value,
                                  std::vector<float>* m, std::vector<float>* v);

}  // namespace stp
