// test_attention.cpp: cuDNN fused SDPA and the plain CUDA kernels, forward and backward, against
// the CPU twin in double on the same bf16 inputs, for causal/full masks, MHA and GQA, HD 64/128.
// Fails on a wrong mask, head mapping, scale, lse convention (natural log) or packed-layout stride:
// each produces errors of order 1. The backward bound is looser because cuDNN rounds P and dS to
// bf16 before its GEMMs. Also fails if the deterministic backward is not bit-reproducible.
#include <catch2/catch.hpp>

#include <random>

#include "model/kernels/cpu/kernels.h"
#include "model/kernels/cuda/kernels.h"
#include "tests/cuda/cuda_test_util.h"

using namespace stp::cuda;
using namespace stp::cuda::test;
using std::vector;

namespace {

struct AttnCase {
  AttnShape s;
  const char* name;
};

void check_attention(Env& env, const AttnShape& s, bool force_plain, std::mt19937& rng) {
  const int64_t W = s.qkv_width(), n_qkv = s.B * s.T * W, n_o = s.B * s.T * s.NH * s.HD;
  auto qkv = random_vec(n_qkv, rng, -2.f, 2.f), dout = random_vec(n_o, rng);
  auto dq = env.bf(qkv), ddo = env.bf(dout);
  auto out = env.bf_poison(n_o);
  auto lse = env.f32_poison(s.B * s.NH * s.T);
  env.ctx.attention.set_force_plain(force_plain);
  const AttnBackend fb = env.ctx.attention.forward(out.data(), lse.data(), dq.data(), s, env.stream.get());
  stp::cpu::AttnShape cs;
  cs.B = s.B, cs.T = s.T, cs.NH = s.NH, cs.NKV = s.NKV, cs.HD = s.HD, cs.causal = s.causal;
  vector<double> Q = to_double(qkv), O(n_o), L(s.B * s.NH * s.T), DO = to_double(dout), DQ(n_qkv);
  stp::cpu::attention_forward<double>(O.data(), L.data(), Q.data(), cs);
  const std::string tag = std::string(attn_backend_name(fb)) + " " + s.to_string();
  compare("attn fwd out  " + tag, env.get(out), O, kTolBf16Chain);  // P is rounded to bf16
  compare("attn fwd lse  " + tag, env.get(lse), L, 1e-4);
  // Backward from the GPU's own forward results (as training does).
  auto dqkv = env.bf_poison(n_qkv);
  const AttnBackend bb = env.ctx.attention.backward(dqkv.data(), ddo.data(), dq.data(), out.data(),
                                                    lse.data(), s, env.stream.get());
  stp::cpu::attention_backward<double>(DQ.data(), DO.data(), Q.data(), O.data(), L.data(), cs);
  compare(std::string("attn bwd dqkv ") + attn_backend_name(bb) + " " + s.to_string(),
          env.get(dqkv), DQ, kTolBf16Chain);
  if (force_plain) CHECK(fb == AttnBackend::Plain);
  env.ctx.attention.set_force_plain(false);
}

const AttnCase kCases[] = {
    {{2, 128, 4, 4, 64, true}, "MHA causal HD64"},
    {{1, 256, 8, 2, 128, true}, "GQA 4:1 causal HD128"},
    {{2, 96, 4, 1, 64, false}, "MQA full HD64 T96"},
    {{2, 64, 4, 4, 80, false}, "vision tower: MHA full HD80 (Qwen2-VL's 1280/16)"},
};

}  // namespace

TEST_CASE("attention (cuDNN or its logged fallback) matches the CPU", "[cuda][attention]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(21);
  for (const auto& c : kCases) {
    INFO(c.name);
    check_attention(env, c.s, false, rng);
  }
}

TEST_CASE("plain CUDA attention matches the CPU", "[cuda][attention]") {
  STP_REQUIRE_GPU();
  Env env;
  std::mt19937 rng(22);
  for (const auto& c : kCases) {
    INFO(c.name);
    check_attention(env, c.s, true, rng);
  }
}

// Fails if train.deterministic's backward varies between identical calls.
TEST_CASE("deterministic attention backward is bit-reproducible", "[cuda][attention][determinism]") {
  STP_REQUIRE_GPU();
  Env env(true);
  std::mt19937 rng(23);
  const AttnShape s{2, 512, 8, 2, 64, true};
  const int64_t n_qkv = s.B * s.T * s.qkv_width(), n_o = s.B * s.T * s.NH * s.HD;
  auto qkv = env.bf(random_vec(n_qkv, rng)), dout = env.bf(random_vec(n_o, rng));
  auto out = env.bf_poison(n_o);
  auto lse = env.f32_poison(s.B * s.NH * s.T);
  env.ctx.attention.forward(out.data(), lse.data(), qkv.data(), s, env.stream.get());
  vector<float> first;
  for (int rep = 0; rep < 3; ++rep) {
    auto d = env.bf_poison(n_qkv);
    env.ctx.attention.backward(d.data(), dout.data(), qkv.data(), out.data(), lse.data(), s,
                               env.stream.get());
    auto h = env.get(d);
    if (rep == 0) first = h;
    else CHECK(std::memcmp(h.data(), first.data(), h.size() * sizeof(float)) == 0);
  }
}

// Fails if a shape neither backend can run is accepted silently.
TEST_CASE("attention rejects shapes with a message that names the rule", "[cuda][attention]") {
  CHECK(attention_shape_error(AttnShape{1, 16, 6, 4, 64, true}).find("NH % NKV") != std::string::npos);
  CHECK(attention_shape_error(AttnShape{1, 16, 4, 4, 60, true}).find("HD = 60") != std::string::npos);
  CHECK(attention_shape_error(AttnShape{1, 16, 4, 2, 64, true}).empty());
}
