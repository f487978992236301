// cuda_model.cpp: the bf16 unit passes and device parameters of cuda_model.h. Each pass mirrors its
// fp32 twin in model/units.cpp line by line (same tensors, same kernels in the same order); Unit
// resolves the tensors and parameters and records the first missing one as the error.
#include "runtime/cuda/cuda_model.h"

#include <algorithm>
#include <cmath>

#include "model/kernels/cuda/check.h"
#include "model/params.h"
#include "runtime/optimizer.h"

namespace stp::cuda {

bool cuda_tensor_fp32(const TensorDesc& t) {
  const std::string field = t.name.substr(t.name.rfind('.') + 1);
  return field == "stats" || field == "lse" || field == "max";
}

int64_t cuda_tensor_bytes(const TensorDesc& t) { return t.elems * (cuda_tensor_fp32(t) ? 4 : 2); }

// ---- parameters ----------------------------------------------------------------------------------

CudaRankModel::CudaRankModel(const Config& cfg, const ModelDesc& desc, const PipelineProgram& pipe,
                             int pp_rank, int tp_rank, Ctx& ctx)
    : cfg_(cfg), desc_(desc), pipe_(pipe), pp_rank_(pp_rank), ctx_(ctx), shape_(model_shape(cfg, tp_rank)) {
  if (cfg.model.vision.enabled) {
    error_ = "train.device=cuda does not run the vision tower yet (model.vision.enabled is true)";
    return;
  }
  const ParamInit init = param_init_of(cfg);
  for (int s = 0; s < int(desc.stages.size()); ++s) {
    if (stage_rank(pipe.placement, pipe.pp, s) != pp_rank) continue;
    StageParams<float> host(desc.stages[size_t(s)], cfg.parallel.tp, tp_rank, init);  // the CPU init
    std::map<std::string, DevParam*>& names = by_name_[s];
    for (size_t k = 0; k < host.all().size(); ++k) {
      const Param<float>& hp = host.all()[k];
      auto p = std::make_unique<DevParam>();
      p->desc = &desc.stages[size_t(s)].params[k];
      p->stage = s;
      p->index = int(k);
      p->n = hp.size();
      p->local_shape = hp.local_shape;
      p->decay = hp.desc.shape.size() >= 2;
      p->master = DeviceBuffer<float>(ctx.alloc, size_t(p->n));
      p->grad = DeviceBuffer<float>(ctx.alloc, size_t(p->n));
      p->m = DeviceBuffer<float>(ctx.alloc, size_t(p->n));
      p->v = DeviceBuffer<float>(ctx.alloc, size_t(p->n));
      p->bf = DeviceBuffer<bf16>(ctx.alloc, size_t(p->n));
      upload(p->master, hp.value);
      CUDA_CHECK(cudaMemsetAsync(p->m.data(), 0, p->m.bytes(), ctx.stream));
      CUDA_CHECK(cudaMemsetAsync(p->v.data(), 0, p->v.bytes(), ctx.stream));
      names[hp.desc.name] = p.get();
      params_.push_back(std::move(p));
    }
  }
  refresh_bf16();
  const int M = cfg.schedule.microbatches;
  for (int m = 0; m < M; ++m) {
    tokens_.emplace_back(ctx.alloc, size_t(shape_.N));
    targets_.emplace_back(ctx.alloc, size_t(shape_.N));
  }
  host_targets_.assign(size_t(M), std::vector<int32_t>(size_t(shape_.N), -1));
  loss_slots_ = DeviceBuffer<float>(ctx.alloc, size_t(M) * 3 * size_t(shape_.N));
  norms_ = DeviceBuffer<double>(ctx.alloc, std::max<size_t>(1, params_.size()));
  CUDA_CHECK(cudaStreamSynchronize(ctx.stream));  // the host initialisation leaves scope
}

bool CudaRankModel::holds_embedding() const {
  for (const auto& kv : by_name_)
    if (desc_.stages[size_t(kv.first)].embeds) return true;
  return false;
}

int64_t CudaRankModel::local_elems() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p->n;
  return n;
}

