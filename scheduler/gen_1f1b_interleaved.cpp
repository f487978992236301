// gen_1f1b_interleaved.cpp: interleaved 1F1B (Narayanan et al. 2021, Megatron's virtual pipeline).
//
// Looped placement: rank r holds stages r, r+P, ..., r+(chunks-1)P. Forwards walk the chunks in
// rounds of P micro-batches (P forwards of chunk 0, P of chunk 1, ...; "depth first"), backwards
// walk the chunks in reverse in the same rounds. Rank r warms up with (chunks-1)*P + 2(P-r-1)
// forwards, then alternates one forward and one unsplit backward, then drains. The rounds of P are
// why Megatron requires M % P == 0: a partial round would send a chunk's forward for a micro-batch
// whose previous-chunk forward the last rank has not produced yet. With unit costs (F = 1, BW = 2)
// and 2 chunks the makespan is 6M + 3(P-1).
#include <algorithm>

#include "scheduler/gen_common.h"
#include "scheduler/schedules.h"

namespace stp {

std::vector<Step> gen_1f1b_interleaved(int pp, int rank, int microbatches, int chunks) {
  gen::RankBuilder b(rank, pp * chunks);
  const int total = chunks * microbatches;  // forwards (and backwards) on this rank
  const int warm_up = std::min((chunks - 1) * pp + 2 * (pp - rank - 1), total);
  // The k-th forward (backward) of this rank belongs to chunk fwd_chunk(k) (bwd_chunk(k)).
  auto fwd_stage = [&](int k) { return ((k / pp) % chunks) * pp + rank; };
  auto bwd_stage = [&](int k) { return (chunks - 1 - (k / pp) % chunks) * pp + rank; };
  for (int k = 0; k < warm_up; ++k) b.add(b.f(fwd_stage(k)));
  for (int k = 0; k < total; ++k) {  // steady (F then BW), then cool-down (BW)
    if (warm_up + k < total) b.add(b.f(fwd_stage(warm_up + k)));
    b.add(b.bw(bwd_stage(k)));
  }
  return b.take();
}

}  // namespace stp
