// config.cpp: YAML -> Config, with include:, --set overrides and validation.
//
// One binding table (bind_fields) lists every key with a pointer into Config; it drives reading,
// the unknown-key check (with a "did you mean") and config_to_json, so the three cannot disagree.
// Errors are values naming the file, the key (dotted path), line/column when known, and the rule.
#include "runtime/core/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <variant>

namespace fs = std::filesystem;

namespace stp {

std::string ConfigError::to_string() const {
  std::ostringstream os;
  os << (file.empty() ? "<config>" : file);
  if (line >= 0) os << ":" << line << ":" << column;
  os << ": ";
  if (!key.empty()) os << "'" << key << "': ";
  os << message;
  return os.str();
}

// ---- schedules --------------------------------------------------------------------------------------

const std::vector<std::string>& schedule_names() {
  static const std::vector<std::string> names = {"gpipe", "1f1b", "1f1b-i", "zb-h1",
                                                 "zb-v",  "dualpipe-v", "stp", "csv"};
  return names;
}

int schedule_default_chunks(const std::string& name) {
  if (name == "1f1b-i" || name == "zb-v" || name == "dualpipe-v" || name == "stp") return 2;
  return 1;
}

int schedule_min_microbatches(const std::string& name, int pp, int chunks) {
  if (name == "stp") return 3 * pp - 1;
  if (name == "dualpipe-v") return 2 * pp;
  if (name == "1f1b-i") return pp;
  return 1;
}

int config_chunks(const Config& cfg) {
  return cfg.parallel.chunks > 0 ? cfg.parallel.chunks : schedule_default_chunks(cfg.schedule.name);
}

std::vector<int> config_stage_layers(const Config& cfg) {
  if (!cfg.parallel.stage_layers.empty()) return cfg.parallel.stage_layers;
  const int S = cfg.parallel.pp * config_chunks(cfg);
  const int first = std::max(0, vision_geometry(cfg).stages - 1);  // first stage with LLM layers
  std::vector<int> out(size_t(std::max(S, 0)), 0);
  for (int i = first; i < S; ++i) out[size_t(i)] = cfg.model.layers / (S - first);
  return out;
}

VisionGeometry vision_geometry(const Config& cfg) {
  const VisionConfig& v = cfg.model.vision;
  VisionGeometry g;
  if (!v.enabled || v.patch_size < 1 || v.merge_size < 1) return g;
  g.grid = v.image_size / v.patch_size;
  g.patches = g.grid * g.grid;
  g.patch_dim = v.channels * v.temporal_patch * v.patch_size * v.patch_size;
  g.tokens_per_image = g.patches / (v.merge_size * v.merge_size);
  g.visual_tokens = v.images_per_sample * g.tokens_per_image;
  g.stages = v.placement == "spread" ? v.spread_stages : 1;
  return g;
}

std::vector<int> config_vision_stage_layers(const Config& cfg, int S) {
  std::vector<int> out(size_t(std::max(S, 0)), 0);
  const int k = vision_geometry(cfg).stages;
  for (int i = 0; i < std::min(k, S); ++i) out[size_t(i)] = cfg.model.vision.layers / k;
  return out;
}

int config_loss_tokens_per_sequence(const Config& cfg) {
  return cfg.model.seq_len - vision_geometry(cfg).visual_tokens;
}

int64_t config_sequences_per_step(const Config& cfg) {
  return int64_t(cfg.parallel.dp) * cfg.schedule.microbatches * cfg.schedule.micro_batch_size;
}

// ---- the binding table ----------------------------------------------------------------------------

namespace {

using FieldRef = std::variant<int*, double*, bool*, std::string*, uint64_t*, std::vector<int>*>;
struct Field {
  const char* key;
  FieldRef ref;
};
struct Section {
  std::string path;  // "" = top level, "model.vision"
  std::vector<Field> fields;
};

std::vector<Section> bind_fields(Config& c) {
  ClusterConfig& k = c.cluster;
  GpuSpec& g = k.gpu;
  ModelConfig& m = c.model;
  VisionConfig& v = m.vision;
  ParallelConfig& p = c.parallel;
  ScheduleConfig& s = c.schedule;
  TrainConfig& t = c.train;
  DataConfig& d = c.data;
  OutputConfig& o = c.output;
  return {
      {"cluster", {{"nodes", &k.nodes}, {"gpus_per_node", &k.gpus_per_node},
                   {"compute_efficiency", &k.compute_efficiency}, {"overlap_slowdown", &k.overlap_slowdown}}},
      {"cluster.gpu", {{"name", &g.name}, {"peak_tflops", &g.peak_tflops}, {"hbm_gb", &g.hbm_gb},
                       {"hbm_bw_gbs", &g.hbm_bw_gbs}, {"intra_bw_gbs", &g.intra_bw_gbs},
                       {"inter_bw_gbs", &g.inter_bw_gbs}, {"intra_latency_us", &g.intra_latency_us},
                       {"inter_latency_us", &g.inter_latency_us}}},
      {"model", {{"arch", &m.arch}, {"layers", &m.layers}, {"hidden", &m.hidden}, {"heads", &m.heads},
                 {"kv_heads", &m.kv_heads}, {"ffn_hidden", &m.ffn_hidden}, {"vocab", &m.vocab},
                 {"seq_len", &m.seq_len}, {"norm", &m.norm}, {"activation", &m.activation},
                 {"position", &m.position}, {"qkv_bias", &m.qkv_bias}, {"bias", &m.bias},
                 {"tie_embeddings", &m.tie_embeddings}, {"rope_theta", &m.rope_theta},
                 {"norm_eps", &m.norm_eps}, {"init_std", &m.init_std}}},
      {"model.vision", {{"enabled", &v.enabled}, {"image_size", &v.image_size}, {"patch_size", &v.patch_size},
                        {"channels", &v.channels}, {"temporal_patch", &v.temporal_patch}, {"layers", &v.layers}, {"hidden", &v.hidden},
                        {"heads", &v.heads}, {"ffn_hidden", &v.ffn_hidden}, {"merge_size", &v.merge_size},
                        {"images_per_sample", &v.images_per_sample}, {"placement", &v.placement},
                        {"spread_stages", &v.spread_stages}}},
      {"parallel", {{"tp", &p.tp}, {"pp", &p.pp}, {"dp", &p.dp}, {"chunks", &p.chunks},
                    {"sequence_parallel", &p.sequence_parallel}, {"stage_layers", &p.stage_layers}}},
      {"schedule", {{"name", &s.name}, {"file", &s.file}, {"microbatches", &s.microbatches},
                    {"micro_batch_size", &s.micro_batch_size}, {"t_ar", &s.t_ar}}},
      {"train", {{"steps", &t.steps}, {"lr", &t.lr}, {"min_lr", &t.min_lr}, {"warmup_steps", &t.warmup_steps},
                 {"lr_schedule", &t.lr_schedule}, {"weight_decay", &t.weight_decay}, {"beta1", &t.beta1},
                 {"beta2", &t.beta2}, {"eps", &t.eps}, {"grad_clip", &t.grad_clip}, {"seed", &t.seed},
                 {"precision", &t.precision}, {"device", &t.device}, {"deterministic", &t.deterministic},
                 {"recompute", &t.recompute}, {"offload", &t.offload}, {"resume", &t.resume},
                 {"init_from", &t.init_from}, {"timeout_s", &t.timeout_s},
                 {"checkpoint_on_sigterm", &t.checkpoint_on_sigterm}}},
      {"data", {{"kind", &d.kind}, {"path", &d.path}, {"dtype", &d.dtype}, {"patches", &d.patches},
                {"shuffle", &d.shuffle},
                {"seed", &d.seed}}},
      {"output", {{"dir", &o.dir}, {"metrics", &o.metrics}, {"trace", &o.trace}}},
      {"output.checkpoint", {{"dir", &o.checkpoint.dir}, {"every", &o.checkpoint.every}}},
      {"nccl", {{"port", &c.nccl.port}, {"watchdog_ms", &c.nccl.watchdog_ms}, {"blocking", &c.nccl.blocking},
                {"cga_cluster_size", &c.nccl.cga_cluster_size}, {"min_ctas", &c.nccl.min_ctas},
                {"max_ctas", &c.nccl.max_ctas}}},
  };
}

// Keys that are sections (maps) inside `path`.
std::vector<std::string> subsections(const std::vector<Section>& secs, const std::string& path) {
  std::vector<std::string> out;
  for (const Section& s : secs) {
    if (s.path.empty()) continue;
    const auto dot = s.path.rfind('.');
    const std::string parent = dot == std::string::npos ? "" : s.path.substr(0, dot);
    if (parent == path) out.push_back(dot == std::string::npos ? s.path : s.path.substr(dot + 1));
  }
  return out;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string did_you_mean(const std::string& key, const std::vector<std::string>& known) {
  std::string best;
  size_t best_d = 3;  // suggest only near misses
  for (const std::string& k : known) {
    const size_t dist = edit_distance(key, k);
    if (dist < best_d || (dist == best_d && best.empty() && dist <= key.size() / 3)) {
      best_d = dist;
      best = k;
    }
  }
  return best.empty() ? "" : " (did you mean '" + best + "'?)";
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}

// ---- loading: includes, overrides, provenance -----------------------------------------------------

// Where each dotted key was last set (file name), so errors name the right file.
struct Origin {
  std::string file;
  int line = -1, column = -1;
};
using Origins = std::map<std::string, Origin>;

struct Loader {
  Origins origins;
  std::optional<ConfigError> err;
  std::vector<std::string> stack;  // include chain, for cycle detection

  void fail(const std::string& file, const std::string& key, const YAML::Mark& mark, const std::string& msg) {
    if (err) return;
    ConfigError e;
    e.file = file;
    e.key = key;
    if (!mark.is_null()) {
      e.line = mark.line + 1;
      e.column = mark.column + 1;
    }
    e.message = msg;
    err = e;
  }

  // Deep merge `src` into `dst` (maps merge, everything else replaces); records origins.
  void merge(YAML::Node dst, const YAML::Node& src, const std::string& prefix, const std::string& file) {
    for (auto it = src.begin(); it != src.end(); ++it) {
      const std::string key = it->first.as<std::string>();
      const std::string path = prefix.empty() ? key : prefix + "." + key;
      if (it->second.IsMap() && dst[key] && dst[key].IsMap()) {
        merge(dst[key], it->second, path, file);
      } else {
        dst[key] = it->second;  // shares the node (and its line/column marks)
        mark_origins(it->second, path, file);
      }
    }
  }
  void mark_origins(const YAML::Node& n, const std::string& path, const std::string& file) {
    const YAML::Mark mk = n.Mark();
    origins[path] = Origin{file, mk.is_null() ? -1 : mk.line + 1, mk.is_null() ? -1 : mk.column + 1};
    if (n.IsMap())
      for (auto it = n.begin(); it != n.end(); ++it)
        mark_origins(it->second, path + "." + it->first.as<std::string>(), file);
  }

  // Parses `text` (from `file`, directory `dir` for includes) and merges it into `root`.
  void load_text(YAML::Node root, const std::string& text, const std::string& file, const fs::path& dir) {
    YAML::Node doc;
    try {
      doc = YAML::Load(text);
    } catch (const YAML::ParserException& e) {
      fail(file, "", e.mark, "malformed YAML: " + e.msg);
      return;
    }
    if (doc.IsNull()) return;
    if (!doc.IsMap()) {
      fail(file, "", doc.Mark(), "the top level must be a mapping of sections (cluster, model, ...)");
      return;
    }
    if (YAML::Node inc = doc["include"]) {
      std::vector<YAML::Node> items;
      if (inc.IsScalar()) items.push_back(inc);
      else if (inc.IsSequence()) for (const auto& i : inc) items.push_back(i);
      else return fail(file, "include", inc.Mark(), "must be a file name or a list of file names");
      for (const YAML::Node& i : items) {
        if (!i.IsScalar()) return fail(file, "include", i.Mark(), "each entry must be a file name");
        load_file(root, (dir / i.as<std::string>()).lexically_normal().string(), file, i.Mark());
        if (err) return;
      }
      doc.remove("include");
    }
    merge(root, doc, "", file);
  }

  void load_file(YAML::Node root, const std::string& path, const std::string& from, const YAML::Mark& mark) {
    if (std::find(stack.begin(), stack.end(), path) != stack.end())
      return fail(from, "include", mark, "include cycle: '" + path + "' includes itself (via " + join(stack, " -> ") + ")");
    std::ifstream in(path);
    if (!in) {
      if (from.empty()) return fail(path, "", YAML::Mark::null_mark(), "cannot open config file");
      return fail(from, "include", mark, "cannot open included file '" + path + "'");
    }
    std::stringstream ss;
    ss << in.rdbuf();
    stack.push_back(path);
    load_text(root, ss.str(), path, fs::path(path).parent_path());
    stack.pop_back();
  }

  void apply_override(YAML::Node root, const std::string& ov) {
    const auto eq = ov.find('=');
    if (eq == std::string::npos || eq == 0)
      return fail("--set", ov, YAML::Mark::null_mark(), "expected key.path=value");
    const std::string key = ov.substr(0, eq), value = ov.substr(eq + 1);
    YAML::Node v;
    try {
      v = YAML::Load(value.empty() ? "''" : value);
    } catch (const YAML::ParserException& e) {
      return fail("--set", key, YAML::Mark::null_mark(), "value '" + value + "' is not valid YAML: " + e.msg);
    }
    std::vector<std::string> parts;
    std::stringstream ks(key);
    for (std::string p; std::getline(ks, p, '.');) parts.push_back(p);
    std::vector<YAML::Node> chain{root};
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      YAML::Node next = chain.back()[parts[i]];
      if (next && !next.IsMap())
        return fail("--set", key, YAML::Mark::null_mark(), "'" + parts[i] + "' is not a section");
      chain.push_back(next);
    }
    chain.back()[parts.back()] = v;
    origins[key] = Origin{"--set"};
  }
};

// ---- reading the merged tree into Config ------------------------------------------------------------

struct Reader {
  const Origins& origins;
  const std::string& top_file;
  std::optional<ConfigError> err;