void CudaRankModel::upload(DeviceBuffer<float>& b, const std::vector<float>& h) {
  copy_to_device(b.data(), h.data(), std::min(b.size(), h.size()) * sizeof(float), ctx_.stream);
  CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));  // h may leave scope
}

std::vector<float> CudaRankModel::download(const DeviceBuffer<float>& b) { return cuda::download(b, ctx_.stream); }

void CudaRankModel::refresh_bf16() {
  for (auto& p : params_) cast_f32_to_bf16(p->bf.data(), p->master.data(), p->n, ctx_);
}

void CudaRankModel::begin_step(float loss_scale) {
  loss_scale_ = loss_scale;
  for (auto& p : params_) CUDA_CHECK(cudaMemsetAsync(p->grad.data(), 0, p->grad.bytes(), ctx_.stream));
}

void CudaRankModel::upload_batch(int mb, const std::vector<int32_t>& inputs, const std::vector<int32_t>& targets) {
  // Pageable host memory: cudaMemcpyAsync returns once the data is staged, so the vectors may change.
  copy_to_device(tokens_[size_t(mb)].data(), inputs.data(), size_t(shape_.N) * 4, ctx_.stream);
  copy_to_device(targets_[size_t(mb)].data(), targets.data(), size_t(shape_.N) * 4, ctx_.stream);
  host_targets_[size_t(mb)] = targets;
}

std::vector<FloatSpan> CudaRankModel::grad_sync_spans(CommGroup g) {
  std::vector<FloatSpan> spans;
  for (auto& p : params_)
    if (g == CommGroup::DP || p->desc->tp_partial_grad) spans.push_back(FloatSpan{p->grad.data(), p->n});
  return spans;
}

double CudaRankModel::loss_sum(int mb) {
  const int64_t N = shape_.N;
  std::vector<float> h(size_t(3 * N));
  copy_to_host_sync(h.data(), loss_slots_.data() + size_t(mb) * 3 * size_t(N), h.size() * 4, ctx_.stream);
  const float *mx = h.data(), *st = h.data() + N;
  const std::vector<int32_t>& tg = host_targets_[size_t(mb)];
  double sum = 0;
  for (int64_t i = 0; i < N; ++i)
    if (tg[size_t(i)] >= 0) sum += std::log(double(st[i])) + double(mx[i]) - double(st[N + i]);
  return sum;
}

std::vector<double> CudaRankModel::grad_sq_norms() {
  for (size_t k = 0; k < params_.size(); ++k)
    grad_sq_norm(norms_.data() + k, params_[k]->grad.data(), params_[k]->n, ctx_);
  std::vector<double> h(params_.size());
  if (!h.empty()) copy_to_host_sync(h.data(), norms_.data(), h.size() * sizeof(double), ctx_.stream);
  return h;
}

void CudaRankModel::adamw(const TrainConfig& t, int64_t step, float grad_scale) {
  for (auto& p : params_)
    adamw_update(p->master.data(), p->bf.data(), p->grad.data(), p->m.data(), p->v.data(), p->n,
                 adamw_hyper(t, step, p->decay), grad_scale, ctx_);
}

// ---- unit passes ---------------------------------------------------------------------------------

struct CudaRankModel::Unit {
  CudaRankModel& m;
  const StageDesc& sd;
  int mb, unit;
  UnitPass pass;
  TensorSource<void>& t;
  std::string err;

