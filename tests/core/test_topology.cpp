// The rank grid and launcher detection. Expected coordinates are computed here independently by
// nested loops in grid order (dp outer, pp, tp inner), not with the code under test.
#include <catch2/catch.hpp>
#include <map>
#include <string>

#include "runtime/core/topology.h"

using namespace stp;

namespace {

GetEnv fake(std::map<std::string, std::string> vars) {
  auto shared = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [shared](const char* n) -> const char* {
    auto it = shared->find(n);
    return it == shared->end() ? nullptr : it->second.c_str();
  };
}

Topology grid(int tp, int pp, int dp, int rank, int local_world = 8) {
  ParallelConfig p;
  p.tp = tp;
  p.pp = pp;
  p.dp = dp;
  LaunchEnv e;
  e.rank = rank;
  e.world = tp * pp * dp;
  e.local_world = local_world;
  return topology_build(p, e);
}

}  // namespace

TEST_CASE("grid coordinates and groups for several shapes", "[topology]") {
  for (auto [TP, PP, DP] : {std::tuple{1, 1, 1}, {2, 2, 1}, {1, 4, 1}, {2, 1, 2}, {2, 2, 2}, {8, 4, 1}, {4, 2, 3}}) {
    int r = 0;
    for (int dp = 0; dp < DP; ++dp)
      for (int pp = 0; pp < PP; ++pp)
        for (int tp = 0; tp < TP; ++tp, ++r) {
          const Topology t = grid(TP, PP, DP, r);
          INFO("TP " << TP << " PP " << PP << " DP " << DP << " rank " << r);
          CHECK(t.me == Coord{tp, pp, dp});
          CHECK(t.rank_of(t.me) == r);
          const auto tg = t.tp_group();
          REQUIRE(int(tg.size()) == TP);
          for (int i = 0; i < TP; ++i) CHECK(tg[i] == r - tp + i);              // contiguous
          const auto pg = t.pp_group();
          for (int i = 0; i < PP; ++i) CHECK(pg[i] == r + (i - pp) * TP);        // stride TP
          const auto dg = t.dp_group();
          for (int i = 0; i < DP; ++i) CHECK(dg[i] == r + (i - dp) * TP * PP);   // stride TP*PP
          CHECK(t.pp_next() == (pp + 1 < PP ? r + TP : -1));
          CHECK(t.pp_prev() == (pp > 0 ? r - TP : -1));
        }
  }
}

TEST_CASE("the issue's example: rank 13 of TP 8 x PP 4", "[topology]") {
  const Topology t = grid(8, 4, 1, 13);
  CHECK(t.me == Coord{5, 1, 0});
  CHECK(t.tp_group() == std::vector<int>{8, 9, 10, 11, 12, 13, 14, 15});
  CHECK(t.pp_group() == std::vector<int>{5, 13, 21, 29});
  CHECK(t.to_string() == "rank 13 = (tp 5, pp 1, dp 0) of TP 8 x PP 4 x DP 1 = 32 ranks");
  CHECK(t.embedding_group(false) == std::vector<int>{5, 29});
  CHECK(t.embedding_group(true) == std::vector<int>{5});
}

TEST_CASE("a TP group that spans nodes is reported", "[topology]") {
  CHECK(topology_warnings(grid(8, 2, 1, 0, 8)).empty());
  const auto w = topology_warnings(grid(8, 2, 1, 0, 4));
  REQUIRE(w.size() == 2);
  CHECK(w[0].find("spans 2 nodes") != std::string::npos);
  CHECK(topology_table(grid(8, 2, 1, 0, 4), {}).find("# warning: TP group") != std::string::npos);
}

TEST_CASE("launcher detection: torchrun, Open MPI, PMI, Slurm, none", "[topology][launcher]") {
  auto t = launch_env_detect(fake({{"RANK", "13"}, {"WORLD_SIZE", "32"}, {"LOCAL_RANK", "5"},
                                   {"LOCAL_WORLD_SIZE", "8"}, {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "29500"}}));
  REQUIRE(t.env);
  CHECK(t.env->launcher == "torchrun");
  CHECK(t.env->rank == 13);
  CHECK(t.env->world == 32);
  CHECK(t.env->local_rank == 5);
  CHECK(t.env->local_world == 8);
  CHECK(t.env->master_addr == "node0");
  CHECK(t.env->master_port == 29500);

  auto o = launch_env_detect(fake({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                                   {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}}));
  REQUIRE(o.env);
  CHECK(o.env->launcher == "openmpi");
  CHECK(o.env->rank == 3);
  CHECK(o.env->local_world == 2);

  auto p = launch_env_detect(fake({{"PMI_RANK", "2"}, {"PMI_SIZE", "4"}}));
  REQUIRE(p.env);
  CHECK(p.env->launcher == "pmi");
  CHECK(p.env->local_world == 4);  // unknown: assume one node

  auto s = launch_env_detect(fake({{"SLURM_PROCID", "9"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "1"},
                                   {"SLURM_NTASKS_PER_NODE", "8"}}));
  REQUIRE(s.env);
  CHECK(s.env->launcher == "slurm");
  CHECK(s.env->rank == 9);

  // mpirun inside a Slurm allocation: the explicit launcher wins.
  auto both = launch_env_detect(fake({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"},
                                      {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}}));
  REQUIRE(both.env);
  CHECK(both.env->launcher == "openmpi");

  auto none = launch_env_detect(fake({}));
  REQUIRE(none.env);
  CHECK(none.env->launcher == "none");
  CHECK(none.env->world == 1);
}

TEST_CASE("malformed launcher variables are errors naming the variable", "[topology][launcher]") {
  auto bad = launch_env_detect(fake({{"RANK", "x"}, {"WORLD_SIZE", "4"}}));
  CHECK_FALSE(bad.env);
  CHECK(bad.error.find("RANK='x'") != std::string::npos);
  auto half = launch_env_detect(fake({{"RANK", "1"}}));
  CHECK_FALSE(half.env);
  CHECK(half.error.find("WORLD_SIZE is not set") != std::string::npos);
  auto big = launch_env_detect(fake({{"RANK", "4"}, {"WORLD_SIZE", "4"}}));
  CHECK_FALSE(big.env);
  CHECK(big.error.find("must be < WORLD_SIZE=4") != std::string::npos);
}
