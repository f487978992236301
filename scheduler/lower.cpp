// lower.cpp: the lowering rules of lower.h, in three passes over a pipeline program:
//   1. core   each rank's steps -> compute, collective and Send ops; a CommWait (and a Recv to
//             place) for every input that arrives from another rank
//   2. order  the global message order from the unit-cost step timing; each Recv is inserted right
//             after its rank's previous pp op in that order
//   3. free   one Free after each tensor's last touching op; then the end-of-iteration gradient sync
#include "scheduler/lower.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "scheduler/validate_pipeline.h"

namespace stp {

const char* op_kind_name(OpKind k) {
  switch (k) {
    case OpKind::Compute: return "compute";
    case OpKind::CommStart: return "comm_start";
    case OpKind::CommWait: return "comm_wait";
    case OpKind::Send: return "send";
    case OpKind::Recv: return "recv";
    case OpKind::Free: return "free";
  }
  return "?";
}

const char* stream_name(Stream s) {
  switch (s) {
    case Stream::Compute: return "compute";
    case Stream::TP: return "tp";
    case Stream::PP: return "pp";
  }
  return "?";
}

const char* comm_group_name(CommGroup g) {
  switch (g) {
    case CommGroup::None: return "none";
    case CommGroup::TP: return "tp";
    case CommGroup::PP: return "pp";
    case CommGroup::DP: return "dp";
  }
  return "?";
}

StageAccess stage_access(const StageDesc& s) {
  StageAccess t;
  const size_t U = s.units.size();
  for (int p = 0; p < 3; ++p) {
    t.reads[p].assign(U, {});
    t.writes[p].assign(U, {});
  }
  t.has_reader.assign(s.tensors.size(), 0);
  for (size_t i = 0; i < s.tensors.size(); ++i) {
    const TensorDesc& td = s.tensors[i];
    t.writes[int(td.producer.pass)][td.producer.unit].push_back(int(i));
    for (const UnitRef& r : td.readers) t.reads[int(r.pass)][r.unit].push_back(int(i));
    t.has_reader[i] = !td.readers.empty();
  }
  for (size_t u = 0; u < U; ++u) {
    if (s.units[u].kind == UnitKind::In) t.in_unit = int(u);
    if (s.units[u].kind == UnitKind::Out) t.out_unit = int(u);
  }
  if (t.in_unit >= 0) {
    t.in_out = s.find_tensor("out", t.in_unit);
    t.in_g = s.find_tensor("g", t.in_unit);
  }
  if (t.out_unit >= 0) {
    t.out_x = s.find_tensor("x", t.out_unit);
    t.out_g = s.find_tensor("g", t.out_unit);
  }
  return t;
}

TensorAccess::TensorAccess(const ModelDesc& desc, const PipelineProgram* prog) : prog_(prog) {
  for (const StageDesc& s : desc.stages) {
    stages_.push_back(stage_access(s));
    max_tensors_ = std::max(max_tensors_, int(s.tensors.size()));
  }
}

bool TensorAccess::local(int stage, int rank) const {
  return prog_ && stage >= 0 && stage < prog_->stages() && stage_rank(prog_->placement, prog_->pp, stage) == rank;
}

void TensorAccess::touches(const Op& op, int rank, std::vector<TensorRef>* reads,
                           std::vector<TensorRef>* writes) const {
  if (op.stage < 0 || op.kind == OpKind::Free) return;
  if (op.kind != OpKind::Compute) {
    if (op.tensor < 0) return;
    (op.kind == OpKind::Recv ? writes : reads)->push_back({op.stage, op.mb, op.tensor});
    return;
  }
  const StageAccess& a = stages_[op.stage];
  const int p = int(op.unit.pass);
  for (int t : a.reads[p][op.unit.unit]) reads->push_back({op.stage, op.mb, t});
  for (int t : a.writes[p][op.unit.unit]) writes->push_back({op.stage, op.mb, t});
  // V turn: the stage next door on this rank hands its output over without a message.
  if (op.unit.unit == a.in_unit && op.unit.pass == UnitPass::F && op.stage > 0 && local(op.stage - 1, rank))
    reads->push_back({op.stage - 1, op.mb, stages_[op.stage - 1].out_x});
  if (op.unit.unit == a.out_unit && op.unit.pass == UnitPass::B && local(op.stage + 1, rank))
    reads->push_back({op.stage + 1, op.mb, stages_[op.stage + 1].in_g});
}

namespace {

// A slot is what one side of a braid contributes before the other side's turn: one unit pass, or
// B_u followed by W_u in an unsplit backward.
using Slot = std::vector<UnitRef>;

std::vector<Slot> pass_slots(const StageDesc& s, PassKind kind) {
  std::vector<Slot> slots;
  if (kind == PassKind::F) {
    for (size_t u = 0; u < s.units.size(); ++u)
      if (s.units[u].has_f) slots.push_back({UnitRef{int(u), UnitPass::F}});
  } else if (kind == PassKind::W) {
    for (int u = int(s.units.size()) - 1; u >= 0; --u)
      if (s.units[u].has_w) slots.push_back({UnitRef{u, UnitPass::W}});
  } else {
    for (int u : s.backward_order()) {
      Slot slot{UnitRef{u, UnitPass::B}};
      if (kind == PassKind::BW && s.units[u].has_w) slot.push_back(UnitRef{u, UnitPass::W});
      slots.push_back(slot);
    }
  }
  return slots;
}

int step_cost(const Step& st) {
  auto cost = [](const Pass& p) { return p.kind == PassKind::BW ? 2 : 1; };
  return cost(st.a) + (st.braided ? cost(st.b) : 0);
}

// A Recv the core pass asked for: its CommWait is already in the op list at `wait_pos`.
struct RecvNeed {
  Op op;
  int wait_pos = 0;
};

// Lowers the steps of one rank into compute/collective/Send ops (pass 1).
class RankLowerer {
 public:
  RankLowerer(const ModelDesc& d, const std::vector<StageAccess>& t, const PipelineProgram* prog, int rank)
      : desc_(d), tabs_(t), prog_(prog), rank_(rank) {}

