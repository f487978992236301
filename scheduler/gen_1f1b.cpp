// gen_1f1b.cpp: 1F1B (PipeDream-flush), in picotron's three named phases. One chunk per rank.
//
// Rank r runs P-r-1 warm-up forwards (capped at M), then one forward and one unsplit backward per
// step until the forwards run out, then the cool-down backwards. At most P-r micro-batches are in
// flight on rank r. With unit costs (F = 1, BW = 2) the makespan is 3M + 3(P-1).
#include <algorithm>

#include "scheduler/gen_common.h"
#include "scheduler/schedules.h"

namespace stp {

std::vector<Step> gen_1f1b(int pp, int rank, int microbatches, int chunks) {
  gen::RankBuilder b(rank, pp * chunks);
  const int warm_up = std::min(pp - rank - 1, microbatches);
  const int steady = microbatches - warm_up;
  for (int i = 0; i < warm_up; ++i) b.add(b.f(rank));  // warm-up: fill the pipeline
  for (int i = 0; i < steady; ++i) {                    // steady: one forward, one backward
    b.add(b.f(rank));
    b.add(b.bw(rank));
  }
  for (int i = 0; i < warm_up; ++i) b.add(b.bw(rank));  // cool-down: drain the backwards
  return b.take();
}

}  // namespace stp
