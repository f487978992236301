// ir.h: the two-level schedule IR (DESIGN.md, "One IR, three consumers").
//
// Level 1, the pipeline program: per rank, a list of Steps. A Step is one Pass or a braided pair of
// passes. Passes name a *virtual stage* (0..S-1, S = pp*chunks) and a micro-batch (0-based).
// Level 2, the unit program: per rank, a list of Ops produced by lowering (lower.h).
// Everything here is plain data; generators are pure functions returning it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace stp {

enum class PassKind : uint8_t {
  F,   // forward
  B,   // input-gradient backward only; its weight gradient is deferred to a later W
  W,   // a deferred weight gradient
  BW,  // unsplit backward: input and weight gradients together
};

struct Pass {
  PassKind kind = PassKind::F;
  int stage = 0;  // virtual stage
  int mb = 0;     // micro-batch, 0-based
  bool operator==(const Pass& o) const { return kind == o.kind && stage == o.stage && mb == o.mb; }
  bool operator!=(const Pass& o) const { return !(*this == o); }
};

// One entry of a rank's pipeline program: `a` alone, or `a` braided with `b` (F&B, F&W, F&F, and
// for DualPipeV F&BW across chunks). In a braided pair `a` is the forward.
struct Step {
  Pass a;
  bool braided = false;
  Pass b;
  bool operator==(const Step& o) const {
    return a == o.a && braided == o.braided && (!braided || b == o.b);
  }
  bool operator!=(const Step& o) const { return !(*this == o); }
};

enum class Placement : uint8_t {
  Looped,  // stage s on rank s % pp (interleaved 1F1B)
  V,       // stage s on rank s for s < pp, on rank 2pp-1-s after
};

// The program of every rank of one pipeline, with what it was generated for.
struct PipelineProgram {
  std::string schedule;
  int pp = 1;
  int chunks = 1;
  int microbatches = 1;
  Placement placement = Placement::Looped;
  std::vector<std::vector<Step>> ranks;  // ranks[r] = rank r's steps in order

  int stages() const { return pp * chunks; }
};

// Rank that holds virtual stage `stage`.
inline int stage_rank(Placement pl, int pp, int stage) {
  if (pl == Placement::V) return stage < pp ? stage : 2 * pp - 1 - stage;
  return stage % pp;
}
// "v" | "looped": the placement's name in checkpoints, schedules and messages.
inline const char* placement_name(Placement pl) { return pl == Placement::V ? "v" : "looped"; }
// Chunk (0-based, per rank) of virtual stage `stage`.
inline int stage_chunk(int pp, int stage) { return stage / pp; }

inline Step step_single(PassKind k, int stage, int mb) { return Step{Pass{k, stage, mb}, false, Pass{}}; }
inline Step step_pair(Pass a, Pass b) { return Step{a, true, b}; }

}  // namespace stp