  std::string file_of(const std::string& key) const {
    auto it = origins.find(key);
    return it == origins.end() ? top_file : it->second.file;
  }
  void fail(const std::string& key, const YAML::Node& n, const std::string& msg) {
    if (err) return;
    ConfigError e;
    e.file = file_of(key);
    e.key = key;
    if (n && !n.Mark().is_null()) {
      e.line = n.Mark().line + 1;
      e.column = n.Mark().column + 1;
    }
    e.message = msg;
    err = e;
  }

  static std::string show(const YAML::Node& n) {
    if (n.IsScalar()) return "'" + n.Scalar() + "'";
    return n.IsMap() ? "a mapping" : n.IsSequence() ? "a list" : "null";
  }

  void read(const std::string& key, const YAML::Node& n, FieldRef ref) {
    std::visit([&](auto* p) { read_one(key, n, p); }, ref);
  }
  template <class T>
  void scalar(const std::string& key, const YAML::Node& n, T* out, const char* what) {
    if (!n.IsScalar()) return fail(key, n, std::string("expected ") + what + ", got " + show(n));
    try {
      *out = n.as<T>();
    } catch (const YAML::Exception&) {
      fail(key, n, std::string("expected ") + what + ", got " + show(n));
    }
  }
  void read_one(const std::string& k, const YAML::Node& n, int* p) { scalar(k, n, p, "an integer"); }
  void read_one(const std::string& k, const YAML::Node& n, uint64_t* p) { scalar(k, n, p, "a non-negative integer"); }
  void read_one(const std::string& k, const YAML::Node& n, double* p) { scalar(k, n, p, "a number"); }
  void read_one(const std::string& k, const YAML::Node& n, bool* p) { scalar(k, n, p, "true or false"); }
  void read_one(const std::string& k, const YAML::Node& n, std::string* p) { scalar(k, n, p, "a string"); }
  void read_one(const std::string& k, const YAML::Node& n, std::vector<int>* p) {
    if (!n.IsSequence()) return fail(k, n, "expected a list of integers, got " + show(n));
    p->clear();
    for (size_t i = 0; i < n.size(); ++i) {
      int v = 0;
      scalar(k + "[" + std::to_string(i) + "]", n[i], &v, "an integer");
      p->push_back(v);
    }
  }

