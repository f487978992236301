// gen_dualpipe_v.cpp: DualPipeV (DeepSeek's DualPipe folded into a V), as torch.distributed.pipelining's
// ScheduleDualPipeV generates it, so both runtimes agree on what DualPipeV is.
//
// Rank r holds chunk 0 = stage r and chunk 1 = stage 2P-1-r. Unlike STP, a braided pair joins the
// forward of one chunk with the *unsplit* backward of the other chunk (PyTorch's OVERLAP_F_B).
// Weight gradients are split (B now, W later from one FIFO per rank) only in the ramp-up (step 3)
// and in the second half of the drain (steps 6-8). tests/golden/dualpipev_4rank_10mb.csv (PyTorch's
// own artifact) pins P=4, M=10 step for step. Needs M >= 2P, PyTorch's rule (one micro-batch per
// stage). The phase counts would still come out right at M = 2P-1 (rank 0's step 4 then runs zero
// times; the validator accepts that program), and below that rank 0's ramp-up alone issues more
// than M forwards; we keep PyTorch's bound so the two runtimes accept the same configurations.
// With unit costs (F = B = W = 1, BW = 2) the makespan is 6M + 2(P-1).
#include "scheduler/gen_common.h"
#include "scheduler/schedules.h"

namespace stp {
namespace {

// Steps 1-3: forwards of chunk 0, then chunk 0/1 alternating, then chunk-1 B, W, F (zero bubble).
void dualpipe_ramp_up(gen::RankBuilder& b, int P, int r, int s0, int s1) {
  for (int i = 0; i < 2 * (P - r - 1); ++i) b.add(b.f(s0));
  for (int i = 0; i < r + 1; ++i) {
    b.add(b.f(s0));
    b.add(b.f(s1));
  }
  for (int i = 0; i < P - r - 1; ++i) {
    b.add(b.b(s1));
    b.add(b.w());
    b.add(b.f(s1));
  }
}

// Steps 4-5: the main braided steps F0&BW1, F1&BW0. The last rank runs its very first pair
// unbraided (F0 then BW1), as PyTorch does, to shorten its bubble.
void dualpipe_steady(gen::RankBuilder& b, int P, int M, int r, int s0, int s1) {
  const int n4 = M - 2 * P + r + 1;
  for (int i = 0; i < n4; ++i) {
    if (i == 0 && r == P - 1) {
      b.add(b.f(s0));
      b.add(b.bw(s1));
    } else {
      Pass fwd = b.f(s0);
      b.add(fwd, b.bw(s1));
    }
    Pass fwd = b.f(s1);
    b.add(fwd, b.bw(s0));
  }
  for (int i = 0; i < P - r - 1; ++i) {
    b.add(b.bw(s1));
    Pass fwd = b.f(s1);
    b.add(fwd, b.bw(s0));
  }
}

// Steps 6-8: backwards of both chunks, switching to B/W split half-way (the switch point differs by
// rank parity exactly as in PyTorch), then the deferred W's interleaved with the last chunk-0 B's.
void dualpipe_drain(gen::RankBuilder& b, int P, int r, int s0, int s1) {
  const int n6 = r + 1;
  bool split = false;
  for (int i = 0; i < n6; ++i) {
    if (i == n6 / 2 && r % 2 == 1) split = true;
    b.add(split ? b.b(s1) : b.bw(s1));
    if (i == n6 / 2 && r % 2 == 0) split = true;
    b.add(split ? b.b(s0) : b.bw(s0));
  }
  for (int i = 0; i < P - r - 1; ++i) {
    if (b.deferred() > 0) b.add(b.w());
    b.add(split ? b.b(s0) : b.bw(s0));
  }
  for (int i = 0; i < r + 1; ++i) {
    if (b.deferred() > 0) b.add(b.w());
  }
}

}  // namespace

std::vector<Step> gen_dualpipe_v(int pp, int rank, int microbatches, int chunks) {
  const int s0 = rank, s1 = 2 * pp - 1 - rank;
  gen::RankBuilder b(rank, pp * chunks);
  dualpipe_ramp_up(b, pp, rank, s0, s1);
  dualpipe_steady(b, pp, microbatches, rank, s0, s1);
  dualpipe_drain(b, pp, rank, s0, s1);
  return b.take();
}

}  // namespace stp
