// validate_pipeline.cpp: pipeline-level validator, unit-cost dependency simulation, accumulation
// depth (contract in validate_pipeline.h).
#include "scheduler/validate_pipeline.h"

#include "scheduler/text_io.h"

#include <algorithm>
#include <set>

namespace stp {
namespace {

std::string str(int v) { return std::to_string(v); }

// "F3.0": kind, stage, micro-batch (the pipeline_to_text notation).
std::string label(const Pass& p) { return pass_to_text(p); }
std::string label(const Step& s) { return step_to_text(s); }

int unit_cost(PassKind k) { return k == PassKind::BW ? 2 : 1; }

Violation violation(PipelineRule rule, int rank, int step, std::string msg) {
  return Violation{rule, rank, step, std::move(msg)};
}

// Calls fn(rank, step_index, pass) for every pass of the program, in program order.
template <class Fn>
void for_each_pass(const PipelineProgram& prog, Fn fn) {
  for (int r = 0; r < int(prog.ranks.size()); ++r)
    for (int i = 0; i < int(prog.ranks[r].size()); ++i) {
      const Step& s = prog.ranks[r][i];
      fn(r, i, s.a);
      if (s.braided) fn(r, i, s.b);
    }
}

struct Loc {
  int rank = -1, step = -1;
  bool found() const { return rank >= 0; }
};

// Where each pass of each (stage, mb) occurs: count and first occurrence, per pass kind.
class PassTable {
 public:
  struct Slot {
    int count[4] = {0, 0, 0, 0};
    Loc first[4];
  };
  PassTable(int stages, int microbatches) : mbs_(microbatches), slots_(size_t(stages) * microbatches) {}
  Slot& at(int stage, int mb) { return slots_[size_t(stage) * mbs_ + mb]; }
  const Slot& at(int stage, int mb) const { return slots_[size_t(stage) * mbs_ + mb]; }
  Loc where(const Pass& p) const { return at(p.stage, p.mb).first[int(p.kind)]; }