  void read_all(const YAML::Node& root, std::vector<Section>& secs) {
    check_keys(root, "", {}, secs);
    for (Section& s : secs) {
      // Note: YAML::Node's operator= assigns *content*; reset() rebinds the handle.
      YAML::Node node;
      node.reset(root);
      std::stringstream ps(s.path);
      for (std::string part; std::getline(ps, part, '.') && node;) {
        if (!node.IsMap()) break;
        YAML::Node next = node[part];
        node.reset(next);
      }
      if (!node || node.IsNull()) continue;
      if (!node.IsMap()) return fail(s.path, node, "expected a section (a mapping), got " + show(node));
      std::vector<std::string> names;
      for (const Field& f : s.fields) names.push_back(f.key);
      check_keys(node, s.path, names, secs);
      if (err) return;
      for (const Field& f : s.fields)
        if (YAML::Node v = node[f.key]) read(s.path + "." + f.key, v, f.ref);
      if (err) return;
    }
  }

  void check_keys(const YAML::Node& node, const std::string& path, std::vector<std::string> known,
                  const std::vector<Section>& secs) {
    for (const std::string& sub : subsections(secs, path)) known.push_back(sub);
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string key = it->first.as<std::string>();
      if (std::find(known.begin(), known.end(), key) != known.end()) continue;
      const std::string full = path.empty() ? key : path + "." + key;
      std::vector<std::string> sorted = known;
      std::sort(sorted.begin(), sorted.end());
      return fail(full, it->first, "unknown key" + did_you_mean(key, known) +
                                       "; valid keys " + (path.empty() ? "at the top level" : "in '" + path + "'") +
                                       ": " + join(sorted, ", "));
    }
  }
};

ConfigResult finish(YAML::Node root, Loader& ld, const std::string& top, const std::vector<std::string>& overrides);

}  // namespace