  const ModelShape& s() const { return m.shape_; }
  Ctx& ctx() { return m.ctx_; }
  std::string where() const {
    return "stage " + std::to_string(sd.stage) + " mb " + std::to_string(mb) + " " +
           unit_name(sd.units[size_t(unit)]) + "." + unit_pass_name(pass);
  }
  void fail(const std::string& what) {
    if (err.empty()) err = where() + ": " + what;
  }
  void* out_raw(const char* field) {
    const int k = sd.find_tensor(field, unit);
    if (k < 0) return fail(std::string("no tensor '") + field + "' in the table"), nullptr;
    void* p = t.produce(sd.stage, mb, k);  // nullptr: out of memory (no kernel may see it)
    if (!p) fail("cannot allocate tensor '" + sd.tensors[size_t(k)].name + "' (out of device memory)");
    return p;
  }
  void* in_raw(const char* field, int u, bool optional) {
    const int k = sd.find_tensor(field, u < 0 ? unit : u);
    if (k < 0) {
      if (!optional) fail(std::string("no tensor '") + field + "' in the table");
      return nullptr;
    }
    void* p = t.read(sd.stage, mb, k);
    if (!p) fail("tensor '" + sd.tensors[size_t(k)].name + "' is not live");
    return p;
  }
  bf16* out(const char* f) { return static_cast<bf16*>(out_raw(f)); }
  float* outf(const char* f) { return static_cast<float*>(out_raw(f)); }
  const bf16* in(const char* f, int u = -1, bool optional = false) { return static_cast<const bf16*>(in_raw(f, u, optional)); }
  const float* inf(const char* f, int u = -1) { return static_cast<const float*>(in_raw(f, u, false)); }
  DevParam* param(const std::string& name, bool optional) {
    auto& names = m.by_name_[sd.stage];
    auto it = names.find(name);
    if (it == names.end() && !optional) fail("no parameter '" + name + "' on this stage");
    return it == names.end() ? nullptr : it->second;
  }
  const bf16* w(const std::string& name, bool optional = false) {
    DevParam* p = param(name, optional);
    return p ? p->bf.data() : nullptr;
  }
  float* dw(const std::string& name, bool optional = false) {
    DevParam* p = param(name, optional);
    return p ? p->grad.data() : nullptr;
  }
  bool ok() const { return err.empty(); }
  std::string prefix() const { return "layers." + std::to_string(sd.units[size_t(unit)].layer) + "."; }
  const char* lm_head() { return m.by_name_[sd.stage].count("lm_head.weight") ? "lm_head.weight" : "embed.weight"; }
  const int* tokens() { return m.tokens_[size_t(mb)].data(); }
  const int* targets() { return m.targets_[size_t(mb)].data(); }

  // model/units.cpp's residual_inputs: the previous unit's (reduced) output and its residual stream.
  void residual_inputs(const bf16** prev_out, const bf16** prev_x) {
    const int p = unit - 1;
    const bool from_in = sd.units[size_t(p)].kind == UnitKind::In;
    *prev_out = in(from_in ? "out" : "partial", p);
    *prev_x = from_in ? nullptr : in("x", p);
  }
  // g (n) = the previous backward unit's g + its reduced dx (either may be absent).
  void residual_grad(bf16* g, int64_t n) {
    const std::vector<int> order = sd.backward_order();
    const auto pos = std::find(order.begin(), order.end(), unit);
    if (pos == order.begin()) return fail("no earlier backward unit");
    const bf16* pg = in("g", *(pos - 1), true);
    const bf16* pdx = in("dx", *(pos - 1), true);
    if (!ok() || !g) return;
    if (!pg && !pdx) return fail("previous backward unit has neither g nor dx");
    if (pg && pdx)
      residual_forward(g, pg, pdx, n, ctx());
    else
      CUDA_CHECK(cudaMemcpyAsync(g, pg ? pg : pdx, size_t(n) * sizeof(bf16), cudaMemcpyDeviceToDevice, ctx().stream));
  }
  void norm_forward(bf16* n, float* stats, bf16* x, const bf16* prev_out, const bf16* prev_x, const bf16* w,
                    const bf16* b) {
    const ModelShape& sh = s();
    if (sh.layernorm) {
      layernorm_forward(n, stats, stats + sh.N, x, prev_out, prev_x, w, b, sh.N, sh.C, sh.eps, ctx());
    } else {
      CUDA_CHECK(cudaMemsetAsync(stats, 0, size_t(sh.N) * 4, ctx().stream));
      rmsnorm_forward(n, stats + sh.N, x, prev_out, prev_x, w, sh.N, sh.C, sh.eps, ctx());
    }
  }
  void norm_backward_input(bf16* dx, const bf16* dn, const bf16* x, const float* stats, const bf16* w) {
    const ModelShape& sh = s();
    if (sh.layernorm)
      layernorm_backward_input(dx, dn, x, w, stats, stats + sh.N, sh.N, sh.C, false, ctx());
    else
      rmsnorm_backward_input(dx, dn, x, w, stats + sh.N, sh.N, sh.C, false, ctx());
  }
  void norm_backward_weight(float* dw, float* db, const bf16* dn, const bf16* x, const float* stats) {
    const ModelShape& sh = s();
    if (sh.layernorm)
      layernorm_backward_weight(dw, db, dn, x, stats, stats + sh.N, sh.N, sh.C, true, ctx());
    else
      rmsnorm_backward_weight(dw, dn, x, stats + sh.N, sh.N, sh.C, true, ctx());
  }
  AttnShape attn() const { return AttnShape{s().b, s().T, s().NH_tp, s().NKV_tp, s().HD, s().causal}; }
  bf16* scratch(int64_t n) {
    if (int64_t(m.ws_.size()) < n) m.ws_ = DeviceBuffer<bf16>(m.ctx_.alloc, size_t(n));
    return m.ws_.data();
  }

