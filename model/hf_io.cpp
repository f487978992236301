// hf_io.cpp: Hugging Face naming for export and import (contract in hf_io.h). Each of our tensors
// maps to one or more file tensors, each a block of rows of ours, optionally transposed.
#include "model/hf_io.h"

#include <regex>

#include "model/desc/desc.h"

namespace stp {
namespace {

// One file tensor: rows [row0, row0 + rows) of our tensor, transposed when `transpose` (2-D).
struct Piece {
  std::string name;
  int64_t row0 = 0, rows = 0;
  bool transpose = false;
};

bool is_gpt(const Config& cfg) { return cfg.model.arch == "gpt"; }

// Our per-layer suffix (after "layers.{i}.") -> HF suffix, for a tensor kept whole.
std::string llama_layer_name(const std::string& s) {
  static const std::vector<std::pair<std::string, std::string>> map = {
      {"attn_norm.", "input_layernorm."},
      {"mlp_norm.", "post_attention_layernorm."},
      {"attn.out.", "self_attn.o_proj."},
      {"mlp.fc2.", "mlp.down_proj."}};
  for (const auto& [ours, theirs] : map)
    if (s.rfind(ours, 0) == 0) return theirs + s.substr(ours.size());
  return "";
}

std::string gpt_layer_name(const std::string& s) {
  static const std::vector<std::pair<std::string, std::string>> map = {
      {"attn_norm.", "ln_1."},       {"mlp_norm.", "ln_2."},    {"attn.qkv.", "attn.c_attn."},
      {"attn.out.", "attn.c_proj."}, {"mlp.fc1.", "mlp.c_fc."}, {"mlp.fc2.", "mlp.c_proj."}};
  for (const auto& [ours, theirs] : map)
    if (s.rfind(ours, 0) == 0) return theirs + s.substr(ours.size());
  return "";
}

std::vector<Piece> gpt_pieces(const std::string& name, const FullTensor& t) {
  const int64_t rows = t.shape.at(0);
  const bool tr = t.shape.size() == 2;
  if (name == "embed.weight") return {{"transformer.wte.weight", 0, rows, false}};
  if (name == "embed.pos") return {{"transformer.wpe.weight", 0, rows, false}};
  if (name == "lm_head.weight") return {{"lm_head.weight", 0, rows, false}};
  if (name.rfind("final_norm.", 0) == 0)
    return {{"transformer.ln_f." + name.substr(11), 0, rows, false}};
  std::smatch m;
  static const std::regex layer(R"(layers\.(\d+)\.(.*))");
  if (std::regex_match(name, m, layer)) {
    const std::string hf = gpt_layer_name(m[2]);
    if (!hf.empty()) return {{"transformer.h." + std::string(m[1]) + "." + hf, 0, rows, tr}};
  }
  return {};
}

std::vector<Piece> llama_pieces(const Config& cfg, const std::string& name, const FullTensor& t) {
  const int64_t rows = t.shape.at(0);
  if (name == "embed.weight") return {{"model.embed_tokens.weight", 0, rows, false}};
  if (name == "embed.pos") return {{"model.embed_positions.weight", 0, rows, false}};
  if (name == "lm_head.weight") return {{"lm_head.weight", 0, rows, false}};
  if (name.rfind("final_norm.", 0) == 0) return {{"model.norm." + name.substr(11), 0, rows, false}};
  std::smatch m;
  static const std::regex layer(R"(layers\.(\d+)\.(.*))");
  if (!std::regex_match(name, m, layer)) return {};
  const std::string p = "model.layers." + std::string(m[1]) + ".", s = m[2];
  const int64_t HD = cfg.model.head_dim(), q = cfg.model.heads * HD, kv = cfg.model.kv() * HD;
  if (s.rfind("attn.qkv.", 0) == 0) {
    const std::string w = s.substr(9);
    return {{p + "self_attn.q_proj." + w, 0, q, false},
            {p + "self_attn.k_proj." + w, q, kv, false},
            {p + "self_attn.v_proj." + w, q + kv, kv, false}};
  }
  if (s.rfind("mlp.fc1.", 0) == 0) {
    const std::string w = s.substr(8);
    if (cfg.model.activation != "swiglu") return {{p + "mlp.up_proj." + w, 0, rows, false}};
    const int64_t F = cfg.model.ffn();
    return {{p + "mlp.gate_proj." + w, 0, F, false}, {p + "mlp.up_proj." + w, F, F, false}};
  }
  const std::string hf = llama_layer_name(s);
  if (hf.empty()) return {};
  return {{p + hf, 0, rows, false}};
}

std::vector<Piece> pieces(const Config& cfg, const std::string& name, const FullTensor& t) {
  return is_gpt(cfg) ? gpt_pieces(name, t) : llama_pieces(cfg, name, t);
}

// Shape of a piece in the file.
std::vector<int64_t> piece_shape(const FullTensor& t, const Piece& p) {
  std::vector<int64_t> s = t.shape;
  s[0] = p.rows;
  if (p.transpose) std::swap(s[0], s[1]);
  return s;
}

// The piece's data, in the file's layout.
std::vector<float> cut(const FullTensor& t, const Piece& p) {
  const int64_t cols = t.shape.size() == 2 ? t.shape[1] : 1;
  std::vector<float> out(t.data.begin() + p.row0 * cols, t.data.begin() + (p.row0 + p.rows) * cols);
  if (!p.transpose) return out;
  std::vector<float> tr(out.size());
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t c = 0; c < cols; ++c) tr[size_t(c * p.rows + r)] = out[size_t(r * cols + c)];
  return tr;
}

// Writes the file's piece data back into rows of our tensor.
void paste(FullTensor& t, const Piece& p, const std::vector<float>& src) {
  const int64_t cols = t.shape.size() == 2 ? t.shape[1] : 1;
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      t.data[size_t((p.row0 + r) * cols + c)] =
          p.transpose ? src[size_t(c * p.rows + r)] : src[size_t(r * cols + c)];
}

}  // namespace

