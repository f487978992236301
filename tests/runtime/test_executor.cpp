// test_executor.cpp: the executor on one rank (pp = 1: every stage boundary is a local hand-over),
// with the model-free FlowBackend that checks every tensor a unit reads.
#include <catch2/catch.hpp>

#include "comm/self_comm.h"
#include "runtime/executor.h"
#include "tests/runtime/exec_util.h"
#include "tests/runtime/flow_backend.h"

using namespace stp;
using namespace stp_test;

// Fails if the executor skips, reorders or repeats an op, hands a stage boundary over wrongly
// (FlowBackend's check), leaves a tensor live, or loses track of its peak.
TEST_CASE("executor runs every single-rank program in order with correct data flow", "[executor]") {
  for (const std::string& name : pipeline_schedule_names()) {
    const Config cfg = tiny_config(1, 1, 1, name, 4);
    Built b = build_program(cfg);
    if (!b.error.empty()) {
      WARN(name << " skipped with pp 1: " << b.error);
      continue;
    }
    INFO("schedule " << name);
    auto comm = comm_create_self();
    FlowBackend backend(b.desc, 1, 0);
    TensorStore store(b.desc);
    Executor ex(b.desc, b.prog.pipeline, 0, *comm, ExecOptions{5.0, true});
    const UnitProgram& prog = b.prog.ranks[0];
    ExecResult r = ex.run(prog, backend, store);
    INFO(r.error);
    REQUIRE(r.ok());
    REQUIRE(backend.errors.empty());
    REQUIRE(r.executed.size() == prog.ops.size());
    for (size_t i = 0; i < r.executed.size(); ++i) REQUIRE(r.executed[i].op == int(i));
    size_t k = 0;
    for (const Op& op : prog.ops) {
      if (op.kind != OpKind::Compute) continue;
      REQUIRE(k < backend.calls.size());
      CHECK(backend.calls[k].stage == op.stage);
      CHECK(backend.calls[k].mb == op.mb);
      CHECK(backend.calls[k].unit == op.unit);
      ++k;
    }
    CHECK(k == backend.calls.size());
    CHECK(store.live_bytes() == 0);
    CHECK(r.peak_act_bytes > 0);
    // A second iteration on the same store behaves the same.
    FlowBackend again(b.desc, 1, 0);
    REQUIRE(ex.run(prog, again, store).ok());
    CHECK(again.calls.size() == backend.calls.size());
  }
}

// Fails if the store's accounting drifts: bytes are the table's elems * 4, counted once, released
// once, and a kept buffer (a send in flight) no longer counts but stays until dropped.
TEST_CASE("tensor store counts live and peak bytes from the tensor table", "[executor]") {
  Built b = build_program(tiny_config(1, 1, 1, "gpipe", 1));
  REQUIRE(b.error.empty());
  TensorStore s(b.desc);
  const int64_t e0 = s.elems(0, 0), e1 = s.elems(0, 1);
  s.get(0, 0, 0);
  s.get(0, 0, 0);
  s.get(0, 1, 1);
  CHECK(s.live_bytes() == 4 * (e0 + e1));
  s.release(0, 0, 0, true);
  CHECK(s.live_bytes() == 4 * e1);
  CHECK(s.peak_bytes() == 4 * (e0 + e1));
  CHECK(s.read(0, 0, 0) == nullptr);
  CHECK(s.has(0, 0, 0));
  CHECK(s.live_names().size() == 1);
  s.drop_buffer(0, 0, 0);
  CHECK(!s.has(0, 0, 0));
  s.release(0, 1, 1);
  CHECK(s.live_bytes() == 0);
}