  std::string in_forward() {
    if (!sd.first) return "";  // received (or handed over)
    const bf16* wte = w("embed.weight");
    const bf16* wpe = s().tp_rank == 0 ? w("embed.pos", true) : nullptr;
    bf16* o = out("out");
    if (!ok()) return err;
    embedding_forward(o, tokens(), wte, wpe, s().N, s().T, s().C, s().vocab_start, s().V_tp, ctx());
    return "";
  }
  std::string in_backward() {
    bf16* g = out("g");
    residual_grad(g, s().N * s().C);
    return err;
  }
  std::string in_weight() {
    const bf16* g = in("g");
    float* dwte = dw("embed.weight");
    float* dwpe = dw("embed.pos", true);
    if (!ok()) return err;
    // Adds (+=): a tied head on this stage already wrote embed.weight's gradient this step.
    embedding_backward(dwte, dwpe, g, tokens(), s().N, s().T, s().C, s().vocab_start, s().V_tp, ctx());
    return "";
  }

  std::string attn_forward() {
    const ModelShape& sh = s();
    const std::string lp = prefix();
    const bf16 *prev_out = nullptr, *prev_x = nullptr;
    residual_inputs(&prev_out, &prev_x);
    const bf16 *nw = w(lp + "attn_norm.weight"), *nb = w(lp + "attn_norm.bias", true);
    const bf16 *wqkv = w(lp + "attn.qkv.weight"), *bqkv = w(lp + "attn.qkv.bias", true);
    const bf16 *wo = w(lp + "attn.out.weight"), *bo = w(lp + "attn.out.bias", true);
    bf16 *x = out("x"), *n = out("n"), *qkv = out("qkv"), *o = out("o"), *partial = out("partial");
    float *stats = outf("stats"), *lse = outf("lse");
    if (!ok()) return err;
    norm_forward(n, stats, x, prev_out, prev_x, nw, nb);
    matmul_forward(qkv, n, wqkv, bqkv, sh.N, sh.C, sh.QKV_tp, ctx());
    if (sh.rope) rope_forward(qkv, sh.b, sh.T, sh.NH_tp, sh.NKV_tp, sh.HD, sh.theta, ctx());
    attention_forward(o, lse, qkv, attn(), ctx());
    matmul_forward(partial, o, wo, sh.tp_rank == 0 ? bo : nullptr, sh.N, sh.NH_tp * sh.HD, sh.C, ctx());
    return "";
  }
  std::string attn_backward() {
    const ModelShape& sh = s();
    const std::string lp = prefix();
    bf16* g = out("g");
    residual_grad(g, sh.N * sh.C);
    const bf16 *x = in("x"), *qkv = in("qkv"), *o = in("o");
    const float *stats = inf("stats"), *lse = inf("lse");
    const bf16 *nw = w(lp + "attn_norm.weight"), *wqkv = w(lp + "attn.qkv.weight"), *wo = w(lp + "attn.out.weight");
    bf16 *dqkv = out("dqkv"), *dn = out("dn"), *dx = out("dx");
    if (!ok()) return err;
    const int64_t OW = sh.NH_tp * sh.HD;
    bf16* d_o = scratch(sh.N * OW);
    matmul_backward(d_o, nullptr, nullptr, g, o, wo, sh.N, OW, sh.C, false, ctx());
    attention_backward(dqkv, d_o, qkv, o, lse, attn(), ctx());
    if (sh.rope) rope_backward(dqkv, sh.b, sh.T, sh.NH_tp, sh.NKV_tp, sh.HD, sh.theta, ctx());
    matmul_backward(dn, nullptr, nullptr, dqkv, x, wqkv, sh.N, sh.C, sh.QKV_tp, false, ctx());
    norm_backward_input(dx, dn, x, stats, nw);
    return "";
  }
  std::string attn_weight() {
    const ModelShape& sh = s();
    const std::string lp = prefix();
    const bf16 *x = in("x"), *n = in("n"), *o = in("o"), *g = in("g"), *dqkv = in("dqkv"), *dn = in("dn");
    const float* stats = inf("stats");
    float *dnw = dw(lp + "attn_norm.weight"), *dnb = dw(lp + "attn_norm.bias", true);
    float *dwqkv = dw(lp + "attn.qkv.weight"), *dbqkv = dw(lp + "attn.qkv.bias", true);
    float *dwo = dw(lp + "attn.out.weight"), *dbo = dw(lp + "attn.out.bias", true);
    if (!ok()) return err;
    matmul_backward(nullptr, dwo, dbo, g, o, nullptr, sh.N, sh.NH_tp * sh.HD, sh.C, true, ctx());
    matmul_backward(nullptr, dwqkv, dbqkv, dqkv, n, nullptr, sh.N, sh.C, sh.QKV_tp, true, ctx());
    norm_backward_weight(dnw, dnb, dn, x, stats);
    return "";
  }

