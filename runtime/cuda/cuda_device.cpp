// cuda_device.cpp: the CUDA StreamDevice (contract in cuda_device.h).
#include "runtime/cuda/cuda_device.h"

#include <map>

#include "model/kernels/cuda/check.h"
#include "runtime/executor.h"

namespace stp::cuda {

namespace {


std::string cuda_err(cudaError_t rc, const char* what) {
  return rc == cudaSuccess ? std::string() : std::string(what) + ": " + cudaGetErrorString(rc);
}

}  // namespace

CudaStreamDevice::CudaStreamDevice(const ModelDesc& desc, const UnitProgram& prog, CudaRankModel& model,
                                   NcclCommunicator& comm, Ctx& ctx, double timeout_s)
    : desc_(desc), prog_(prog), model_(model), comm_(comm), ctx_(ctx), timeout_s_(timeout_s),
      cache_(kExecStreams) {
  streams_[int(ExecStream::Compute)] = ctx.stream;
  streams_[int(ExecStream::Tp)] = static_cast<cudaStream_t>(comm.comm_stream(GroupKind::Tp).stream);
  streams_[int(ExecStream::Pp)] = static_cast<cudaStream_t>(comm.comm_stream(GroupKind::Pp).stream);
  streams_[int(ExecStream::Dp)] = static_cast<cudaStream_t>(comm.comm_stream(GroupKind::Dp).stream);
  const size_t n = prog.ops.size();
  for (size_t i = 0; i < n; ++i) {
    t0_.emplace_back(true);
    t1_.emplace_back(true);
  }
  timed_.assign(n, 0);
  std::map<int, int> by_tag;
  waited_op_.assign(n, -1);
  for (size_t i = 0; i < n; ++i) {
    const Op& op = prog.ops[i];
    if (op.kind == OpKind::CommStart || op.kind == OpKind::Send || op.kind == OpKind::Recv) by_tag[op.tag] = int(i);
    if (op.kind == OpKind::CommWait && by_tag.count(op.tag)) waited_op_[i] = by_tag[op.tag];
  }
}

CudaStreamDevice::~CudaStreamDevice() { end_step(); }

std::string CudaStreamDevice::begin(int events) {
  while (int(events_.size()) < events) events_.emplace_back(false);
  std::fill(timed_.begin(), timed_.end(), 0);
  handles_.clear();
  step_start_.record(ctx_.stream);
  return {};
}

int64_t CudaStreamDevice::tensor_bytes(int stage, int t) const {
  return cuda_tensor_bytes(desc_.stages[size_t(stage)].tensors[size_t(t)]);
}

void* CudaStreamDevice::allocate(ExecStream s, size_t bytes) {
  std::multimap<size_t, void*>& c = cache_[size_t(s)];
  auto it = c.find(bytes);
  if (it != c.end()) {
    void* p = it->second;
    c.erase(it);
    return p;
  }
  try {
    return ctx_.alloc.allocate(bytes);
  } catch (const CudaError&) {
    return nullptr;  // DeviceTensors names the tensor
  }
}

void CudaStreamDevice::release(ExecStream s, void* p, size_t bytes) { cache_[size_t(s)].emplace(bytes, p); }

void CudaStreamDevice::end_step() {
  for (auto& c : cache_) {
    for (auto& kv : c) ctx_.alloc.deallocate(kv.second, kv.first);
    c.clear();
  }
}

std::string CudaStreamDevice::run(ExecStream s, int i, DeviceTensors& tensors) {
  const Op& op = prog_.ops[size_t(i)];
  if (op.kind == OpKind::Free) return {};
  cudaStream_t cs = streams_[int(s)];
  if (op.kind == OpKind::CommWait) {  // the plan's wait is the work: mark when the stream passed it
    t1_[size_t(i)].record(cs);
    timed_[size_t(i)] = 1;
    return {};
  }
  t0_[size_t(i)].record(cs);
  std::string err;
  switch (op.kind) {
    case OpKind::Compute: err = model_.compute(op.stage, op.mb, op.unit, tensors); break;
    case OpKind::CommStart: err = comm_start(op, tensors); break;
    case OpKind::Send:
    case OpKind::Recv: err = p2p(op, tensors); break;
    default: break;
  }
  t1_[size_t(i)].record(cs);
  timed_[size_t(i)] = 1;
  return err;
}

// A handle that already failed (an argument error found before anything was enqueued) is reported
// now; the others are waited at the end of the step.
static std::string keep(std::vector<CommHandle>& hs, CommHandle h) {
  if (h.test()) {
    CommStatus st = h.wait(0);
    if (!st.ok()) return st.error;
  }
  hs.push_back(std::move(h));
  return {};
}

std::string CudaStreamDevice::comm_start(const Op& op, DeviceTensors& tensors) {
  const GroupKind g = comm_group_of(op.group);
  if (op.tensor < 0) {  // end-of-step gradient reduction
    for (const FloatSpan& sp : model_.grad_sync_spans(op.group)) {
      std::string err = keep(handles_, comm_.all_reduce(g, sp.data, sp.data, sp.n, DType::F32, ReduceOp::Sum, {}));
      if (!err.empty()) return err;
    }
    return {};
  }
  const TensorDesc& td = desc_.stages[size_t(op.stage)].tensors[size_t(op.tensor)];
  if (op.elems > td.elems) return "collective larger than its tensor";
  void* buf = tensors.read(op.stage, op.mb, op.tensor);
  if (op.coll != CollKind::AllReduceSum && op.coll != CollKind::AllReduceMax)
    return std::string("collective ") + coll_kind_name(op.coll) + " is not supported by the CUDA executor";
  const ReduceOp r = op.coll == CollKind::AllReduceSum ? ReduceOp::Sum : ReduceOp::Max;
  const DType t = cuda_tensor_fp32(td) ? DType::F32 : DType::BF16;  // the tensor's own element type
  return keep(handles_, comm_.all_reduce(g, buf, buf, op.elems, t, r, {}));
}

std::string CudaStreamDevice::p2p(const Op& op, DeviceTensors& tensors) {
  if (op.stage < 0 || op.tensor < 0) return "send/recv without a tensor";
  const TensorDesc& td = desc_.stages[size_t(op.stage)].tensors[size_t(op.tensor)];
  if (td.elems != op.elems) return "send/recv size does not match the tensor table";
  void* buf = tensors.read(op.stage, op.mb, op.tensor);
  const int64_t bytes = cuda_tensor_bytes(td);
  CommHandle h = op.kind == OpKind::Send ? comm_.send(GroupKind::Pp, buf, bytes, DType::U8, op.peer, {})
                                         : comm_.recv(GroupKind::Pp, buf, bytes, DType::U8, op.peer, {});
  return keep(handles_, std::move(h));
}

std::string CudaStreamDevice::record(ExecStream s, int e) {
  return cuda_err(cudaEventRecord(events_[size_t(e)].get(), streams_[int(s)]), "cudaEventRecord");
}

std::string CudaStreamDevice::wait(ExecStream s, int e) {
  return cuda_err(cudaStreamWaitEvent(streams_[int(s)], events_[size_t(e)].get(), 0), "cudaStreamWaitEvent");
}

std::string CudaStreamDevice::query(int e, bool* done) {
  const cudaError_t rc = cudaEventQuery(events_[size_t(e)].get());
  *done = rc == cudaSuccess;
  return rc == cudaSuccess || rc == cudaErrorNotReady ? std::string() : cuda_err(rc, "cudaEventQuery");
}

// Communications first, each with the train timeout (a hung peer is reported, not waited forever;
// the NCCL watchdog aborts the communicators), then every stream.
std::string CudaStreamDevice::synchronize() {
  for (CommHandle& h : handles_) {
    CommStatus st = h.wait(timeout_s_);
    if (!st.ok()) return st.error;
  }
  for (cudaStream_t s : streams_) {
    const std::string err = cuda_err(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    if (!err.empty()) return err;
  }
  return {};
}

ExecResult CudaStreamDevice::timings() {
  ExecResult r;
  auto at = [&](const Event& e) { return double(e.elapsed_ms_since(step_start_)) * 1e-3; };
  double prev_compute_end = 0;
  for (size_t i = 0; i < prog_.ops.size(); ++i) {
    if (!timed_[i]) continue;
    const Op& op = prog_.ops[i];
    const bool on_compute = op.kind == OpKind::Compute || op.kind == OpKind::CommWait;
    ExecEvent ev{int(i), op.kind == OpKind::CommWait ? prev_compute_end : at(t0_[i]), at(t1_[i])};
    if (op.kind == OpKind::CommWait) {
      const double gap = std::max(0.0, ev.t1 - ev.t0);
      const int src = waited_op_[i];
      const Op* s = src >= 0 ? &prog_.ops[size_t(src)] : nullptr;
      const CommGroup g = !s || s->kind == OpKind::Send || s->kind == OpKind::Recv ? CommGroup::PP : s->group;
      (g == CommGroup::PP ? r.exposed_pp_s : g == CommGroup::DP ? r.exposed_dp_s : r.exposed_tp_s) += gap;
      r.exposed_comm_s += gap;
    }
    if (op.kind == OpKind::Compute) r.compute_s += ev.t1 - ev.t0;
    if (on_compute) prev_compute_end = std::max(prev_compute_end, ev.t1);
    r.wall_s = std::max(r.wall_s, ev.t1);
    r.executed.push_back(ev);
  }
  return r;
}

}  // namespace stp::cuda
