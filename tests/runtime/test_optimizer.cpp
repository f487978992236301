// test_optimizer.cpp: the LR schedule and AdamW against hand-derived values.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "runtime/optimizer.h"

using namespace stp;

// Fails if warm-up is not linear from lr/W, if cosine does not start at lr right after warm-up and
// end at min_lr on the last step, or if the midpoint is off.
TEST_CASE("lr schedule: linear warm-up then cosine to min_lr", "[optimizer]") {
  TrainConfig t;
  t.lr = 1e-3;
  t.min_lr = 1e-4;
  t.warmup_steps = 4;
  t.steps = 14;
  CHECK(lr_at(t, 1) == Approx(2.5e-4));
  CHECK(lr_at(t, 4) == Approx(1e-3));
  CHECK(lr_at(t, 9) == Approx(1e-4 + 0.9e-3 * 0.5));  // halfway through the 10 cosine steps
  CHECK(lr_at(t, 14) == Approx(1e-4));
  t.lr_schedule = "constant";
  CHECK(lr_at(t, 2) == Approx(5e-4));
  CHECK(lr_at(t, 10) == 1e-3);
}

// Fails if the update is not AdamW with bias correction and decoupled decay: with g constant, the
// first step moves p by lr*(sign(g) + wd*p) up to eps, and the moments hold (1-b)*g and (1-b2)*g^2.
TEST_CASE("adamw: first step is lr*(g/|g| + wd*p), moments as defined", "[optimizer]") {
  TrainConfig t;
  t.lr = 0.1;
  t.lr_schedule = "constant";
  t.weight_decay = 0.5;
  t.eps = 0;
  std::vector<float> p{1.0f, -2.0f, 0.5f}, g{0.25f, -4.0f, 1.0f}, m(3, 0), v(3, 0);
  AdamWHyper h = adamw_hyper(t, 1, true);
  adamw_update(p.data(), g.data(), m.data(), v.data(), 3, h, 1.0f);
  CHECK(p[0] == Approx(1.0 - 0.1 * (1 + 0.5 * 1.0)));
  CHECK(p[1] == Approx(-2.0 - 0.1 * (-1 + 0.5 * -2.0)));
  CHECK(m[1] == Approx(0.1 * -4.0));
  CHECK(v[1] == Approx(0.05 * 16.0));
  // grad_scale multiplies the gradient before the moments; no decay without `decay`.
  std::vector<float> q{1.0f}, gq{8.0f}, mq{0}, vq{0};
  adamw_update(q.data(), gq.data(), mq.data(), vq.data(), 1, adamw_hyper(t, 1, false), 0.5f);
  CHECK(mq[0] == Approx(0.1 * 4.0));
  CHECK(q[0] == Approx(1.0 - 0.1));
}
