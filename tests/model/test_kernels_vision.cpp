// test_kernels_vision.cpp: the CPU kernels the VLM adds -- the vision tower's 2-D RoPE and the
// cross-entropy's ignored targets (< 0) -- against independent answers: a naive 2-D rope written
// the way Hugging Face's Qwen2-VL computes it (positions from a G x G grid cut into windows,
// cat(freqs, freqs) and rotate_half), designed equalities between patches of one row or one
// column, and finite differences in double. Each test names what would fail it.
#include <catch2/catch.hpp>
#include <cmath>
#include <numeric>
#include <utility>

#include "model/kernels/cpu/kernels.h"
#include "model_test_util.h"

using namespace stp;
using namespace stp::test;
using Vec = std::vector<double>;

static constexpr double kFdTol = 1e-6;  // see fd_max_rel_err

// (row, col) of each patch in Qwen2-VL's merge-window order, by walking the G x G grid: windows
// of m x m patches in row-major order, each window's patches in row-major order.
static std::vector<std::pair<int64_t, int64_t>> window_order_positions(int64_t G, int64_t m) {
  std::vector<std::pair<int64_t, int64_t>> pos;
  for (int64_t wr = 0; wr < G; wr += m)
    for (int64_t wc = 0; wc < G; wc += m)
      for (int64_t r = wr; r < wr + m; ++r)
        for (int64_t c = wc; c < wc + m; ++c) pos.emplace_back(r, c);
  return pos;
}

// Qwen2-VL's apply_rotary_pos_emb_vision on every q and k head: VisionRotaryEmbedding(dim =
// HD/2) gives inv_freq[j] = 1 / theta^(2j/dim), j < dim/2; freqs = [row * inv_freq, col *
// inv_freq] (HD/2); emb = cat(freqs, freqs) (HD); out = x cos(emb) + rotate_half(x) sin(emb),
// rotate_half(x) = cat(-x2, x1).
static Vec naive_rope2d(const Vec& qkv, int64_t B, int64_t NH, int64_t NKV, int64_t HD, int64_t G,
                        int64_t m, double theta) {
  const auto pos = window_order_positions(G, m);
  const int64_t Np = G * G, QKV = (NH + 2 * NKV) * HD, dim = HD / 2;
  Vec out = qkv;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < Np; ++p) {
      Vec emb;
      for (int64_t axis = 0; axis < 2; ++axis)
        for (int64_t j = 0; j < dim / 2; ++j)
          emb.push_back(double(axis == 0 ? pos[p].first : pos[p].second) /
                        std::pow(theta, 2.0 * double(j) / double(dim)));
      emb.insert(emb.end(), emb.begin(), emb.end());
      for (int64_t h = 0; h < NH + NKV; ++h) {
        const double* x = &qkv[(b * Np + p) * QKV + h * HD];
        double* y = &out[(b * Np + p) * QKV + h * HD];
        for (int64_t d = 0; d < HD; ++d) {
          const double rot = d < HD / 2 ? -x[d + HD / 2] : x[d - HD / 2];
          y[d] = x[d] * std::cos(emb[d]) + rot * std::sin(emb[d]);
        }
      }
    }
  return out;
}

TEST_CASE("rope2d: matches Qwen2-VL's vision rotary embedding on the merge-window order",
          "[kernels][vision]") {
  // Fails if a patch's (row, col) is wrong (window order, row-major inside a window), the row and
  // column halves are swapped, the frequency is theta^(-2j/HD) instead of theta^(-4j/HD), pairs
  // are not (i, i + HD/2), v heads rotate, or the second image does not restart at patch 0.
  const int64_t B = 2, NH = 2, NKV = 1, HD = 8, QKV = (NH + 2 * NKV) * HD;
  const double theta = 10000.0;
  for (auto [G, m] : std::vector<std::pair<int64_t, int64_t>>{{4, 2}, {6, 3}}) {
    CAPTURE(G, m);
    const int64_t Np = G * G;
    Vec qkv = random_vec(B * Np * QKV, 81);
    const Vec want = naive_rope2d(qkv, B, NH, NKV, HD, G, m, theta);
    cpu::rope2d_forward(qkv.data(), B, Np, NH, NKV, HD, G, m, float(theta));
    for (size_t i = 0; i < qkv.size(); ++i)
      REQUIRE(qkv[i] == Approx(want[i]).epsilon(1e-12).margin(1e-14));
  }
}

