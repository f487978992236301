// nccl_bootstrap.h: the decisions taken before NCCL starts, as pure functions (DESIGN.md, "Launch
// and bootstrap"): where the world communicator's unique id comes from, which CUDA device a rank
// drives, and the ncclCommSplit colour/key of each group. Nothing here touches NCCL or CUDA, so
// tests/cuda/test_nccl.cpp checks all of it on a machine without a GPU.
//
// Unique id:
//   world of one                     Local: ncclGetUniqueId in the process.
//   NCCL_COMM_ID set by the user     Env: every rank calls ncclGetUniqueId and gets the same id
//                                    (NCCL reads the address; rank 0 creates the root in init).
//   MPI launcher (openmpi, pmi) and  Broadcast: rank 0 calls ncclGetUniqueId, the caller's
//     a broadcast is available       broadcast (MPI) hands the 128 bytes to every rank.
//   MASTER_ADDR + MASTER_PORT set    Env: NCCL_COMM_ID = MASTER_ADDR:PORT with PORT = STP_NCCL_PORT,
//     (torchrun, the Slurm script)   else the configured port, else MASTER_PORT + 1 (MASTER_PORT is
//                                    torchrun's own store; the two must differ).
//   otherwise                        an error that says which variables to set.
// Device: the configured device, else the local rank; when the launcher binds one GPU per task
// (one visible device) every rank uses device 0.
// Groups: rank = ((dp*PP)+pp)*TP+tp gives each group's members (runtime/core/topology.h), as the MPI
// backend builds them: a rank that holds neither the embedding nor the head is an embedding group
// of its own. The ncclCommSplit colour of a group is its smallest global rank, the key the rank's
// index in the group, so NCCL's group ranks are the interface's group indices.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "runtime/core/topology.h"

namespace stp {

enum class NcclIdSource : uint8_t { Local, Env, Broadcast };
const char* nccl_id_source_name(NcclIdSource s);  // "local", "env", "broadcast"

struct NcclBootstrapPlan {
  NcclIdSource source = NcclIdSource::Local;
  std::string comm_id;   // Env: the value NCCL_COMM_ID must have ("node0:29501")
  std::string describe;  // for the start-up log: "torchrun: NCCL_COMM_ID=node0:29501 (MASTER_PORT 29500 + 1)"
};

struct NcclPlanResult {
  std::optional<NcclBootstrapPlan> plan;
  std::string error;
};

// `configured_port` (0 = none) is the port from the config; STP_NCCL_PORT wins over it.
// `have_broadcast`: the caller can broadcast bytes from rank 0 (an MPI communicator exists).
NcclPlanResult nccl_bootstrap_plan(const LaunchEnv& env, const GetEnv& getenv, int configured_port,
                                   bool have_broadcast);

struct NcclDeviceResult {
  int device = -1;
  std::string error;  // "local rank 3 needs CUDA device 3 but this process sees 2 (CUDA_VISIBLE_DEVICES=0,1)"
};
// `configured` < 0: pick from the local rank. `visible` = cudaGetDeviceCount().
NcclDeviceResult nccl_pick_device(int local_rank, int visible, int configured, const GetEnv& getenv);

// Global ranks of this rank's group of kind g, in group-index order.
std::vector<int> nccl_group_members(const Topology& t, GroupKind g, bool v_placement);

struct NcclSplit {
  int color = 0;
  int key = 0;
};
NcclSplit nccl_split_of(const Topology& t, GroupKind g, bool v_placement);

// Hands `bytes` bytes from rank 0's `buf` to every rank's `buf`; returns an error message or "".
using NcclIdBroadcast = std::function<std::string(void* buf, size_t bytes)>;
// A broadcast over the world group of a CPU communicator (the MPI backend under mpirun).
NcclIdBroadcast nccl_id_broadcast_over(Communicator& world, double timeout_s);

}  // namespace stp
