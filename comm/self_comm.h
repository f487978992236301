// self_comm.h: the Communicator of a job of one rank (no launcher, or a build without MPI).
// Every group is {0}; a collective completes at once and copies send to recv when they differ (the
// result of reducing over one member). Point-to-point has no peer and is an error: a single rank
// hands tensors between its own chunks locally.
#pragma once

#include <memory>

#include "comm/communicator.h"

namespace stp {

std::unique_ptr<Communicator> comm_create_self();

}  // namespace stp