// ---- validation ------------------------------------------------------------------------------------

namespace {

std::optional<ConfigError> validate(const Config& c, const Origins& origins) {
  auto err = [&](const std::string& key, const std::string& msg) {
    ConfigError e;
    auto it = origins.find(key);
    e.file = it == origins.end() ? c.source : it->second.file;
    if (it != origins.end()) {
      e.line = it->second.line;
      e.column = it->second.column;
    }
    e.key = key;
    e.message = msg;
    return std::optional<ConfigError>(e);
  };
  auto str = [](auto v) { return std::to_string(v); };
  const ModelConfig& m = c.model;
  const ParallelConfig& p = c.parallel;
  const ScheduleConfig& s = c.schedule;

  for (auto [key, v] : {std::pair<const char*, int>{"model.layers", m.layers}, {"model.hidden", m.hidden},
                        {"model.heads", m.heads}, {"model.vocab", m.vocab}, {"model.seq_len", m.seq_len}}) {
    if (origins.count(key) == 0) return err(key, "required key is missing");
    if (v <= 0) return err(key, "must be a positive integer, got " + str(v));
  }
  for (auto [key, v] : {std::pair<const char*, int>{"parallel.tp", p.tp}, {"parallel.pp", p.pp},
                        {"parallel.dp", p.dp}, {"schedule.microbatches", s.microbatches},
                        {"schedule.micro_batch_size", s.micro_batch_size}, {"cluster.nodes", c.cluster.nodes},
                        {"cluster.gpus_per_node", c.cluster.gpus_per_node}})
    if (v < 1) return err(key, "must be >= 1, got " + str(v));
  if (m.kv_heads < 0) return err("model.kv_heads", "must be >= 0 (0 = heads), got " + str(m.kv_heads));
  if (m.ffn_hidden < 0) return err("model.ffn_hidden", "must be >= 0 (0 = 4*hidden), got " + str(m.ffn_hidden));

  auto one_of = [&](const char* key, const std::string& v, std::vector<std::string> ok) -> std::optional<ConfigError> {
    if (std::find(ok.begin(), ok.end(), v) != ok.end()) return std::nullopt;
    return err(key, "'" + v + "' is not one of: " + join(ok, ", "));
  };
  for (auto r : {one_of("model.norm", m.norm, {"layernorm", "rmsnorm"}),
                 one_of("model.activation", m.activation, {"gelu", "swiglu"}),
                 one_of("model.position", m.position, {"learned", "rope"}),
                 one_of("train.precision", c.train.precision, {"fp32", "bf16"}),
                 one_of("train.device", c.train.device, {"cpu", "cuda"}),
                 one_of("train.lr_schedule", c.train.lr_schedule, {"cosine", "constant"}),
                 one_of("data.kind", c.data.kind, {"synthetic", "tokens"}),
                 one_of("data.dtype", c.data.dtype, {"uint16", "uint32"}),
                 one_of("model.vision.placement", m.vision.placement, {"front", "spread"})})
    if (r) return r;
  {
    std::vector<std::string> names = schedule_names();
    if (std::find(names.begin(), names.end(), s.name) == names.end())
      return err("schedule.name", "unknown schedule '" + s.name + "'" + did_you_mean(s.name, names) +
                                      "; valid: " + join(names, ", "));
  }

  if (m.hidden % m.heads != 0)
    return err("model.hidden", "hidden must be divisible by heads: " + str(m.hidden) + " % " + str(m.heads) +
                                   " = " + str(m.hidden % m.heads));
  if (m.heads % m.kv() != 0)
    return err("model.kv_heads", "heads must be divisible by kv_heads: " + str(m.heads) + " % " + str(m.kv()) +
                                     " = " + str(m.heads % m.kv()));
  if (m.position == "rope" && m.head_dim() % 2 != 0)
    return err("model.position", "rope needs an even head dim, got hidden/heads = " + str(m.head_dim()));
  auto div_tp = [&](const char* key, const char* what, int v) -> std::optional<ConfigError> {
    if (v % p.tp == 0) return std::nullopt;
    return err(key, std::string(what) + " must be divisible by parallel.tp: " + str(v) + " % " + str(p.tp) +
                        " = " + str(v % p.tp));
  };
  for (auto r : {div_tp("model.heads", "heads", m.heads), div_tp("model.kv_heads", "kv_heads", m.kv()),
                 div_tp("model.ffn_hidden", "ffn_hidden", m.ffn()), div_tp("model.vocab", "vocab (vocab-parallel embedding)", m.vocab)})
    if (r) return r;

  // Chunks and layer split.
  const int def_chunks = schedule_default_chunks(s.name);
  const int chunks = p.chunks > 0 ? p.chunks : def_chunks;
  const bool v_sched = s.name == "zb-v" || s.name == "dualpipe-v" || s.name == "stp";
  if (p.chunks < 0) return err("parallel.chunks", "must be >= 0 (0 = the schedule's default), got " + str(p.chunks));
  if (v_sched && chunks != 2)
    return err("parallel.chunks", "schedule '" + s.name + "' is V-shaped and needs exactly 2 chunks per rank, got " + str(chunks));
  if (s.name == "1f1b-i" && chunks < 2)
    return err("parallel.chunks", "interleaved 1F1B needs chunks >= 2, got " + str(chunks));
  if ((s.name == "gpipe" || s.name == "1f1b" || s.name == "zb-h1") && chunks != 1)
    return err("parallel.chunks", "schedule '" + s.name + "' runs one chunk per rank, got " + str(chunks));
  const int S = p.pp * chunks;
  // Vision tower placement (the rest of model.vision is checked below).
  int vision_only = 0;  // leading virtual stages that hold vision layers only
  if (m.vision.enabled && m.vision.placement == "spread") {
    const VisionConfig& v = m.vision;
    if (v.spread_stages < 1 || v.spread_stages > S)
      return err("model.vision.spread_stages", "must be in 1..pp*chunks = " + str(S) + ", got " + str(v.spread_stages));
    if (v.layers % v.spread_stages != 0)
      return err("model.vision.layers", "vision layers must be divisible over spread_stages: " + str(v.layers) + " % " +
                                            str(v.spread_stages) + " = " + str(v.layers % v.spread_stages));
    if (m.tie_embeddings && v.spread_stages > 1)
      return err("model.vision.placement", "'spread' puts the text embedding on stage " + str(v.spread_stages - 1) +
                                               ", which tied embeddings (model.tie_embeddings) do not support; use "
                                               "placement 'front' or untied embeddings");
    vision_only = v.spread_stages - 1;
  }
  if (!p.stage_layers.empty()) {
    if (int(p.stage_layers.size()) != S)
      return err("parallel.stage_layers", "needs one entry per virtual stage: pp*chunks = " + str(p.pp) + "*" +
                                              str(chunks) + " = " + str(S) + ", got " + str(p.stage_layers.size()));
    int sum = 0;
    for (size_t i = 0; i < p.stage_layers.size(); ++i) {
      if (int(i) < vision_only && p.stage_layers[i] != 0)
        return err("parallel.stage_layers", "entry " + str(i) + " is " + str(p.stage_layers[i]) +
                                                "; stages 0.." + str(vision_only - 1) +
                                                " hold only vision layers (model.vision.spread_stages = " +
                                                str(m.vision.spread_stages) + ") and need 0 LLM layers");
      if (int(i) >= vision_only && p.stage_layers[i] < 1)
        return err("parallel.stage_layers", "entry " + str(i) + " is " + str(p.stage_layers[i]) + "; every stage needs >= 1 layer");
      sum += p.stage_layers[i];
    }
    if (sum != m.layers)
      return err("parallel.stage_layers", "entries sum to " + str(sum) + " but model.layers = " + str(m.layers));
  } else if (vision_only > 0) {
    if (m.layers % (S - vision_only) != 0)
      return err("model.layers", "with the vision tower spread over " + str(vision_only + 1) +
                                   " stages, the LLM layers split over the last " + str(S - vision_only) +
                                   " virtual stages when parallel.stage_layers is not given: " + str(m.layers) +
                                   " % " + str(S - vision_only) + " = " + str(m.layers % (S - vision_only)));
  } else if (m.layers % S != 0) {
    return err("model.layers", "layers must be divisible over pp*chunks when parallel.stage_layers is not given: " +
                                   str(m.layers) + " % (" + str(p.pp) + "*" + str(chunks) + ") = " + str(m.layers % S));
  }

  // Micro-batches.
  if (s.name != "csv") {
    const int need = schedule_min_microbatches(s.name, p.pp, chunks);
    if (s.microbatches < need) {
      std::string why = s.name == "stp" ? "STP needs M >= 3P-1 = 3*" + str(p.pp) + "-1 = " + str(need)
                                        : "'" + s.name + "' needs at least " + str(need) + " with pp = " + str(p.pp);
      return err("schedule.microbatches", why + ", got " + str(s.microbatches));
    }
    if (s.name == "1f1b-i" && s.microbatches % p.pp != 0)
      return err("schedule.microbatches", "interleaved 1F1B needs microbatches divisible by pp: " +
                                              str(s.microbatches) + " % " + str(p.pp) + " = " + str(s.microbatches % p.pp));
  } else if (s.file.empty()) {
    return err("schedule.file", "schedule.name is 'csv', so schedule.file must name the per-rank CSV to run");
  } else if (p.chunks == 0) {
    return err("parallel.chunks", "schedule.name is 'csv': set parallel.chunks to the chunks per rank the CSV uses");
  }

  if (c.data.kind == "tokens" && c.data.path.empty())
    return err("data.path", "data.kind is 'tokens', so data.path must name a token file");
  if (c.cluster.gpu.peak_tflops <= 0)
    return err("cluster.gpu.peak_tflops", "must be > 0, got " + std::to_string(c.cluster.gpu.peak_tflops));
  if (c.train.steps < 0) return err("train.steps", "must be >= 0, got " + str(c.train.steps));
  if (c.train.timeout_s <= 0) return err("train.timeout_s", "must be > 0 seconds");
  if (c.output.checkpoint.every < 0) return err("output.checkpoint.every", "must be >= 0");
  {
    const NcclConfig& n = c.nccl;
    if (n.port < 0 || n.port > 65535)
      return err("nccl.port", "must be a TCP port in 0..65535 (0 = MASTER_PORT + 1), got " + str(n.port));
    if (!(n.watchdog_ms > 0)) {
      std::ostringstream got;
      got << n.watchdog_ms;
      return err("nccl.watchdog_ms", "must be > 0 milliseconds, got " + got.str());
    }
    if (n.cga_cluster_size < 0 || n.cga_cluster_size > 8)
      return err("nccl.cga_cluster_size", "must be in 0..8 (0 = NCCL's default), got " + str(n.cga_cluster_size));
    for (auto [key, v] : {std::pair<const char*, int>{"nccl.min_ctas", n.min_ctas}, {"nccl.max_ctas", n.max_ctas}})
      if (v < 0) return err(key, "must be >= 0 (0 = NCCL's default), got " + str(v));
    if (n.min_ctas > 0 && n.max_ctas > 0 && n.min_ctas > n.max_ctas)
      return err("nccl.min_ctas", "min_ctas must be <= max_ctas: " + str(n.min_ctas) + " > " + str(n.max_ctas));
  }
  if (m.vision.enabled) {
    const VisionConfig& v = m.vision;
    if (v.layers < 1 || v.hidden < 1 || v.heads < 1 || v.patch_size < 1)
      return err("model.vision", "an enabled vision tower needs layers, hidden, heads and patch_size >= 1");
    if (v.hidden % v.heads != 0)
      return err("model.vision.hidden", "hidden must be divisible by heads: " + str(v.hidden) + " % " + str(v.heads));
    if (v.merge_size < 1) return err("model.vision.merge_size", "must be >= 1, got " + str(v.merge_size));
    if (v.image_size % (v.patch_size * v.merge_size) != 0)
      return err("model.vision.image_size", "must be divisible by patch_size*merge_size = " + str(v.patch_size * v.merge_size));
    if (v.channels < 1) return err("model.vision.channels", "must be >= 1, got " + str(v.channels));
    if (v.temporal_patch < 1) return err("model.vision.temporal_patch", "must be >= 1, got " + str(v.temporal_patch));
    if (v.images_per_sample < 1)
      return err("model.vision.images_per_sample", "must be >= 1, got " + str(v.images_per_sample));
    if ((v.hidden / v.heads) % 4 != 0)
      return err("model.vision.heads", "the 2-D rotary embedding needs a vision head dim divisible by 4, got hidden/heads = " +
                                           str(v.hidden / v.heads));
    const VisionGeometry g = vision_geometry(c);
    for (auto r : {div_tp("model.vision.heads", "vision heads", v.heads),
                   div_tp("model.vision.ffn_hidden", "vision ffn_hidden", v.ffn()),
                   div_tp("model.vision.patch_size", "channels*temporal_patch*patch_size^2 (the row-parallel patch embedding)", g.patch_dim)})
      if (r) return r;
    if (g.visual_tokens > m.seq_len - 2)
      return err("model.vision.images_per_sample",
                 "the visual tokens must leave room for text: images_per_sample * (image_size/patch_size/merge_size)^2 = " +
                     str(v.images_per_sample) + " * " + str(g.tokens_per_image) + " = " + str(g.visual_tokens) +
                     " must be <= seq_len - 2 = " + str(m.seq_len - 2));
  }
  return std::nullopt;
}

ConfigResult finish(YAML::Node root, Loader& ld, const std::string& top, const std::vector<std::string>& overrides) {
  ConfigResult r;
  for (const std::string& ov : overrides) {
    if (ld.err) break;
    ld.apply_override(root, ov);
  }
  if (ld.err) {
    r.error = ld.err;
    return r;
  }
  Config cfg;
  cfg.source = top;
  std::vector<Section> secs = bind_fields(cfg);
  Reader rd{ld.origins, top, std::nullopt};
  rd.read_all(root, secs);
  if (rd.err) {
    r.error = rd.err;
    return r;
  }
  if (auto e = validate(cfg, ld.origins)) {
    r.error = e;
    return r;
  }
  r.config = cfg;
  return r;
}

}  // namespace

