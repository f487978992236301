// topology.cpp: launcher detection and the rank grid.
#include "runtime/core/topology.h"

#include <unistd.h>

#include <cstdlib>
#include <set>
#include <sstream>

namespace stp {

namespace {

// Parses an integer environment variable; empty optional when unset, error text when malformed.
std::optional<int> env_int(const GetEnv& getenv, const char* name, std::string& error) {
  const char* v = getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > 1 << 24) {
    if (error.empty()) error = std::string("environment variable ") + name + "='" + v + "' is not a non-negative integer";
    return std::nullopt;
  }
  return int(x);
}

std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

struct Launcher {
  const char* name;
  const char* rank;
  const char* world;
  const char* local_rank;
  const char* local_world;
};

// Order matters: torchrun sets RANK; mpirun sets OMPI_*; srun sets SLURM_* (also inside mpirun
// under Slurm, so the explicit launchers win).
const Launcher kLaunchers[] = {
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
    {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"},
    {"pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"},
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"},
};

}  // namespace

LaunchResult launch_env_detect(const GetEnv& getenv) {
  LaunchResult res;
  LaunchEnv e;
  e.host = host_name();
  for (const Launcher& l : kLaunchers) {
    std::string error;
    auto rank = env_int(getenv, l.rank, error);
    auto world = env_int(getenv, l.world, error);
    if (!error.empty()) {
      res.error = error;
      return res;
    }
    if (!rank && !world) continue;
    if (!rank || !world) {
      res.error = std::string(l.name) + " environment incomplete: " + (rank ? l.world : l.rank) + " is not set";
      return res;
    }
    if (*world < 1 || *rank >= *world) {
      res.error = std::string(l.name) + ": " + l.rank + "=" + std::to_string(*rank) + " must be < " + l.world +
                  "=" + std::to_string(*world);
      return res;
    }
    e.launcher = l.name;
    e.rank = *rank;
    e.world = *world;
    e.local_rank = env_int(getenv, l.local_rank, error).value_or(0);
    e.local_world = env_int(getenv, l.local_world, error).value_or(0);
    if (!error.empty()) {
      res.error = error;
      return res;
    }
    if (e.local_world <= 0) e.local_world = e.world;  // unknown: assume one node
    if (e.launcher == "torchrun") {
      if (const char* a = getenv("MASTER_ADDR")) e.master_addr = a;
      e.master_port = env_int(getenv, "MASTER_PORT", error).value_or(0);
      if (!error.empty()) {
        res.error = error;
        return res;
      }
    }
    if (e.local_rank >= e.local_world) {
      res.error = std::string(l.name) + ": local rank " + std::to_string(e.local_rank) +
                  " must be < local world size " + std::to_string(e.local_world);
      return res;
    }
    res.env = e;
    return res;
  }
  res.env = e;  // single process
  return res;
}

Topology topology_build(const ParallelConfig& p, const LaunchEnv& env) {
  Topology t;
  t.TP = p.tp;
  t.PP = p.pp;
  t.DP = p.dp;
  t.rank = env.rank;
  t.local_rank = env.local_rank;
  t.local_world = env.local_world > 0 ? env.local_world : t.world();
  t.me = t.coord_of(env.rank);
  return t;
}

std::vector<int> Topology::tp_group() const {
  std::vector<int> g;
  for (int i = 0; i < TP; ++i) g.push_back(rank_of({i, me.pp, me.dp}));
  return g;
}
std::vector<int> Topology::pp_group() const {
  std::vector<int> g;
  for (int i = 0; i < PP; ++i) g.push_back(rank_of({me.tp, i, me.dp}));
  return g;
}
std::vector<int> Topology::dp_group() const {
  std::vector<int> g;
  for (int i = 0; i < DP; ++i) g.push_back(rank_of({me.tp, me.pp, i}));
  return g;
}
std::vector<int> Topology::embedding_group(bool v_placement) const {
  if (v_placement || PP == 1) return {rank_of({me.tp, 0, me.dp})};
  return {rank_of({me.tp, 0, me.dp}), rank_of({me.tp, PP - 1, me.dp})};
}
int Topology::pp_next() const { return me.pp + 1 < PP ? rank_of({me.tp, me.pp + 1, me.dp}) : -1; }
int Topology::pp_prev() const { return me.pp > 0 ? rank_of({me.tp, me.pp - 1, me.dp}) : -1; }

std::string Topology::to_string() const {
  std::ostringstream os;
  os << "rank " << rank << " = (tp " << me.tp << ", pp " << me.pp << ", dp " << me.dp << ") of TP " << TP
     << " x PP " << PP << " x DP " << DP << " = " << world() << " ranks";
  return os.str();
}

std::vector<std::string> topology_warnings(const Topology& t) {
  std::vector<std::string> w;
  for (int dp = 0; dp < t.DP; ++dp)
    for (int pp = 0; pp < t.PP; ++pp) {
      std::set<int> nodes;
      for (int tp = 0; tp < t.TP; ++tp) nodes.insert(t.node_of(t.rank_of({tp, pp, dp})));
      if (nodes.size() > 1) {
        w.push_back("TP group (pp " + std::to_string(pp) + ", dp " + std::to_string(dp) + ") spans " +
                    std::to_string(nodes.size()) + " nodes (" + std::to_string(t.local_world) +
                    " ranks per node, TP " + std::to_string(t.TP) +
                    "): its collectives cross the inter-node link");
      }
    }
  return w;
}

std::string topology_table(const Topology& t, const std::vector<std::string>& hosts) {
  std::ostringstream os;
  os << "# topology: TP " << t.TP << " x PP " << t.PP << " x DP " << t.DP << " = " << t.world()
     << " ranks, " << t.local_world << " per node; rank = ((dp*PP)+pp)*TP+tp\n";
  os << "#  rank    tp    pp    dp  node  host\n";
  for (int r = 0; r < t.world(); ++r) {
    const Coord c = t.coord_of(r);
    char line[160];
    std::snprintf(line, sizeof line, "  %5d %5d %5d %5d %5d  %s\n", r, c.tp, c.pp, c.dp, t.node_of(r),
                  r < int(hosts.size()) && !hosts[r].empty() ? hosts[r].c_str() : "?");
    os << line;
  }
  for (const std::string& w : topology_warnings(t)) os << "# warning: " << w << "\n";
  return os.str();
}

}  // namespace stp
