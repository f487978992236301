// executor.cpp: the unit-program loop (contract in executor.h).
#include "runtime/executor.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "runtime/core/clock.h"

namespace stp {

// ---- TensorStore ---------------------------------------------------------------------------------

float* TensorStore::get(int stage, int mb, int t) {
  auto it = map_.find(tensor_key(stage, mb, t));
  if (it != map_.end()) return it->second.buf.data();
  Entry& e = map_[tensor_key(stage, mb, t)];
  e.buf.assign(size_t(elems(stage, t)), 0.0f);
  live_bytes_ += int64_t(e.buf.size()) * 4;
  peak_bytes_ = std::max(peak_bytes_, live_bytes_);
  return e.buf.data();
}

float* TensorStore::read(int stage, int mb, int t) {
  auto it = map_.find(tensor_key(stage, mb, t));
  return it != map_.end() && it->second.counted ? it->second.buf.data() : nullptr;
}

bool TensorStore::has(int stage, int mb, int t) const { return map_.count(tensor_key(stage, mb, t)) > 0; }

void TensorStore::release(int stage, int mb, int t, bool keep_buffer) {
  auto it = map_.find(tensor_key(stage, mb, t));
  if (it == map_.end() || !it->second.counted) return;
  live_bytes_ -= int64_t(it->second.buf.size()) * 4;
  it->second.counted = false;
  if (!keep_buffer) map_.erase(it);
}

void TensorStore::drop_buffer(int stage, int mb, int t) {
  auto it = map_.find(tensor_key(stage, mb, t));
  if (it != map_.end() && !it->second.counted) map_.erase(it);
}

std::string tensor_key_name(const ModelDesc& desc, uint64_t key) {
  const int stage = int(key >> 44), mb = int((key >> 22) & 0x3fffff), t = int(key & 0x3fffff);
  return "s" + std::to_string(stage) + " mb" + std::to_string(mb) + " " +
         desc.stages[size_t(stage)].tensors[size_t(t)].name;
}

std::vector<std::string> TensorStore::live_names() const {
  std::vector<std::string> names;
  for (const auto& kv : map_)
    if (kv.second.counted) names.push_back(tensor_key_name(*desc_, kv.first));
  std::sort(names.begin(), names.end());
  return names;
}

// ---- Executor ------------------------------------------------------------------------------------

namespace {

using Clock = std::chrono::steady_clock;


}  // namespace

Executor::Executor(const ModelDesc& desc, const PipelineProgram& pipeline, int rank,
                   Communicator& comm, ExecOptions opts)
    : desc_(desc), pipeline_(pipeline), rank_(rank), comm_(comm), opts_(opts) {}

std::string Executor::where(const UnitProgram& prog, int i) const {
  return comm_.whoami() + ", op " + std::to_string(i) + " (" + op_to_string(prog.ops[i], desc_) + ")";
}

ExecResult Executor::run(const UnitProgram& prog, ExecBackend& backend, TensorStore& store) {
  ExecResult res;
  const Clock::time_point t0 = Clock::now();
  store.reset_peak();
  pending_.clear();
  sends_.clear();
  last_grad_tag_ = -1;
  if (opts_.record) res.executed.reserve(prog.ops.size());
  for (int i = 0; i < int(prog.ops.size()) && res.ok(); ++i) {
    const double start = seconds_since(t0);
    std::string err = step_op(prog, i, backend, store, res);
    if (opts_.record) res.executed.push_back(ExecEvent{i, start, seconds_since(t0)});
    comm_.progress();
    if (err.empty()) reap_sends(store, false, &err);
    if (!err.empty()) res.error = where(prog, i) + ": " + err;
  }
  if (res.ok()) {
    std::string err;
    reap_sends(store, true, &err);
    if (!err.empty()) res.error = comm_.whoami() + ", end of iteration: " + err;
  }
  if (res.ok() && !pending_.empty())
    res.error = comm_.whoami() + ": " + std::to_string(pending_.size()) +
                " communication(s) started but never waited, e.g. op " +
                std::to_string(pending_.begin()->second.op);
  if (res.ok()) {
    const std::vector<std::string> live = store.live_names();
    if (!live.empty())
      res.error = comm_.whoami() + ": " + std::to_string(live.size()) +
                  " activation tensor(s) never freed, e.g. " + live.front();
  }
  res.peak_act_bytes = store.peak_bytes();
  res.wall_s = seconds_since(t0);
  return res;
}

std::string Executor::step_op(const UnitProgram& prog, int i, ExecBackend& backend,
                              TensorStore& store, ExecResult& res) {
  const Op& op = prog.ops[i];
  switch (op.kind) {
    case OpKind::Compute: return do_compute(op, backend, store, res);
    case OpKind::CommStart: return do_comm_start(op, i, backend, store);
    case OpKind::CommWait: return do_wait(prog, op, res);
    case OpKind::Send: {
      if (op.tensor < 0 || store.elems(op.stage, op.tensor) != op.elems)
        return "send size does not match the tensor table";
      const float* buf = store.get(op.stage, op.mb, op.tensor);
      pending_[op.tag].handles.push_back(comm_.send(GroupKind::Pp, buf, op.elems, DType::F32, op.peer));
      pending_[op.tag].op = i;
      sends_.push_back(InFlight{op.tag, op.stage, op.mb, op.tensor, false});
      return {};
    }
    case OpKind::Recv: {
      if (op.tensor < 0 || store.elems(op.stage, op.tensor) != op.elems)
        return "recv size does not match the tensor table";
      float* buf = store.get(op.stage, op.mb, op.tensor);
      pending_[op.tag].handles.push_back(comm_.recv(GroupKind::Pp, buf, op.elems, DType::F32, op.peer));
      pending_[op.tag].op = i;
      return {};
    }
    case OpKind::Free: return do_free(op, store);
  }
  return "unknown op kind";
}

std::string Executor::do_compute(const Op& op, ExecBackend& backend, TensorStore& store,
                                 ExecResult& res) {
  if (const std::optional<VTurn> v = v_turn_of(desc_, pipeline_, rank_, op.stage, op.unit)) {
    if (!v->error.empty()) return v->error;
    std::memcpy(store.get(op.stage, op.mb, v->dst), store.get(v->src_stage, op.mb, v->src),
                sizeof(float) * size_t(store.elems(op.stage, v->dst)));
  }
  const Clock::time_point t0 = Clock::now();
  std::string err = backend.compute(op.stage, op.mb, op.unit, store);
  res.compute_s += seconds_since(t0);
  return err;
}

std::string Executor::do_comm_start(const Op& op, int i, ExecBackend& backend, TensorStore& store) {
  Pending& p = pending_[op.tag];
  p.op = i;
  if (op.tensor < 0) {  // end-of-iteration gradient reduction
    // The tp stream is a FIFO: the DP all-reduce of every gradient must not start before the TP
    // all-reduce of the TP-partial ones (the same buffers) has finished.
    if (last_grad_tag_ >= 0 && pending_.count(last_grad_tag_))
      for (CommHandle& h : pending_[last_grad_tag_].handles) {
        CommStatus st = h.wait(opts_.timeout_s);
        if (!st.ok()) return st.error;
      }
    last_grad_tag_ = op.tag;
    for (const FloatSpan& s : backend.grad_sync_spans(op.group))
      p.handles.push_back(comm_.all_reduce(comm_group_of(op.group), s.data, s.data, s.n, DType::F32,
                                           ReduceOp::Sum));
    return {};
  }
  if (op.elems > store.elems(op.stage, op.tensor)) return "collective larger than its tensor";
  float* buf = store.get(op.stage, op.mb, op.tensor);
  const GroupKind g = comm_group_of(op.group);
  switch (op.coll) {
    case CollKind::AllReduceSum:
      p.handles.push_back(comm_.all_reduce(g, buf, buf, op.elems, DType::F32, ReduceOp::Sum));
      return {};
    case CollKind::AllReduceMax:
      p.handles.push_back(comm_.all_reduce(g, buf, buf, op.elems, DType::F32, ReduceOp::Max));
      return {};
    default:
      return std::string("collective ") + coll_kind_name(op.coll) +
             " is not supported by the CPU executor (sequence parallelism)";
  }
}

std::string Executor::do_wait(const UnitProgram& prog, const Op& op, ExecResult& res) {
  auto it = pending_.find(op.tag);
  if (it == pending_.end()) return "wait on tag " + std::to_string(op.tag) + " that was never started";
  const Op& started = prog.ops[it->second.op];
  const Clock::time_point t0 = Clock::now();
  for (CommHandle& h : it->second.handles) {
    CommStatus st = h.wait(opts_.timeout_s);
    if (!st.ok()) return st.error;
  }
  const double blocked = seconds_since(t0);
  res.exposed_comm_s += blocked;
  const CommGroup g = started.kind == OpKind::Send || started.kind == OpKind::Recv ? CommGroup::PP
                                                                                    : started.group;
  (g == CommGroup::PP ? res.exposed_pp_s : g == CommGroup::DP ? res.exposed_dp_s : res.exposed_tp_s) += blocked;
  if (started.kind != OpKind::Send) pending_.erase(it);  // a send's entry goes when it is reaped
  return {};
}

std::string Executor::do_free(const Op& op, TensorStore& store) {
  for (InFlight& s : sends_)
    if (s.stage == op.stage && s.mb == op.mb && s.tensor == op.tensor) {
      s.freed = true;  // the buffer goes when the send completes
      store.release(op.stage, op.mb, op.tensor, /*keep_buffer=*/true);
      return {};
    }
  store.release(op.stage, op.mb, op.tensor);
  return {};
}

void Executor::reap_sends(TensorStore& store, bool block, std::string* err) {
  size_t w = 0;
  for (size_t k = 0; k < sends_.size(); ++k) {
    InFlight& s = sends_[k];
    auto it = pending_.find(s.tag);
    bool done = true;
    if (it != pending_.end()) {
      for (CommHandle& h : it->second.handles) done = done && (block || h.test());
      if (done) {
        for (CommHandle& h : it->second.handles) {  // complete: returns at once unless `block`
          CommStatus st = h.wait(opts_.timeout_s);
          if (!st.ok() && err->empty()) *err = st.error;
        }
        pending_.erase(it);
      }
    }
    if (!done) {
      sends_[w++] = s;
      continue;
    }
    if (s.freed) store.drop_buffer(s.stage, s.mb, s.tensor);
  }
  sends_.resize(w);
}

std::optional<VTurn> v_turn_of(const ModelDesc& desc, const PipelineProgram& pipe, int rank, int stage,
                               UnitRef u) {
  const auto local = [&](int s) {
    return s >= 0 && s < int(desc.stages.size()) && stage_rank(pipe.placement, pipe.pp, s) == rank;
  };
  const StageDesc& sd = desc.stages[size_t(stage)];
  const UnitKind k = sd.units[size_t(u.unit)].kind;
  VTurn v;
  if (k == UnitKind::In && u.pass == UnitPass::F && !sd.first && local(stage - 1)) {
    const StageDesc& prev = desc.stages[size_t(stage - 1)];
    v.src_stage = stage - 1;
    v.src = prev.find_tensor("x", int(prev.units.size()) - 1);
    v.dst = sd.find_tensor("out", u.unit);
  } else if (k == UnitKind::Out && u.pass == UnitPass::B && local(stage + 1)) {
    v.src_stage = stage + 1;
    v.src = desc.stages[size_t(stage + 1)].find_tensor("g", 0);
    v.dst = sd.find_tensor("g", u.unit);
  } else {
    return std::nullopt;
  }
  if (v.src < 0 || v.dst < 0)
    v.error = "V turn: a tensor of the stage " + std::to_string(v.src_stage) + " -> " + std::to_string(stage) +
              " hand-over is missing from the table";
  return v;
}

GroupKind comm_group_of(CommGroup g) {
  switch (g) {
    case CommGroup::TP: return GroupKind::Tp;
    case CommGroup::PP: return GroupKind::Pp;
    case CommGroup::DP: return GroupKind::Dp;
    case CommGroup::None: break;
  }
  return GroupKind::World;
}

}  // namespace stp