static ConfigResult config_load_unguarded(const std::string& path, const std::vector<std::string>& overrides);
static ConfigResult config_load_string_unguarded(const std::string& yaml, const std::string& name,
                                                 const std::vector<std::string>& overrides);

namespace {

// No exception escapes the loader: yaml-cpp throws on shapes the code above does not expect (a
// mapping used as a key, say); such input becomes an error naming the file and position.
template <class F>
ConfigResult guarded(const std::string& file, F&& load) {
  try {
    return load();
  } catch (const YAML::Exception& e) {
    ConfigResult r;
    ConfigError err;
    err.file = file;
    if (!e.mark.is_null()) {
      err.line = e.mark.line + 1;
      err.column = e.mark.column + 1;
    }
    err.message = "unsupported YAML here (keys must be plain names): " + e.msg;
    r.error = err;
    return r;
  } catch (const std::exception& e) {
    ConfigResult r;
    r.error = ConfigError{file, "", -1, -1, std::string("cannot load config: ") + e.what()};
    return r;
  }
}

}  // namespace

ConfigResult config_load(const std::string& path, const std::vector<std::string>& overrides) {
  return guarded(path, [&] { return config_load_unguarded(path, overrides); });
}

ConfigResult config_load_string(const std::string& yaml, const std::string& name,
                                const std::vector<std::string>& overrides) {
  return guarded(name, [&] { return config_load_string_unguarded(yaml, name, overrides); });
}

