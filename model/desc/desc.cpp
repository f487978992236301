// desc.cpp: builds the unit list, tensor table and sharding table of each virtual stage.
// The tensor fields listed here are exactly what model/ stores per (stage, micro-batch); keep the
// two in step (tests/model checks the CPU model touches no tensor that is not listed here).
#include "model/desc/desc.h"

#include <algorithm>
#include <stdexcept>

namespace stp {

const char* unit_kind_name(UnitKind k) {
  switch (k) {
    case UnitKind::In: return "in";
    case UnitKind::Attn: return "attn";
    case UnitKind::Mlp: return "mlp";
    case UnitKind::Head: return "head";
    case UnitKind::Loss: return "loss";
    case UnitKind::Out: return "out";
    case UnitKind::Merge: return "merge";
  }
  return "?";
}

const char* unit_pass_name(UnitPass p) {
  switch (p) {
    case UnitPass::F: return "F";
    case UnitPass::B: return "B";
    case UnitPass::W: return "W";
  }
  return "?";
}

const char* coll_kind_name(CollKind k) {
  switch (k) {
    case CollKind::None: return "none";
    case CollKind::AllReduceSum: return "all_reduce";
    case CollKind::AllReduceMax: return "all_reduce_max";
    case CollKind::ReduceScatter: return "reduce_scatter";
    case CollKind::AllGather: return "all_gather";
  }
  return "?";
}

std::string unit_name(const UnitDesc& u) {
  std::string s = u.vision ? std::string("v") + unit_kind_name(u.kind) : unit_kind_name(u.kind);
  if (u.layer >= 0) s += std::to_string(u.layer);
  return s;
}

int64_t ParamDesc::full_elems() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t ParamDesc::local_elems(int tp) const {
  return shard_dim < 0 ? full_elems() : full_elems() / tp;
}

std::vector<int> StageDesc::backward_order() const {
  std::vector<int> order;
  for (int i = int(units.size()) - 1; i >= 0; --i)
    if (units[i].has_b) order.push_back(i);
  return order;
}

int StageDesc::find_tensor(const std::string& field, int unit) const {
  const std::string want = unit_name(units[unit]) + "." + field;
  for (size_t i = 0; i < tensors.size(); ++i)
    if (tensors[i].name == want) return int(i);
  return -1;
}

namespace {

// Shapes of one TP rank (for the vision tower: b = sequences * images, T = patches per image).
struct Dims {
  int64_t N, C, NH, NKV, HD, QKV, F, F1, V, T, b;
  bool swiglu, layernorm, bias, qkv_bias;
};

Dims dims_of(const Config& cfg) {
  const ModelConfig& m = cfg.model;
  const int tp = cfg.parallel.tp;
  Dims d{};
  d.b = cfg.schedule.micro_batch_size;
  d.T = m.seq_len;
  d.N = d.b * d.T;
  d.C = m.hidden;
  d.HD = m.head_dim();
  d.NH = m.heads / tp;
  d.NKV = m.kv() / tp;
  d.QKV = (d.NH + 2 * d.NKV) * d.HD;
  d.F = m.ffn() / tp;
  d.swiglu = m.activation == "swiglu";
  d.F1 = d.swiglu ? 2 * d.F : d.F;
  d.V = m.vocab / tp;
  d.layernorm = m.norm == "layernorm";
  d.bias = m.bias;
  d.qkv_bias = m.qkv_bias;
  return d;
}

Dims vision_dims_of(const Config& cfg) {
  const VisionConfig& v = cfg.model.vision;
  const int tp = cfg.parallel.tp;
  Dims d{};
  d.b = int64_t(cfg.schedule.micro_batch_size) * v.images_per_sample;
  d.T = vision_geometry(cfg).patches;
  d.N = d.b * d.T;
  d.C = v.hidden;
  d.HD = v.hidden / v.heads;
  d.NH = d.NKV = v.heads / tp;
  d.QKV = 3 * d.NH * d.HD;
  d.F = d.F1 = v.ffn() / tp;
  d.swiglu = false;
  d.layernorm = true;
  d.bias = d.qkv_bias = true;
  return d;
}

// Helper that appends units and tensors to one stage.
struct StageBuilder {
  StageDesc& s;
  int unit(UnitKind k, int layer, bool f, bool b, bool w) {
    UnitDesc u;
    u.kind = k;
    u.layer = layer;
    u.has_f = f;
    u.has_b = b;
    u.has_w = w;
    s.units.push_back(u);
    return int(s.units.size()) - 1;
  }
  int tensor(int unit, UnitPass p, const char* field, int64_t elems, std::vector<UnitRef> readers) {
    TensorDesc t;
    t.name = unit_name(s.units[unit]) + "." + field;
    t.elems = elems;
    t.producer = UnitRef{unit, p};
    t.readers = std::move(readers);
    s.tensors.push_back(t);
    return int(s.tensors.size()) - 1;
  }
  void coll(int unit, UnitPass p, CollKind k, int64_t elems, int tensor, int tp) {
    if (tp == 1) return;  // no collective on a single TP rank
    s.units[unit].coll[p == UnitPass::F ? 0 : 1] = CollDesc{k, elems, tensor};
  }
  void param(const std::string& name, std::vector<int64_t> shape, int shard_dim, bool tp_partial,
             int unit, std::vector<int64_t> segments = {}) {
    ParamDesc p;
    p.segments = std::move(segments);
    p.name = name;
    p.shape = std::move(shape);
    p.shard_dim = shard_dim;
    p.tp_partial_grad = tp_partial;
    p.unit = unit;
    s.params.push_back(p);
  }
};

const UnitPass F = UnitPass::F, B = UnitPass::B, W = UnitPass::W;

void add_norm_params(StageBuilder& sb, const std::string& prefix, const Dims& d, int unit) {
  sb.param(prefix + ".weight", {d.C}, -1, true, unit);
  if (d.layernorm) sb.param(prefix + ".bias", {d.C}, -1, true, unit);
}

// One transformer layer (Attn + Mlp units) appended to the stage; advances the residual chain
// (prev_out: the tensor the next unit adds, prev_x: the residual stream, -1 if none).
void add_layer(StageBuilder& sb, const Dims& d, const std::string& lp, int layer, bool vision, int tp,
               int* prev_out, int* prev_x) {
  StageDesc& s = sb.s;
  // Full (unsharded) sizes of the parameters: the config splits each evenly over tp.
  const int64_t heads = d.NH * tp, kv = d.NKV * tp, ffn = d.F * tp;
  // Attn
  const int a = sb.unit(UnitKind::Attn, layer, true, true, true);
  s.units[a].vision = vision;
  s.tensors[*prev_out].readers.push_back({a, F});
  if (*prev_x >= 0) s.tensors[*prev_x].readers.push_back({a, F});
  const int ax = sb.tensor(a, F, "x", d.N * d.C, {{a, B}, {a, W}});
  sb.tensor(a, F, "stats", 2 * d.N, {{a, B}, {a, W}});
  sb.tensor(a, F, "n", d.N * d.C, {{a, W}});
  sb.tensor(a, F, "qkv", d.N * d.QKV, {{a, B}});
  sb.tensor(a, F, "lse", d.b * d.NH * d.T, {{a, B}});
  sb.tensor(a, F, "o", d.N * d.NH * d.HD, {{a, B}, {a, W}});
  const int ap = sb.tensor(a, F, "partial", d.N * d.C, {});
  sb.coll(a, F, CollKind::AllReduceSum, d.N * d.C, ap, tp);
  sb.tensor(a, B, "g", d.N * d.C, {{a, W}});
  sb.tensor(a, B, "dqkv", d.N * d.QKV, {{a, W}});
  sb.tensor(a, B, "dn", d.N * d.C, {{a, W}});
  const int adx = sb.tensor(a, B, "dx", d.N * d.C, {});
  sb.coll(a, B, CollKind::AllReduceSum, d.N * d.C, adx, tp);
  add_norm_params(sb, lp + ".attn_norm", d, a);
  const std::vector<int64_t> qkv_parts = {heads * d.HD, kv * d.HD, kv * d.HD};
  sb.param(lp + ".attn.qkv.weight", {(heads + 2 * kv) * d.HD, d.C}, 0, false, a, qkv_parts);
  if (d.qkv_bias) sb.param(lp + ".attn.qkv.bias", {(heads + 2 * kv) * d.HD}, 0, false, a, qkv_parts);
  sb.param(lp + ".attn.out.weight", {d.C, heads * d.HD}, 1, false, a);
  if (d.bias) sb.param(lp + ".attn.out.bias", {d.C}, -1, false, a);
  {
    const double qkv = 2.0 * d.N * d.C * d.QKV, proj = 2.0 * d.N * d.NH * d.HD * d.C;
    const double att = 4.0 * d.b * d.NH * double(d.T) * d.T * d.HD;  // QK^T and PV, full (not causal-halved)
    UnitDesc& u = s.units[a];
    u.flops[0] = qkv + att + proj;
    u.flops[1] = qkv + 2 * att + proj;
    u.flops[2] = qkv + proj;
    u.bytes[0] = 4.0 * d.N * (4 * d.C + 2 * d.QKV);
    u.bytes[1] = 4.0 * d.N * (5 * d.C + 3 * d.QKV);
    u.bytes[2] = 4.0 * d.N * (3 * d.C + d.QKV);
  }
  // Mlp
  const int mm = sb.unit(UnitKind::Mlp, layer, true, true, true);
  s.units[mm].vision = vision;
  s.tensors[ax].readers.push_back({mm, F});
  s.tensors[ap].readers.push_back({mm, F});
  const int mx = sb.tensor(mm, F, "x", d.N * d.C, {{mm, B}, {mm, W}});
  sb.tensor(mm, F, "stats", 2 * d.N, {{mm, B}, {mm, W}});
  sb.tensor(mm, F, "n", d.N * d.C, {{mm, W}});
  sb.tensor(mm, F, "u", d.N * d.F1, {{mm, B}});
  sb.tensor(mm, F, "a", d.N * d.F, {{mm, W}});
  const int mp = sb.tensor(mm, F, "partial", d.N * d.C, {});
  sb.coll(mm, F, CollKind::AllReduceSum, d.N * d.C, mp, tp);
  sb.tensor(mm, B, "g", d.N * d.C, {{mm, W}, {a, B}});
  sb.tensor(mm, B, "du", d.N * d.F1, {{mm, W}});
  sb.tensor(mm, B, "dn", d.N * d.C, {{mm, W}});
  const int mdx = sb.tensor(mm, B, "dx", d.N * d.C, {{a, B}});
  sb.coll(mm, B, CollKind::AllReduceSum, d.N * d.C, mdx, tp);
  add_norm_params(sb, lp + ".mlp_norm", d, mm);
  const std::vector<int64_t> fc1_parts = d.swiglu ? std::vector<int64_t>{ffn, ffn} : std::vector<int64_t>{};
  sb.param(lp + ".mlp.fc1.weight", {(d.swiglu ? 2 : 1) * ffn, d.C}, 0, false, mm, fc1_parts);
  if (d.bias) sb.param(lp + ".mlp.fc1.bias", {(d.swiglu ? 2 : 1) * ffn}, 0, false, mm, fc1_parts);
  sb.param(lp + ".mlp.fc2.weight", {d.C, ffn}, 1, false, mm);
  if (d.bias) sb.param(lp + ".mlp.fc2.bias", {d.C}, -1, false, mm);
  {
    const double g = 2.0 * d.N * d.C * (d.F1 + d.F);
    UnitDesc& u = s.units[mm];
    u.flops[0] = u.flops[1] = u.flops[2] = g;
    u.bytes[0] = 4.0 * d.N * (4 * d.C + d.F1 + d.F);
    u.bytes[1] = 4.0 * d.N * (5 * d.C + 2 * d.F1 + d.F);
    u.bytes[2] = 4.0 * d.N * (3 * d.C + d.F1 + d.F);
  }
  *prev_out = mp;
  *prev_x = mx;
}

// The text embedding's parameters (vocab-parallel table, learned positions), owned by unit `u`.
void add_embedding_params(StageBuilder& sb, const Config& cfg, const Dims& d, int u) {
  sb.param("embed.weight", {int64_t(cfg.model.vocab), d.C}, 0, false, u);
  if (cfg.model.position == "learned") sb.param("embed.pos", {int64_t(cfg.model.seq_len), d.C}, -1, false, u);
}

// The patch merger + text embedding (the Merge unit) after the last vision layer.
void add_merge(StageBuilder& sb, const Config& cfg, const Dims& d, const Dims& v, int tp, int* prev_out,
               int* prev_x) {
  StageDesc& s = sb.s;
  const int m2 = cfg.model.vision.merge_size * cfg.model.vision.merge_size;
  const int64_t Nvt = v.N / m2;          // visual tokens of the micro-batch
  const int64_t Fm = int64_t(m2) * v.C;  // merger width (full)
  const int64_t Fm_tp = Fm / tp;
  const int g = sb.unit(UnitKind::Merge, -1, true, true, true);
  s.tensors[*prev_out].readers.push_back({g, F});
  if (*prev_x >= 0) s.tensors[*prev_x].readers.push_back({g, F});
  sb.tensor(g, F, "x", v.N * v.C, {{g, B}, {g, W}});
  sb.tensor(g, F, "stats", 2 * v.N, {{g, B}, {g, W}});
  sb.tensor(g, F, "n", v.N * v.C, {{g, W}});
  sb.tensor(g, F, "u", Nvt * Fm_tp, {{g, B}});
  sb.tensor(g, F, "a", Nvt * Fm_tp, {{g, W}});
  const int out = sb.tensor(g, F, "out", d.N * d.C, {});
  sb.coll(g, F, CollKind::AllReduceSum, d.N * d.C, out, tp);
  sb.tensor(g, B, "ge", d.N * d.C, {{g, W}});
  sb.tensor(g, B, "du", Nvt * Fm_tp, {{g, W}});
  sb.tensor(g, B, "dn", v.N * v.C, {{g, W}});
  const int dx = sb.tensor(g, B, "dx", v.N * v.C, {});
  sb.coll(g, B, CollKind::AllReduceSum, v.N * v.C, dx, tp);
  sb.param("visual.merger.norm.weight", {v.C}, -1, true, g);
  sb.param("visual.merger.norm.bias", {v.C}, -1, true, g);
  sb.param("visual.merger.fc1.weight", {Fm, Fm}, 0, false, g);
  sb.param("visual.merger.fc1.bias", {Fm}, 0, false, g);
  sb.param("visual.merger.fc2.weight", {d.C, Fm}, 1, false, g);
  sb.param("visual.merger.fc2.bias", {d.C}, -1, false, g);
  add_embedding_params(sb, cfg, d, g);
  UnitDesc& u = s.units[g];
  u.flops[0] = u.flops[1] = u.flops[2] = 2.0 * Nvt * Fm_tp * (Fm + d.C);
  u.bytes[0] = 4.0 * (3.0 * v.N * v.C + 2.0 * Nvt * Fm_tp + 2.0 * d.N * d.C);
  u.bytes[1] = 4.0 * (3.0 * v.N * v.C + 3.0 * Nvt * Fm_tp + 2.0 * d.N * d.C);
  u.bytes[2] = 4.0 * (2.0 * v.N * v.C + 2.0 * Nvt * Fm_tp + 2.0 * d.N * d.C);
  *prev_out = out;
  *prev_x = -1;
}

}  // namespace

ModelDesc model_desc_build(const Config& cfg, int chunks, const std::vector<int>& layer_split) {
  const int tp = cfg.parallel.tp, pp = cfg.parallel.pp;
  const int S = pp * chunks;
  if (int(layer_split.size()) != S) throw std::invalid_argument("model_desc_build: layer split size");
  const Dims d = dims_of(cfg);
  const ModelConfig& m = cfg.model;
  const bool vlm = m.vision.enabled;
  const Dims v = vlm ? vision_dims_of(cfg) : Dims{};
  const VisionGeometry geo = vision_geometry(cfg);
  const std::vector<int> vsplit = config_vision_stage_layers(cfg, S);
  const int merge_stage = vlm ? geo.stages - 1 : -1;
  ModelDesc md;
  md.tp = tp;
  md.micro_batch_size = cfg.schedule.micro_batch_size;
  md.seq_len = m.seq_len;

  int layer0 = 0, vlayer0 = 0;
  for (int st = 0; st < S; ++st) {
    StageDesc s;
    s.stage = st;
    s.first_layer = layer0;
    s.num_layers = layer_split[st];
    s.vision_layers = vsplit[size_t(st)];
    s.first = st == 0;
    s.last = st == S - 1;
    s.embeds = vlm ? st == merge_stage : s.first;
    const bool vision_in = s.vision_layers > 0;  // the stage's input is the vision stream
    const Dims& din = vision_in ? v : d;
    StageBuilder sb{s};

    // ---- In
    const int in = sb.unit(UnitKind::In, -1, true, true, s.first);
    s.units[in].vision = vision_in;
    // Its F output: the embedding partial (stage 0) or the received activation.
    int prev_out = sb.tensor(in, F, "out", din.N * din.C, {});
    if (s.first) {
      sb.coll(in, F, CollKind::AllReduceSum, din.N * din.C, prev_out, tp);
      UnitDesc& u = s.units[in];
      if (vision_in) {
        const int64_t K_tp = geo.patch_dim / tp;
        sb.param("visual.patch_embed.weight", {v.C, int64_t(geo.patch_dim)}, 1, false, in);
        u.flops[0] = u.flops[2] = 2.0 * v.N * K_tp * v.C;
        u.bytes[0] = 4.0 * v.N * (K_tp + v.C);
      } else {
        add_embedding_params(sb, cfg, d, in);
        u.bytes[0] = 4.0 * d.N * d.C;
      }
    }
    // The tensor whose (reduced) value the next unit adds into the residual stream, and the
    // residual stream itself (the previous unit's x), if any.
    int prev_x = -1;

    // ---- vision layers, the merger, then the LLM layers
    for (int l = vlayer0; l < vlayer0 + s.vision_layers; ++l)
      add_layer(sb, v, "visual.blocks." + std::to_string(l), l, true, tp, &prev_out, &prev_x);
    if (st == merge_stage) add_merge(sb, cfg, d, v, tp, &prev_out, &prev_x);
    const bool vision_out = vision_in && st != merge_stage;  // the stage's output is the vision stream
    const Dims& dout = vision_out ? v : d;
    for (int l = layer0; l < layer0 + s.num_layers; ++l)
      add_layer(sb, d, "layers." + std::to_string(l), l, false, tp, &prev_out, &prev_x);

    // ---- end of stage
    if (s.last) {
      const int h = sb.unit(UnitKind::Head, -1, true, true, true);
      s.tensors[prev_out].readers.push_back({h, F});
      if (prev_x >= 0) s.tensors[prev_x].readers.push_back({h, F});
      sb.tensor(h, F, "x", d.N * d.C, {{h, B}, {h, W}});
      sb.tensor(h, F, "stats", 2 * d.N, {{h, B}, {h, W}});
      sb.tensor(h, F, "n", d.N * d.C, {{h, W}});
      const int lg = sb.tensor(h, F, "logits", d.N * d.V, {{h, B}});
      const int mx = sb.tensor(h, F, "max", d.N, {{h, B}});
      sb.coll(h, F, CollKind::AllReduceMax, d.N, mx, tp);
      const int lo = sb.unit(UnitKind::Loss, -1, true, false, false);
      s.tensors[lg].readers.push_back({lo, F});
      s.tensors[mx].readers.push_back({lo, F});
      const int ls = sb.tensor(lo, F, "stats", 2 * d.N, {{h, B}});
      sb.coll(lo, F, CollKind::AllReduceSum, 2 * d.N, ls, tp);
      sb.tensor(h, B, "dlogits", d.N * d.V, {{h, W}});
      sb.tensor(h, B, "dn", d.N * d.C, {{h, W}});
      const int hdx = sb.tensor(h, B, "dx", d.N * d.C, {});
      sb.coll(h, B, CollKind::AllReduceSum, d.N * d.C, hdx, tp);
      add_norm_params(sb, "final_norm", d, h);
      // With tied embeddings the head reads embed.weight: a stage that does not also hold the
      // embedding keeps a replica under the same name, and the trainer sums the two gradients.
      if (!m.tie_embeddings) sb.param("lm_head.weight", {int64_t(m.vocab), d.C}, 0, false, h);
      else if (!s.embeds) sb.param("embed.weight", {int64_t(m.vocab), d.C}, 0, false, h);
      UnitDesc& u = s.units[h];
      u.flops[0] = u.flops[1] = u.flops[2] = 2.0 * d.N * d.C * d.V;
      u.bytes[0] = 4.0 * d.N * (4 * d.C + d.V);
      u.bytes[1] = 4.0 * d.N * (4 * d.C + 3 * d.V);
      u.bytes[2] = 4.0 * d.N * (2 * d.C + d.V);
      s.units[lo].bytes[0] = 4.0 * d.N * d.V;
      prev_out = hdx;
    } else {
      const int o = sb.unit(UnitKind::Out, -1, true, true, false);
      s.units[o].vision = vision_out;
      s.tensors[prev_out].readers.push_back({o, F});
      if (prev_x >= 0) s.tensors[prev_x].readers.push_back({o, F});
      const int ox = sb.tensor(o, F, "x", dout.N * dout.C, {});
      s.tensors[ox].sent = true;
      // Out.B receives the gradient of the stage output.
      prev_out = sb.tensor(o, B, "g", dout.N * dout.C, {});
    }

    // ---- backward wiring: each B unit reads the previous B unit's reduced dx (and its g)
    {
      const std::vector<int> order = s.backward_order();
      for (size_t i = 1; i < order.size(); ++i) {
        const int prev = order[i - 1], cur = order[i];
        const int pdx = s.find_tensor("dx", prev);
        const int pg = s.find_tensor("g", prev);
        if (pdx >= 0) {
          auto& r = s.tensors[pdx].readers;
          if (std::find(r.begin(), r.end(), UnitRef{cur, B}) == r.end()) r.push_back({cur, B});
        }
        if (pg >= 0) {
          auto& r = s.tensors[pg].readers;
          if (std::find(r.begin(), r.end(), UnitRef{cur, B}) == r.end()) r.push_back({cur, B});
        }
      }
      // In.B: the residual gradient at the stage input; sent (stage > 0) or read by In.W (stage 0).
      const int ig = sb.tensor(in, B, "g", din.N * din.C, s.first ? std::vector<UnitRef>{{in, W}}
                                                               : std::vector<UnitRef>{});
      s.tensors[ig].sent = !s.first;
      if (s.first) {
        s.units[in].bytes[2] = 4.0 * din.N * din.C;
      }
    }
    md.stages.push_back(std::move(s));
    layer0 += layer_split[st];
    vlayer0 += vsplit[size_t(st)];
  }

  // Forward FLOPs per token of the full model (MFU's numerator = 3x this with backward).
  {
    const double C = m.hidden, T = m.seq_len, HD = m.head_dim();
    const double qkv = C * (m.heads + 2.0 * m.kv()) * HD, proj = double(m.heads) * HD * C;
    const double mlp = C * m.ffn() * (m.activation == "swiglu" ? 3.0 : 2.0);
    const double attn = 2.0 * T * m.heads * HD;  // QK^T + PV per token, full
    md.flops_per_token_fwd = m.layers * 2.0 * (qkv + proj + mlp + attn) + 2.0 * C * m.vocab;
  }
  // The vision tower's forward FLOPs per sequence, spread over its T tokens.
  if (vlm) {
    const VisionConfig& vc = m.vision;
    const double Cv = vc.hidden, Np = geo.patches, Fm = double(vc.merge_size) * vc.merge_size * Cv;
    const double layer = 2.0 * Np * (4.0 * Cv * Cv + 2.0 * Cv * vc.ffn()) + 4.0 * Np * Np * Cv;
    const double image = 2.0 * Np * geo.patch_dim * Cv + vc.layers * layer +
                         2.0 * geo.tokens_per_image * Fm * (Fm + m.hidden);
    md.flops_per_token_fwd += vc.images_per_sample * image / m.seq_len;
  }
  for (const StageDesc& s : md.stages)
    for (const ParamDesc& p : s.params) md.total_params += p.full_elems();
  if (m.tie_embeddings && S > 1) md.total_params -= int64_t(m.vocab) * m.hidden;  // one replica counted
  return md;
}

}  // namespace stp
