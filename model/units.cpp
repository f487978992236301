// units.cpp: forward, input-gradient and weight-gradient passes of every unit (contract in
// units.h). Each pass first resolves all its tensors and parameters through UnitIo, which records
// the first missing one as an error, then runs kernels only.
#include "model/units.h"

#include <algorithm>
#include <cmath>

#include "model/kernels/cpu/kernels.h"

namespace stp {

ModelShape model_shape(const Config& cfg, int tp_rank) {
  const ModelConfig& m = cfg.model;
  ModelShape s;
  s.tp = cfg.parallel.tp;
  s.tp_rank = tp_rank;
  s.b = cfg.schedule.micro_batch_size;
  s.T = m.seq_len;
  s.N = s.b * s.T;
  s.C = m.hidden;
  s.HD = m.head_dim();
  s.NH_tp = m.heads / s.tp;
  s.NKV_tp = m.kv() / s.tp;
  s.QKV_tp = (s.NH_tp + 2 * s.NKV_tp) * s.HD;
  s.swiglu = m.activation == "swiglu";
  s.F_tp = m.ffn() / s.tp;
  s.F1_tp = s.swiglu ? 2 * s.F_tp : s.F_tp;
  s.V_tp = m.vocab / s.tp;
  s.vocab_start = int64_t(tp_rank) * s.V_tp;
  s.layernorm = m.norm == "layernorm";
  s.rope = m.position == "rope";
  s.tie = m.tie_embeddings;
  s.eps = float(m.norm_eps);
  s.theta = float(m.rope_theta);
  s.vis = vision_geometry(cfg).visual_tokens;
  return s;
}

ModelShape vision_shape(const Config& cfg, int tp_rank) {
  const VisionConfig& v = cfg.model.vision;
  const VisionGeometry g = vision_geometry(cfg);
  ModelShape s;
  s.tp = cfg.parallel.tp;
  s.tp_rank = tp_rank;
  s.b = int64_t(cfg.schedule.micro_batch_size) * v.images_per_sample;
  s.T = g.patches;
  s.N = s.b * s.T;
  s.C = v.hidden;
  s.HD = v.hidden / v.heads;
  s.NH_tp = s.NKV_tp = v.heads / s.tp;
  s.QKV_tp = 3 * s.NH_tp * s.HD;
  s.F_tp = s.F1_tp = v.ffn() / s.tp;
  s.layernorm = true;
  s.causal = false;
  s.rope2d = true;
  s.eps = 1e-6f;
  s.theta = 10000.0f;
  s.vis = g.visual_tokens;
  s.grid = g.grid;
  s.merge = v.merge_size;
  s.K = g.patch_dim;
  s.K_tp = g.patch_dim / s.tp;
  s.Nvt = s.N / (s.merge * s.merge);
  s.Fm = s.merge * s.merge * s.C;
  s.Fm_tp = s.Fm / s.tp;
  return s;
}

template <typename T>
T* Workspace<T>::get(int slot, int64_t n) {
  std::vector<T>& b = buf_[slot];
  if (int64_t(b.size()) < n) b.resize(size_t(n));
  return b.data();
}

namespace {

// Resolves the tensors and parameters of one unit pass; the first failure becomes `err`.
template <typename T>
struct UnitIo {
  UnitCtx<T>& c;
  int unit;
  UnitPass pass;
  std::string err;

