// test_layer.cpp: a whole transformer block, forward and backward, on the GPU (bf16, cuBLASLt,
// cuDNN) against the same block composed from the CPU twins in double on the same bf16-rounded
// parameters and inputs: the output, the input gradient and every parameter gradient.
// GPT-style (LayerNorm, GELU epilogue, biases, MHA) and Llama-style (RMSNorm, SwiGLU, RoPE, GQA,
// no biases). Fails if any kernel is wired to the wrong tensor, misses an accumulation or uses a
// wrong layout (errors of order 1); the bound (4e-2) covers the bf16 roundings of the activations
// saved along the chain (each ~4e-3), which the fp64 reference does not have.
#include <catch2/catch.hpp>

#include <random>

#include "model/kernels/cpu/kernels.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/gpu_block.h"

using namespace stp::cuda;
using namespace stp::cuda::test;
using namespace stp::cuda::bench;
using std::vector;
namespace cpu = stp::cpu;

namespace {

constexpr double kTolLayer = 4e-2;

struct CpuBlock {
  const ModelSpec& s;
  const BlockParams& p;
  const vector<double>& w;  // flat parameters (bf16-rounded)
  vector<double> g;         // flat gradients
  CpuBlock(const ModelSpec& s_, const BlockParams& p_, const vector<double>& w_)
      : s(s_), p(p_), w(w_), g(w_.size(), 0.0) {}
  const double* W(const Slot& sl) const { return sl.n ? w.data() + sl.off : nullptr; }
  double* G(const Slot& sl) { return sl.n ? g.data() + sl.off : nullptr; }

  // Saved activations.
  vector<double> x, n1, qkv, o, lse, a, x2, n2, pre, gact, mean1, rstd1, mean2, rstd2;

  void norm_fwd(double* out, double* mean, double* rstd, double* xo, const double* in,
                const double* in2, const Slot& nw, const Slot& nb) {
    const int64_t N = s.N(), C = s.C;
    if (s.rms) cpu::rmsnorm_forward<double>(out, rstd, xo, in, in2, W(nw), N, C, 1e-5f);
    else cpu::layernorm_forward<double>(out, mean, rstd, xo, in, in2, W(nw), W(nb), N, C, 1e-5f);
  }
  void norm_bwd(double* dinp, const double* dout, const double* xx, const double* mean,
                const double* rstd, const Slot& nw, const Slot& nb) {
    const int64_t N = s.N(), C = s.C;
    if (s.rms) {
      cpu::rmsnorm_backward_input<double>(dinp, dout, xx, W(nw), rstd, N, C, true);
      cpu::rmsnorm_backward_weight<double>(G(nw), dout, xx, rstd, N, C, true);
    } else {
      cpu::layernorm_backward_input<double>(dinp, dout, xx, W(nw), mean, rstd, N, C, true);
      cpu::layernorm_backward_weight<double>(G(nw), G(nb), dout, xx, mean, rstd, N, C, true);
    }
  }

  vector<double> forward(const vector<double>& xin) {
    const int64_t N = s.N(), C = s.C, HC = s.NH * s.HD();
    x = xin;
    n1.resize(N * C), qkv.resize(N * s.QKV()), o.resize(N * HC), lse.resize(s.B * s.NH * s.T);
    a.resize(N * C), x2.resize(N * C), n2.resize(N * C), pre.resize(N * s.F1()), gact.resize(N * s.F);
    mean1.resize(N), rstd1.resize(N), mean2.resize(N), rstd2.resize(N);
    norm_fwd(n1.data(), mean1.data(), rstd1.data(), nullptr, x.data(), nullptr, p.ln1_w, p.ln1_b);
    cpu::matmul_forward<double>(qkv.data(), n1.data(), W(p.qkv_w), W(p.qkv_b), N, C, s.QKV());
    if (s.rope) cpu::rope_forward<double>(qkv.data(), s.B, s.T, s.NH, s.NKV, s.HD(), 10000.f);
    cpu::AttnShape as;
    as.B = s.B, as.T = s.T, as.NH = s.NH, as.NKV = s.NKV, as.HD = s.HD(), as.causal = true;
    cpu::attention_forward<double>(o.data(), lse.data(), qkv.data(), as);
    cpu::matmul_forward<double>(a.data(), o.data(), W(p.o_w), W(p.o_b), N, HC, C);
    norm_fwd(n2.data(), mean2.data(), rstd2.data(), x2.data(), x.data(), a.data(), p.ln2_w, p.ln2_b);
    cpu::matmul_forward<double>(pre.data(), n2.data(), W(p.fc1_w), W(p.fc1_b), N, C, s.F1());
    if (s.swiglu) cpu::swiglu_forward<double>(gact.data(), pre.data(), N, s.F);
    else cpu::gelu_forward<double>(gact.data(), pre.data(), N * s.F);
    vector<double> m(N * C), y(N * C);
    cpu::matmul_forward<double>(m.data(), gact.data(), W(p.fc2_w), W(p.fc2_b), N, s.F, C);
    cpu::residual_forward<double>(y.data(), x2.data(), m.data(), N * C);
    return y;
  }

