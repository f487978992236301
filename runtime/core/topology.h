// topology.h: the TP x PP x DP rank grid and the launcher environment (DESIGN.md, "Launch").
//
// One formula places every rank: rank = ((dp * PP) + pp) * TP + tp (TP innermost, so a TP group
// sits inside a node). Every group derives from it. Launchers are detected from their environment:
// torchrun (RANK/WORLD_SIZE/LOCAL_RANK), Open MPI (OMPI_COMM_WORLD_*), MPICH/PMI (PMI_RANK/PMI_SIZE),
// Slurm (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID); none = a single process.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "runtime/core/config.h"

namespace stp {

struct LaunchEnv {
  std::string launcher = "none";  // torchrun | openmpi | pmi | slurm | none
  int rank = 0;
  int world = 1;
  int local_rank = 0;
  int local_world = 1;            // ranks per node, when the launcher says (else 1 or world)
  std::string host;               // this process's host name
  std::string master_addr;        // torchrun
  int master_port = 0;            // torchrun
};

using GetEnv = std::function<const char*(const char*)>;

// Reads the launcher's variables through `getenv` (tests pass a fake). Errors name the variable.
struct LaunchResult {
  std::optional<LaunchEnv> env;
  std::string error;
};
LaunchResult launch_env_detect(const GetEnv& getenv);

struct Coord {
  int tp = 0, pp = 0, dp = 0;
  bool operator==(const Coord& o) const { return tp == o.tp && pp == o.pp && dp == o.dp; }
};

struct Topology {
  int TP = 1, PP = 1, DP = 1;
  int rank = 0;
  int local_rank = 0;
  int local_world = 1;
  Coord me;

  int world() const { return TP * PP * DP; }
  int rank_of(Coord c) const { return (c.dp * PP + c.pp) * TP + c.tp; }
  Coord coord_of(int r) const { return Coord{r % TP, (r / TP) % PP, r / (TP * PP)}; }
  std::vector<int> tp_group() const;   // ranks sharing (pp, dp), by tp
  std::vector<int> pp_group() const;   // ranks sharing (tp, dp), by pp
  std::vector<int> dp_group() const;   // ranks sharing (tp, pp), by dp
  // First and last pipeline rank of this (tp, dp): they hold the embedding and the head with a looped
  // placement (with a V placement both live on pp rank 0 and the group has one member).
  std::vector<int> embedding_group(bool v_placement) const;
  int pp_next() const;                 // global rank of pp+1 (-1 if last)
  int pp_prev() const;                 // global rank of pp-1 (-1 if first)
  int node_of(int r) const { return r / (local_world > 0 ? local_world : 1); }
  std::string to_string() const;       // "rank 13 = (tp 5, pp 1, dp 0) of TP 8 x PP 4 x DP 1"
};

Topology topology_build(const ParallelConfig& p, const LaunchEnv& env);

// The start-up table (rank 0 prints it once): one row per rank with its coordinates, node and host
// (hosts[r] may be empty when unknown), then warnings (e.g. a TP group spanning nodes).
std::string topology_table(const Topology& t, const std::vector<std::string>& hosts);
std::vector<std::string> topology_warnings(const Topology& t);

}  // namespace stp
