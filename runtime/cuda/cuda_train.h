// cuda_train.h: `stp-train train` with train.device = cuda (issue 7): the CPU trainer's step
// (runtime/trainer.h) on one GPU per rank.
//
// Set-up: the NCCL communicators (comm_create_nccl) for everything on the device, with
// nccl_options_of(cfg) (the `nccl` section, watchdog on, op timeout = train.timeout_s), and a host
// communicator for the step's small host reductions (loss, gradient norm, statistics, SIGTERM
// votes, checkpoint agreement): MPI under an MPI launcher (which also broadcasts NCCL's unique id),
// the single-rank one for a world of one, and otherwise (torchrun, srun without MPI) the NCCL
// communicators themselves through device staging (comm/staged_comm.h).
// The run: the step loop both trainers share (runtime/train_loop.h): metrics, trace, scheduled
// checkpoints, the SIGTERM checkpoint at a step boundary (exit 143), faults.
// One step s, as the CPU trainer's:
//   1. data    micro-batches of step s read on the host (runtime/data.h), uploaded per micro-batch.
//   2. run     the StreamExecutor replays this rank's unit program on the CudaStreamDevice,
//              including the end-of-step TP/DP gradient all-reduces; one synchronisation at its end.
//   3. tied    tied-embedding replicas summed (on this rank through the host; across ranks an NCCL
//              all-reduce over the embedding group).
//   4. norm    per-tensor squared norms in fp64 on the device, reduced in global parameter order
//              (grad_norm.h); clip factor min(1, grad_clip / (norm + 1e-6)).
//   5. check   a non-finite loss or norm stops before the update.
//   6. update  AdamW on the fp32 masters, refreshing the bf16 copies (kernels.h adamw_update).
//   7. report  metrics.jsonl with the CPU trainer's keys; peak memory = the DeviceAllocator's peak in
//              the step (parameters, optimizer state, activations, workspaces); exposed
//              communication from CUDA events (cuda_device.h); Chrome trace of the real streams.
// Checkpoints: the CPU layout (runtime/checkpoint.h): fp32 masters and AdamW m, v copied to the
// host, same tensor names, so a CPU run resumes a CUDA checkpoint and back.
// Not yet: the vision tower, train.init_from. tp > 1 reduces bf16 activations
// with BF16 NCCL collectives (cuda_device.h); like pp > 1 it has not yet run on GPUs.
#pragma once

#include "runtime/core/config.h"
#include "runtime/core/topology.h"

namespace stp {

// Returns the exit code as train_main does: 0 done, 1 runtime failure, 2 bad input.
int cuda_train_main(const Config& cfg, const LaunchEnv& env);

}  // namespace stp
