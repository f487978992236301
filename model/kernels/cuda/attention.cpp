// attention.cpp: the attention dispatcher: cuDNN fused SDPA graphs (cached per shape) with a logged
// fallback to the plain kernels (see attention.h). The only file that includes the cuDNN frontend,
// which is slow to compile; everything else in the backend stays independent of it.
#include "model/kernels/cuda/attention.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <map>
#include <sstream>
#include <tuple>
#include <unordered_map>

#include "model/kernels/cuda/check.h"

#ifdef STP_HAVE_CUDNN_FRONTEND
#include <cudnn_frontend.h>
namespace fe = cudnn_frontend;
#endif

namespace stp::cuda {

std::string AttnShape::to_string() const {
  std::ostringstream os;
  os << "B=" << B << " T=" << T << " NH=" << NH << " NKV=" << NKV << " HD=" << HD
     << (causal ? " causal" : " full");
  return os.str();
}

const char* attn_backend_name(AttnBackend b) { return b == AttnBackend::Cudnn ? "cudnn" : "plain"; }

std::string attention_shape_error(const AttnShape& s) {
  std::ostringstream os;
  if (s.B < 1 || s.T < 1 || s.NH < 1 || s.NKV < 1) os << "sizes must be positive";
  else if (s.NH % s.NKV != 0) os << "NH % NKV = " << s.NH << " % " << s.NKV << " != 0";
  else if (s.HD % 8 != 0 || s.HD > 256) os << "HD = " << s.HD << " must be a multiple of 8, <= 256";
  else return "";
  return os.str() + " (" + s.to_string() + ")";
}

namespace {

enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kdO, kdQ, kdK, kdV };

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool>;  // shape, causal, bwd
Key key_of(const AttnShape& s, bool bwd) { return {s.B, s.T, s.NH, s.NKV, s.HD, s.causal, bwd}; }

}  // namespace

#ifdef STP_HAVE_CUDNN_FRONTEND

namespace {

using GraphPtr = std::shared_ptr<fe::graph::Graph>;
using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

// Q, K, V views into the packed qkv (or dqkv) buffer: (B, heads, T, HD) with token stride QKV.
TensorPtr qkv_view(fe::graph::Graph& g, const char* name, int64_t uid, const AttnShape& s,
                   int64_t heads) {
  const int64_t W = s.qkv_width();
  return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid)
                      .set_dim({s.B, heads, s.T, s.HD}).set_stride({s.T * W, s.HD, W, 1}));
}
// O and dO: (B, NH, T, HD) inside (B, T, NH*HD).
std::vector<int64_t> o_stride(const AttnShape& s) {
  return {s.T * s.NH * s.HD, s.HD, s.NH * s.HD, 1};
}
std::vector<int64_t> stats_stride(const AttnShape& s) { return {s.NH * s.T, s.T, 1, 1}; }

GraphPtr new_graph() {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return g;
}

void build_forward(fe::graph::Graph& g, const AttnShape& s) {
  auto Q = qkv_view(g, "Q", kQ, s, s.NH);
  auto K = qkv_view(g, "K", kK, s, s.NKV);
  auto V = qkv_view(g, "V", kV, s, s.NKV);
  auto opts = fe::graph::SDPA_attributes().set_name("sdpa_fwd").set_generate_stats(true)
                  .set_attn_scale(1.0f / std::sqrt(float(s.HD)));
  if (s.causal) opts.set_causal_mask(true);
  auto [O, Stats] = g.sdpa(Q, K, V, opts);
  O->set_output(true).set_uid(kO).set_dim({s.B, s.NH, s.T, s.HD}).set_stride(o_stride(s));
  Stats->set_output(true).set_uid(kStats).set_data_type(fe::DataType_t::FLOAT)
      .set_dim({s.B, s.NH, s.T, 1}).set_stride(stats_stride(s));
}