FullState hf_expected_state(const Config& cfg) {
  Config c = cfg;
  c.parallel.tp = 1;
  c.parallel.pp = 1;
  const ModelDesc d = model_desc_build(c, 1, {cfg.model.layers});
  FullState st;
  for (const ParamDesc& p : d.stages[0].params) st[p.name].shape = p.shape;
  return st;
}

std::string hf_export(const Config& cfg, const FullState& state, const std::string& path,
                      StDtype dtype) {
  std::vector<std::vector<float>> keep;  // owns the cut pieces while writing
  std::vector<StTensorIn> out;
  keep.reserve(state.size() * 3);
  for (const auto& [name, t] : state) {
    const std::vector<Piece> ps = pieces(cfg, name, t);
    if (ps.empty()) return "hf_export: no Hugging Face name for tensor '" + name + "'";
    for (const Piece& p : ps) {
      keep.push_back(cut(t, p));
      out.push_back({p.name, piece_shape(t, p), keep.back().data(), dtype});
    }
  }
  return safetensors_write(path, out, {{"format", "pt"}});
}

std::string hf_import(const Config& cfg, const std::string& path, FullState* state) {
  SafetensorsFile f;
  std::string e = SafetensorsFile::open(path, &f);
  if (!e.empty()) return "hf_import: " + e;
  FullState st;
  try {
    st = hf_expected_state(cfg);
  } catch (const std::exception& ex) {
    return std::string("hf_import: ") + ex.what();
  }
  std::vector<float> buf;
  for (auto& [name, t] : st) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    t.data.assign(size_t(n), 0.0f);
    for (const Piece& p : pieces(cfg, name, t)) {
      if (!f.has(p.name))
        return "hf_import: '" + path + "' has no tensor '" + p.name + "' (for our '" + name + "')";
      e = f.read_f32(p.name, piece_shape(t, p), &buf);
      if (!e.empty()) return "hf_import: " + e + " (for our '" + name + "')";
      paste(t, p, buf);
    }
  }
  *state = std::move(st);
  return "";
}

}  // namespace stp