 private:
  int mbs_;
  std::vector<Slot> slots_;
};

// shape, range, wrong-rank, braid. Returns true when every pass is in range (the table can be built).
bool check_passes(const PipelineProgram& prog, std::vector<Violation>& out) {
  const int S = prog.stages(), M = prog.microbatches;
  bool in_range = true;
  for_each_pass(prog, [&](int r, int i, const Pass& p) {
    if (p.stage < 0 || p.stage >= S || p.mb < 0 || p.mb >= M) {
      out.push_back(violation(PipelineRule::Range, r, i,
                              label(p) + " is out of range: stages 0.." + str(S - 1) + ", micro-batches 0.." + str(M - 1)));
      in_range = false;
      return;
    }
    const int owner = stage_rank(prog.placement, prog.pp, p.stage);
    if (owner != r)
      out.push_back(violation(PipelineRule::WrongRank, r, i,
                              label(p) + " runs on rank " + str(r) + " but stage " + str(p.stage) + " is on rank " +
                                  str(owner) + " (" + (prog.placement == Placement::V ? "V" : "looped") + " placement)"));
  });
  for (int r = 0; r < int(prog.ranks.size()); ++r)
    for (int i = 0; i < int(prog.ranks[r].size()); ++i) {
      const Step& s = prog.ranks[r][i];
      if (s.braided && s.a.kind != PassKind::F)
        out.push_back(violation(PipelineRule::Braid, r, i,
                                "braided pair " + label(s) + " must start with a forward, starts with " + label(s.a)));
    }
  return in_range;
}

void check_duplicates(const PassTable& table, const PipelineProgram& prog, std::vector<Violation>& out) {
  std::vector<int> seen(size_t(prog.stages()) * prog.microbatches * 4, 0);
  for_each_pass(prog, [&](int r, int i, const Pass& p) {
    int& n = seen[(size_t(p.stage) * prog.microbatches + p.mb) * 4 + int(p.kind)];
    if (++n != 2) return;  // report the second occurrence once
    Loc first = table.where(p);
    out.push_back(violation(PipelineRule::Duplicate, r, i,
                            label(p) + " appears more than once: first at rank " + str(first.rank) + ", step " +
                                str(first.step)));
  });
}

void check_counts(const PassTable& table, const PipelineProgram& prog, std::vector<Violation>& out) {
  for (int s = 0; s < prog.stages(); ++s)
    for (int mb = 0; mb < prog.microbatches; ++mb) {
      const PassTable::Slot& x = table.at(s, mb);
      const int owner = stage_rank(prog.placement, prog.pp, s);
      const int nf = x.count[int(PassKind::F)], nb = x.count[int(PassKind::B)];
      const int nw = x.count[int(PassKind::W)], nbw = x.count[int(PassKind::BW)];
      const std::string at = "stage " + str(s) + " micro-batch " + str(mb);
      if (nf == 0) out.push_back(violation(PipelineRule::Missing, owner, -1, at + " has no forward (F" + str(s) + "." + str(mb) + ")"));
      if (nbw > 0 && nb + nw > 0) {
        out.push_back(violation(PipelineRule::Mixed, owner, -1,
                                at + " has an unsplit backward BW and a split one (B/W); it needs exactly one"));
      } else if (nbw == 0 && nb == 0 && nw == 0) {
        out.push_back(violation(PipelineRule::Missing, owner, -1, at + " has no backward (neither BW nor B then W)"));
      } else if (nbw == 0 && (nb == 0 || nw == 0)) {
        out.push_back(violation(PipelineRule::Missing, owner, -1,
                                at + (nb == 0 ? " has a W but no B (input-gradient backward)" : " has a B but its deferred W never runs")));
      }
    }
}

// F before B/BW before W, in strictly earlier steps of the same rank.
void check_order(const PassTable& table, const PipelineProgram& prog, std::vector<Violation>& out) {
  for (int s = 0; s < prog.stages(); ++s)
    for (int mb = 0; mb < prog.microbatches; ++mb) {
      const PassTable::Slot& x = table.at(s, mb);
      const Loc f = x.first[int(PassKind::F)], w = x.first[int(PassKind::W)];
      const bool split = x.first[int(PassKind::B)].found();
      const Loc b = split ? x.first[int(PassKind::B)] : x.first[int(PassKind::BW)];
      const Pass bp{split ? PassKind::B : PassKind::BW, s, mb};
      auto later = [](Loc a, Loc c) { return a.found() && c.found() && a.rank == c.rank && c.step <= a.step; };
      if (later(f, b))
        out.push_back(violation(PipelineRule::Order, b.rank, b.step,
                                label(bp) + " runs at step " + str(b.step) + ", not after its forward F" + str(s) + "." +
                                    str(mb) + " (step " + str(f.step) + ")"));
      if (split && later(b, w))
        out.push_back(violation(PipelineRule::Order, w.rank, w.step,
                                "W" + str(s) + "." + str(mb) + " runs at step " + str(w.step) + ", not after its B (step " +
                                    str(b.step) + ")"));
    }
}

// ---- dependency simulation ----------------------------------------------------------------------

// The passes whose completion `p` needs (see the header).
std::vector<Pass> dependencies(const Pass& p, int stages) {
  std::vector<Pass> deps;
  switch (p.kind) {
    case PassKind::F:
      if (p.stage > 0) deps.push_back(Pass{PassKind::F, p.stage - 1, p.mb});
      break;
    case PassKind::B:
    case PassKind::BW:
      deps.push_back(Pass{PassKind::F, p.stage, p.mb});
      if (p.stage + 1 < stages) deps.push_back(Pass{PassKind::B, p.stage + 1, p.mb});  // B or BW
      break;
    case PassKind::W:
      deps.push_back(Pass{PassKind::B, p.stage, p.mb});
      break;
  }
  return deps;
}

// Finish times of passes; "B" means the input gradient is done, by B or BW.
class FinishTimes {
 public:
  FinishTimes(int stages, int mbs) : mbs_(mbs), t_(size_t(stages) * mbs * 3, -1) {}
  int get(const Pass& p) const { return t_[index(p)]; }
  void set(const Pass& p, int t) {
    int& x = t_[index(p)];
    if (x < 0) x = t;  // a duplicate keeps the first
  }

