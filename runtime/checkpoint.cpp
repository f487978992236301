// checkpoint.cpp: checkpoint directories and the manifest (contract in checkpoint.h).
#include "runtime/checkpoint.h"

#include "comm/communicator.h"
#include "model/safetensors.h"
#include "runtime/core/metrics.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace stp {

namespace fs = std::filesystem;

std::string checkpoint_step_dir(const std::string& root, int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return (fs::path(root) / buf).string();
}

std::string checkpoint_shard_name(int global_rank) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "rank_%05d.safetensors", global_rank);
  return buf;
}

nlohmann::json checkpoint_compat(const Config& cfg, int chunks, const std::string& placement) {
  const ModelConfig& m = cfg.model;
  nlohmann::json model = {{"arch", m.arch},       {"layers", m.layers},         {"hidden", m.hidden},
                          {"heads", m.heads},     {"kv_heads", m.kv()},         {"ffn_hidden", m.ffn()},
                          {"vocab", m.vocab},     {"seq_len", m.seq_len},       {"norm", m.norm},
                          {"activation", m.activation}, {"position", m.position}, {"qkv_bias", m.qkv_bias},
                          {"bias", m.bias},       {"tie_embeddings", m.tie_embeddings}};
  nlohmann::json parallel = {{"tp", cfg.parallel.tp},
                             {"pp", cfg.parallel.pp},
                             {"dp", cfg.parallel.dp},
                             {"chunks", chunks},
                             {"placement", placement},
                             {"stage_layers", config_stage_layers(cfg)}};
  return {{"model", model}, {"parallel", parallel}};
}

nlohmann::json checkpoint_manifest(const Config& cfg, int chunks, const std::string& placement,
                                   int64_t step, int64_t next_sequence, int world) {
  nlohmann::json shards = nlohmann::json::array();
  for (int r = 0; r < world; ++r) shards.push_back(checkpoint_shard_name(r));
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(config_to_json(cfg));
  } catch (const std::exception&) {
    config = nullptr;  // informational only
  }
  return {{"format", "stp-checkpoint-1"},
          {"step", step},
          {"next_step", step + 1},
          {"data",
           {{"kind", cfg.data.kind},
            {"path", cfg.data.path},
            {"dtype", cfg.data.dtype},
            {"shuffle", cfg.data.shuffle},
            {"seed", cfg.data.seed},
            {"next_sequence", next_sequence}}},
          {"rng", {{"train.seed", cfg.train.seed}, {"data.seed", cfg.data.seed}}},
          {"grid", {{"schedule", cfg.schedule.name}, {"world", world}}},
          {"compat", checkpoint_compat(cfg, chunks, placement)},
          {"config", config},
          {"shards", shards}};
}

std::optional<int64_t> checkpoint_latest(const std::string& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return std::nullopt;
  std::optional<int64_t> best;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("step_", 0) != 0 || !fs::exists(e.path() / "manifest.json", ec)) continue;
    char* end = nullptr;
    const long long s = std::strtoll(name.c_str() + 5, &end, 10);
    if (*end != '\0' || s < 0) continue;
    if (!best || s > *best) best = s;
  }
  return best;
}

namespace {

// The first path where a and b differ ("model.hidden is 32 there, 16 here"), or "".
std::string first_difference(const nlohmann::json& there, const nlohmann::json& here, const std::string& path) {
  if (there.is_object() && here.is_object()) {
    for (auto it = here.begin(); it != here.end(); ++it) {
      const std::string p = path.empty() ? it.key() : path + "." + it.key();
      if (!there.contains(it.key())) return p + " is missing there, " + it.value().dump() + " here";
      std::string d = first_difference(there[it.key()], it.value(), p);
      if (!d.empty()) return d;
    }
    return {};
  }
  if (there != here) return path + " is " + there.dump() + " there, " + here.dump() + " here";
  return {};
}

}  // namespace

ManifestResult checkpoint_read_manifest(const std::string& root, int64_t step,
                                        const nlohmann::json& compat) {
  ManifestResult r;
  const std::string path = (fs::path(checkpoint_step_dir(root, step)) / "manifest.json").string();
  std::ifstream in(path);
  if (!in) {
    r.error = "checkpoint manifest '" + path + "' cannot be read";
    return r;
  }
  try {
    std::stringstream ss;
    ss << in.rdbuf();
    r.manifest = nlohmann::json::parse(ss.str());
  } catch (const std::exception& e) {
    r.error = "checkpoint manifest '" + path + "' is not valid JSON: " + e.what();
    return r;
  }
  if (r.manifest.value("format", "") != "stp-checkpoint-1" || !r.manifest.contains("compat")) {
    r.error = "'" + path + "' is not an stp-train checkpoint manifest (format stp-checkpoint-1)";
    return r;
  }
  const std::string d = first_difference(r.manifest["compat"], compat, "");
  if (!d.empty())
    r.error = "checkpoint '" + checkpoint_step_dir(root, step) +
              "' was written by another configuration: " + d +
              " (resume needs the same model and parallel layout)";
  return r;
}

std::string checkpoint_write_shard(const std::string& path, const ShardMap& tensors, ShardOrigin origin) {
  std::vector<StTensorIn> in;
  in.reserve(tensors.size());
  for (const auto& kv : tensors) in.push_back(StTensorIn{kv.first, kv.second.shape, kv.second.data.data(), StDtype::F32});
  std::map<std::string, std::string> meta = {{"format", "stp-checkpoint-shard-1"}};
  if (origin.step >= 0) meta["step"] = std::to_string(origin.step);
  if (origin.rank >= 0) meta["rank"] = std::to_string(origin.rank);
  return safetensors_write(path, in, meta);
}

