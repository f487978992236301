// flow_backend.h: a model-free ExecBackend that proves the executor moves the right data.
//
// Every unit pass fills each tensor it produces with a code of (stage, mb, tensor): a small integer,
// times (tp rank + 1) when the tensor is then all-reduced over TP. Every unit pass first checks
// each tensor it reads: a local tensor must hold its code (after the reduction: times the sum, or
// the max, of 1..tp); a stage input must hold the code of the previous stage's output (received, or
// handed over locally at the V turn), a stage-output gradient the code of the next stage's input
// gradient. All values are exact in fp32, so a mismatch means the executor read a tensor before its
// wait, reduced the wrong buffer or group, or sent to the wrong place. It also logs every call.
#pragma once

#include <string>
#include <vector>

#include "runtime/executor.h"

namespace stp_test {

struct FlowCall {
  int stage, mb;
  stp::UnitRef unit;
};

class FlowBackend final : public stp::ExecBackend {
 public:
  FlowBackend(const stp::ModelDesc& desc, int tp, int tp_rank) : desc_(desc), tp_(tp), tp_rank_(tp_rank) {
    grads_.assign(64, 1.0f);
  }

  std::vector<FlowCall> calls;
  std::vector<std::string> errors;

  static float code(int stage, int mb, int t) { return float(1 + ((stage * 97 + mb) * 31 + t) % 4093); }

  std::string compute(int stage, int mb, stp::UnitRef u, stp::TensorStore& store) override {
    calls.push_back({stage, mb, u});
    const stp::StageDesc& s = desc_.stages[stage];
    for (size_t t = 0; t < s.tensors.size(); ++t)
      for (const stp::UnitRef& r : s.tensors[t].readers)
        if (r == u) check(stage, mb, int(t), store);
    for (size_t t = 0; t < s.tensors.size(); ++t)
      if (s.tensors[t].producer == u) produce(stage, mb, int(t), store);
    return errors.empty() ? std::string() : errors.front();
  }

  std::vector<stp::FloatSpan> grad_sync_spans(stp::CommGroup) override {
    return {stp::FloatSpan{grads_.data(), int64_t(grads_.size())}};
  }
  const std::vector<float>& grads() const { return grads_; }

 private:
  // The reduction that follows the tensor's producer, if any.
  stp::CollKind coll_of(const stp::StageDesc& s, int t) const {
    const stp::TensorDesc& td = s.tensors[t];
    const stp::CollDesc& c = s.units[td.producer.unit].coll[td.producer.pass == stp::UnitPass::F ? 0 : 1];
    return c.tensor == t ? c.kind : stp::CollKind::None;
  }
  // Value a reader must see in tensor t of (stage, mb).
  float expected(int stage, int mb, int t) const {
    const stp::StageDesc& s = desc_.stages[stage];
    const stp::TensorDesc& td = s.tensors[t];
    const stp::UnitDesc& pu = s.units[td.producer.unit];
    if (pu.kind == stp::UnitKind::In && td.producer.pass == stp::UnitPass::F && !s.first) {
      const stp::StageDesc& p = desc_.stages[stage - 1];  // received stage input
      return code(stage - 1, mb, p.find_tensor("x", int(p.units.size()) - 1));
    }
    if (pu.kind == stp::UnitKind::Out && td.producer.pass == stp::UnitPass::B)  // received gradient
      return code(stage + 1, mb, desc_.stages[stage + 1].find_tensor("g", 0));
    const float c = code(stage, mb, t);
    switch (coll_of(s, t)) {
      case stp::CollKind::AllReduceSum: return c * float(tp_ * (tp_ + 1) / 2);
      case stp::CollKind::AllReduceMax: return c * float(tp_);
      default: return c;
    }
  }
  void check(int stage, int mb, int t, stp::TensorStore& store) {
    if (!store.has(stage, mb, t)) {
      errors.push_back("s" + std::to_string(stage) + " mb" + std::to_string(mb) + " reads " +
                       desc_.stages[stage].tensors[t].name + " which is not live");
      return;
    }
    const float* p = store.get(stage, mb, t);
    const int64_t n = store.elems(stage, t);
    const float want = expected(stage, mb, t);
    if (p[0] != want || p[n - 1] != want)
      errors.push_back("s" + std::to_string(stage) + " mb" + std::to_string(mb) + " " +
                       desc_.stages[stage].tensors[t].name + " holds " + std::to_string(p[0]) +
                       ", expected " + std::to_string(want));
  }
  void produce(int stage, int mb, int t, stp::TensorStore& store) {
    const stp::StageDesc& s = desc_.stages[stage];
    const stp::UnitDesc& pu = s.units[s.tensors[t].producer.unit];
    const bool received = (pu.kind == stp::UnitKind::In && s.tensors[t].producer.pass == stp::UnitPass::F && !s.first) ||
                          (pu.kind == stp::UnitKind::Out && s.tensors[t].producer.pass == stp::UnitPass::B);
    if (received) return;  // filled by a Recv or the local hand-over; checked by its readers
    float v = code(stage, mb, t);
    if (coll_of(s, t) != stp::CollKind::None) v *= float(tp_rank_ + 1);
    float* p = store.get(stage, mb, t);
    for (int64_t i = 0; i < store.elems(stage, t); ++i) p[i] = v;
  }

  const stp::ModelDesc& desc_;
  int tp_, tp_rank_;
  std::vector<float> grads_;
};

}  // namespace stp_test
