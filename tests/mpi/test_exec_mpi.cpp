// test_exec_mpi.cpp: the executor across real ranks, for every schedule on several grids, with the
// model-free FlowBackend (tests/runtime/flow_backend.h): every tensor a unit reads must hold the
// value its producer (on this rank, a TP peer, or another pipeline rank) put there.
#include <catch2/catch.hpp>

#include "runtime/executor.h"
#include "tests/mpi/mpi_test_util.h"
#include "tests/runtime/exec_util.h"
#include "tests/runtime/flow_backend.h"

using namespace stp;
using namespace stp_test;

namespace {

std::vector<std::vector<int>> exec_grids(int world) {
  if (world == 2) return {{1, 2, 1}, {2, 1, 1}};
  return {{2, 2, 1}, {1, 4, 1}, {1, 2, 2}, {2, 1, 2}};
}

}  // namespace

// Fails if, on any rank of any grid, a schedule's program deadlocks or times out, a unit reads data
// that is not what its producer wrote (wrong peer, wrong V-turn hand-over, a reduction over the
// wrong group or not yet waited), an op runs out of program order, or the end-of-iteration TP/DP
// gradient reductions do not reduce over their groups.
TEST_CASE("executor: every schedule on every grid moves the right data", "[mpi][executor]") {
  const int world = test_mpi_session().world_size();
  for (const auto& g : exec_grids(world)) {
    const int tp = g[0], pp = g[1], dp = g[2];
    for (const std::string& name : pipeline_schedule_names()) {
      Built b = build_program(tiny_config(tp, pp, dp, name, common_microbatches(pp)));
      INFO("grid tp" << tp << " pp" << pp << " dp" << dp << ", schedule " << name << ": " << b.error);
      REQUIRE(b.error.empty());
      const Topology topo = test_topology(tp, pp, dp);
      CommCreateResult cr = comm_create_mpi(test_mpi_session(), topo, b.prog.pipeline.placement == Placement::V);
      REQUIRE(cr.comm);
      FlowBackend backend(b.desc, tp, topo.me.tp);
      TensorStore store(b.desc);
      Executor ex(b.desc, b.prog.pipeline, topo.me.pp, *cr.comm, ExecOptions{20.0, true});
      const UnitProgram& prog = b.prog.ranks[topo.me.pp];
      ExecResult r = ex.run(prog, backend, store);
      INFO(r.error);
      REQUIRE(r.ok());
      INFO((backend.errors.empty() ? "" : backend.errors.front()));
      REQUIRE(backend.errors.empty());
      REQUIRE(r.executed.size() == prog.ops.size());
      for (size_t i = 0; i < r.executed.size(); ++i) REQUIRE(r.executed[i].op == int(i));
      const float want = float((tp > 1 ? tp : 1) * (dp > 1 ? dp : 1));
      for (float x : backend.grads()) REQUIRE(x == want);
      CHECK(store.live_bytes() == 0);
    }
  }
}
