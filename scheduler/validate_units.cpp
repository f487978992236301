// validate_units.cpp: the rules of validate_units.h, one function per rule.
#include "scheduler/validate_units.h"

#include <algorithm>
#include <tuple>
#include <unordered_map>

#include "scheduler/cost.h"
#include "scheduler/simulator.h"

namespace stp {

const char* unit_rule_name(UnitRule r) {
  switch (r) {
    case UnitRule::Range: return "range";
    case UnitRule::Tag: return "tag";
    case UnitRule::Unit: return "unit";
    case UnitRule::Tensor: return "tensor";
    case UnitRule::Channel: return "channel";
    case UnitRule::Deadlock: return "deadlock";
  }
  return "?";
}

std::string UnitIssue::to_string() const {
  std::string s;
  if (rank >= 0) s += "rank " + std::to_string(rank);
  if (op >= 0) s += (s.empty() ? "" : ", ") + std::string("op ") + std::to_string(op);
  return s + (s.empty() ? "" : " ") + "[" + unit_rule_name(rule) + "]: " + message;
}

namespace {

using Issues = std::vector<UnitIssue>;

void add(Issues& out, UnitRule rule, int rank, int op, std::string msg) {
  out.push_back(UnitIssue{rule, rank, op, std::move(msg)});
}

bool in(int v, int lo, int hi) { return v >= lo && v < hi; }

std::string range_problem(const Op& o, const LoweredProgram& p, const ModelDesc& d) {
  const int S = int(d.stages.size()), M = p.pipeline.microbatches, P = int(p.ranks.size());
  if (o.stage >= 0 || o.kind == OpKind::Compute) {
    if (!in(o.stage, 0, S)) return "stage " + std::to_string(o.stage) + " is not in 0.." + std::to_string(S - 1);
    if (!in(o.mb, 0, M)) return "mb " + std::to_string(o.mb) + " is not in 0.." + std::to_string(M - 1);
    const StageDesc& s = d.stages[o.stage];
    if (o.kind == OpKind::Compute && !in(o.unit.unit, 0, int(s.units.size())))
      return "unit " + std::to_string(o.unit.unit) + " is not a unit of stage " + std::to_string(o.stage);
    if (o.kind != OpKind::Compute && o.tensor >= int(s.tensors.size()))
      return "tensor " + std::to_string(o.tensor) + " is not in stage " + std::to_string(o.stage) + "'s table";
    if ((o.kind == OpKind::Send || o.kind == OpKind::Recv || o.kind == OpKind::Free) && o.tensor < 0)
      return std::string(op_kind_name(o.kind)) + " names no tensor";
  }
  if ((o.kind == OpKind::Send || o.kind == OpKind::Recv) && !in(o.peer, 0, P))
    return "peer " + std::to_string(o.peer) + " is not a pipeline rank";
  if ((o.kind == OpKind::CommStart || o.kind == OpKind::CommWait || o.kind == OpKind::Send ||
       o.kind == OpKind::Recv) && o.tag < 0)
    return std::string(op_kind_name(o.kind)) + " has no tag";
  return "";
}

void check_range(const LoweredProgram& p, const ModelDesc& d, Issues& out) {
  for (const UnitProgram& up : p.ranks)
    for (size_t i = 0; i < up.ops.size(); ++i)
      if (std::string why = range_problem(up.ops[i], p, d); !why.empty())
        add(out, UnitRule::Range, up.rank, int(i), why);
}

void check_tags(const UnitProgram& up, Issues& out) {
  std::unordered_map<int, int> started, waited;  // tag -> op index (CommStart/Recv), wait count
  std::unordered_map<int, int> owner;            // tag -> op index, any tag-defining op
  for (int i = 0; i < int(up.ops.size()); ++i) {
    const Op& o = up.ops[i];
    if (o.kind == OpKind::CommStart || o.kind == OpKind::Send || o.kind == OpKind::Recv) {
      if (owner.count(o.tag))
        add(out, UnitRule::Tag, up.rank, i, "tag " + std::to_string(o.tag) + " is already used by op " + std::to_string(owner[o.tag]));
      owner[o.tag] = i;
      if (o.kind != OpKind::Send) started[o.tag] = i;
    } else if (o.kind == OpKind::CommWait) {
      if (!started.count(o.tag))
        add(out, UnitRule::Tag, up.rank, i, "waits for tag " + std::to_string(o.tag) + ", which no earlier comm_start or recv defines");
      else if (++waited[o.tag] > 1)
        add(out, UnitRule::Tag, up.rank, i, "waits for tag " + std::to_string(o.tag) + " a second time");
    }
  }
  for (const auto& [tag, i] : started)
    if (!waited.count(tag))
      add(out, UnitRule::Tag, up.rank, i, "tag " + std::to_string(tag) + " is started but never waited for");
}

// Every unit pass of every (stage, mb) held by the rank exactly once, and none elsewhere.
void check_units(const LoweredProgram& p, const ModelDesc& d, const UnitProgram& up, Issues& out) {
  const PipelineProgram& pl = p.pipeline;
  size_t U = 1;
  for (const StageDesc& s : d.stages) U = std::max(U, s.units.size());
  const size_t M = size_t(pl.microbatches);
  auto key = [&](int stage, int mb, int unit, int pass) { return ((size_t(stage) * M + mb) * U + unit) * 3 + pass; };
  std::vector<int> seen(d.stages.size() * M * U * 3, -1);  // (stage, mb, unit, pass) -> first op
  for (int i = 0; i < int(up.ops.size()); ++i) {
    const Op& o = up.ops[i];
    if (o.kind != OpKind::Compute) continue;
    int& first = seen[key(o.stage, o.mb, o.unit.unit, int(o.unit.pass))];
    const bool on_rank = stage_rank(pl.placement, pl.pp, o.stage) == up.rank;
    if (on_rank && first < 0) {
      first = i;
      continue;
    }
    const std::string what = std::string(unit_pass_name(o.unit.pass)) + " of unit " +
                             unit_name(d.stages[o.stage].units[o.unit.unit]) + " stage " +
                             std::to_string(o.stage) + " mb " + std::to_string(o.mb);
    if (!on_rank) add(out, UnitRule::Unit, up.rank, i, what + " runs on a rank that does not hold the stage");
    else add(out, UnitRule::Unit, up.rank, i, what + " runs a second time (first: op " + std::to_string(first) + ")");
  }
  for (int s = 0; s < pl.stages(); ++s) {
    if (stage_rank(pl.placement, pl.pp, s) != up.rank) continue;
    for (int mb = 0; mb < pl.microbatches; ++mb)
      for (size_t u = 0; u < d.stages[s].units.size(); ++u) {
        const UnitDesc& ud = d.stages[s].units[u];
        const bool has[3] = {ud.has_f, ud.has_b, ud.has_w};
        for (int pass = 0; pass < 3; ++pass)
          if (has[pass] && seen[key(s, mb, int(u), pass)] < 0)
            add(out, UnitRule::Unit, up.rank, -1, std::string(unit_pass_name(UnitPass(pass))) + " of unit " +
                unit_name(ud) + " stage " + std::to_string(s) + " mb " + std::to_string(mb) + " never runs");
      }
  }
}

std::string tensor_name(const ModelDesc& d, const TensorRef& t) {
  return d.stages[t.stage].tensors[t.tensor].name + " (stage " + std::to_string(t.stage) + " mb " + std::to_string(t.mb) + ")";
}

void check_tensors(const LoweredProgram& p, const ModelDesc& d, const UnitProgram& up, const TensorAccess& acc, Issues& out) {
  enum : char { Never = 0, Live = 1, Freed = 2 };
  const int64_t M = p.pipeline.microbatches, T = acc.max_tensors();
  std::vector<char> state(size_t(d.stages.size()) * M * T, Never);
  auto at = [&](const TensorRef& t) -> char& { return state[(size_t(t.stage) * M + t.mb) * T + t.tensor]; };
  std::vector<TensorRef> reads, writes;
  for (int i = 0; i < int(up.ops.size()); ++i) {
    const Op& o = up.ops[i];
    if (o.kind == OpKind::Free) {
      const TensorRef t{o.stage, o.mb, o.tensor};
      if (at(t) != Live) add(out, UnitRule::Tensor, up.rank, i, "frees " + tensor_name(d, t) + (at(t) == Freed ? " a second time" : ", which was never written"));
      at(t) = Freed;
      continue;
    }
    reads.clear();
    writes.clear();
    acc.touches(o, up.rank, &reads, &writes);
    for (const TensorRef& t : writes) {
      if (at(t) == Freed) add(out, UnitRule::Tensor, up.rank, i, "writes " + tensor_name(d, t) + " after its free");
      at(t) = Live;
    }
    for (const TensorRef& t : reads)
      if (at(t) != Live)
        add(out, UnitRule::Tensor, up.rank, i, "reads " + tensor_name(d, t) + (at(t) == Freed ? " after its free" : " before it is written"));
  }
  for (size_t k = 0; k < state.size(); ++k)
    if (state[k] == Live) {
      const TensorRef t{int(k / T / M), int((k / T) % M), int(k % T)};
      add(out, UnitRule::Tensor, up.rank, -1, tensor_name(d, t) + " is never freed");
    }
}

// The message a Send or Recv carries: (forward?, sending stage, mb).
std::tuple<bool, int, int> message_of(const Op& o) {
  const bool fwd = o.unit.pass == UnitPass::F;
  if (o.kind == OpKind::Send) return {fwd, o.stage, o.mb};
  return {fwd, fwd ? o.stage - 1 : o.stage + 1, o.mb};
}

std::string describe(const std::tuple<bool, int, int>& m, int64_t elems) {
  return std::string(std::get<0>(m) ? "activation" : "gradient") + " of stage " + std::to_string(std::get<1>(m)) +
         " mb " + std::to_string(std::get<2>(m)) + ", " + std::to_string(elems) + " elems";
}

void check_channels(const LoweredProgram& p, Issues& out) {
  const int P = int(p.ranks.size());
  // [src][dst] -> op indices (sends on src, recvs on dst), in program order
  std::vector<std::vector<std::vector<int>>> sends(P, std::vector<std::vector<int>>(P)), recvs = sends;
  for (const UnitProgram& up : p.ranks)
    for (int i = 0; i < int(up.ops.size()); ++i) {
      const Op& o = up.ops[i];
      if (o.kind == OpKind::Send) sends[up.rank][o.peer].push_back(i);
      if (o.kind == OpKind::Recv) recvs[o.peer][up.rank].push_back(i);
    }
  for (int a = 0; a < P; ++a)
    for (int b = 0; b < P; ++b) {
      const auto& S = sends[a][b];
      const auto& R = recvs[a][b];
      for (size_t k = 0; k < std::min(S.size(), R.size()); ++k) {
        const Op& so = p.ranks[a].ops[S[k]];
        const Op& ro = p.ranks[b].ops[R[k]];
        if (message_of(so) == message_of(ro) && so.elems == ro.elems) continue;
        add(out, UnitRule::Channel, b, R[k], "recv #" + std::to_string(k) + " from rank " + std::to_string(a) + " expects the " +
            describe(message_of(ro), ro.elems) + ", but send #" + std::to_string(k) + " of rank " + std::to_string(a) +
            " (op " + std::to_string(S[k]) + ") carries the " + describe(message_of(so), so.elems) +
            "; NCCL matches by order, so both ranks must issue this channel's messages in the same order");
        break;  // later pairs of this channel are shifted by the first mismatch
      }
      if (S.size() != R.size())
        add(out, UnitRule::Channel, S.size() > R.size() ? a : b, -1,
            "rank " + std::to_string(a) + " sends " + std::to_string(S.size()) + " messages to rank " + std::to_string(b) +
            ", which receives " + std::to_string(R.size()));
    }
}

}  // namespace

std::vector<UnitIssue> validate_units(const LoweredProgram& p, const ModelDesc& d) {
  Issues out;
  if (p.pipeline.stages() != int(d.stages.size()) || int(p.ranks.size()) != p.pipeline.pp) {
    add(out, UnitRule::Range, -1, -1, "the program has " + std::to_string(p.ranks.size()) + " ranks and " +
        std::to_string(p.pipeline.stages()) + " stages, the model description " + std::to_string(d.stages.size()) + " stages");
    return out;
  }
  check_range(p, d, out);
  if (!out.empty()) return out;
  const TensorAccess acc(d, &p.pipeline);
  for (const UnitProgram& up : p.ranks) check_tags(up, out);
  for (const UnitProgram& up : p.ranks) check_units(p, d, up, out);
  for (const UnitProgram& up : p.ranks) check_tensors(p, d, up, acc, out);
  check_channels(p, out);
  if (!out.empty()) return out;
  const EngineResult e = simulate_program(p, d, cost_model_unit(d, p.pipeline.pp, 0.0), PPStreams::Single);
  if (!e.ok()) {
    const auto first = e.blocked.empty() ? std::pair<int, int>{-1, -1} : e.blocked.front();
    add(out, UnitRule::Deadlock, first.first, first.second, e.deadlock);
  }
  return out;
}

std::optional<UnitIssue> validate_units_first(const LoweredProgram& p, const ModelDesc& d) {
  std::vector<UnitIssue> all = validate_units(p, d);
  if (all.empty()) return std::nullopt;
  return all.front();
}

}  // namespace stp