  std::string mlp_forward() {
    const ModelShape& sh = s();
    const std::string lp = prefix();
    const bf16 *prev_out = nullptr, *prev_x = nullptr;
    residual_inputs(&prev_out, &prev_x);
    const bf16 *nw = w(lp + "mlp_norm.weight"), *nb = w(lp + "mlp_norm.bias", true);
    const bf16 *w1 = w(lp + "mlp.fc1.weight"), *b1 = w(lp + "mlp.fc1.bias", true);
    const bf16 *w2 = w(lp + "mlp.fc2.weight"), *b2 = w(lp + "mlp.fc2.bias", true);
    bf16 *x = out("x"), *n = out("n"), *u = out("u"), *a = out("a"), *partial = out("partial");
    float* stats = outf("stats");
    if (!ok()) return err;
    norm_forward(n, stats, x, prev_out, prev_x, nw, nb);
    matmul_forward(u, n, w1, b1, sh.N, sh.C, sh.F1_tp, ctx());
    if (sh.swiglu)
      swiglu_forward(a, u, sh.N, sh.F_tp, ctx());
    else
      gelu_forward(a, u, sh.N * sh.F_tp, ctx());
    matmul_forward(partial, a, w2, sh.tp_rank == 0 ? b2 : nullptr, sh.N, sh.F_tp, sh.C, ctx());
    return "";
  }
  std::string mlp_backward() {
    const ModelShape& sh = s();
    const std::string lp = prefix();
    bf16* g = out("g");
    residual_grad(g, sh.N * sh.C);
    const bf16 *x = in("x"), *u = in("u");
    const float* stats = inf("stats");
    const bf16 *nw = w(lp + "mlp_norm.weight"), *w1 = w(lp + "mlp.fc1.weight"), *w2 = w(lp + "mlp.fc2.weight");
    bf16 *du = out("du"), *dn = out("dn"), *dx = out("dx");
    if (!ok()) return err;
    bf16* da = scratch(sh.N * sh.F_tp);
    matmul_backward(da, nullptr, nullptr, g, x, w2, sh.N, sh.F_tp, sh.C, false, ctx());
    if (sh.swiglu)
      swiglu_backward(du, u, da, sh.N, sh.F_tp, ctx());
    else
      gelu_backward(du, u, da, sh.N * sh.F_tp, ctx());
    matmul_backward(dn, nullptr, nullptr, du, x, w1, sh.N, sh.C, sh.F1_tp, false, ctx());
    norm_backward_input(dx, dn, x, stats, nw);
    return "";
  }
  std::string mlp_weight() {
    const ModelShape& sh = s();
    const std::string lp = prefix();
    const bf16 *x = in("x"), *n = in("n"), *a = in("a"), *g = in("g"), *du = in("du"), *dn = in("dn");
    const float* stats = inf("stats");
    float *dnw = dw(lp + "mlp_norm.weight"), *dnb = dw(lp + "mlp_norm.bias", true);
    float *dw1 = dw(lp + "mlp.fc1.weight"), *db1 = dw(lp + "mlp.fc1.bias", true);
    float *dw2 = dw(lp + "mlp.fc2.weight"), *db2 = dw(lp + "mlp.fc2.bias", true);
    if (!ok()) return err;
    matmul_backward(nullptr, dw2, db2, g, a, nullptr, sh.N, sh.F_tp, sh.C, true, ctx());
    matmul_backward(nullptr, dw1, db1, du, n, nullptr, sh.N, sh.C, sh.F1_tp, true, ctx());
    norm_backward_weight(dnw, dnb, dn, x, stats);
    return "";
  }