  void lower_step(const Step& st, int step) {
    const std::vector<Slot> a = pass_slots(desc_.stages[st.a.stage], st.a.kind);
    const std::vector<Slot> b = st.braided ? pass_slots(desc_.stages[st.b.stage], st.b.kind) : std::vector<Slot>{};
    for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
      if (i < a.size()) emit_slot(st.a, a[i], step);
      if (i < b.size()) emit_slot(st.b, b[i], step);
    }
    flush_waits(step, /*all=*/false);
  }
  void flush_all(int step) { flush_waits(step, true); }

  std::vector<Op> ops;
  std::vector<int> sends;       // indices into ops
  std::vector<RecvNeed> recvs;  // in consumer order

 private:
  bool remote(int stage) const {
    return prog_ && stage >= 0 && stage < prog_->stages() &&
           stage_rank(prog_->placement, prog_->pp, stage) != rank_;
  }
  int peer(int stage) const { return stage_rank(prog_->placement, prog_->pp, stage); }

  void emit_slot(const Pass& p, const Slot& slot, int step) {
    for (const UnitRef& u : slot) emit_unit(p, u, step);
  }

  void emit_unit(const Pass& p, UnitRef u, int step) {
    const StageDesc& sd = desc_.stages[p.stage];
    const StageAccess& tb = tabs_[p.stage];
    const bool in_f = u.unit == tb.in_unit && u.pass == UnitPass::F;
    const bool out_b = u.unit == tb.out_unit && u.pass == UnitPass::B;
    if (in_f && remote(p.stage - 1)) need_recv(p, u, tb.in_out, peer(p.stage - 1), step);
    if (out_b && remote(p.stage + 1)) need_recv(p, u, tb.out_g, peer(p.stage + 1), step);
    for (int t : tb.reads[int(u.pass)][u.unit]) wait_if_pending(p.stage, p.mb, t, step);

    Op c = base(OpKind::Compute, Stream::Compute, p, step);
    c.unit = u;
    ops.push_back(c);

    if (u.pass != UnitPass::W) {
      const CollDesc& cd = sd.units[u.unit].coll[u.pass == UnitPass::F ? 0 : 1];
      if (cd.kind != CollKind::None) start_collective(p, u, cd, step);
    }
    const bool out_f = u.unit == tb.out_unit && u.pass == UnitPass::F;
    const bool in_b = u.unit == tb.in_unit && u.pass == UnitPass::B;
    if (out_f && remote(p.stage + 1)) send(p, u, tb.out_x, peer(p.stage + 1), step);
    if (in_b && remote(p.stage - 1)) send(p, u, tb.in_g, peer(p.stage - 1), step);
  }

  Op base(OpKind k, Stream s, const Pass& p, int step) const {
    Op o;
    o.kind = k;
    o.stream = s;
    o.stage = p.stage;
    o.mb = p.mb;
    o.step = step;
    return o;
  }

