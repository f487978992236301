// mpi_comm.h: the Open MPI backend of the Communicator (CPU runs under mpirun), and the process's
// MPI session. mpi.h stays inside comm/*.cpp: nothing here exposes an MPI type.
//
// Progress: non-blocking MPI collectives only advance inside MPI calls, so something must call MPI
// while the rank computes. Two engines, chosen by MpiOptions::progress:
//   Thread (default): a progress thread owns the MPI requests. Operations are queued to it (FIFO,
//     so they hit the network in call order, like work on an NCCL stream) and it polls them with
//     MPI_Testsome every poll_us; handles read an atomic flag. progress() (the executor calls it
//     between ops) also pumps, when the thread is not pumping at that moment.
//   Inline: operations are issued on the caller's thread and advance only when the caller calls
//     test()/wait()/progress().
// tests/mpi/test_comm_mpi.cpp measures them ("progress engines overlap a collective with
// compute"): a 16 MiB all-reduce started before ~3x its own time of compute leaves, at 2 ranks on
// 2 cores, 0 ms blocked with the thread, 4-16 ms (of ~20) inline without polls, 0 ms with polls
// every 1 ms; at 4 ranks on 2 cores the thread alone sometimes starves (up to ~17 of ~35 ms)
// while polls between units always reach 0 ms. Hence the default: the thread (which also covers
// long units) plus the executor's polls between ops.
//
// Faults: MPI errors are returned (MPI_ERRORS_RETURN) as operation errors; a hung or dead peer is
// caught by CommHandle::wait's timeout; abort() prints the message with this rank's coordinates and
// calls MPI_Abort, which makes mpirun end every rank.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"
#include "runtime/core/topology.h"

namespace stp {

// True when this build has the MPI backend (STP_MPI=ON).
bool comm_mpi_available();

// The process's MPI environment: MPI_Init_thread on start (asking for MPI_THREAD_MULTIPLE),
// MPI_Finalize when destroyed (unless MPI was already initialised by someone else).
// Create it before any communicator and destroy it after the last one.
class MpiSession {
 public:
  struct Result;
  static Result start(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int world_rank() const { return rank_; }
  int world_size() const { return size_; }
  bool thread_multiple() const { return thread_multiple_; }

 private:
  MpiSession() = default;
  int rank_ = 0, size_ = 1;
  bool thread_multiple_ = false;
  bool owns_ = false;
};

struct MpiSession::Result {
  std::unique_ptr<MpiSession> session;
  std::string error;
};

enum class CommProgress : uint8_t { Thread, Inline };

struct MpiOptions {
  CommProgress progress = CommProgress::Thread;
  int poll_us = 20;  // progress thread: sleep between polls while operations are in flight
};

struct CommCreateResult {
  std::unique_ptr<Communicator> comm;
  std::string error;
};

// Builds the world, TP, PP, DP and embedding communicators of `topo` (whose world must equal the
// session's). `v_placement`: the embedding and the head share pipeline rank 0 (embedding group of
// one). The session must outlive the communicator; every handle must be waited before the
// communicator is destroyed.
CommCreateResult comm_create_mpi(const MpiSession& session, const Topology& topo, bool v_placement,
                                 const MpiOptions& opts = {});

}  // namespace stp
