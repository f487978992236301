// gen_zb_h1.cpp: ZB-H1 (Qi et al., "Zero Bubble Pipeline Parallelism", handcrafted schedule 1).
//
// 1F1B's order with the backward split into B (input gradient, on the critical path) and W (weight
// gradient, deferred). Rank r keeps its first r W's back and then runs one W after every B, oldest
// first, so r W's are left for the end: the last rank finishes its B's P-1 W's earlier and the
// cool-down bubble of the earlier ranks fills with W. In-flight activations are 1F1B's (P-r on
// rank r). This is torch.distributed.pipelining's ScheduleInterleavedZeroBubble with one stage per
// rank. With unit costs (F = B = W = 1) the makespan is 3M + P - 1 once M >= P.
#include <algorithm>

#include "scheduler/gen_common.h"
#include "scheduler/schedules.h"

namespace stp {

std::vector<Step> gen_zb_h1(int pp, int rank, int microbatches, int chunks) {
  gen::RankBuilder b(rank, pp * chunks);
  const int warm_up = std::min(pp - rank - 1, microbatches);
  const int steady = microbatches - warm_up;
  for (int i = 0; i < warm_up; ++i) b.add(b.f(rank));
  for (int i = 0; i < microbatches; ++i) {  // steady (F B [W]) then cool-down (B [W])
    if (i < steady) b.add(b.f(rank));
    b.add(b.b(rank));
    if (i >= rank) b.add(b.w());
  }
  while (b.deferred() > 0) b.add(b.w());
  return b.take();
}

}  // namespace stp
