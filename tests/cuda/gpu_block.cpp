// gpu_block.cpp: the block and model of gpu_block.h, one CUDA kernel call per line of the math.
#include "tests/cuda/gpu_block.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "model/kernels/cuda/check.h"

namespace stp::cuda::bench {

namespace {

constexpr int64_t kAlign = 128;  // elements: 256-byte aligned bf16 tensors, as cuBLASLt prefers

struct Layout {
  int64_t next = 0;
  Slot take(int64_t n) {
    if (n == 0) return {};
    Slot s{next, n};
    next += (n + kAlign - 1) / kAlign * kAlign;
    return s;
  }
};

// splitmix64: a fast, seedable host generator for large initialisations.
struct Rng {
  uint64_t s;
  float uniform() {  // [-1, 1)
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return float(z >> 40) / float(1 << 23) - 1.0f;
  }
};

}  // namespace

int64_t ModelSpec::layer_params() const {
  const int64_t nb = bias ? 1 : 0, nl = rms ? 1 : 2;
  return C * QKV() + nb * QKV() + C * NH * HD() + nb * C + C * F1() + nb * F1() + F * C + nb * C +
         2 * nl * C;
}

int64_t ModelSpec::params() const {
  int64_t p = L * layer_params();
  if (with_embedding_and_head)
    p += V * C + (learned_pos ? T * C : 0) + (rms ? 1 : 2) * C + (tied ? 0 : V * C);
  return p;
}

double ModelSpec::step_flops() const {
  const double mm = double(C) * QKV() + double(C) * NH * HD() + double(C) * F1() + double(F) * C;
  double per_token = 6.0 * L * mm + 6.0 * L * double(T) * C;
  if (with_embedding_and_head) per_token += 6.0 * double(V) * C;
  return per_token * double(N());
}

GpuModel::GpuModel(const ModelSpec& spec, Ctx& ctx, uint64_t seed) : s_(spec), ctx_(ctx) {
  layout_params();
  init_params(seed);
  alloc_buffers();
}

// Slots in the flat buffers: matrices first (weight decay), then vectors.
void GpuModel::layout_params() {
  const ModelSpec& s = s_;
  Layout lay;
  layers_.resize(s.L);
  for (auto& p : layers_) {
    p.qkv_w = lay.take(s.QKV() * s.C);
    p.o_w = lay.take(s.C * s.NH * s.HD());
    p.fc1_w = lay.take(s.F1() * s.C);
    p.fc2_w = lay.take(s.C * s.F);
  }
  if (s.with_embedding_and_head) {
    wte = lay.take(s.V * s.C);
    if (s.learned_pos) wpe = lay.take(s.T * s.C);
    head_w = s.tied ? wte : lay.take(s.V * s.C);  // tied: both gradients add into wte's
  }
  n_matrix = lay.next;
  const int64_t nb = s.bias ? 1 : 0;
  for (auto& p : layers_) {
    p.ln1_w = lay.take(s.C), p.ln2_w = lay.take(s.C);
    if (!s.rms) p.ln1_b = lay.take(s.C), p.ln2_b = lay.take(s.C);
    p.qkv_b = lay.take(nb * s.QKV()), p.o_b = lay.take(nb * s.C);
    p.fc1_b = lay.take(nb * s.F1()), p.fc2_b = lay.take(nb * s.C);
  }
  if (s.with_embedding_and_head) {
    lnf_w = lay.take(s.C);
    if (!s.rms) lnf_b = lay.take(s.C);
  }
  n_total = lay.next;
}

// Matrices uniform with std 0.02, norm weights 1, biases and padding 0; AdamW state 0.
void GpuModel::init_params(uint64_t seed) {
  Ctx& ctx = ctx_;
  master = DeviceBuffer<float>(ctx.alloc, n_total);
  grad = DeviceBuffer<float>(ctx.alloc, n_total);
  m = DeviceBuffer<float>(ctx.alloc, n_total);
  v = DeviceBuffer<float>(ctx.alloc, n_total);
  wbf = DeviceBuffer<bf16>(ctx.alloc, n_total);
  Rng rng{seed};
  const int64_t chunk = int64_t(1) << 24;
  std::vector<float> h(size_t(std::min(chunk, n_total)));
  for (int64_t off = 0; off < n_total; off += chunk) {
    const int64_t n = std::min(chunk, n_total - off);
    for (int64_t i = 0; i < n; ++i) h[i] = off + i < n_matrix ? 0.02f * 1.7320508f * rng.uniform() : 0.0f;
    copy_to_device(master.data() + off, h.data(), n * sizeof(float), ctx.stream);
    CUDA_CHECK(cudaStreamSynchronize(ctx.stream));  // h is reused
  }
  std::vector<float> one(size_t(s_.C), 1.0f);
  auto ones = [&](const Slot& sl) {
    if (sl.n) copy_to_device(master.data() + sl.off, one.data(), sl.n * sizeof(float), ctx.stream);
  };
  for (auto& p : layers_) ones(p.ln1_w), ones(p.ln2_w);
  ones(lnf_w);
  CUDA_CHECK(cudaMemsetAsync(m.data(), 0, m.bytes(), ctx.stream));
  CUDA_CHECK(cudaMemsetAsync(v.data(), 0, v.bytes(), ctx.stream));
  cast_f32_to_bf16(wbf.data(), master.data(), n_total, ctx);
  CUDA_CHECK(cudaStreamSynchronize(ctx.stream));  // `one` leaves scope
  zero_grads();
}

void GpuModel::alloc_buffers() {
  const ModelSpec& s = s_;
  Ctx& ctx = ctx_;
  acts_.resize(s.L);
  for (auto& a : acts_) alloc_acts(a);
  const int64_t N = s.N(), wide = std::max({s.QKV(), s.F1(), s.C, s.NH * s.HD()});
  stream_a_ = DeviceBuffer<bf16>(ctx.alloc, N * s.C);
  dstream_a_ = DeviceBuffer<bf16>(ctx.alloc, N * s.C);
  dstream_b_ = DeviceBuffer<bf16>(ctx.alloc, N * s.C);
  dtmp_ = DeviceBuffer<bf16>(ctx.alloc, N * wide);
  dtmp2_ = DeviceBuffer<bf16>(ctx.alloc, N * wide);
  if (s.with_embedding_and_head) {
    xf_ = DeviceBuffer<bf16>(ctx.alloc, N * s.C);
    nf_ = DeviceBuffer<bf16>(ctx.alloc, N * s.C);
    logits_ = DeviceBuffer<bf16>(ctx.alloc, N * s.V);
    meanf_ = DeviceBuffer<float>(ctx.alloc, N);
    rstdf_ = DeviceBuffer<float>(ctx.alloc, N);
    losses_ = DeviceBuffer<float>(ctx.alloc, N);
  }
  norm_ = DeviceBuffer<double>(ctx.alloc, 1);
}

void GpuModel::alloc_acts(BlockActs& a) {
  const ModelSpec& s = s_;
  const int64_t N = s.N();
  auto bf = [&](int64_t n) { return DeviceBuffer<bf16>(ctx_.alloc, n); };
  auto f = [&](int64_t n) { return DeviceBuffer<float>(ctx_.alloc, n); };
  a.x = bf(N * s.C), a.n1 = bf(N * s.C), a.qkv = bf(N * s.QKV()), a.o = bf(N * s.NH * s.HD());
  a.x2 = bf(N * s.C), a.n2 = bf(N * s.C), a.pre = bf(N * s.F1()), a.g = bf(N * s.F);
  a.mean1 = f(N), a.rstd1 = f(N), a.mean2 = f(N), a.rstd2 = f(N), a.lse = f(s.B * s.NH * s.T);
}

std::vector<float> GpuModel::get_master() const {
  std::vector<float> h(n_total);
  copy_to_host_sync(h.data(), master.data(), master.bytes(), ctx_.stream);
  return h;
}

void GpuModel::set_master(const std::vector<float>& p) {
  copy_to_device(master.data(), p.data(), std::min(p.size(), size_t(n_total)) * sizeof(float), ctx_.stream);
  cast_f32_to_bf16(wbf.data(), master.data(), n_total, ctx_);
  CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
}

std::vector<float> GpuModel::get_grads() const {
  std::vector<float> h(n_total);
  copy_to_host_sync(h.data(), grad.data(), grad.bytes(), ctx_.stream);
  return h;
}

void GpuModel::zero_grads() { CUDA_CHECK(cudaMemsetAsync(grad.data(), 0, grad.bytes(), ctx_.stream)); }

void GpuModel::norm_fwd(bf16* out, float* mean, float* rstd, bf16* x_out, const bf16* in,
                        const bf16* in2, const Slot& w, const Slot& b) {
  const int64_t N = s_.N(), C = s_.C;
  const float eps = 1e-5f;
  if (s_.rms) rmsnorm_forward(out, rstd, x_out, in, in2, W(w), N, C, eps, ctx_);
  else layernorm_forward(out, mean, rstd, x_out, in, in2, W(w), W(b), N, C, eps, ctx_);
}

// dinp += norm backward of dout; weight/bias gradients += their sums.
void GpuModel::norm_bwd(bf16* dinp, const bf16* dout, const bf16* x, const float* mean,
                        const float* rstd, const Slot& w, const Slot& b) {
  const int64_t N = s_.N(), C = s_.C;
  if (s_.rms) {
    rmsnorm_backward_input(dinp, dout, x, W(w), rstd, N, C, true, ctx_);
    rmsnorm_backward_weight(G(w), dout, x, rstd, N, C, true, ctx_);
  } else {
    layernorm_backward_input(dinp, dout, x, W(w), mean, rstd, N, C, true, ctx_);
    layernorm_backward_weight(G(w), G(b), dout, x, mean, rstd, N, C, true, ctx_);
  }
}

void GpuModel::block_forward(int l, bf16* y, const bf16* x, BlockActs& a) {
  const ModelSpec& s = s_;
  const BlockParams& p = layers_[l];
  const int64_t N = s.N(), C = s.C, HC = s.NH * s.HD();
  if (x != a.x.data())
    CUDA_CHECK(cudaMemcpyAsync(a.x.data(), x, N * C * sizeof(bf16), cudaMemcpyDeviceToDevice, ctx_.stream));
  norm_fwd(a.n1.data(), a.mean1.data(), a.rstd1.data(), nullptr, a.x.data(), nullptr, p.ln1_w, p.ln1_b);
  matmul_forward(a.qkv.data(), a.n1.data(), W(p.qkv_w), W(p.qkv_b), N, C, s.QKV(), ctx_);
  if (s.rope) rope_forward(a.qkv.data(), s.B, s.T, s.NH, s.NKV, s.HD(), 10000.f, ctx_);
  const AttnShape as{s.B, s.T, s.NH, s.NKV, s.HD(), true};
  attention_forward(a.o.data(), a.lse.data(), a.qkv.data(), as, ctx_);
  matmul_forward(stream_a_.data(), a.o.data(), W(p.o_w), W(p.o_b), N, HC, C, ctx_);
  norm_fwd(a.n2.data(), a.mean2.data(), a.rstd2.data(), a.x2.data(), a.x.data(), stream_a_.data(),
           p.ln2_w, p.ln2_b);
  if (s.swiglu) {
    matmul_forward(a.pre.data(), a.n2.data(), W(p.fc1_w), W(p.fc1_b), N, C, s.F1(), ctx_);
    swiglu_forward(a.g.data(), a.pre.data(), N, s.F, ctx_);
  } else {
    ctx_.gemm.linear_forward(a.g.data(), a.pre.data(), a.n2.data(), W(p.fc1_w), W(p.fc1_b), N, C,
                             s.F, true, ctx_.stream);
  }
  matmul_forward(stream_a_.data(), a.g.data(), W(p.fc2_w), W(p.fc2_b), N, s.F, C, ctx_);
  residual_forward(y, a.x2.data(), stream_a_.data(), N * C, ctx_);
}

void GpuModel::block_backward(int l, bf16* dx, const bf16* dy, BlockActs& a) {
  const ModelSpec& s = s_;
  const BlockParams& p = layers_[l];
  const int64_t N = s.N(), C = s.C, HC = s.NH * s.HD();
  CUDA_CHECK(cudaMemcpyAsync(dx, dy, N * C * sizeof(bf16), cudaMemcpyDeviceToDevice, ctx_.stream));
  bf16 *bufA = dtmp_.data(), *bufB = dtmp2_.data();
  // MLP: dh (N, F1) from dy through fc2 and the activation.
  bf16* dh;
  if (s.swiglu) {
    matmul_backward(bufA, G(p.fc2_w), G(p.fc2_b), dy, a.g.data(), W(p.fc2_w), N, s.F, C, true, ctx_);
    swiglu_backward(bufB, a.pre.data(), bufA, N, s.F, ctx_);
    dh = bufB;
  } else {
    ctx_.gemm.linear_backward_input(bufA, dy, W(p.fc2_w), a.pre.data(), N, s.F, C, ctx_.stream);
    matmul_backward(nullptr, G(p.fc2_w), G(p.fc2_b), dy, a.g.data(), W(p.fc2_w), N, s.F, C, true, ctx_);
    dh = bufA;
  }
  bf16* dn2 = dh == bufA ? bufB : bufA;
  matmul_backward(dn2, G(p.fc1_w), G(p.fc1_b), dh, a.n2.data(), W(p.fc1_w), N, C, s.F1(), true, ctx_);
  norm_bwd(dx, dn2, a.x2.data(), a.mean2.data(), a.rstd2.data(), p.ln2_w, p.ln2_b);
  // Attention: dx now holds d x2 = d (x + a).
  matmul_backward(bufA, G(p.o_w), G(p.o_b), dx, a.o.data(), W(p.o_w), N, HC, C, true, ctx_);
  const AttnShape as{s.B, s.T, s.NH, s.NKV, s.HD(), true};
  attention_backward(bufB, bufA, a.qkv.data(), a.o.data(), a.lse.data(), as, ctx_);
  if (s.rope) rope_backward(bufB, s.B, s.T, s.NH, s.NKV, s.HD(), 10000.f, ctx_);
  matmul_backward(bufA, G(p.qkv_w), G(p.qkv_b), bufB, a.n1.data(), W(p.qkv_w), N, C, s.QKV(), true, ctx_);
  norm_bwd(dx, bufA, a.x.data(), a.mean1.data(), a.rstd1.data(), p.ln1_w, p.ln1_b);
}

float GpuModel::train_step(const int* tokens, const int* targets, float lr, bool optimizer) {
  const ModelSpec& s = s_;
  const int64_t N = s.N(), C = s.C;
  zero_grads();
  embedding_forward(acts_[0].x.data(), tokens, W(wte), W(wpe), N, s.T, C, 0, s.V, ctx_);
  for (int l = 0; l < s.L; ++l)
    block_forward(l, l + 1 < s.L ? acts_[l + 1].x.data() : xf_.data(), acts_[l].x.data(), acts_[l]);
  norm_fwd(nf_.data(), meanf_.data(), rstdf_.data(), nullptr, xf_.data(), nullptr, lnf_w, lnf_b);
  matmul_forward(logits_.data(), nf_.data(), W(head_w), nullptr, N, C, s.V, ctx_);
  xent_fused(losses_.data(), logits_.data(), targets, 1.0f / float(N), N, s.V, ctx_);
  // Backward: head, final norm, blocks (residual gradient ping-pongs between two buffers).
  bf16 *dcur = dstream_a_.data(), *dnext = dstream_b_.data();
  matmul_backward(dtmp_.data(), G(head_w), nullptr, logits_.data(), nf_.data(), W(head_w), N, C, s.V, true, ctx_);
  CUDA_CHECK(cudaMemsetAsync(dcur, 0, N * C * sizeof(bf16), ctx_.stream));
  norm_bwd(dcur, dtmp_.data(), xf_.data(), meanf_.data(), rstdf_.data(), lnf_w, lnf_b);
  for (int l = int(s.L) - 1; l >= 0; --l) {
    block_backward(l, dnext, dcur, acts_[l]);
    std::swap(dcur, dnext);
  }
  embedding_backward(G(wte), wpe.n ? G(wpe) : nullptr, dcur, tokens, N, s.T, C, 0, s.V, ctx_);
  if (optimizer) {
    grad_sq_norm(norm_.data(), grad.data(), n_total, ctx_);
    double sq = 0;
    copy_to_host_sync(&sq, norm_.data(), sizeof(double), ctx_.stream);
    const float clip = std::sqrt(sq) > 1.0 ? float(1.0 / std::sqrt(sq)) : 1.0f;
    AdamWHyper h;
    h.lr = lr, h.weight_decay = 0.1f, h.t = ++step_;
    adamw_update(master.data(), wbf.data(), grad.data(), m.data(), v.data(), n_matrix, h, clip, ctx_);
    h.weight_decay = 0.0f;
    adamw_update(master.data() + n_matrix, wbf.data() + n_matrix, grad.data() + n_matrix,
                 m.data() + n_matrix, v.data() + n_matrix, n_total - n_matrix, h, clip, ctx_);
  }
  std::vector<float> losses(N);
  copy_to_host_sync(losses.data(), losses_.data(), N * sizeof(float), ctx_.stream);
  double sum = 0;
  for (float x : losses) sum += x;
  return float(sum / double(N));
}

}  // namespace stp::cuda::bench
