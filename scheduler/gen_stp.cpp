// gen_stp.cpp: the STP per-rank program (PAPER.md, "V-shaped pipeline", phases 1..9).
//
// Rank r holds chunk 0 = stage r and chunk 1 = stage 2P-1-r (V placement). "F0&F0" braids two
// forwards of chunk 0, "F1&B1*" braids a chunk-1 forward with a chunk-1 input-gradient backward whose
// W is deferred, "F0&W" braids a forward with the oldest deferred W (one FIFO per rank). The counts
// come out right for M >= 3P-1 (checked by pipeline_check_args); golden files
// tests/golden/stp_p4_m12.csv and stp_p2_m9.csv pin the result step for step.
#include "scheduler/gen_common.h"
#include "scheduler/schedules.h"

namespace stp {
namespace {

// Phases 1-4: the ramp-up. Chunk-0 forwards first, then alternate with chunk 1, braid the pairs of
// forwards that would otherwise wait, and start the chunk-1 backwards with their W deferred.
void stp_ramp_up(gen::RankBuilder& b, int P, int r, int s0, int s1) {
  for (int i = 0; i < 2 * (P - r - 1); ++i) b.add(b.f(s0));  // 1
  for (int i = 0; i < r + 1; ++i) {                           // 2
    b.add(b.f(s0));
    b.add(b.f(s1));
  }
  if ((r + 1) % 2 == 1) b.add(b.f(s0));                       // 3
  for (int i = 0; i < (r + 1) / 2; ++i) {
    Pass first = b.f(s0);
    b.add(first, b.f(s0));
  }
  for (int i = 0; i < P - r - 1; ++i) {                       // 4
    b.add(b.f(s1), b.b(s1));
    b.add(b.f(s0), b.w());
  }
}

// Phases 5-9: steady braiding, then the drain of backwards and deferred W's.
void stp_steady_and_drain(gen::RankBuilder& b, int P, int M, int r, int s0, int s1) {
  const int n5 = 2 * (M - 3 * P + 1) + 1 + 2 * r;  // 5: alternate chunk 1 / chunk 0 F&B blocks,
  const int full = 2 * (M - 3 * P + 1) + 1 + r;    //    unsplit until `full`, W deferred after
  for (int i = 0; i < n5; ++i) {
    const int s = i % 2 == 0 ? s1 : s0;
    Pass fwd = b.f(s);
    b.add(fwd, i >= full ? b.b(s) : b.bw(s));
  }
  const int n6 = M - (r + 1) - (P - r - 1) - n5 / 2 - 1;  // 6
  for (int i = 0; i < n6; ++i) {
    b.add(b.bw(s0));
    b.add(b.f(s1), b.b(s1));
  }
  for (int i = 0; i < r + 1; ++i) {                        // 7
    b.add(b.bw(s0));
    b.add(b.bw(s1));
  }
  for (int i = 0; i <= 2 * (P - r - 1); ++i) {             // 8
    if (i % 2 == 0) {
      b.add(b.bw(s0));
    } else {
      b.add(b.w());
      b.add(b.w());
    }
  }
  for (int i = 0; i < 2 * r; ++i) b.add(b.w());             // 9
}

}  // namespace

std::vector<Step> gen_stp(int pp, int rank, int microbatches, int chunks) {
  const int s0 = rank, s1 = 2 * pp - 1 - rank;
  gen::RankBuilder b(rank, pp * chunks);
  stp_ramp_up(b, pp, rank, s0, s1);
  stp_steady_and_drain(b, pp, microbatches, rank, s0, s1);
  return b.take();
}

}  // namespace stp