  vector<double> backward(const vector<double>& dy) {
    const int64_t N = s.N(), C = s.C, HC = s.NH * s.HD();
    vector<double> dx = dy, dg(N * s.F), dpre(N * s.F1()), dn(N * C), dO(N * HC), dqkv(N * s.QKV());
    cpu::matmul_backward<double>(dg.data(), G(p.fc2_w), G(p.fc2_b), dy.data(), gact.data(), W(p.fc2_w), N, s.F, C, true);
    if (s.swiglu) cpu::swiglu_backward<double>(dpre.data(), pre.data(), dg.data(), N, s.F);
    else cpu::gelu_backward<double>(dpre.data(), pre.data(), dg.data(), N * s.F);
    cpu::matmul_backward<double>(dn.data(), G(p.fc1_w), G(p.fc1_b), dpre.data(), n2.data(), W(p.fc1_w), N, C, s.F1(), true);
    norm_bwd(dx.data(), dn.data(), x2.data(), mean2.data(), rstd2.data(), p.ln2_w, p.ln2_b);
    cpu::matmul_backward<double>(dO.data(), G(p.o_w), G(p.o_b), dx.data(), o.data(), W(p.o_w), N, HC, C, true);
    cpu::AttnShape as;
    as.B = s.B, as.T = s.T, as.NH = s.NH, as.NKV = s.NKV, as.HD = s.HD(), as.causal = true;
    cpu::attention_backward<double>(dqkv.data(), dO.data(), qkv.data(), o.data(), lse.data(), as);
    if (s.rope) cpu::rope_backward<double>(dqkv.data(), s.B, s.T, s.NH, s.NKV, s.HD(), 10000.f);
    cpu::matmul_backward<double>(dn.data(), G(p.qkv_w), G(p.qkv_b), dqkv.data(), n1.data(), W(p.qkv_w), N, C, s.QKV(), true);
    norm_bwd(dx.data(), dn.data(), x.data(), mean1.data(), rstd1.data(), p.ln1_w, p.ln1_b);
    return dx;
  }
};

void check_block(const ModelSpec& spec, uint64_t seed) {
  Env env;
  GpuModel model(spec, env.ctx, seed);
  // Random norm weights and biases too, so their gradients and wiring are exercised.
  std::mt19937 rng{uint32_t(seed)};
  auto master = model.get_master();
  for (int64_t i = model.n_matrix; i < model.n_total; ++i) master[i] = round_bf16(std::uniform_real_distribution<float>(0.5f, 1.5f)(rng));
  for (int64_t i = 0; i < model.n_matrix; ++i) master[i] = round_bf16(master[i] * 4.0f);
  model.set_master(master);
  const int64_t N = spec.N(), C = spec.C;
  auto x = random_vec(N * C, rng), dy = random_vec(N * C, rng);
  auto dx_in = env.bf(x), ddy = env.bf(dy);
  auto y = env.bf_poison(N * C), dx = env.bf_poison(N * C);
  BlockActs acts;
  const auto& p = model.layers()[0];
  {  // the model's own activation buffers
    auto bf = [&](int64_t n) { return DeviceBuffer<bf16>(env.alloc, n); };
    auto f = [&](int64_t n) { return DeviceBuffer<float>(env.alloc, n); };
    acts.x = bf(N * C), acts.n1 = bf(N * C), acts.qkv = bf(N * spec.QKV()), acts.o = bf(N * spec.NH * spec.HD());
    acts.x2 = bf(N * C), acts.n2 = bf(N * C), acts.pre = bf(N * spec.F1()), acts.g = bf(N * spec.F);
    acts.mean1 = f(N), acts.rstd1 = f(N), acts.mean2 = f(N), acts.rstd2 = f(N), acts.lse = f(spec.B * spec.NH * spec.T);
  }
  model.zero_grads();
  model.block_forward(0, y.data(), dx_in.data(), acts);
  model.block_backward(0, dx.data(), ddy.data(), acts);
  auto grads = model.get_grads();

  vector<double> w(master.begin(), master.end());
  CpuBlock ref(spec, p, w);
  auto ry = ref.forward(to_double(x));
  auto rdx = ref.backward(to_double(dy));
  const std::string tag = spec.name + " ";
  compare(tag + "block y", env.get(y), ry, kTolLayer);
  compare(tag + "block dx", env.get(dx), rdx, kTolLayer);
  auto slot = [&](const char* name, const Slot& sl) {
    if (!sl.n) return;
    vector<float> gg(grads.begin() + sl.off, grads.begin() + sl.off + sl.n);
    vector<double> rr(ref.g.begin() + sl.off, ref.g.begin() + sl.off + sl.n);
    compare(tag + "d" + name, gg, rr, kTolLayer);
  };
  slot("ln1_w", p.ln1_w), slot("ln1_b", p.ln1_b), slot("qkv_w", p.qkv_w), slot("qkv_b", p.qkv_b);
  slot("o_w", p.o_w), slot("o_b", p.o_b), slot("ln2_w", p.ln2_w), slot("ln2_b", p.ln2_b);
  slot("fc1_w", p.fc1_w), slot("fc1_b", p.fc1_b), slot("fc2_w", p.fc2_w), slot("fc2_b", p.fc2_b);
}

}  // namespace

