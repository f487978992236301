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
  std::string s = unit_kind_name(u.kind);
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

// Shapes of one TP rank.
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

}  // namespace

ModelDesc model_desc_build(const Config& cfg, int chunks, const std::vector<int>& layer_split) {
  const int tp = cfg.parallel.tp, pp = cfg.parallel.pp;
  const int S = pp * chunks;
  if (int(layer_split.size()) != S) throw std::invalid_argument("model_desc_build: layer split size");
  const Dims d = dims_of(cfg);
  const ModelConfig& m = cfg.model;
  ModelDesc md;
  md.tp = tp;
  md.micro_batch_size = cfg.schedule.micro_batch_size;
  md.seq_len = m.seq_len;

  int layer0 = 0;
  for (int st = 0; st < S; ++st) {
    StageDesc s;
    s.stage = st;
    s.first_layer = layer0;
    s.num_layers = layer_split[st];
    s.first = st == 0;
    s.last = st == S - 1;
    s.pp_elems = d.N * d.C;
    StageBuilder sb{s};

    // ---- In
    const int in = sb.unit(UnitKind::In, -1, true, true, s.first);
    // Its F output: the embedding partial (stage 0) or the received activation.
    int prev_out = sb.tensor(in, F, "out", d.N * d.C, {});
    if (s.first) {
      sb.coll(in, F, CollKind::AllReduceSum, d.N * d.C, prev_out, tp);
      s.units[in].bytes[0] = 4.0 * d.N * d.C;
      sb.param("embed.weight", {int64_t(m.vocab), d.C}, 0, false, in);
      if (m.position == "learned") sb.param("embed.pos", {int64_t(m.seq_len), d.C}, -1, false, in);
    }
    // The tensor whose (reduced) value the next unit adds into the residual stream, and the
    // residual stream itself (the previous unit's x), if any.
    int prev_x = -1;

    // ---- layers
    for (int l = layer0; l < layer0 + s.num_layers; ++l) {
      const std::string lp = "layers." + std::to_string(l);
      // Attn
      const int a = sb.unit(UnitKind::Attn, l, true, true, true);
      s.tensors[prev_out].readers.push_back({a, F});
      if (prev_x >= 0) s.tensors[prev_x].readers.push_back({a, F});
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
      const std::vector<int64_t> qkv_parts = {int64_t(m.heads) * d.HD, int64_t(m.kv()) * d.HD,
                                              int64_t(m.kv()) * d.HD};
      sb.param(lp + ".attn.qkv.weight", {int64_t(m.heads + 2 * m.kv()) * d.HD, d.C}, 0, false, a,
               qkv_parts);
      if (d.qkv_bias)
        sb.param(lp + ".attn.qkv.bias", {int64_t(m.heads + 2 * m.kv()) * d.HD}, 0, false, a,
                 qkv_parts);
      sb.param(lp + ".attn.out.weight", {d.C, int64_t(m.heads) * d.HD}, 1, false, a);
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
      const int mm = sb.unit(UnitKind::Mlp, l, true, true, true);
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
      const std::vector<int64_t> fc1_parts =
          d.swiglu ? std::vector<int64_t>{int64_t(m.ffn()), int64_t(m.ffn())} : std::vector<int64_t>{};
      sb.param(lp + ".mlp.fc1.weight", {int64_t(d.swiglu ? 2 : 1) * m.ffn(), d.C}, 0, false, mm,
               fc1_parts);
      if (d.bias)
        sb.param(lp + ".mlp.fc1.bias", {int64_t(d.swiglu ? 2 : 1) * m.ffn()}, 0, false, mm,
                 fc1_parts);
      sb.param(lp + ".mlp.fc2.weight", {d.C, int64_t(m.ffn())}, 1, false, mm);
      if (d.bias) sb.param(lp + ".mlp.fc2.bias", {d.C}, -1, false, mm);
      {
        const double g = 2.0 * d.N * d.C * (d.F1 + d.F);
        UnitDesc& u = s.units[mm];
        u.flops[0] = u.flops[1] = u.flops[2] = g;
        u.bytes[0] = 4.0 * d.N * (4 * d.C + d.F1 + d.F);
        u.bytes[1] = 4.0 * d.N * (5 * d.C + 2 * d.F1 + d.F);
        u.bytes[2] = 4.0 * d.N * (3 * d.C + d.F1 + d.F);
      }
      prev_out = mp;
      prev_x = mx;
    }

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
      else if (!s.first) sb.param("embed.weight", {int64_t(m.vocab), d.C}, 0, false, h);
      UnitDesc& u = s.units[h];
      u.flops[0] = u.flops[1] = u.flops[2] = 2.0 * d.N * d.C * d.V;
      u.bytes[0] = 4.0 * d.N * (4 * d.C + d.V);
      u.bytes[1] = 4.0 * d.N * (4 * d.C + 3 * d.V);
      u.bytes[2] = 4.0 * d.N * (2 * d.C + d.V);
      s.units[lo].bytes[0] = 4.0 * d.N * d.V;
      prev_out = hdx;
    } else {
      const int o = sb.unit(UnitKind::Out, -1, true, true, false);
      s.tensors[prev_out].readers.push_back({o, F});
      if (prev_x >= 0) s.tensors[prev_x].readers.push_back({o, F});
      const int ox = sb.tensor(o, F, "x", d.N * d.C, {});
      s.tensors[ox].sent = true;
      // Out.B receives the gradient of the stage output.
      prev_out = sb.tensor(o, B, "g", d.N * d.C, {});
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
      const int ig = sb.tensor(in, B, "g", d.N * d.C, s.first ? std::vector<UnitRef>{{in, W}}
                                                               : std::vector<UnitRef>{});
      s.tensors[ig].sent = !s.first;
      if (s.first) {
        s.units[in].bytes[2] = 4.0 * d.N * d.C;
      }
    }
    md.stages.push_back(std::move(s));
    layer0 += layer_split[st];
  }

  // Forward FLOPs per token of the full model (MFU's numerator = 3x this with backward).
  {
    const double C = m.hidden, T = m.seq_len, HD = m.head_dim();
    const double qkv = C * (m.heads + 2.0 * m.kv()) * HD, proj = double(m.heads) * HD * C;
    const double mlp = C * m.ffn() * (m.activation == "swiglu" ? 3.0 : 2.0);
    const double attn = 2.0 * T * m.heads * HD;  // QK^T + PV per token, full
    md.flops_per_token_fwd = m.layers * 2.0 * (qkv + proj + mlp + attn) + 2.0 * C * m.vocab;
  }
  for (const StageDesc& s : md.stages)
    for (const ParamDesc& p : s.params) md.total_params += p.full_elems();
  if (m.tie_embeddings && S > 1) md.total_params -= int64_t(m.vocab) * m.hidden;  // one replica counted
  return md;
}

}  // namespace stp