void build_backward(fe::graph::Graph& g, const AttnShape& s, bool deterministic) {
  auto Q = qkv_view(g, "Q", kQ, s, s.NH);
  auto K = qkv_view(g, "K", kK, s, s.NKV);
  auto V = qkv_view(g, "V", kV, s, s.NKV);
  auto O = g.tensor(fe::graph::Tensor_attributes().set_name("O").set_uid(kO)
                        .set_dim({s.B, s.NH, s.T, s.HD}).set_stride(o_stride(s)));
  auto dO = g.tensor(fe::graph::Tensor_attributes().set_name("dO").set_uid(kdO)
                         .set_dim({s.B, s.NH, s.T, s.HD}).set_stride(o_stride(s)));
  auto Stats = g.tensor(fe::graph::Tensor_attributes().set_name("Stats").set_uid(kStats)
                            .set_dim({s.B, s.NH, s.T, 1}).set_stride(stats_stride(s))
                            .set_data_type(fe::DataType_t::FLOAT));
  auto opts = fe::graph::SDPA_backward_attributes().set_name("sdpa_bwd")
                  .set_attn_scale(1.0f / std::sqrt(float(s.HD)))
                  .set_deterministic_algorithm(deterministic);
  if (s.causal) opts.set_causal_mask(true);
  auto [dQ, dK, dV] = g.sdpa_backward(Q, K, V, O, dO, Stats, opts);
  const int64_t W = s.qkv_width();
  dQ->set_output(true).set_uid(kdQ).set_dim({s.B, s.NH, s.T, s.HD}).set_stride({s.T * W, s.HD, W, 1});
  dK->set_output(true).set_uid(kdK).set_dim({s.B, s.NKV, s.T, s.HD}).set_stride({s.T * W, s.HD, W, 1});
  dV->set_output(true).set_uid(kdV).set_dim({s.B, s.NKV, s.T, s.HD}).set_stride({s.T * W, s.HD, W, 1});
}

// Runs the frontend's build steps; "" on success, else the step and cuDNN's message.
std::string finish_graph(fe::graph::Graph& g, cudnnHandle_t h) {
  auto step = [](const char* what, fe::error_object e) -> std::string {
    return e.is_good() ? std::string() : std::string(what) + ": " + e.get_message();
  };
  std::string err;
  if (!(err = step("validate", g.validate())).empty()) return err;
  if (!(err = step("build_operation_graph", g.build_operation_graph(h))).empty()) return err;
  if (!(err = step("create_execution_plans", g.create_execution_plans({fe::HeurMode_t::A}))).empty())
    return err;
  if (!(err = step("check_support", g.check_support(h))).empty()) return err;
  return step("build_plans", g.build_plans(h));
}

}  // namespace

struct Attention::CudnnState {
  cudnnHandle_t handle = nullptr;
  std::map<Key, GraphPtr> graphs;  // nullptr = cuDNN refused this shape (fallback logged once)
  DeviceBuffer<uint8_t> workspace;
  ~CudnnState() {
    graphs.clear();
    if (handle) cudnnDestroy(handle);
  }

  // The cached graph for a shape and pass, built on first use; nullptr when cuDNN refuses it.
  fe::graph::Graph* graph(const AttnShape& s, bool bwd, bool deterministic) {
    const Key key = key_of(s, bwd);
    auto it = graphs.find(key);
    if (it != graphs.end()) return it->second.get();
    if (!handle) CUDNN_CHECK(cudnnCreate(&handle));
    GraphPtr g = new_graph();
    if (bwd) build_backward(*g, s, deterministic);
    else build_forward(*g, s);
    const std::string err = finish_graph(*g, handle);
    if (!err.empty()) {
      spdlog::warn("attention: cuDNN SDPA {} refused {} ({}); using the plain CUDA kernel",
                   bwd ? "backward" : "forward", s.to_string(), err);
      g.reset();
    }
    return graphs.emplace(key, std::move(g)).first->second.get();
  }