static ConfigResult config_load_unguarded(const std::string& path, const std::vector<std::string>& overrides) {
  Loader ld;
  YAML::Node root(YAML::NodeType::Map);
  ld.load_file(root, path, "", YAML::Mark::null_mark());
  if (ld.err) {
    ConfigResult r;
    r.error = ld.err;
    return r;
  }
  return finish(root, ld, path, overrides);
}

static ConfigResult config_load_string_unguarded(const std::string& yaml, const std::string& name,
                                                 const std::vector<std::string>& overrides) {
  Loader ld;
  YAML::Node root(YAML::NodeType::Map);
  ld.load_text(root, yaml, name, fs::current_path());
  if (ld.err) {
    ConfigResult r;
    r.error = ld.err;
    return r;
  }
  return finish(root, ld, name, overrides);
}

std::optional<ConfigError> config_validate_world(const Config& cfg, int world_size) {
  const ParallelConfig& p = cfg.parallel;
  const int need = p.tp * p.pp * p.dp;
  if (need == world_size) return std::nullopt;
  ConfigError e;
  e.file = cfg.source;
  e.key = "parallel";
  e.message = "tp*pp*dp = " + std::to_string(p.tp) + "*" + std::to_string(p.pp) + "*" + std::to_string(p.dp) +
              " = " + std::to_string(need) + ", but the launcher started " + std::to_string(world_size) +
              (world_size == 1 ? " rank" : " ranks");
  return e;
}

std::string config_to_json(const Config& cfg_in, int indent) {
  Config cfg = cfg_in;
  nlohmann::ordered_json j;
  for (const Section& s : bind_fields(cfg)) {
    nlohmann::ordered_json* node = &j;
    std::stringstream ps(s.path);
    for (std::string part; std::getline(ps, part, '.');) node = &(*node)[part];
    for (const Field& f : s.fields)
      std::visit([&](auto* p) { (*node)[f.key] = *p; }, f.ref);
  }
  j["source"] = cfg.source;
  return j.dump(indent);
}

}  // namespace stp