 private:
  size_t index(const Pass& p) const {
    const int k = p.kind == PassKind::F ? 0 : p.kind == PassKind::W ? 2 : 1;
    return (size_t(p.stage) * mbs_ + p.mb) * 3 + k;
  }
  int mbs_;
  std::vector<int> t_;
};

// Earliest start of `step` given finished passes; -1 when a dependency has not finished yet.
int ready_time(const Step& step, const FinishTimes& fin, int stages) {
  int ready = 0;
  for (int k = 0; k < (step.braided ? 2 : 1); ++k)
    for (const Pass& d : dependencies(k == 0 ? step.a : step.b, stages)) {
      const int t = fin.get(d);
      if (t < 0) return -1;
      ready = std::max(ready, t);
    }
  return ready;
}

std::string describe_block(const PipelineProgram& prog, const PassTable& table, const FinishTimes& fin, int r,
                           int i) {
  const Step& step = prog.ranks[r][i];
  std::string msg = "deadlock: rank " + str(r) + " can never start step " + str(i) + " (" + label(step) + "); it waits for";
  for (int k = 0; k < (step.braided ? 2 : 1); ++k)
    for (Pass d : dependencies(k == 0 ? step.a : step.b, prog.stages())) {
      if (fin.get(d) >= 0) continue;
      Loc at = table.where(d);
      if (d.kind == PassKind::B && !at.found()) {
        Pass bw{PassKind::BW, d.stage, d.mb};
        if (table.where(bw).found()) d = bw, at = table.where(bw);
      }
      msg += " " + label(d) + (at.found() ? " (rank " + str(at.rank) + ", step " + str(at.step) + ")" : " (no rank runs it)");
    }
  return msg;
}

PassTable build_table(const PipelineProgram& prog) {
  PassTable table(prog.stages(), prog.microbatches);
  for_each_pass(prog, [&](int r, int i, const Pass& p) {
    PassTable::Slot& x = table.at(p.stage, p.mb);
    if (x.count[int(p.kind)]++ == 0) x.first[int(p.kind)] = Loc{r, i};
  });
  return table;
}

bool shape_ok(const PipelineProgram& prog, std::vector<Violation>& out) {
  if (prog.pp < 1 || prog.chunks < 1 || prog.microbatches < 1) {
    out.push_back(violation(PipelineRule::Shape, -1, -1,
                            "pp, chunks and microbatches must be >= 1, got pp = " + str(prog.pp) + ", chunks = " +
                                str(prog.chunks) + ", microbatches = " + str(prog.microbatches)));
    return false;
  }
  if (prog.placement == Placement::V && prog.chunks != 2) {
    out.push_back(violation(PipelineRule::Shape, -1, -1,
                            "the V placement holds exactly 2 chunks per rank, got chunks = " + str(prog.chunks)));
    return false;
  }
  if (int(prog.ranks.size()) != prog.pp) {
    out.push_back(violation(PipelineRule::Shape, -1, -1,
                            "the program has " + str(int(prog.ranks.size())) + " ranks but pp = " + str(prog.pp)));
    return false;
  }
  return true;
}

UnitTiming simulate(const PipelineProgram& prog, const PassTable& table) {
  const int P = int(prog.ranks.size()), S = prog.stages();
  UnitTiming t;
  t.finish.assign(P, 0);
  t.start.resize(P);
  for (int r = 0; r < P; ++r) t.start[r].assign(prog.ranks[r].size(), -1);
  FinishTimes fin(S, prog.microbatches);
  std::vector<int> next(P, 0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < P; ++r) {
      for (; next[r] < int(prog.ranks[r].size()); ++next[r]) {
        const Step& step = prog.ranks[r][next[r]];
        const int ready = ready_time(step, fin, S);
        if (ready < 0) break;
        const int begin = std::max(ready, t.finish[r]);
        const int end = begin + unit_cost(step.a.kind) + (step.braided ? unit_cost(step.b.kind) : 0);
        t.start[r][next[r]] = begin;
        t.finish[r] = end;
        fin.set(step.a, end);
        if (step.braided) fin.set(step.b, end);
        progress = true;
      }
    }
  }
  for (int r = 0; r < P; ++r) {
    t.makespan = std::max(t.makespan, t.finish[r]);
    if (next[r] < int(prog.ranks[r].size()))
      t.deadlocks.push_back(violation(PipelineRule::Deadlock, r, next[r], describe_block(prog, table, fin, r, next[r])));
  }
  return t;
}

bool passes_in_range(const PipelineProgram& prog) {
  bool ok = true;
  for_each_pass(prog, [&](int, int, const Pass& p) {
    ok = ok && p.stage >= 0 && p.stage < prog.stages() && p.mb >= 0 && p.mb < prog.microbatches;
  });
  return ok;
}

}  // namespace