  void execute(fe::graph::Graph& g, std::unordered_map<int64_t, void*>& pack,
               DeviceAllocator& alloc, cudaStream_t stream) {
    const int64_t ws = g.get_workspace_size();
    if (size_t(ws) > workspace.bytes()) workspace = DeviceBuffer<uint8_t>(alloc, size_t(ws));
    CUDNN_CHECK(cudnnSetStream(handle, stream));
    auto e = g.execute(handle, pack, workspace.data());
    if (!e.is_good())
      check_fail("cuDNN", e.get_message(), int(e.get_code()), "graph.execute(sdpa)", __FILE__,
                 __LINE__);
  }
};

#else   // no cuDNN frontend: every shape takes the plain kernels (logged once per shape)

struct Attention::CudnnState {
  std::map<Key, bool> logged;
};

#endif

Attention::Attention(DeviceAllocator& alloc, bool deterministic)
    : alloc_(alloc), deterministic_(deterministic), cudnn_(std::make_unique<CudnnState>()) {}

Attention::~Attention() = default;

AttnBackend Attention::forward(__nv_bfloat16* out, float* lse, const __nv_bfloat16* qkv,
                               const AttnShape& s, cudaStream_t stream) {
  if (const std::string e = attention_shape_error(s); !e.empty())
    throw CudaError("attention_forward: " + e);
#ifdef STP_HAVE_CUDNN_FRONTEND
  if (!force_plain_) {
    if (fe::graph::Graph* g = cudnn_->graph(s, false, deterministic_)) {
      auto* base = const_cast<__nv_bfloat16*>(qkv);
      std::unordered_map<int64_t, void*> pack = {
          {kQ, base}, {kK, base + s.NH * s.HD}, {kV, base + (s.NH + s.NKV) * s.HD},
          {kO, out}, {kStats, lse}};
      cudnn_->execute(*g, pack, alloc_, stream);
      return AttnBackend::Cudnn;
    }
  }
#else
  if (!force_plain_ && !cudnn_->logged[key_of(s, false)]) {
    cudnn_->logged[key_of(s, false)] = true;
    spdlog::warn("attention: built without the cuDNN frontend; plain CUDA kernel for {}", s.to_string());
  }
#endif
  attention_forward_plain(out, lse, qkv, s, stream);
  return AttnBackend::Plain;
}

AttnBackend Attention::backward(__nv_bfloat16* dqkv, const __nv_bfloat16* dout,
                                const __nv_bfloat16* qkv, const __nv_bfloat16* out,
                                const float* lse, const AttnShape& s, cudaStream_t stream) {
  if (const std::string e = attention_shape_error(s); !e.empty())
    throw CudaError("attention_backward: " + e);
#ifdef STP_HAVE_CUDNN_FRONTEND
  if (!force_plain_) {
    if (fe::graph::Graph* g = cudnn_->graph(s, true, deterministic_)) {
      auto* base = const_cast<__nv_bfloat16*>(qkv);
      std::unordered_map<int64_t, void*> pack = {
          {kQ, base}, {kK, base + s.NH * s.HD}, {kV, base + (s.NH + s.NKV) * s.HD},
          {kO, const_cast<__nv_bfloat16*>(out)}, {kdO, const_cast<__nv_bfloat16*>(dout)},
          {kStats, const_cast<float*>(lse)}, {kdQ, dqkv}, {kdK, dqkv + s.NH * s.HD},
          {kdV, dqkv + (s.NH + s.NKV) * s.HD}};
      cudnn_->execute(*g, pack, alloc_, stream);
      return AttnBackend::Cudnn;
    }
  }
#endif
  const size_t rows = size_t(s.B * s.NH * s.T);
  if (scratch_.size() < rows) scratch_ = DeviceBuffer<float>(alloc_, rows);
  attention_backward_plain(dqkv, dout, qkv, out, lse, scratch_.data(), s, stream);
  return AttnBackend::Plain;
}

}  // namespace stp::cuda
