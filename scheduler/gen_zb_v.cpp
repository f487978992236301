// gen_zb_v.cpp: ZB-V (Qi et al., "Zero Bubble Pipeline Parallelism", section 6), the V-shaped
// zero-bubble schedule with B/W split and 2 chunks, in the handcrafted form that
// torch.distributed.pipelining's ScheduleZBVZeroBubble uses (so CSVs exchange with PyTorch).
//
// Rank r holds chunk 0 = stage r and chunk 1 = stage 2P-1-r. W's are per chunk, in micro-batch
// order. The pattern needs 2P-1 micro-batches to fill the V; with fewer, the program is generated
// for 2P-1 and the passes of the missing micro-batches are dropped (PyTorch does the same), which
// keeps every dependency order intact. With unit costs (F = B = W = 1) the makespan is 6M + P - 1
// once M >= 2P-1 (PAPER.md, "The analysis").
#include <algorithm>

#include "scheduler/gen_common.h"
#include "scheduler/schedules.h"

namespace stp {
namespace {

// Warm-up: 2(P-r)-1 chunk-0 forwards, r alternating chunk-1/chunk-0 forwards, then P-r chunk-1
// F, B, W triples (chunk 1's backward starts right where its forward ends, at the V's bottom).
void zbv_warm_up(gen::RankBuilder& b, int P, int r, int s0, int s1) {
  for (int i = 0; i < 2 * (P - r) - 1; ++i) b.add(b.f(s0));
  for (int i = 0; i < r; ++i) {
    b.add(b.f(s1));
    b.add(b.f(s0));
  }
  for (int i = 0; i < P - r; ++i) {
    b.add(b.f(s1));
    b.add(b.b(s1));
    b.add(b.w(s1));
  }
}

// Stable: F0 B0 W0 F1 B1 W1 until both chunks' forwards are done; cool-down: B's of both chunks,
// then B0 W0 pairs, then the remaining W's of chunk 1, then of chunk 0 (each in micro-batch order).
void zbv_stable_and_cool_down(gen::RankBuilder& b, int P, int n, int r, int s0, int s1) {
  while (b.forwards_issued(s1) < b.forwards_issued(s0) || b.forwards_issued(s0) < n) {
    if (b.forwards_issued(s0) < n) b.add(b.f(s0));
    b.add(b.b(s0));
    b.add(b.w(s0));
    b.add(b.f(s1));
    b.add(b.b(s1));
    b.add(b.w(s1));
  }
  for (int i = 0; i < r; ++i) {
    b.add(b.b(s0));
    b.add(b.b(s1));
  }
  for (int i = 0; i < P - r; ++i) {
    b.add(b.b(s0));
    b.add(b.w(s0));
  }
  while (b.deferred(s1) > 0) b.add(b.w(s1));
  while (b.deferred(s0) > 0) b.add(b.w(s0));
}

// Drops passes of micro-batches >= M (the padding) and any step left empty.
std::vector<Step> zbv_trim(std::vector<Step> steps, int M) {
  std::vector<Step> out;
  out.reserve(steps.size());
  for (const Step& s : steps) {
    if (s.a.mb < M) out.push_back(s);  // generated steps are single passes
  }
  return out;
}

}  // namespace

std::vector<Step> gen_zb_v(int pp, int rank, int microbatches, int chunks) {
  const int s0 = rank, s1 = 2 * pp - 1 - rank;
  const int n = std::max(2 * pp - 1, microbatches);
  gen::RankBuilder b(rank, pp * chunks);
  zbv_warm_up(b, pp, rank, s0, s1);
  zbv_stable_and_cool_down(b, pp, n, rank, s0, s1);
  return zbv_trim(b.take(), microbatches);
}

}  // namespace stp