namespace {

// "" when the shard's recorded `key` (step or rank) is absent or equals `want` (< 0: not checked).
std::string origin_mismatch(const SafetensorsFile& f, const std::string& path, const char* key, int64_t want) {
  const auto it = f.metadata().find(key);
  if (want < 0 || it == f.metadata().end()) return {};
  if (it->second == std::to_string(want)) return {};
  return "checkpoint shard '" + path + "' holds " + key + " " + it->second + ", expected " + key + " " +
         std::to_string(want) + " (a shard copied in from another checkpoint or rank?)";
}

}  // namespace

std::string checkpoint_read_shard(const std::string& path, ShardMap* tensors, ShardOrigin expect) {
  SafetensorsFile f;
  std::string err = SafetensorsFile::open(path, &f);
  if (!err.empty()) return err;
  err = origin_mismatch(f, path, "step", expect.step);
  if (err.empty()) err = origin_mismatch(f, path, "rank", expect.rank);
  if (!err.empty()) return err;
  for (const auto& kv : f.entries()) {
    ShardTensor t;
    err = f.read_f32(kv.first, &t.shape, &t.data);
    if (!err.empty()) return err;
    (*tensors)[kv.first] = std::move(t);
  }
  return {};
}

std::string checkpoint_save(const CheckpointSite& site, const std::string& root, int64_t step,
                            const ShardMap& shard) {
  const Config& cfg = *site.cfg;
  const std::string dir = checkpoint_step_dir(root, step);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  std::string err = ec ? "cannot create '" + dir + "': " + ec.message() : std::string();
  if (err.empty()) err = checkpoint_write_shard((std::filesystem::path(dir) / checkpoint_shard_name(site.rank)).string(), shard,
                                                   ShardOrigin{step, site.rank});
  // The vote: rank 0 writes the manifest only when every shard is on disk.
  bool bad = false;
  const CommStatus st = comm_any(*site.comm, !err.empty(), cfg.train.timeout_s, &bad);
  const std::string where = "checkpoint step " + std::to_string(step) + ": ";
  if (!err.empty()) return where + err;
  if (!st.ok()) return where + st.error;
  if (bad) return where + "another rank failed to write its shard";
  if (site.rank != 0) return {};
  const int64_t next_seq = step * config_sequences_per_step(cfg);
  const nlohmann::json man = checkpoint_manifest(cfg, site.chunks, site.placement, step, next_seq, site.world);
  return write_file_atomic(dir, "manifest.json", man.dump(2));
}

std::string checkpoint_load(const CheckpointSite& site, int64_t* step, ShardMap* shard, std::string* path) {
  const Config& cfg = *site.cfg;
  const std::string& root = cfg.output.checkpoint.dir;
  if (root.empty()) return "train.resume is true but output.checkpoint.dir is empty";
  *step = checkpoint_latest(root).value_or(-1);
  const CommStatus st = site.comm->broadcast(GroupKind::World, step, 1, DType::I64, 0).wait(cfg.train.timeout_s);
  if (!st.ok()) return "resume: " + st.error;
  if (*step < 0) return {};  // nothing to resume: start at step 1
  ManifestResult man = checkpoint_read_manifest(root, *step, checkpoint_compat(cfg, site.chunks, site.placement));
  if (!man.error.empty()) return man.error;
  *path = (std::filesystem::path(checkpoint_step_dir(root, *step)) / checkpoint_shard_name(site.rank)).string();
  return checkpoint_read_shard(*path, shard, ShardOrigin{*step, site.rank});
}

namespace {

constexpr const char* kParamSuffix[3] = {"", ".adam_m", ".adam_v"};  // value, AdamW m, AdamW v

}  // namespace

std::string checkpoint_shard_key(int stage, const std::string& name) {
  return "s" + std::to_string(stage) + "." + name;
}

void checkpoint_put_param(ShardMap* shard, int stage, const std::string& name, const std::vector<int64_t>& shape,
                          std::vector<float> value, std::vector<float> m, std::vector<float> v) {
  const std::string k = checkpoint_shard_key(stage, name);
  std::vector<float>* data[3] = {&value, &m, &v};
  for (int i = 0; i < 3; ++i) (*shard)[k + kParamSuffix[i]] = ShardTensor{shape, std::move(*data[i])};
}

std::string checkpoint_take_param(ShardMap& shard, const std::string& path, int stage, const std::string& name,
                                  const std::vector<int64_t>& shape, std::vector<float>* value,
                                  std::vector<float>* m, std::vector<float>* v) {
  const std::string k = checkpoint_shard_key(stage, name);
  std::vector<float>* out[3] = {value, m, v};
  for (int i = 0; i < 3; ++i) {
    const std::string key = k + kParamSuffix[i];
    auto it = shard.find(key);
    if (it == shard.end()) return "checkpoint shard '" + path + "' lacks tensor " + key;
    if (it->second.shape != shape || it->second.data.size() != out[i]->size())
      return "checkpoint shard '" + path + "': tensor " + key + " has another shape than this run's";
    *out[i] = std::move(it->second.data);
  }
  return {};
}

}  // namespace stp
