// mpi_test_util.h: helpers shared by the multi-rank tests.
#pragma once

#include <string>
#include <vector>

#include "comm/mpi_comm.h"
#include "runtime/core/topology.h"

// The process's MPI session (created by mpi_main.cpp before any test runs).
stp::MpiSession& test_mpi_session();

// The topology of this process for a TP x PP x DP grid of the session's world.
inline stp::Topology test_topology(int tp, int pp, int dp) {
  stp::ParallelConfig p;
  p.tp = tp;
  p.pp = pp;
  p.dp = dp;
  stp::LaunchEnv env;
  env.launcher = "openmpi";
  env.rank = test_mpi_session().world_rank();
  env.world = test_mpi_session().world_size();
  return stp::topology_build(p, env);
}

// Every (tp, pp, dp) with tp*pp*dp == world.
inline std::vector<std::vector<int>> test_grids(int world) {
  std::vector<std::vector<int>> g;
  for (int tp = 1; tp <= world; ++tp)
    for (int pp = 1; pp <= world; ++pp)
      if (world % (tp * pp) == 0) g.push_back({tp, pp, world / (tp * pp)});
  return g;
}