TEST_CASE("GPT block (LayerNorm, GELU epilogue, biases) fwd/bwd matches the CPU block", "[cuda][layer]") {
  STP_REQUIRE_GPU();
  ModelSpec s;
  s.name = "gpt-block";
  s.L = 1, s.C = 256, s.NH = 4, s.NKV = 4, s.F = 512, s.T = 128, s.B = 2;
  s.with_embedding_and_head = false;
  check_block(s, 101);
}

TEST_CASE("Llama block (RMSNorm, SwiGLU, RoPE, GQA) fwd/bwd matches the CPU block", "[cuda][layer]") {
  STP_REQUIRE_GPU();
  ModelSpec s;
  s.name = "llama-block";
  s.L = 1, s.C = 256, s.NH = 4, s.NKV = 2, s.F = 344, s.T = 128, s.B = 2;
  s.rms = true, s.swiglu = true, s.bias = false, s.rope = true, s.learned_pos = false;
  s.with_embedding_and_head = false;
  check_block(s, 102);
}

// The whole tiny model (embedding, 2 blocks, final norm, tied head, fused cross-entropy): the GPU
// step's loss and full gradient against the CPU twins composed in double. Fails if the model-level
// wiring (tied-head gradient sum, final norm, loss scaling 1/N, embedding scatter) is wrong.
TEST_CASE("tiny GPT loss and gradients match the CPU composition", "[cuda][layer][model]") {
  STP_REQUIRE_GPU();
  ModelSpec s;
  s.name = "tiny-gpt";
  s.L = 2, s.C = 128, s.NH = 2, s.NKV = 2, s.F = 512, s.V = 512, s.T = 64, s.B = 2, s.tied = true;
  Env env;
  GpuModel model(s, env.ctx, 7);
  std::mt19937 rng(8);
  auto master = model.get_master();
  for (auto& x : master) x = round_bf16(x * 4.0f);
  for (const auto& p : model.layers())
    for (const Slot* sl : {&p.ln1_w, &p.ln2_w})
      for (int64_t i = 0; i < sl->n; ++i) master[sl->off + i] = 1.0f;
  for (int64_t i = 0; i < model.lnf_w.n; ++i) master[model.lnf_w.off + i] = 1.0f;
  model.set_master(master);
  const int64_t N = s.N(), C = s.C, V = s.V;
  std::vector<int> tok(N), tgt(N);
  std::uniform_int_distribution<int> ti(0, int(V) - 1);
  for (auto& t : tok) t = ti(rng);
  for (auto& t : tgt) t = ti(rng);
  auto dtok = env.i32(tok), dtgt = env.i32(tgt);
  const float loss = model.train_step(dtok.data(), dtgt.data(), 0.0f, false);
  auto grads = model.get_grads();

  // CPU: the same composition in double.
  vector<double> w(master.begin(), master.end()), g(w.size(), 0.0);
  auto Wp = [&](const Slot& sl) { return sl.n ? w.data() + sl.off : nullptr; };
  auto Gp = [&](const Slot& sl) { return sl.n ? g.data() + sl.off : nullptr; };
  vector<double> x(N * C);
  cpu::embedding_forward<double>(x.data(), tok.data(), Wp(model.wte), Wp(model.wpe), N, s.T, C, 0, V);
  std::vector<CpuBlock> blocks;
  for (int l = 0; l < s.L; ++l) blocks.emplace_back(s, model.layers()[l], w);
  for (auto& b : blocks) x = b.forward(x);
  vector<double> nf(N * C), mean(N), rstd(N), logits(N * V), rm(N), se(N), tl(N), losses(N);
  cpu::layernorm_forward<double>(nf.data(), mean.data(), rstd.data(), nullptr, x.data(), nullptr,
                                 Wp(model.lnf_w), Wp(model.lnf_b), N, C, 1e-5f);
  cpu::matmul_forward<double>(logits.data(), nf.data(), Wp(model.head_w), nullptr, N, C, V);
  cpu::xent_row_max<double>(rm.data(), logits.data(), N, V);
  cpu::xent_sumexp<double>(se.data(), tl.data(), logits.data(), rm.data(), tgt.data(), N, V, 0);
  cpu::xent_loss<double>(losses.data(), rm.data(), se.data(), tl.data(), N, tgt.data());
  double ref_loss = 0;
  for (double l : losses) ref_loss += l / double(N);
  cpu::xent_backward<double>(logits.data(), logits.data(), rm.data(), se.data(), tgt.data(), 1.0f / float(N), N, V, 0);
  vector<double> dnf(N * C), dx(N * C, 0.0);
  cpu::matmul_backward<double>(dnf.data(), Gp(model.head_w), nullptr, logits.data(), nf.data(), Wp(model.head_w), N, C, V, true);
  cpu::layernorm_backward_input<double>(dx.data(), dnf.data(), x.data(), Wp(model.lnf_w), mean.data(), rstd.data(), N, C, true);
  cpu::layernorm_backward_weight<double>(Gp(model.lnf_w), Gp(model.lnf_b), dnf.data(), x.data(), mean.data(), rstd.data(), N, C, true);
  for (int l = int(s.L) - 1; l >= 0; --l) dx = blocks[l].backward(dx);
  cpu::embedding_backward<double>(Gp(model.wte), Gp(model.wpe), dx.data(), tok.data(), N, s.T, C, 0, V);
  for (auto& b : blocks)
    for (size_t i = 0; i < g.size(); ++i) g[i] += b.g[i];
  std::printf("# tiny-gpt loss gpu %.6f cpu %.6f\n", loss, ref_loss);
  CHECK(std::fabs(loss - ref_loss) <= 5e-3 * ref_loss);
  compare("tiny-gpt all gradients", grads, g, kTolLayer);
  vector<float> gw(grads.begin() + model.wte.off, grads.begin() + model.wte.off + model.wte.n);
  compare("tiny-gpt d wte (tied head + embedding)", gw,
          vector<double>(g.begin() + model.wte.off, g.begin() + model.wte.off + model.wte.n), kTolLayer);
}