  void start_collective(const Pass& p, UnitRef u, const CollDesc& cd, int step) {
    Op o = base(OpKind::CommStart, Stream::TP, p, step);
    o.unit = u;
    o.coll = cd.kind;
    o.group = CommGroup::TP;
    o.tag = next_tag_++;
    o.tensor = cd.tensor;
    o.elems = cd.elems;
    ops.push_back(o);
    pending_[{p.stage, p.mb, cd.tensor}] = o.tag;
  }

  void wait_if_pending(int stage, int mb, int tensor, int step) {
    auto it = pending_.find({stage, mb, tensor});
    if (it == pending_.end()) return;
    push_wait(stage, mb, tensor, it->second, step);
    pending_.erase(it);
  }

  void push_wait(int stage, int mb, int tensor, int tag, int step) {
    Op w = base(OpKind::CommWait, Stream::Compute, Pass{PassKind::F, stage, mb}, step);
    w.tag = tag;
    w.tensor = tensor;
    ops.push_back(w);
  }

  // End of a step: wait for reduced tensors that nothing reads (or, with all, everything pending).
  void flush_waits(int step, bool all) {
    for (auto it = pending_.begin(); it != pending_.end();) {
      const auto [stage, mb, tensor] = it->first;
      if (all || !tabs_[stage].has_reader[tensor]) {
        push_wait(stage, mb, tensor, it->second, step);
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
  }

  void send(const Pass& p, UnitRef u, int tensor, int to, int step) {
    Op o = base(OpKind::Send, Stream::PP, p, step);
    o.unit = u;
    o.group = CommGroup::PP;
    o.tag = next_tag_++;
    o.peer = to;
    o.tensor = tensor;
    o.elems = desc_.stages[p.stage].tensors[size_t(tensor)].elems;
    sends.push_back(int(ops.size()));
    ops.push_back(o);
  }

  void need_recv(const Pass& p, UnitRef u, int tensor, int from, int step) {
    RecvNeed r;
    r.op = base(OpKind::Recv, Stream::PP, p, step);
    r.op.unit = u;
    r.op.group = CommGroup::PP;
    r.op.tag = next_tag_++;
    r.op.peer = from;
    r.op.tensor = tensor;
    r.op.elems = desc_.stages[p.stage].tensors[size_t(tensor)].elems;
    r.wait_pos = int(ops.size());
    recvs.push_back(r);
    push_wait(p.stage, p.mb, tensor, r.op.tag, step);
  }

  const ModelDesc& desc_;
  const std::vector<StageAccess>& tabs_;
  const PipelineProgram* prog_;  // null: lower_step_units (no pp ops)
  int rank_;
  int next_tag_ = 0;
  std::map<std::tuple<int, int, int>, int> pending_;  // (stage, mb, tensor) -> tag not yet waited
};

// One point-to-point message: identified by direction, sending stage and micro-batch.
struct Message {
  double ready = 0;  // unit-cost step timing: end of the producing step
  int src = 0, src_pos = 0, dst = 0, recv_index = -1;
};

using MsgKey = std::tuple<bool, int, int>;  // (forward?, sending stage, mb)

// Pass 2a: every message with its readiness in the unit-cost step timing, sorted into the global
// order. Returns "" or an error.
std::string collect_messages(const PipelineProgram& prog, const std::vector<RankLowerer>& core,
                             std::vector<Message>& msgs) {
  const UnitTiming tm = pipeline_unit_timing(prog);
  if (!tm.deadlocks.empty()) return "pipeline program deadlocks: " + tm.deadlocks.front().to_string();
  std::map<MsgKey, std::pair<int, int>> recv_of;  // key -> (dst rank, index into recvs)
  for (int r = 0; r < prog.pp; ++r)
    for (size_t i = 0; i < core[r].recvs.size(); ++i) {
      const Op& o = core[r].recvs[i].op;
      const bool fwd = o.unit.pass == UnitPass::F;
      recv_of[{fwd, fwd ? o.stage - 1 : o.stage + 1, o.mb}] = {r, int(i)};
    }
  for (int r = 0; r < prog.pp; ++r)
    for (int pos : core[r].sends) {
      const Op& o = core[r].ops[pos];
      auto it = recv_of.find({o.unit.pass == UnitPass::F, o.stage, o.mb});
      if (it == recv_of.end())
        return "rank " + std::to_string(r) + " sends stage " + std::to_string(o.stage) + " mb " +
               std::to_string(o.mb) + " but no rank receives it";
      Message m;
      m.ready = tm.start[r][o.step] + step_cost(prog.ranks[r][o.step]);
      m.src = r;
      m.src_pos = pos;
      m.dst = it->second.first;
      m.recv_index = it->second.second;
      msgs.push_back(m);
      recv_of.erase(it);
    }
  if (!recv_of.empty())
    return "a receive of stage " + std::to_string(std::get<1>(recv_of.begin()->first)) + "'s output, mb " +
           std::to_string(std::get<2>(recv_of.begin()->first)) + ", has no matching send";
  std::sort(msgs.begin(), msgs.end(), [](const Message& x, const Message& y) {
    return std::tie(x.ready, x.src, x.src_pos) < std::tie(y.ready, y.src, y.src_pos);
  });
  return "";
}

// Pass 2b: per rank, its pp ops in the global order; a send fixes the insertion point, a recv is
// inserted there (posted early). Returns "" or an error.
std::string place_receives(const PipelineProgram& prog, const std::vector<Message>& msgs,
                           std::vector<RankLowerer>& core) {
  std::vector<int> after(prog.pp, -1);
  std::vector<std::vector<std::pair<int, Op>>> inserts(prog.pp);  // (insert after index, recv op)
  for (const Message& m : msgs) {
    if (m.src_pos < after[m.src]) return "rank " + std::to_string(m.src) + ": sends are not in the global message order";
    after[m.src] = m.src_pos;
    const RecvNeed& rn = core[m.dst].recvs[m.recv_index];
    if (after[m.dst] >= rn.wait_pos)
      return "rank " + std::to_string(m.dst) + ": receive for stage " + std::to_string(rn.op.stage) + " mb " +
             std::to_string(rn.op.mb) + " cannot be posted before its consumer in the global message order";
    inserts[m.dst].push_back({after[m.dst], rn.op});
  }
  for (int r = 0; r < prog.pp; ++r) {
    std::vector<Op> out;
    out.reserve(core[r].ops.size() + inserts[r].size());
    size_t k = 0;
    for (int i = -1; i < int(core[r].ops.size()); ++i) {
      if (i >= 0) out.push_back(core[r].ops[i]);
      for (; k < inserts[r].size() && inserts[r][k].first == i; ++k) out.push_back(inserts[r][k].second);
    }
    core[r].ops = std::move(out);
  }
  return "";
}

// Pass 3: a Free right after each tensor's last touching op (on the pp stream after a Send).
void insert_frees(std::vector<Op>& ops, const TensorAccess& access, int stages, int rank) {
  int64_t max_mb = 1;
  for (const Op& o : ops) max_mb = std::max<int64_t>(max_mb, o.mb + 1);
  const int64_t max_t = access.max_tensors();
  std::vector<int> last(size_t(stages * max_mb * max_t), -1);  // (stage, mb, tensor) -> last touching op
  std::vector<TensorRef> touched;
  for (int i = 0; i < int(ops.size()); ++i) {
    touched.clear();
    access.touches(ops[i], rank, &touched, &touched);
    for (const TensorRef& t : touched)
      if (t.tensor >= 0) last[size_t((int64_t(t.stage) * max_mb + t.mb) * max_t + t.tensor)] = i;
  }
  std::vector<std::pair<int, Op>> frees;  // (after index, free)
  for (size_t k = 0; k < last.size(); ++k) {
    const int i = last[k];
    if (i < 0) continue;
    Op f;
    f.kind = OpKind::Free;
    f.stream = ops[i].kind == OpKind::Send ? Stream::PP : Stream::Compute;
    f.tensor = int(k % max_t);
    f.mb = int((k / max_t) % max_mb);
    f.stage = int(k / max_t / max_mb);
    f.step = ops[i].step;
    frees.push_back({i, f});
  }
  std::sort(frees.begin(), frees.end(), [](const auto& x, const auto& y) {
    return std::tie(x.first, x.second.stage, x.second.mb, x.second.tensor) <
           std::tie(y.first, y.second.stage, y.second.mb, y.second.tensor);
  });
  std::vector<Op> out;
  out.reserve(ops.size() + frees.size());
  size_t k = 0;
  for (int i = 0; i < int(ops.size()); ++i) {
    out.push_back(ops[i]);
    for (; k < frees.size() && frees[k].first == i; ++k) out.push_back(frees[k].second);
  }
  ops = std::move(out);
}

// End of the iteration: TP all-reduce of TP-partial gradients, DP all-reduce of all gradients.
void append_grad_sync(std::vector<Op>& ops, const ModelDesc& desc, const PipelineProgram& prog, int rank, int dp) {
  int64_t partial = 0, all = 0;
  for (int s = 0; s < prog.stages(); ++s) {
    if (stage_rank(prog.placement, prog.pp, s) != rank) continue;
    for (const ParamDesc& p : desc.stages[s].params) {
      all += p.local_elems(desc.tp);
      if (p.tp_partial_grad) partial += p.local_elems(desc.tp);
    }
  }
  int tag = 0;
  for (const Op& o : ops) tag = std::max(tag, o.tag + 1);
  std::vector<int> tags;
  auto start = [&](CommGroup g, int64_t elems) {
    Op o;
    o.kind = OpKind::CommStart;
    o.stream = Stream::TP;
    o.coll = CollKind::AllReduceSum;
    o.group = g;
    o.tag = tag++;
    o.elems = elems;
    ops.push_back(o);
    tags.push_back(o.tag);
  };
  if (desc.tp > 1 && partial > 0) start(CommGroup::TP, partial);
  if (dp > 1 && all > 0) start(CommGroup::DP, all);
  for (int t : tags) {
    Op w;
    w.kind = OpKind::CommWait;
    w.tag = t;
    ops.push_back(w);
  }
}

}  // namespace

LowerResult lower(const PipelineProgram& prog, const ModelDesc& desc, const LowerOptions& opt) {
  LowerResult res;
  if (int(desc.stages.size()) != prog.stages()) {
    res.error = "lower: the model description has " + std::to_string(desc.stages.size()) +
                " virtual stages but the pipeline program has pp*chunks = " + std::to_string(prog.pp) + "*" +
                std::to_string(prog.chunks) + " = " + std::to_string(prog.stages());
    return res;
  }
  if (auto v = validate_pipeline_first(prog)) {
    res.error = "lower: invalid pipeline program: " + v->to_string();
    return res;
  }
  const TensorAccess access(desc, &prog);
  std::vector<StageAccess> tabs;
  for (int s = 0; s < prog.stages(); ++s) tabs.push_back(access.stage(s));
  std::vector<RankLowerer> core;
  for (int r = 0; r < prog.pp; ++r) {
    core.emplace_back(desc, tabs, &prog, r);
    for (size_t k = 0; k < prog.ranks[r].size(); ++k) core[r].lower_step(prog.ranks[r][k], int(k));
    core[r].flush_all(int(prog.ranks[r].size()) - 1);
  }
  LoweredProgram lp;
  lp.pipeline = prog;
  std::vector<Message> msgs;
  std::string err = collect_messages(prog, core, msgs);
  if (err.empty()) err = place_receives(prog, msgs, core);
  if (!err.empty()) {
    res.error = "lower: " + err;
    return res;
  }
  lp.messages = int(msgs.size());
  for (int r = 0; r < prog.pp; ++r) {
    UnitProgram up;
    up.rank = r;
    up.ops = std::move(core[r].ops);
    insert_frees(up.ops, access, prog.stages(), r);
    if (opt.grad_sync) append_grad_sync(up.ops, desc, prog, r, opt.dp);
    lp.ranks.push_back(std::move(up));
  }
  res.program = std::move(lp);
  return res;
}

std::vector<Op> lower_step_units(const Step& step, const ModelDesc& desc) {
  std::vector<StageAccess> tabs;
  for (const StageDesc& s : desc.stages) tabs.push_back(stage_access(s));
  RankLowerer lw(desc, tabs, nullptr, 0);
  lw.lower_step(step, 0);
  lw.flush_all(0);
  return std::move(lw.ops);
}

std::string op_to_string(const Op& op, const ModelDesc& desc) {
  const bool has_stage = op.stage >= 0 && op.stage < int(desc.stages.size());
  auto where = [&] { return " s" + std::to_string(op.stage) + " mb" + std::to_string(op.mb); };
  auto tensor = [&] {
    if (!has_stage || op.tensor < 0 || op.tensor >= int(desc.stages[op.stage].tensors.size())) return std::string();
    return " (" + desc.stages[op.stage].tensors[op.tensor].name + ")";
  };
  switch (op.kind) {
    case OpKind::Compute:
      return std::string(unit_pass_name(op.unit.pass)) + " " +
             (has_stage ? unit_name(desc.stages[op.stage].units[op.unit.unit]) : "?") + where();
    case OpKind::CommStart:
      return std::string("comm_start ") + coll_kind_name(op.coll) + " " + comm_group_name(op.group) +
             " tag " + std::to_string(op.tag) + tensor();
    case OpKind::CommWait: return "comm_wait tag " + std::to_string(op.tag) + tensor();
    case OpKind::Send:
      return "send -> " + std::to_string(op.peer) + where() + tensor() + " tag " + std::to_string(op.tag);
    case OpKind::Recv:
      return "recv <- " + std::to_string(op.peer) + where() + tensor() + " tag " + std::to_string(op.tag);
    case OpKind::Free: return std::string("free") + (op.stream == Stream::PP ? "@pp" : "") + where() + tensor();
  }
  return "?";
}

}  // namespace stp
