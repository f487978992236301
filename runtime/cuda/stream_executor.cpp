// stream_executor.cpp: the stream replay loop and the device tensor table (contract in
// stream_executor.h).
#include "runtime/cuda/stream_executor.h"

#include <algorithm>

namespace stp {

// ---- DeviceTensors -------------------------------------------------------------------------------

void* DeviceTensors::allocate(int stage, int mb, int t, ExecStream s) {
  auto it = map_.find(tensor_key(stage, mb, t));
  if (it != map_.end()) return it->second.p;
  const int64_t n = bytes(stage, t);
  void* p = dev_->allocate(s, size_t(n));
  if (!p) {
    if (error_.empty())
      error_ = "out of device memory for " + std::to_string(n) + " bytes (s" + std::to_string(stage) +
               " mb" + std::to_string(mb) + " " + desc_->stages[size_t(stage)].tensors[size_t(t)].name + ")";
    return nullptr;
  }
  map_[tensor_key(stage, mb, t)] = Block{p, size_t(n)};
  live_bytes_ += n;
  peak_bytes_ = std::max(peak_bytes_, live_bytes_);
  return p;
}

void* DeviceTensors::produce(int stage, int mb, int t) { return allocate(stage, mb, t, ExecStream::Compute); }

void* DeviceTensors::post(int stage, int mb, int t, ExecStream s) { return allocate(stage, mb, t, s); }

void* DeviceTensors::read(int stage, int mb, int t) {
  auto it = map_.find(tensor_key(stage, mb, t));
  return it == map_.end() ? nullptr : it->second.p;
}

DeviceTensors::Block DeviceTensors::take(int stage, int mb, int t) {
  auto it = map_.find(tensor_key(stage, mb, t));
  if (it == map_.end()) return {};
  const Block b = it->second;
  map_.erase(it);
  return b;
}

void DeviceTensors::release_block(ExecStream s, const Block& b) {
  if (!b.p) return;
  dev_->release(s, b.p, b.bytes);
  live_bytes_ -= int64_t(b.bytes);
}

std::vector<std::string> DeviceTensors::live_names() const {
  std::vector<std::string> names;
  for (const auto& kv : map_) names.push_back(tensor_key_name(*desc_, kv.first));
  std::sort(names.begin(), names.end());
  return names;
}

// ---- StreamExecutor ------------------------------------------------------------------------------

StreamExecutor::StreamExecutor(const ModelDesc& desc, const UnitProgram& prog, std::string who)
    : desc_(desc), prog_(prog), who_(std::move(who)) {
  StreamPlanResult r = streams_assign(prog.ops);
  if (r.ok())
    plan_ = std::move(*r.plan);
  else
    plan_error_ = who_ + ": stream plan: " + r.error;
}

std::string StreamExecutor::where(int i) const {
  return who_ + ", op " + std::to_string(i) + " (" + op_to_string(prog_.ops[size_t(i)], desc_) + ")";
}

StreamExecResult StreamExecutor::run(StreamDevice& dev, DeviceTensors& tensors) {
  StreamExecResult res;
  if (!plan_error_.empty()) return {plan_error_, {}};
  tensors.reset_peak();
  deferred_.clear();
  std::string err = dev.begin(int(plan_.events.size()));
  if (!err.empty()) return {who_ + ", start of step: " + err, {}};
  for (int i = 0; i < int(prog_.ops.size()); ++i) {
    err = step_op(dev, tensors, i, res.stats);
    if (err.empty()) err = poll(dev, tensors, res.stats, false);
    if (!err.empty()) {
      res.error = where(i) + ": " + err;
      return res;
    }
  }
  err = dev.synchronize();  // the step's one synchronisation
  if (err.empty()) err = poll(dev, tensors, res.stats, true);
  dev.end_step();
  if (!err.empty()) {
    res.error = who_ + ", end of step: " + err;
    return res;
  }
  const std::vector<std::string> live = tensors.live_names();
  if (!live.empty())
    res.error = who_ + ": " + std::to_string(live.size()) + " activation tensor(s) never freed, e.g. " + live.front();
  res.stats.peak_act_bytes = tensors.peak_bytes();
  return res;
}

std::string StreamExecutor::step_op(StreamDevice& dev, DeviceTensors& tensors, int i, StreamExecStats& st) {
  const Op& op = prog_.ops[size_t(i)];
  const ExecStream s = plan_.stream[size_t(i)];
  std::string err;
  if (plan_.wait[size_t(i)] >= 0) {
    err = dev.wait(s, plan_.wait[size_t(i)]);
    ++st.waits;
  }
  if (!err.empty()) return err;
  if (op.kind == OpKind::Recv && !tensors.post(op.stage, op.mb, op.tensor, s)) return tensors.error();
  if ((op.kind == OpKind::Send || op.kind == OpKind::Free ||
       (op.kind == OpKind::CommStart && op.tensor >= 0)) &&
      !tensors.read(op.stage, op.mb, op.tensor))
    return "its tensor " + desc_.stages[size_t(op.stage)].tensors[size_t(op.tensor)].name + " is not live";
  err = dev.run(s, i, tensors);
  if (err.empty() && !tensors.error().empty()) err = tensors.error();
  if (!err.empty()) return err;
  if (op.kind == OpKind::Free) {
    const DeviceTensors::Block b = tensors.take(op.stage, op.mb, op.tensor);
    const int e = plan_.free_after[size_t(i)];
    if (e >= 0)
      deferred_.push_back(Deferred{i, e, b});
    else
      tensors.release_block(s, b);
  }
  if (plan_.record[size_t(i)] >= 0) {
    err = dev.record(s, plan_.record[size_t(i)]);
    ++st.records;
  }
  return err;
}

// Releases the deferred frees whose event completed (to the compute stream: the Free is a compute-
// stream op, so later compute work is ordered after it). `must_finish`: after the final
// synchronisation every event is complete; one that is not is an error.
std::string StreamExecutor::poll(StreamDevice& dev, DeviceTensors& tensors, StreamExecStats& st, bool must_finish) {
  size_t w = 0;
  for (size_t k = 0; k < deferred_.size(); ++k) {
    bool done = false;
    const std::string err = dev.query(deferred_[k].event, &done);
    if (!err.empty()) return err;
    if (!done && must_finish)
      return "event e" + std::to_string(deferred_[k].event) + " of the free at op " +
             std::to_string(deferred_[k].op) + " is not complete after the synchronisation";
    if (!done) {
      deferred_[w++] = deferred_[k];
      continue;
    }
    tensors.release_block(ExecStream::Compute, deferred_[k].block);
    ++st.deferred_frees;
  }
  deferred_.resize(w);
  return {};
}

}  // namespace stp