  std::string head_forward() {
    const ModelShape& sh = s();
    const bf16 *prev_out = nullptr, *prev_x = nullptr;
    residual_inputs(&prev_out, &prev_x);
    const bf16 *nw = w("final_norm.weight"), *nb = w("final_norm.bias", true), *wlm = w(lm_head());
    bf16 *x = out("x"), *n = out("n"), *logits = out("logits");
    float *stats = outf("stats"), *mx = outf("max");
    if (!ok()) return err;
    norm_forward(n, stats, x, prev_out, prev_x, nw, nb);
    matmul_forward(logits, n, wlm, nullptr, sh.N, sh.C, sh.V_tp, ctx());
    xent_row_max(mx, logits, sh.N, sh.V_tp, ctx());
    return "";
  }
  std::string loss_forward() {
    const ModelShape& sh = s();
    const int h = unit - 1;  // Head
    const bf16* logits = in("logits", h);
    const float* mx = inf("max", h);
    float* st = outf("stats");
    if (!ok()) return err;
    xent_sumexp(st, st + sh.N, logits, mx, targets(), sh.N, sh.V_tp, sh.vocab_start, ctx());
    return "";
  }
  std::string head_backward() {
    const ModelShape& sh = s();
    const bf16 *logits = in("logits"), *x = in("x");
    const float *mx = inf("max"), *st = inf("stats", unit + 1), *stats = inf("stats");
    const bf16 *nw = w("final_norm.weight"), *wlm = w(lm_head());
    bf16 *dlogits = out("dlogits"), *dn = out("dn"), *dx = out("dx");
    if (!ok()) return err;
    float* slot = m.loss_slots_.data() + size_t(mb) * 3 * size_t(sh.N);
    CUDA_CHECK(cudaMemcpyAsync(slot, mx, size_t(sh.N) * 4, cudaMemcpyDeviceToDevice, ctx().stream));
    CUDA_CHECK(cudaMemcpyAsync(slot + sh.N, st, size_t(sh.N) * 8, cudaMemcpyDeviceToDevice, ctx().stream));
    xent_backward(dlogits, logits, mx, st, targets(), m.loss_scale_, sh.N, sh.V_tp, sh.vocab_start, ctx());
    matmul_backward(dn, nullptr, nullptr, dlogits, x, wlm, sh.N, sh.C, sh.V_tp, false, ctx());
    norm_backward_input(dx, dn, x, stats, nw);
    return "";
  }
  std::string head_weight() {
    const ModelShape& sh = s();
    const bf16 *x = in("x"), *n = in("n"), *dlogits = in("dlogits"), *dn = in("dn");
    const float* stats = inf("stats");
    float *dnw = dw("final_norm.weight"), *dnb = dw("final_norm.bias", true), *dwlm = dw(lm_head());
    if (!ok()) return err;
    matmul_backward(nullptr, dwlm, nullptr, dlogits, n, nullptr, sh.N, sh.C, sh.V_tp, true, ctx());
    norm_backward_weight(dnw, dnb, dn, x, stats);
    return "";
  }
  std::string out_forward() {
    const ModelShape& sh = s();
    const bf16 *prev_out = nullptr, *prev_x = nullptr;
    residual_inputs(&prev_out, &prev_x);
    bf16* x = out("x");
    if (!ok()) return err;
    if (prev_x)
      residual_forward(x, prev_out, prev_x, sh.N * sh.C, ctx());
    else
      CUDA_CHECK(cudaMemcpyAsync(x, prev_out, size_t(sh.N * sh.C) * sizeof(bf16), cudaMemcpyDeviceToDevice, ctx().stream));
    return "";
  }

