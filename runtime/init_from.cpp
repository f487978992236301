// init_from.cpp: checkpoint -> full model (export) and full model -> shards (train.init_from);
// contract in init_from.h.
#include "runtime/init_from.h"

#include <filesystem>
#include <map>
#include <set>

#include "model/desc/desc.h"
#include "model/hf_io.h"
#include "runtime/checkpoint.h"
#include "scheduler/program.h"
#include "scheduler/schedules.h"

namespace stp {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// The shards of DP rank 0, read on first use: global rank -> tensors.
class ShardCache {
 public:
  ShardCache(std::string dir, int64_t step) : dir_(std::move(dir)), step_(step) {}
  std::string get(int rank, const ShardMap** out) {
    auto it = shards_.find(rank);
    if (it == shards_.end()) {
      const std::string path = (std::filesystem::path(dir_) / checkpoint_shard_name(rank)).string();
      ShardMap m;
      std::error_code ec;
      if (!std::filesystem::exists(path, ec)) return "checkpoint shard '" + path + "' is missing";
      std::string err = checkpoint_read_shard(path, &m, ShardOrigin{step_, rank});
      if (!err.empty()) return err;
      it = shards_.emplace(rank, std::move(m)).first;
    }
    *out = &it->second;
    return {};
  }
  std::string path(int rank) const { return (std::filesystem::path(dir_) / checkpoint_shard_name(rank)).string(); }

 private:
  std::string dir_;
  int64_t step_;
  std::map<int, ShardMap> shards_;
};

// Rebuilds one TP rank's Param of (stage, d) from its shard tensor.
std::string shard_param(ShardCache& cache, int rank, int stage, const ParamDesc& d, int tp, Param<float>* p) {
  const ShardMap* m = nullptr;
  std::string err = cache.get(rank, &m);
  if (!err.empty()) return err;
  const std::string key = checkpoint_shard_key(stage, d.name);
  auto it = m->find(key);
  if (it == m->end()) return "checkpoint shard '" + cache.path(rank) + "' lacks tensor " + key;
  p->desc = d;
  p->local_shape = param_local_shape(d, tp);
  if (it->second.shape != p->local_shape)
    return "checkpoint shard '" + cache.path(rank) + "': tensor " + key + " has shape " + shape_str(it->second.shape) +
           ", the config's TP " + std::to_string(tp) + " shard is " + shape_str(p->local_shape);
  p->value = it->second.data;
  return {};
}

}  // namespace

std::string checkpoint_full_state(const Config& cfg_in, const std::string& root, FullState* state, int64_t* step) {
  std::error_code ec;
  if (!std::filesystem::is_directory(root, ec)) return "checkpoint directory '" + root + "' does not exist";
  const std::optional<int64_t> latest = checkpoint_latest(root);
  if (!latest) return "no complete checkpoint (step_*/manifest.json) under '" + root + "'";
  Config cfg = cfg_in;  // chunks resolved as the trainer resolves them (Trainer::build)
  const int chunks = config_chunks(cfg);
  cfg.parallel.chunks = chunks;
  const ProgramResult prog = pipeline_from_config(cfg);  // its placement (also for csv schedules)
  if (!prog.ok()) return prog.error;
  const Placement pl = prog.program->placement;
  const nlohmann::json compat = checkpoint_compat(cfg, chunks, placement_name(pl));
  ManifestResult man = checkpoint_read_manifest(root, *latest, compat);
  if (!man.error.empty()) return man.error;

  const ModelDesc desc = model_desc_build(cfg, chunks, config_stage_layers(cfg));
  const int TP = cfg.parallel.tp, PP = cfg.parallel.pp;
  ShardCache cache(checkpoint_step_dir(root, *latest), *latest);
  std::set<std::string> seen;
  FullState out;
  for (const StageDesc& sd : desc.stages) {
    const int pp_rank = stage_rank(pl, PP, sd.stage);
    for (const ParamDesc& d : sd.params) {
      if (!seen.insert(d.name).second) continue;  // the tied embedding's head replica
      const int n = d.shard_dim < 0 ? 1 : TP;     // a replicated tensor: TP rank 0's copy
      std::vector<Param<float>> parts(static_cast<size_t>(n));
      std::vector<const Param<float>*> ptrs;
      for (int t = 0; t < n; ++t) {
        std::string err = shard_param(cache, pp_rank * TP + t, sd.stage, d, TP, &parts[size_t(t)]);
        if (!err.empty()) return err;
        ptrs.push_back(&parts[size_t(t)]);
      }
      out[d.name] = param_gather(ptrs, false);
    }
  }
  *state = std::move(out);
  *step = *latest;
  return {};
}

std::string init_from_file(const Config& cfg, const std::string& path, RankModel& model, int tp, int tp_rank) {
  FullState full;
  std::string err = hf_import(cfg, path, &full);
  if (!err.empty()) return "train.init_from: " + err;
  for (LocalParam& lp : model.local_params()) {
    auto it = full.find(lp.p->desc.name);
    if (it == full.end()) return "train.init_from '" + path + "': no tensor feeds '" + lp.p->desc.name + "'";
    err = param_scatter(*lp.p, it->second, tp, tp_rank);
    if (!err.empty()) return "train.init_from '" + path + "': " + err;
  }
  return {};
}

}  // namespace stp