const char* pipeline_rule_name(PipelineRule rule) {
  switch (rule) {
    case PipelineRule::Shape: return "shape";
    case PipelineRule::Range: return "range";
    case PipelineRule::WrongRank: return "wrong-rank";
    case PipelineRule::Braid: return "braid";
    case PipelineRule::Duplicate: return "duplicate";
    case PipelineRule::Missing: return "missing";
    case PipelineRule::Mixed: return "mixed";
    case PipelineRule::Order: return "order";
    case PipelineRule::Deadlock: return "deadlock";
  }
  return "?";
}

std::string Violation::to_string() const {
  std::string where;
  if (rank >= 0) where += "rank " + str(rank);
  if (step >= 0) where += (where.empty() ? "" : ", ") + std::string("step ") + str(step);
  return (where.empty() ? "" : where + " ") + "[" + pipeline_rule_name(rule) + "]: " + message;
}

std::vector<Violation> validate_pipeline(const PipelineProgram& prog) {
  std::vector<Violation> out;
  if (!shape_ok(prog, out)) return out;
  if (!check_passes(prog, out)) return out;  // out-of-range passes: the per-pass tables do not apply
  const PassTable table = build_table(prog);
  check_duplicates(table, prog, out);
  check_counts(table, prog, out);
  check_order(table, prog, out);
  UnitTiming t = simulate(prog, table);
  out.insert(out.end(), t.deadlocks.begin(), t.deadlocks.end());
  std::stable_sort(out.begin(), out.end(), [](const Violation& a, const Violation& b) { return a.rule < b.rule; });
  return out;
}

std::optional<Violation> validate_pipeline_first(const PipelineProgram& prog) {
  std::vector<Violation> v = validate_pipeline(prog);
  if (v.empty()) return std::nullopt;
  return v.front();
}

UnitTiming pipeline_unit_timing(const PipelineProgram& prog) {
  std::vector<Violation> shape;
  if (!shape_ok(prog, shape) || !passes_in_range(prog)) {
    UnitTiming t;
    t.makespan = -1;
    t.deadlocks = shape;
    return t;
  }
  return simulate(prog, build_table(prog));
}

int pipeline_unit_makespan(const PipelineProgram& prog) {
  UnitTiming t = pipeline_unit_timing(prog);
  return t.deadlocks.empty() && t.makespan >= 0 ? t.makespan : -1;
}

std::vector<int> pipeline_accum_depth(const PipelineProgram& prog) {
  std::vector<int> depth(prog.ranks.size(), 0);
  for (size_t r = 0; r < prog.ranks.size(); ++r) {
    std::vector<int> next_mb(std::max(prog.stages(), 0), 0);  // per stage: next mb to add
    std::vector<std::set<int>> waiting(next_mb.size());       // per stage: early contributions
    int buffered = 0;
    auto contribute = [&](const Pass& p) {
      if ((p.kind != PassKind::W && p.kind != PassKind::BW) || p.stage < 0 || p.stage >= int(next_mb.size())) return;
      if (p.mb != next_mb[p.stage]) {
        buffered += waiting[p.stage].insert(p.mb).second ? 1 : 0;
        depth[r] = std::max(depth[r], buffered);
        return;
      }
      ++next_mb[p.stage];
      for (auto it = waiting[p.stage].begin(); it != waiting[p.stage].end() && *it == next_mb[p.stage];) {
        it = waiting[p.stage].erase(it);
        --buffered;
        ++next_mb[p.stage];
      }
    };
    for (const Step& s : prog.ranks[r]) {
      contribute(s.a);
      if (s.braided) contribute(s.b);
    }
  }
  return depth;
}

}  // namespace stp