  std::string run() {
    const UnitDesc& u = sd.units[size_t(unit)];
    const bool has = pass == UnitPass::F ? u.has_f : pass == UnitPass::B ? u.has_b : u.has_w;
    if (!has) return where() + ": the unit has no such pass";
    const bool F = pass == UnitPass::F, B = pass == UnitPass::B;
    switch (u.kind) {
      case UnitKind::In: return F ? in_forward() : B ? in_backward() : in_weight();
      case UnitKind::Attn: return F ? attn_forward() : B ? attn_backward() : attn_weight();
      case UnitKind::Mlp: return F ? mlp_forward() : B ? mlp_backward() : mlp_weight();
      case UnitKind::Head: return F ? head_forward() : B ? head_backward() : head_weight();
      case UnitKind::Loss: return loss_forward();
      case UnitKind::Out: return F ? out_forward() : std::string();  // Out.B: received
      case UnitKind::Merge: break;  // vision only: the constructor refuses the vision tower
    }
    return where() + ": unknown unit kind";
  }
};

// The V turn (runtime/executor.h, v_turn_of): a device-to-device copy on the compute stream.
std::string CudaRankModel::handover(int stage, int mb, UnitRef u, TensorSource<void>& t) {
  const std::optional<VTurn> v = v_turn_of(desc_, pipe_, pp_rank_, stage, u);
  if (!v) return "";
  if (!v->error.empty()) return v->error;
  const void* from = t.read(v->src_stage, mb, v->src);
  void* to = t.produce(stage, mb, v->dst);
  if (!from || !to) return "V turn: the stage boundary tensor is not live";
  const int64_t bytes = cuda_tensor_bytes(desc_.stages[size_t(stage)].tensors[size_t(v->dst)]);
  CUDA_CHECK(cudaMemcpyAsync(to, from, size_t(bytes), cudaMemcpyDeviceToDevice, ctx_.stream));
  return "";
}

std::string CudaRankModel::compute(int stage, int mb, UnitRef u, TensorSource<void>& t) {
  if (!holds_stage(stage)) return "stage " + std::to_string(stage) + " is not on this rank";
  std::string err = handover(stage, mb, u, t);
  if (!err.empty()) return err;
  Unit unit{*this, desc_.stages[size_t(stage)], mb, u.unit, u.pass, t, ""};
  return unit.run();
}

}  // namespace stp::cuda
