// gen_common.h: the per-rank builder the schedule generators share (internal to scheduler/).
//
// A generator describes a rank's program in the vocabulary of the papers ("F0", "B1 with W
// deferred", "W"); the builder supplies the micro-batch numbers from per-stage counters, so a
// generator never computes an mb index by hand:
//   f(stage)   the stage's next forward micro-batch
//   bw(stage)  unsplit backward of the stage's next backward micro-batch
//   b(stage)   input-gradient backward of the next backward micro-batch; its W goes on the rank's
//              deferred-W FIFO
//   w()        pops the oldest deferred W of any stage (STP, DualPipeV, ZB-H1)
//   w(stage)   pops the oldest deferred W of one stage (ZB-V's per-chunk W counters)
// Popping an empty FIFO is a generator bug and throws std::logic_error naming the rank and step.
#pragma once

#include <deque>
#include <stdexcept>
#include <string>
#include <vector>

#include "scheduler/ir.h"

namespace stp::gen {

class RankBuilder {
 public:
  RankBuilder(int rank, int stages) : rank_(rank), next_f_(stages, 0), next_b_(stages, 0) {}

  Pass f(int stage) { return Pass{PassKind::F, stage, next_f_.at(stage)++}; }
  Pass bw(int stage) { return Pass{PassKind::BW, stage, next_b_.at(stage)++}; }
  Pass b(int stage) {
    Pass p{PassKind::B, stage, next_b_.at(stage)++};
    deferred_.push_back(Pass{PassKind::W, stage, p.mb});
    return p;
  }
  Pass w() {
    if (deferred_.empty()) throw std::logic_error(empty_fifo_message());
    Pass p = deferred_.front();
    deferred_.pop_front();
    return p;
  }
  Pass w(int stage) {
    for (auto it = deferred_.begin(); it != deferred_.end(); ++it) {
      if (it->stage != stage) continue;
      Pass p = *it;
      deferred_.erase(it);
      return p;
    }
    throw std::logic_error(empty_fifo_message() + " (stage " + std::to_string(stage) + ")");
  }
  int deferred() const { return int(deferred_.size()); }
  int deferred(int stage) const {
    int n = 0;
    for (const Pass& p : deferred_) n += p.stage == stage ? 1 : 0;
    return n;
  }
  int forwards_issued(int stage) const { return next_f_.at(stage); }

  void add(Pass a) { steps_.push_back(Step{a, false, Pass{}}); }
  void add(Pass a, Pass b) { steps_.push_back(Step{a, true, b}); }

  std::vector<Step> take() { return std::move(steps_); }

 private:
  std::string empty_fifo_message() const {
    return "schedule generator bug: rank " + std::to_string(rank_) + " pops a W at step " +
           std::to_string(steps_.size()) + " but no weight gradient is deferred";
  }

  int rank_;
  std::vector<int> next_f_;  // per stage: next forward micro-batch
  std::vector<int> next_b_;  // per stage: next backward micro-batch
  std::deque<Pass> deferred_;
  std::vector<Step> steps_;
};

}  // namespace stp::gen