  std::string where() const {
    return "stage " + std::to_string(c.stage->stage) + " mb " + std::to_string(c.mb) + " " +
           unit_name(c.stage->units[size_t(unit)]) + "." + unit_pass_name(pass);
  }
  void fail(const std::string& what) {
    if (err.empty()) err = where() + ": " + what;
  }
  // This unit's tensor `field`, produced by this pass.
  T* out(const char* field) {
    const int t = c.stage->find_tensor(field, unit);
    if (t < 0) return fail(std::string("no tensor '") + field + "' in the table"), nullptr;
    return c.store->produce(c.stage->stage, c.mb, t);
  }
  // Tensor `field` of unit `u` (-1 = this unit), read by this pass; `optional`: absent from the
  // table is fine (nullptr), not live is not.
  T* in(const char* field, int u = -1, bool optional = false) {
    const int uu = u < 0 ? unit : u;
    const int t = c.stage->find_tensor(field, uu);
    if (t < 0) {
      if (!optional) fail(std::string("no tensor '") + field + "' in the table");
      return nullptr;
    }
    T* p = c.store->read(c.stage->stage, c.mb, t);
    if (!p) fail("tensor '" + c.stage->tensors[size_t(t)].name + "' is not live");
    return p;
  }
  Param<T>* param(const std::string& name, bool optional = false) {
    Param<T>* p = c.params->find(name);
    if (!p && !optional) fail("no parameter '" + name + "' on this stage");
    return p;
  }
  const T* w(const std::string& name, bool optional = false) {
    Param<T>* p = param(name, optional);
    return p ? p->value.data() : nullptr;
  }
  T* dw(const std::string& name, bool optional = false) {
    Param<T>* p = param(name, optional);
    return p ? p->grad.data() : nullptr;
  }
  bool ok() const { return err.empty(); }
  const UnitDesc& desc() const { return c.stage->units[size_t(unit)]; }
  // The shape this unit runs on: the vision tower's for vision units.
  const ModelShape& shape() const { return desc().vision ? *c.vshape : *c.shape; }
};

std::string layer_prefix(const UnitDesc& u) {
  return (u.vision ? "visual.blocks." : "layers.") + std::to_string(u.layer) + ".";
}

// The forward residual inputs of unit u: the previous unit's (reduced) output and its residual
// stream x (-1 when the previous unit is In).
template <typename T>
void residual_inputs(UnitIo<T>& io, const T** prev_out, const T** prev_x) {
  const int p = io.unit - 1;
  const UnitKind pk = io.c.stage->units[size_t(p)].kind;
  const bool from_in = pk == UnitKind::In || pk == UnitKind::Merge;
  *prev_out = io.in(from_in ? "out" : "partial", p);
  *prev_x = from_in ? nullptr : io.in("x", p);
}

// g (N*C elements of the unit's shape) = the previous backward unit's g + its reduced dx (either
// may be absent).
template <typename T>
void residual_grad(UnitIo<T>& io, T* g) {
  const int64_t n = io.shape().N * io.shape().C;
  const std::vector<int> order = io.c.stage->backward_order();
  const auto pos = std::find(order.begin(), order.end(), io.unit);
  if (pos == order.begin()) return io.fail("no earlier backward unit");
  const int prev = *(pos - 1);
  const T* pg = io.in("g", prev, true);
  const T* pdx = io.in("dx", prev, true);
  if (!io.ok() || !g) return;
  if (!pg && !pdx) return io.fail("previous backward unit has neither g nor dx");
  if (pg && pdx)
    cpu::residual_forward(g, pg, pdx, n);
  else
    std::copy(pg ? pg : pdx, (pg ? pg : pdx) + n, g);
}

// Norm forward with the fused residual add: x = prev_out (+ prev_x), n = norm(x).
template <typename T>
void norm_forward(const ModelShape& s, T* n, T* stats, T* x, const T* prev_out, const T* prev_x,
                  const T* w, const T* b) {
  if (s.layernorm) {
    cpu::layernorm_forward(n, stats, stats + s.N, x, prev_out, prev_x, w, b, s.N, s.C, s.eps);
  } else {
    std::fill(stats, stats + s.N, T(0));
    cpu::rmsnorm_forward(n, stats + s.N, x, prev_out, prev_x, w, s.N, s.C, s.eps);
  }
}

template <typename T>
void norm_backward_input(const ModelShape& s, T* dx, const T* dn, const T* x, const T* stats,
                         const T* w) {
  if (s.layernorm)
    cpu::layernorm_backward_input(dx, dn, x, w, stats, stats + s.N, s.N, s.C, false);
  else
    cpu::rmsnorm_backward_input(dx, dn, x, w, stats + s.N, s.N, s.C, false);
}

template <typename T>
void norm_backward_weight(const ModelShape& s, T* dw, T* db, const T* dn, const T* x,
                          const T* stats, bool acc) {
  if (s.layernorm)
    cpu::layernorm_backward_weight(dw, db, dn, x, stats, stats + s.N, s.N, s.C, acc);
  else
    cpu::rmsnorm_backward_weight(dw, dn, x, stats + s.N, s.N, s.C, acc);
}

cpu::AttnShape attn_shape(const ModelShape& s) {
  cpu::AttnShape a;
  a.B = s.b;
  a.T = s.T;
  a.NH = s.NH_tp;
  a.NKV = s.NKV_tp;
  a.HD = s.HD;
  a.causal = s.causal;
  return a;
}

// Rotary embedding of the q and k heads of qkv (in place), forward or inverse.
template <typename T>
void rope_apply(const ModelShape& s, T* qkv, bool backward) {
  if (s.rope2d) {
    if (backward)
      cpu::rope2d_backward(qkv, s.b, s.T, s.NH_tp, s.NKV_tp, s.HD, s.grid, s.merge, s.theta);
    else
      cpu::rope2d_forward(qkv, s.b, s.T, s.NH_tp, s.NKV_tp, s.HD, s.grid, s.merge, s.theta);
  } else if (s.rope) {
    if (backward)
      cpu::rope_backward(qkv, s.b, s.T, s.NH_tp, s.NKV_tp, s.HD, s.theta);
    else
      cpu::rope_forward(qkv, s.b, s.T, s.NH_tp, s.NKV_tp, s.HD, s.theta);
  }
}

// The visual rows of an (N, C) LLM tensor: sequence j's positions 1 .. vis, in sequence order,
// against a contiguous (b*vis, C) buffer (the merger's token order).
template <typename T>
void gather_visual(const ModelShape& s, T* dst, const T* src) {
  for (int64_t j = 0; j < s.b; ++j)
    std::copy(src + (j * s.T + 1) * s.C, src + (j * s.T + 1 + s.vis) * s.C, dst + j * s.vis * s.C);
}
template <typename T>
void scatter_visual(const ModelShape& s, T* dst, const T* src) {
  for (int64_t j = 0; j < s.b; ++j)
    std::copy(src + j * s.vis * s.C, src + (j + 1) * s.vis * s.C, dst + (j * s.T + 1) * s.C);
}

// This TP rank's column shard of the patches (N, K) as a dense (N, K_tp) matrix of T.
template <typename T>
const T* patch_shard(UnitIo<T>& io, const ModelShape& v) {
  T* p = io.c.ws->get(1, v.N * v.K_tp);
  const float* src = io.c.pixels + v.tp_rank * v.K_tp;
  for (int64_t i = 0; i < v.N; ++i)
    for (int64_t k = 0; k < v.K_tp; ++k) p[i * v.K_tp + k] = T(src[i * v.K + k]);
  return p;
}

// Summed token loss of the rows whose target is not ignored (-1), from the reduced row max and
// [sum-exp | target logit] statistics.
template <typename T>
double loss_rows_sum(const T* mx, const T* st, const int* targets, int64_t N) {
  double sum = 0;
  for (int64_t i = 0; i < N; ++i)
    if (targets[i] >= 0) sum += std::log(double(st[i])) + double(mx[i]) - double(st[N + i]);
  return sum;
}

// Parameter names of a norm: "<prefix>.weight" / ".bias".
struct NormNames {
  std::string w, b;
};
NormNames norm_names(const std::string& prefix) { return {prefix + ".weight", prefix + ".bias"}; }

}  // namespace

// ---- In
// -------------------------------------------------------------------------------------------

// The text embedding's forward (In.F on stage 0, Merge.F; its W is embedding_weight below):
// out (N, C) = this rank's vocabulary-shard rows of the tokens (0 for ids outside the shard, -1
// included) + embed.pos on TP rank 0 only (a replicated term of the TP-partial). "" or the error.
template <typename T>
static std::string embedding_forward(UnitIo<T>& io, T* out) {
  const ModelShape& s = *io.c.shape;
  if (!io.c.tokens) return io.where() + ": no tokens given";
  const T* wte = io.w("embed.weight");
  const T* wpe = s.tp_rank == 0 ? io.w("embed.pos", true) : nullptr;
  if (!io.ok()) return io.err;
  cpu::embedding_forward(out, io.c.tokens, wte, wpe, s.N, s.T, s.C, s.vocab_start, s.V_tp);
  return "";
}

template <typename T>
static std::string in_forward(UnitIo<T>& io) {
  const ModelShape& s = io.shape();
  if (!io.c.stage->first) return "";  // the executor received in.out
  if (io.desc().vision) {  // patch embedding: out (N, Cv) = patches[:, shard] @ W[:, shard]^T
    if (!io.c.pixels) return io.where() + ": no pixels given";
    const T* w = io.w("visual.patch_embed.weight");
    T* out = io.out("out");
    if (!io.ok()) return io.err;
    cpu::gemm(false, true, s.N, s.C, s.K_tp, T(1), patch_shard(io, s), s.K_tp, w, s.K_tp, T(0), out, s.C);
    return "";
  }
  return embedding_forward(io, io.out("out"));
}

template <typename T>
static std::string in_backward(UnitIo<T>& io) {
  T* g = io.out("g");
  residual_grad(io, g);
  return io.err;
}

// Token (and position) embedding gradients from the gradient g (N, C) at the embedding output.
template <typename T>
static std::string embedding_weight(UnitIo<T>& io, const T* g) {
  const ModelShape& s = *io.c.shape;
  Param<T>* wte = io.param("embed.weight");
  Param<T>* wpe = io.param("embed.pos", true);
  if (!io.ok()) return io.err;
  // A tied head on this stage wrote embed.weight's gradient already (Head.W runs first).
  const bool acc_wte = io.c.accumulate || (io.c.stage->last && s.tie);
  if (!acc_wte) std::fill(wte->grad.begin(), wte->grad.end(), T(0));
  if (wpe && !io.c.accumulate) std::fill(wpe->grad.begin(), wpe->grad.end(), T(0));
  cpu::embedding_backward(wte->grad.data(), wpe ? wpe->grad.data() : (T*)nullptr, g, io.c.tokens,
                          s.N, s.T, s.C, s.vocab_start, s.V_tp);
  return "";
}

template <typename T>
static std::string in_weight(UnitIo<T>& io) {
  const T* g = io.in("g");
  if (io.desc().vision) {  // dW (Cv, K_tp) (+)= g^T @ patches[:, shard]
    const ModelShape& v = io.shape();
    if (!io.c.pixels) return io.where() + ": no pixels given";
    T* dw = io.dw("visual.patch_embed.weight");
    if (!io.ok()) return io.err;
    cpu::gemm(true, false, v.C, v.K_tp, v.N, T(1), g, v.C, patch_shard(io, v), v.K_tp,
              io.c.accumulate ? T(1) : T(0), dw, v.K_tp);
    return "";
  }
  if (!io.c.tokens) return io.where() + ": no tokens given";
  if (!io.ok()) return io.err;
  return embedding_weight(io, g);
}

// ---- Attn
// -----------------------------------------------------------------------------------------

template <typename T>
static std::string attn_forward(UnitIo<T>& io) {
  const ModelShape& s = io.shape();
  const std::string lp = layer_prefix(io.c.stage->units[size_t(io.unit)]);
  const NormNames nn = norm_names(lp + "attn_norm");
  const T *prev_out = nullptr, *prev_x = nullptr;
  residual_inputs(io, &prev_out, &prev_x);
  const T *nw = io.w(nn.w), *nb = io.w(nn.b, true);
  const T *wqkv = io.w(lp + "attn.qkv.weight"), *bqkv = io.w(lp + "attn.qkv.bias", true);
  const T *wo = io.w(lp + "attn.out.weight"), *bo = io.w(lp + "attn.out.bias", true);
  T *x = io.out("x"), *stats = io.out("stats"), *n = io.out("n"), *qkv = io.out("qkv");
  T *lse = io.out("lse"), *o = io.out("o"), *partial = io.out("partial");
  if (!io.ok()) return io.err;
  norm_forward(s, n, stats, x, prev_out, prev_x, nw, nb);
  cpu::matmul_forward(qkv, n, wqkv, bqkv, s.N, s.C, s.QKV_tp);  // (N, QKV_tp)
  rope_apply(s, qkv, false);
  cpu::attention_forward(o, lse, qkv, attn_shape(s));  // o (N, NH_tp*HD)
  cpu::matmul_forward(partial, o, wo, s.tp_rank == 0 ? bo : nullptr, s.N, s.NH_tp * s.HD, s.C);
  return "";
}

template <typename T>
static std::string attn_backward(UnitIo<T>& io) {
  const ModelShape& s = io.shape();
  const std::string lp = layer_prefix(io.c.stage->units[size_t(io.unit)]);
  T* g = io.out("g");
  residual_grad(io, g);
  const T *x = io.in("x"), *stats = io.in("stats"), *qkv = io.in("qkv"), *lse = io.in("lse");
  const T* o = io.in("o");
  const T *nw = io.w(lp + "attn_norm.weight"), *wqkv = io.w(lp + "attn.qkv.weight");
  const T* wo = io.w(lp + "attn.out.weight");
  T *dqkv = io.out("dqkv"), *dn = io.out("dn"), *dx = io.out("dx");
  if (!io.ok()) return io.err;
  const int64_t OW = s.NH_tp * s.HD;
  T* d_o = io.c.ws->get(0, s.N * OW);  // (N, NH_tp*HD)
  cpu::matmul_backward(d_o, (T*)nullptr, (T*)nullptr, g, o, wo, s.N, OW, s.C, false);
  cpu::attention_backward(dqkv, d_o, qkv, o, lse, attn_shape(s));  // (N, QKV_tp)
  rope_apply(s, dqkv, true);
  cpu::matmul_backward(dn, (T*)nullptr, (T*)nullptr, dqkv, x, wqkv, s.N, s.C, s.QKV_tp, false);
  norm_backward_input(s, dx, dn, x, stats, nw);
  return "";
}

template <typename T>
static std::string attn_weight(UnitIo<T>& io) {
  const ModelShape& s = io.shape();
  const std::string lp = layer_prefix(io.c.stage->units[size_t(io.unit)]);
  const bool acc = io.c.accumulate;
  const T *x = io.in("x"), *stats = io.in("stats"), *n = io.in("n"), *o = io.in("o");
  const T *g = io.in("g"), *dqkv = io.in("dqkv"), *dn = io.in("dn");
  T *dnw = io.dw(lp + "attn_norm.weight"), *dnb = io.dw(lp + "attn_norm.bias", true);
  T *dwqkv = io.dw(lp + "attn.qkv.weight"), *dbqkv = io.dw(lp + "attn.qkv.bias", true);
  T *dwo = io.dw(lp + "attn.out.weight"), *dbo = io.dw(lp + "attn.out.bias", true);
  if (!io.ok()) return io.err;
  cpu::matmul_backward((T*)nullptr, dwo, dbo, g, o, (const T*)nullptr, s.N, s.NH_tp * s.HD, s.C,
                       acc);
  cpu::matmul_backward((T*)nullptr, dwqkv, dbqkv, dqkv, n, (const T*)nullptr, s.N, s.C, s.QKV_tp,
                       acc);
  norm_backward_weight(s, dnw, dnb, dn, x, stats, acc);
  return "";
}

// ---- Mlp
// ------------------------------------------------------------------------------------------

template <typename T>
static std::string mlp_forward(UnitIo<T>& io) {
  const ModelShape& s = io.shape();
  const std::string lp = layer_prefix(io.c.stage->units[size_t(io.unit)]);
  const T *prev_out = nullptr, *prev_x = nullptr;
  residual_inputs(io, &prev_out, &prev_x);
  const T *nw = io.w(lp + "mlp_norm.weight"), *nb = io.w(lp + "mlp_norm.bias", true);
  const T *w1 = io.w(lp + "mlp.fc1.weight"), *b1 = io.w(lp + "mlp.fc1.bias", true);
  const T *w2 = io.w(lp + "mlp.fc2.weight"), *b2 = io.w(lp + "mlp.fc2.bias", true);
  T *x = io.out("x"), *stats = io.out("stats"), *n = io.out("n"), *u = io.out("u");
  T *a = io.out("a"), *partial = io.out("partial");
  if (!io.ok()) return io.err;
  norm_forward(s, n, stats, x, prev_out, prev_x, nw, nb);
  cpu::matmul_forward(u, n, w1, b1, s.N, s.C, s.F1_tp);  // (N, F1_tp)
  if (s.swiglu)
    cpu::swiglu_forward(a, u, s.N, s.F_tp);  // (N, F_tp)
  else
    cpu::gelu_forward(a, u, s.N * s.F_tp);
  cpu::matmul_forward(partial, a, w2, s.tp_rank == 0 ? b2 : nullptr, s.N, s.F_tp, s.C);
  return "";
}

template <typename T>
static std::string mlp_backward(UnitIo<T>& io) {
  const ModelShape& s = io.shape();
  const std::string lp = layer_prefix(io.c.stage->units[size_t(io.unit)]);
  T* g = io.out("g");
  residual_grad(io, g);
  const T *x = io.in("x"), *stats = io.in("stats"), *u = io.in("u");
  const T *nw = io.w(lp + "mlp_norm.weight"), *w1 = io.w(lp + "mlp.fc1.weight");
  const T* w2 = io.w(lp + "mlp.fc2.weight");
  T *du = io.out("du"), *dn = io.out("dn"), *dx = io.out("dx");
  if (!io.ok()) return io.err;
  T* da = io.c.ws->get(0, s.N * s.F_tp);  // (N, F_tp)
  cpu::matmul_backward(da, (T*)nullptr, (T*)nullptr, g, x, w2, s.N, s.F_tp, s.C, false);
  if (s.swiglu)
    cpu::swiglu_backward(du, u, da, s.N, s.F_tp);
  else
    cpu::gelu_backward(du, u, da, s.N * s.F_tp);
  cpu::matmul_backward(dn, (T*)nullptr, (T*)nullptr, du, x, w1, s.N, s.C, s.F1_tp, false);
  norm_backward_input(s, dx, dn, x, stats, nw);
  return "";
}

template <typename T>
static std::string mlp_weight(UnitIo<T>& io) {
  const ModelShape& s = io.shape();
  const std::string lp = layer_prefix(io.c.stage->units[size_t(io.unit)]);
  const bool acc = io.c.accumulate;
  const T *x = io.in("x"), *stats = io.in("stats"), *n = io.in("n"), *a = io.in("a");
  const T *g = io.in("g"), *du = io.in("du"), *dn = io.in("dn");
  T *dnw = io.dw(lp + "mlp_norm.weight"), *dnb = io.dw(lp + "mlp_norm.bias", true);
  T *dw1 = io.dw(lp + "mlp.fc1.weight"), *db1 = io.dw(lp + "mlp.fc1.bias", true);
  T *dw2 = io.dw(lp + "mlp.fc2.weight"), *db2 = io.dw(lp + "mlp.fc2.bias", true);
  if (!io.ok()) return io.err;
  cpu::matmul_backward((T*)nullptr, dw2, db2, g, a, (const T*)nullptr, s.N, s.F_tp, s.C, acc);
  cpu::matmul_backward((T*)nullptr, dw1, db1, du, n, (const T*)nullptr, s.N, s.C, s.F1_tp, acc);
  norm_backward_weight(s, dnw, dnb, dn, x, stats, acc);
  return "";
}

// ---- Head, Loss, Out
// ------------------------------------------------------------------------------

template <typename T>
static const char* lm_head_name(UnitIo<T>& io) {
  return io.c.params->find("lm_head.weight") ? "lm_head.weight" : "embed.weight";
}

template <typename T>
static std::string head_forward(UnitIo<T>& io) {
  const ModelShape& s = *io.c.shape;
  const T *prev_out = nullptr, *prev_x = nullptr;
  residual_inputs(io, &prev_out, &prev_x);
  const T *nw = io.w("final_norm.weight"), *nb = io.w("final_norm.bias", true);
  const T* wlm = io.w(lm_head_name(io));
  T *x = io.out("x"), *stats = io.out("stats"), *n = io.out("n"), *logits = io.out("logits");
  T* mx = io.out("max");
  if (!io.ok()) return io.err;
  norm_forward(s, n, stats, x, prev_out, prev_x, nw, nb);
  cpu::matmul_forward(logits, n, wlm, (const T*)nullptr, s.N, s.C, s.V_tp);  // (N, V_tp)
  cpu::xent_row_max(mx, logits, s.N, s.V_tp);
  return "";
}

template <typename T>
static std::string loss_forward(UnitIo<T>& io) {
  const ModelShape& s = *io.c.shape;
  if (!io.c.targets) return io.where() + ": no targets given";
  const int h = io.unit - 1;  // Head
  const T *logits = io.in("logits", h), *mx = io.in("max", h);
  T* st = io.out("stats");
  if (!io.ok()) return io.err;
  cpu::xent_sumexp(st, st + s.N, logits, mx, io.c.targets, s.N, s.V_tp, s.vocab_start);
  return "";
}

template <typename T>
static std::string head_backward(UnitIo<T>& io) {
  const ModelShape& s = *io.c.shape;
  if (!io.c.targets) return io.where() + ": no targets given";
  const int lo = io.unit + 1;  // Loss
  const T *logits = io.in("logits"), *mx = io.in("max"), *st = io.in("stats", lo);
  const T *x = io.in("x"), *stats = io.in("stats");
  const T *nw = io.w("final_norm.weight"), *wlm = io.w(lm_head_name(io));
  T *dlogits = io.out("dlogits"), *dn = io.out("dn"), *dx = io.out("dx");
  if (!io.ok()) return io.err;
  io.c.loss_sum = loss_rows_sum(mx, st, io.c.targets, s.N);
  cpu::xent_backward(dlogits, logits, mx, st, io.c.targets, io.c.loss_scale, s.N, s.V_tp,
                     s.vocab_start);
  cpu::matmul_backward(dn, (T*)nullptr, (T*)nullptr, dlogits, x, wlm, s.N, s.C, s.V_tp, false);
  norm_backward_input(s, dx, dn, x, stats, nw);
  return "";
}

template <typename T>
static std::string head_weight(UnitIo<T>& io) {
  const ModelShape& s = *io.c.shape;
  const bool acc = io.c.accumulate;
  const T *x = io.in("x"), *stats = io.in("stats"), *n = io.in("n");
  const T *dlogits = io.in("dlogits"), *dn = io.in("dn");
  T *dnw = io.dw("final_norm.weight"), *dnb = io.dw("final_norm.bias", true);
  T* dwlm = io.dw(lm_head_name(io));
  if (!io.ok()) return io.err;
  cpu::matmul_backward((T*)nullptr, dwlm, (T*)nullptr, dlogits, n, (const T*)nullptr, s.N, s.C,
                       s.V_tp, acc);
  norm_backward_weight(s, dnw, dnb, dn, x, stats, acc);
  return "";
}

template <typename T>
static std::string out_forward(UnitIo<T>& io) {
  const ModelShape& s = io.shape();
  const T *prev_out = nullptr, *prev_x = nullptr;
  residual_inputs(io, &prev_out, &prev_x);
  T* x = io.out("x");
  if (!io.ok()) return io.err;
  if (prev_x)
    cpu::residual_forward(x, prev_out, prev_x, s.N * s.C);
  else
    std::copy(prev_out, prev_out + s.N * s.C, x);
  return "";
}

// ---- Merge (VLM)
// -----------------------------------------------------------------------------------------

template <typename T>
static std::string merge_forward(UnitIo<T>& io) {
  const ModelShape &s = *io.c.shape, &v = *io.c.vshape;
  const T *prev_out = nullptr, *prev_x = nullptr;
  residual_inputs(io, &prev_out, &prev_x);
  const T *nw = io.w("visual.merger.norm.weight"), *nb = io.w("visual.merger.norm.bias");
  const T *w1 = io.w("visual.merger.fc1.weight"), *b1 = io.w("visual.merger.fc1.bias");
  const T *w2 = io.w("visual.merger.fc2.weight"), *b2 = io.w("visual.merger.fc2.bias");
  T *x = io.out("x"), *stats = io.out("stats"), *n = io.out("n"), *u = io.out("u"), *a = io.out("a");
  T* out = io.out("out");
  if (!io.ok()) return io.err;
  // The text embedding of every position first; the merged visual tokens then replace rows 1..vis.
  const std::string err = embedding_forward(io, out);
  if (!err.empty()) return err;
  cpu::layernorm_forward(n, stats, stats + v.N, x, prev_out, prev_x, nw, nb, v.N, v.C, v.eps);
  cpu::matmul_forward(u, n, w1, b1, v.Nvt, v.Fm, v.Fm_tp);  // n viewed as (Nvt, m^2*Cv)
  cpu::gelu_forward(a, u, v.Nvt * v.Fm_tp);
  T* merged = io.c.ws->get(0, v.Nvt * s.C);
  cpu::matmul_forward(merged, a, w2, s.tp_rank == 0 ? b2 : nullptr, v.Nvt, v.Fm_tp, s.C);
  scatter_visual(s, out, merged);
  return "";
}

template <typename T>
static std::string merge_backward(UnitIo<T>& io) {
  const ModelShape &s = *io.c.shape, &v = *io.c.vshape;
  T* ge = io.out("ge");
  residual_grad(io, ge);
  const T *x = io.in("x"), *stats = io.in("stats"), *u = io.in("u");
  const T *nw = io.w("visual.merger.norm.weight"), *w1 = io.w("visual.merger.fc1.weight");
  const T* w2 = io.w("visual.merger.fc2.weight");
  T *du = io.out("du"), *dn = io.out("dn"), *dx = io.out("dx");
  if (!io.ok()) return io.err;
  T* gv = io.c.ws->get(0, v.Nvt * s.C);
  gather_visual(s, gv, ge);
  T* da = io.c.ws->get(1, v.Nvt * v.Fm_tp);
  cpu::matmul_backward(da, (T*)nullptr, (T*)nullptr, gv, (const T*)nullptr, w2, v.Nvt, v.Fm_tp, s.C, false);
  cpu::gelu_backward(du, u, da, v.Nvt * v.Fm_tp);
  cpu::matmul_backward(dn, (T*)nullptr, (T*)nullptr, du, (const T*)nullptr, w1, v.Nvt, v.Fm, v.Fm_tp, false);
  cpu::layernorm_backward_input(dx, dn, x, nw, stats, stats + v.N, v.N, v.C, false);
  return "";
}

template <typename T>
static std::string merge_weight(UnitIo<T>& io) {
  const ModelShape &s = *io.c.shape, &v = *io.c.vshape;
  if (!io.c.tokens) return io.where() + ": no tokens given";
  const bool acc = io.c.accumulate;
  const T *x = io.in("x"), *stats = io.in("stats"), *n = io.in("n"), *a = io.in("a");
  const T *ge = io.in("ge"), *du = io.in("du"), *dn = io.in("dn");
  T *dnw = io.dw("visual.merger.norm.weight"), *dnb = io.dw("visual.merger.norm.bias");
  T *dw1 = io.dw("visual.merger.fc1.weight"), *db1 = io.dw("visual.merger.fc1.bias");
  T *dw2 = io.dw("visual.merger.fc2.weight"), *db2 = io.dw("visual.merger.fc2.bias");
  if (!io.ok()) return io.err;
  T* gv = io.c.ws->get(0, v.Nvt * s.C);
  gather_visual(s, gv, ge);
  cpu::matmul_backward((T*)nullptr, dw2, db2, gv, a, (const T*)nullptr, v.Nvt, v.Fm_tp, s.C, acc);
  cpu::matmul_backward((T*)nullptr, dw1, db1, du, n, (const T*)nullptr, v.Nvt, v.Fm, v.Fm_tp, acc);
  cpu::layernorm_backward_weight(dnw, dnb, dn, x, stats, stats + v.N, v.N, v.C, acc);
  // The text embedding saw only the text rows (the visual rows were replaced).
  T* gt = io.c.ws->get(2, s.N * s.C);
  std::copy(ge, ge + s.N * s.C, gt);
  for (int64_t j = 0; j < s.b; ++j)
    std::fill(gt + (j * s.T + 1) * s.C, gt + (j * s.T + 1 + s.vis) * s.C, T(0));
  return embedding_weight(io, (const T*)gt);
}

// ---- dispatch
// -------------------------------------------------------------------------------------

template <typename T>
std::string unit_run(UnitCtx<T>& ctx, int unit, UnitPass pass) {
  if (!ctx.shape || !ctx.stage || !ctx.params || !ctx.store || !ctx.ws)
    return "unit_run: incomplete UnitCtx (shape, stage, params, store and ws are required)";
  if (unit < 0 || unit >= int(ctx.stage->units.size()))
    return "unit_run: unit " + std::to_string(unit) + " out of range on stage " +
           std::to_string(ctx.stage->stage);
  UnitIo<T> io{ctx, unit, pass, ""};
  const UnitDesc& u = ctx.stage->units[size_t(unit)];
  const bool has = pass == UnitPass::F ? u.has_f : pass == UnitPass::B ? u.has_b : u.has_w;
  if (!has) return io.where() + ": the unit has no such pass";
  if ((u.vision || u.kind == UnitKind::Merge) && !ctx.vshape)
    return io.where() + ": no vision shape given";
  switch (u.kind) {
    case UnitKind::In:
      return pass == UnitPass::F   ? in_forward(io)
             : pass == UnitPass::B ? in_backward(io)
                                   : in_weight(io);
    case UnitKind::Attn:
      return pass == UnitPass::F   ? attn_forward(io)
             : pass == UnitPass::B ? attn_backward(io)
                                   : attn_weight(io);
    case UnitKind::Mlp:
      return pass == UnitPass::F   ? mlp_forward(io)
             : pass == UnitPass::B ? mlp_backward(io)
                                   : mlp_weight(io);
    case UnitKind::Head:
      return pass == UnitPass::F   ? head_forward(io)
             : pass == UnitPass::B ? head_backward(io)
                                   : head_weight(io);
    case UnitKind::Loss:
      return loss_forward(io);
    case UnitKind::Out:
      return pass == UnitPass::F ? out_forward(io) : std::string();  // Out.B: received
    case UnitKind::Merge:
      return pass == UnitPass::F   ? merge_forward(io)
             : pass == UnitPass::B ? merge_backward(io)
                                   : merge_weight(io);
  }
  return io.where() + ": unknown unit kind";
}

template <typename T>
std::string unit_loss_sum(UnitCtx<T>& ctx, double* loss_sum) {
  int head = -1;
  for (size_t i = 0; i < ctx.stage->units.size(); ++i)
    if (ctx.stage->units[i].kind == UnitKind::Head) head = int(i);
  if (head < 0) return "unit_loss_sum: stage " + std::to_string(ctx.stage->stage) + " has no head";
  UnitIo<T> io{ctx, head, UnitPass::B, ""};
  if (!ctx.targets) return io.where() + ": no targets given";
  const T *mx = io.in("max"), *st = io.in("stats", head + 1);
  if (!io.ok()) return io.err;
  *loss_sum = loss_rows_sum(mx, st, ctx.targets, ctx.shape->N);
  return "";
}

template class Workspace<float>;
template class Workspace<double>;
template std::string unit_run<float>(UnitCtx<float>&, int, UnitPass);
template std::string unit_run<double>(UnitCtx<double>&, int, UnitPass);
template std::string unit_loss_sum<float>(UnitCtx<float>&, double*);
template std::string unit_loss_sum<double>(UnitCtx<double>&, double*);

}  // namespace stp
