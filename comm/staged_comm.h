// staged_comm.h: a host-memory Communicator over a communicator of device memory.
//
// The CUDA trainer reduces a few host values per step (the loss slots, the gradient-norm terms, the
// step statistics, the SIGTERM vote, the checkpoint agreement). Under mpirun those go over MPI; under
// torchrun there is no MPI, so they go over the NCCL communicators through this wrapper: each
// operation copies its host input into a staging buffer (Staging::put, complete on return), issues
// the same operation on the inner communicator with the staged buffers, and once that completes
// copies the result back to the caller's host buffer (Staging::get) before its handle reports done.
//
// Contract: the Communicator contract, for host buffers: operations are asynchronous, complete when
// their handle says so, and keep their staging buffers until the inner operation finished (a handle
// dropped in flight waits for it, up to `drop_wait_s`). Groups, ranks, order, counts, errors, stats,
// diagnose and abort are the inner communicator's; an error of the inner operation is reported as
// is, a staging failure names the copy and the operation. The inner communicator must outlive this.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"

namespace stp {

// Where the staged copies live (device memory for NCCL; host memory in the CPU tests).
class Staging {
 public:
  virtual ~Staging() = default;
  // A buffer of at least `bytes` (bytes may be 0) that the inner communicator can use; released by
  // the shared_ptr. nullptr with *error set when it cannot be had.
  virtual std::shared_ptr<void> alloc(size_t bytes, std::string* error) = 0;
  // host -> staged, finished when it returns: "" or what failed.
  virtual std::string put(void* staged, const void* host, size_t bytes) = 0;
  // staged -> host, called after the inner operation completed: "" or what failed.
  virtual std::string get(void* host, const void* staged, size_t bytes) = 0;
};

// Staging in host memory (malloc + memcpy): lets the wrapper run over a host backend in tests.
std::shared_ptr<Staging> staging_host();

std::unique_ptr<Communicator> comm_create_staged(Communicator& inner, std::shared_ptr<Staging> staging,
                                                 double drop_wait_s);

}  // namespace stp
