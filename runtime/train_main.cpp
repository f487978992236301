// train_main.cpp: `stp-train train` on the CPU: communicator set-up, the start-up report, the
// Trainer's creation and resume with agreement on set-up errors, then the step loop
// (runtime/train_loop.h). train.device=cuda goes to runtime/cuda/cuda_train.h.
#include <spdlog/spdlog.h>

#include <cstdio>

#include "runtime/run_report.h"
#include "runtime/train_loop.h"
#include "runtime/trainer.h"
#include "scheduler/schedules.h"

namespace stp {

int train_main(const Config& cfg, const LaunchEnv& env) {
  if (cfg.train.device == "cuda") {
#ifdef STP_HAVE_CUDA
    int cuda_train_main(const Config&, const LaunchEnv&);  // runtime/cuda/cuda_train.h
    return cuda_train_main(cfg, env);
#else
    spdlog::error("train.device=cuda: this binary was built without CUDA (configure with -DSTP_CUDA=ON where nvcc is)");
    return 2;
#endif
  }
  if (auto e = config_validate_world(cfg, env.world)) {
    spdlog::error("{}", e->to_string());
    return 2;
  }
  const Topology topo = topology_build(cfg.parallel, env);
  const bool v = pipeline_placement(cfg.schedule.name) == Placement::V;
  if (env.world > 1 && env.launcher == "torchrun") {
    spdlog::error("rank {}: train.device=cpu with {} ranks needs mpirun (the CPU backend is MPI, and torchrun "
                  "starts no MPI job): use scripts/launch_mpirun.sh, or train.device=cuda under torchrun",
                  env.rank, env.world);
    return 2;
  }
  WorldComm world;
  if (const std::string err = world_comm_open(topo, env, v, &world); !err.empty()) {
    spdlog::error("{}", err);
    return 2;
  }
  Communicator* comm = world.comm.get();
  sigterm_setup(cfg, *comm);
  announce_run(cfg, topo, env, *comm);
  Trainer::Result tr = Trainer::create(cfg, topo, *comm);
  if (!agree(*comm, tr.error, cfg.train.timeout_s)) return 2;
  return train_loop(*tr.trainer, cfg, *comm);
}

}  // namespace stp