TEST_CASE("rope2d: backward is the adjoint (finite differences of <w, rope2d(x)>)",
          "[kernels][vision]") {
  // Fails if rope2d_backward does not rotate by the negated angles of the same patch, touches v,
  // or differs from the forward's positions.
  const int64_t B = 2, NH = 2, NKV = 1, HD = 8, G = 4, m = 2, Np = G * G;
  const int64_t n = B * Np * (NH + 2 * NKV) * HD;
  const float theta = 10000.0f;
  Vec x = random_vec(n, 82), w = random_vec(n, 83), y(n), grad = w;
  cpu::rope2d_backward(grad.data(), B, Np, NH, NKV, HD, G, m, theta);
  auto loss = [&] {
    y = x;
    cpu::rope2d_forward(y.data(), B, Np, NH, NKV, HD, G, m, theta);
    return dot(w, y.data());
  };
  CHECK(fd_max_rel_err(x, grad, loss, size_t(n)) < kFdTol);
}

TEST_CASE("rope2d: the first HD/4 pairs turn with the row only, the rest with the column only",
          "[kernels][vision]") {
  // Every patch holds the same vector. Fails if a pair's angle depends on the other coordinate,
  // or if the halves are swapped. Grid 4, merge 2: patch 0 = (0, 0), 2 = (1, 0), 7 = (1, 3),
  // 4 = (0, 2), 12 = (2, 2).
  const int64_t NH = 1, NKV = 1, HD = 16, G = 4, m = 2, Np = G * G, QKV = (NH + 2 * NKV) * HD;
  const Vec one = random_vec(QKV, 84);
  Vec qkv;
  for (int64_t p = 0; p < Np; ++p) qkv.insert(qkv.end(), one.begin(), one.end());
  cpu::rope2d_forward(qkv.data(), 1, Np, NH, NKV, HD, G, m, 100.0f);
  auto val = [&](int64_t p, int64_t head, int64_t d) { return qkv[p * QKV + head * HD + d]; };
  for (int64_t head = 0; head < NH + NKV; ++head)
    for (int64_t d = 0; d < HD; ++d) {
      CAPTURE(head, d);
      const bool row_pair = d % (HD / 2) < HD / 4;
      CHECK(val(0, head, d) == one[head * HD + d]);  // (0, 0): no rotation
      // Row 1, columns 0 and 3: row pairs equal, column pairs differ.
      CHECK((val(2, head, d) == val(7, head, d)) == row_pair);
      // Column 2, rows 0 and 2: column pairs equal, row pairs differ.
      CHECK((val(4, head, d) == val(12, head, d)) == !row_pair);
    }
}

TEST_CASE("cross-entropy: targets < 0 have no loss and no gradient on any vocab shard",
          "[kernels][xent]") {
  // Fails if an ignored row reads a logit (target -1 wrapping into a shard), contributes to the
  // loss, or keeps any gradient on either shard, or if the ignore rule disturbs the other rows.
  const int64_t N = 5, V = 10;
  Vec logits = random_vec(N * V, 85, 3.0);
  const std::vector<int> tgt = {3, -1, 7, -1, 0};
  auto full_loss = [&] { return xent_reference(logits, tgt, N, V); };  // rows with a target
  // Two shards: columns [0, 5) and [5, 10); the all-reduces by hand; the backward in place (the
  // ignored rows' logits must be overwritten).
  const XentShards x = xent_two_shards(logits, tgt, N, V);
  for (int r = 0; r < 2; ++r) {
    CHECK(x.tlogit[r][1] == 0.0);
    CHECK(x.tlogit[r][3] == 0.0);
  }
  Vec losses(N, 99.0);
  cpu::xent_loss(losses.data(), x.gmax.data(), x.gse.data(), x.gtl.data(), N, tgt.data());
  CHECK(losses[1] == 0.0);
  CHECK(losses[3] == 0.0);
  CHECK(std::accumulate(losses.begin(), losses.end(), 0.0) == Approx(full_loss()).epsilon(1e-12));
  Vec unmasked(N);  // a null targets pointer ignores nothing
  cpu::xent_loss(unmasked.data(), x.gmax.data(), x.gse.data(), x.gtl.data(), N, nullptr);
  CHECK(unmasked[1] > 0.0);
  CHECK(unmasked[0] == losses[0]);
  for (int64_t n : {1, 3})
    for (int64_t v = 0; v < V; ++v) REQUIRE(x.dlogits[n * V + v] == 0.0);
  CHECK(fd_max_rel_err(logits, x.dlogits, full_loss, size_t(N * V)) < kFdTol);
}
