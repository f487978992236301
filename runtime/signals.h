// signals.h: SIGTERM as a request to stop at the next step boundary (train.checkpoint_on_sigterm).
//
// Slurm pre-emption (and `scancel`) sends SIGTERM to every task, then SIGKILL after GraceTime (or
// KillWait); mpirun that receives SIGTERM forwards it to every rank, then sends SIGKILL after
// odls_base_sigkill_timeout (docs/launch.md). The handler only sets a flag: the training loop polls
// it at each step boundary with sigterm_agree(), so that every rank stops after the same step and
// writes the same checkpoint. Later SIGTERMs find the flag set and change nothing, so a second
// signal while the checkpoint is being written does not interrupt it (SA_RESTART: interrupted
// system calls resume).
//
// The flag is the one piece of process-wide state in the runtime: a signal handler can reach
// nothing else.
#pragma once

#include <string>

#include "comm/communicator.h"

namespace stp {

// Installs the handler (idempotent). "" or why sigaction failed.
std::string sigterm_install();
// True once this process received SIGTERM after sigterm_install().
bool sigterm_received();
// Collective over the world: true on every rank when any rank received SIGTERM. One one-element
// all-reduce (max) of a host int32, so `comm` is a host-memory backend (MPI, self); the CUDA
// trainer votes on its host communicator, not on NCCL. A failed vote sets *error, returns false.
bool sigterm_agree(Communicator& comm, double timeout_s, std::string* error);

}  // namespace stp
