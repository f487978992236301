// nccl_bootstrap.cpp: see nccl_bootstrap.h. Pure functions of the launcher environment and the
// topology; the only side effect is the broadcast helper's use of the caller's communicator.
#include "comm/nccl/nccl_bootstrap.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>

namespace stp {

const char* nccl_id_source_name(NcclIdSource s) {
  switch (s) {
    case NcclIdSource::Local: return "local";
    case NcclIdSource::Env: return "env";
    case NcclIdSource::Broadcast: return "broadcast";
  }
  return "?";
}

namespace {

std::string env_str(const GetEnv& getenv, const char* name) {
  const char* v = getenv(name);
  return v ? std::string(v) : std::string();
}

// A TCP port from text: 1..65535, or nullopt.
std::optional<int> parse_port(const std::string& s) {
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(s.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || v < 1 || v > 65535) return std::nullopt;
  return int(v);
}

// NCCL_COMM_ID from MASTER_ADDR and the chosen port (torchrun, or a Slurm script that sets them).
NcclPlanResult plan_from_master(const LaunchEnv& env, const GetEnv& getenv, int configured_port) {
  NcclPlanResult res;
  const std::string addr = env_str(getenv, "MASTER_ADDR");
  const std::string mport_s = env_str(getenv, "MASTER_PORT");
  const auto mport = parse_port(mport_s);
  if (!mport) {
    res.error = "MASTER_PORT='" + mport_s + "' is not a TCP port (1..65535)";
    return res;
  }
  int port = *mport + 1;
  std::string why = "MASTER_PORT " + std::to_string(*mport) + " + 1";
  const std::string override_s = env_str(getenv, "STP_NCCL_PORT");
  if (!override_s.empty()) {
    const auto p = parse_port(override_s);
    if (!p) {
      res.error = "STP_NCCL_PORT='" + override_s + "' is not a TCP port (1..65535)";
      return res;
    }
    port = *p;
    why = "STP_NCCL_PORT";
  } else if (configured_port > 0) {
    port = configured_port;
    why = "configured";
  } else if (port > 65535) {
    res.error = "MASTER_PORT " + std::to_string(*mport) + " + 1 = " + std::to_string(port) +
                " is not a TCP port; set STP_NCCL_PORT to a free port";
    return res;
  }
  if (port == *mport) {
    res.error = "the NCCL bootstrap port " + std::to_string(port) + " (" + why +
                ") equals MASTER_PORT, which torchrun's store holds; choose another STP_NCCL_PORT";
    return res;
  }
  NcclBootstrapPlan p;
  p.source = NcclIdSource::Env;
  p.comm_id = addr + ":" + std::to_string(port);
  p.describe = env.launcher + ": NCCL_COMM_ID=" + p.comm_id + " (" + why + ")";
  res.plan = p;
  return res;
}

}  // namespace

NcclPlanResult nccl_bootstrap_plan(const LaunchEnv& env, const GetEnv& getenv, int configured_port,
                                   bool have_broadcast) {
  NcclPlanResult res;
  NcclBootstrapPlan p;
  if (env.world <= 1) {
    p.describe = "single process: local unique id";
    res.plan = p;
    return res;
  }
  const std::string user_id = env_str(getenv, "NCCL_COMM_ID");
  if (!user_id.empty()) {
    p.source = NcclIdSource::Env;
    p.comm_id = user_id;
    p.describe = env.launcher + ": NCCL_COMM_ID=" + user_id + " (set by the user)";
    res.plan = p;
    return res;
  }
  if (have_broadcast && env.launcher != "torchrun") {
    p.source = NcclIdSource::Broadcast;
    p.describe = env.launcher + ": unique id from rank 0, broadcast with MPI";
    res.plan = p;
    return res;
  }
  if (!env_str(getenv, "MASTER_ADDR").empty() && !env_str(getenv, "MASTER_PORT").empty())
    return plan_from_master(env, getenv, configured_port);
  res.error = env.launcher + " started " + std::to_string(env.world) +
              " ranks but the NCCL unique id has no way to reach them: set MASTER_ADDR and MASTER_PORT "
              "(torchrun does; scripts/launch_slurm.sbatch exports them), or NCCL_COMM_ID=host:port, " +
              (have_broadcast ? std::string("") : std::string("or launch with mpirun on an MPI build, "));
  res.error += "see docs/launch.md";
  return res;
}

NcclDeviceResult nccl_pick_device(int local_rank, int visible, int configured, const GetEnv& getenv) {
  NcclDeviceResult r;
  const std::string cvd = env_str(getenv, "CUDA_VISIBLE_DEVICES");
  const std::string where = " (CUDA_VISIBLE_DEVICES=" + (cvd.empty() ? std::string("unset") : cvd) + ")";
  if (visible <= 0) {
    r.error = "this process sees no CUDA device" + where;
    return r;
  }
  if (configured >= 0) {
    if (configured >= visible)
      r.error = "configured CUDA device " + std::to_string(configured) + " but this process sees " +
                std::to_string(visible) + where;
    else
      r.device = configured;
    return r;
  }
  if (visible == 1) {
    r.device = 0;  // the launcher bound one GPU to this task
    return r;
  }
  if (local_rank >= visible) {
    r.error = "local rank " + std::to_string(local_rank) + " needs CUDA device " + std::to_string(local_rank) +
              " but this process sees " + std::to_string(visible) + where +
              ": start at most one rank per GPU on each node";
    return r;
  }
  r.device = local_rank;
  return r;
}

std::vector<int> nccl_group_members(const Topology& t, GroupKind g, bool v_placement) {
  switch (g) {
    case GroupKind::World: {
      std::vector<int> all(t.world());
      for (int r = 0; r < t.world(); ++r) all[r] = r;
      return all;
    }
    case GroupKind::Tp: return t.tp_group();
    case GroupKind::Pp: return t.pp_group();
    case GroupKind::Dp: return t.dp_group();
    case GroupKind::Embed: {
      std::vector<int> e = t.embedding_group(v_placement);
      if (std::find(e.begin(), e.end(), t.rank) == e.end()) e = {t.rank};
      return e;
    }
  }
  return {t.rank};
}

NcclSplit nccl_split_of(const Topology& t, GroupKind g, bool v_placement) {
  const std::vector<int> m = nccl_group_members(t, g, v_placement);
  NcclSplit s;
  s.color = m.front();
  s.key = int(std::find(m.begin(), m.end(), t.rank) - m.begin());
  return s;
}

NcclIdBroadcast nccl_id_broadcast_over(Communicator& world, double timeout_s) {
  return [&world, timeout_s](void* buf, size_t bytes) -> std::string {
    CommHandle h = world.broadcast(GroupKind::World, buf, int64_t(bytes), DType::U8, 0);
    const CommStatus st = h.wait(timeout_s);
    return st.ok() ? std::string() : "broadcasting the NCCL unique id: " + st.error;
  };
}

}  // namespace stp
