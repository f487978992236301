// gen_gpipe.cpp: GPipe (Huang et al.): every forward, then every unsplit backward, micro-batches in
// order. One chunk per rank (stage r on rank r). Peak activations: all M micro-batches on every rank.
// With unit costs (F = 1, BW = 2) the makespan is 3M + 3(P-1).
#include "scheduler/gen_common.h"
#include "scheduler/schedules.h"

namespace stp {

std::vector<Step> gen_gpipe(int pp, int rank, int microbatches, int chunks) {
  gen::RankBuilder b(rank, pp * chunks);
  for (int i = 0; i < microbatches; ++i) b.add(b.f(rank));
  for (int i = 0; i < microbatches; ++i) b.add(b.bw(rank));
  return b.take();
}

}  // namespace stp
