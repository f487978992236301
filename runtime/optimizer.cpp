// optimizer.cpp: LR schedule and AdamW (contract in optimizer.h).
#include "runtime/optimizer.h"

#include <algorithm>
#include <cmath>

namespace stp {

double lr_at(const TrainConfig& t, int64_t step) {
  const int64_t W = std::max(0, t.warmup_steps);
  if (W > 0 && step <= W) return t.lr * double(step) / double(W);
  if (t.lr_schedule == "constant") return t.lr;
  const int64_t span = std::max<int64_t>(1, int64_t(t.steps) - W);
  const double progress = std::min(1.0, double(step - W) / double(span));
  return t.min_lr + (t.lr - t.min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

AdamWHyper adamw_hyper(const TrainConfig& t, int64_t step, bool decay) {
  AdamWHyper h;
  h.lr = float(lr_at(t, step));
  h.beta1 = float(t.beta1);
  h.beta2 = float(t.beta2);
  h.eps = float(t.eps);
  h.weight_decay = decay ? float(t.weight_decay) : 0.0f;
  h.t = step;
  return h;
}

void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWHyper& h,
                  float grad_scale) {
  const float c1 = 1.0f - std::pow(h.beta1, float(h.t));
  const float c2 = 1.0f - std::pow(h.beta2, float(h.t));
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * grad_scale;
    m[i] = h.beta1 * m[i] + (1.0f - h.beta1) * gi;
    v[i] = h.beta2 * v[i] + (1.0f - h.beta2) * gi * gi;
    const float mhat = m[i] / c1, vhat = v[i] / c2;
    p[i] -= h.lr * (mhat / (std::sqrt(vhat) + h.eps) + h.weight_decay * p[i]);
  }
}

}  // namespace stp
