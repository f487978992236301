// optimizer.h: the learning-rate schedule and AdamW (fp32 state, fp32 arithmetic).
//
// LR schedule (train.*), for step s counted from 1 of train.steps = S, warm-up W:
//   s <= W:                 lr * s / W                                   (linear warm-up)
//   cosine, s > W:          min_lr + (lr - min_lr) * (1 + cos(pi * (s-W) / (S-W))) / 2
//   constant, s > W:        lr
// AdamW (decoupled weight decay, Loshchilov & Hutter), per element, t = step count from 1:
//   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
//   p -= lr * ( (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + wd * p )
// Weight decay applies to tensors of two or more dims (matrices and embeddings), not to biases and
// norm weights (one dim): the usual GPT/LLaMA practice. The update is elementwise and its order of
// operations is fixed, so every rank that holds a shard computes exactly what a single rank would.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/core/config.h"

namespace stp {

double lr_at(const TrainConfig& t, int64_t step);

struct AdamWHyper {
  float lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0;
  int64_t t = 1;  // step count from 1 (bias correction)
};

AdamWHyper adamw_hyper(const TrainConfig& t, int64_t step, bool decay);

// One tensor's update: p, g, m, v have n elements. `grad_scale` multiplies g first (clipping).
void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWHyper& h,
                  float grad_scale);

}  // namespace stp
