// train_loop.h: the step loop both trainers run (the CPU Trainer, runtime/trainer.h, and the CUDA
// trainer, runtime/cuda/cuda_train.h), and the set-up agreement around it.
//
// train_loop(): train.resume (every rank agrees on the outcome; a failure anywhere exits 2), then
// steps until train.steps, then the summary; returns the exit code.
//   - rank 0 writes metrics.jsonl (a resumed run appends) and the step log line; the step object
//     carries "device" ("cpu" or "cuda");
//   - output.trace records the first kTraceSteps steps of every rank's streams (Chrome trace);
//   - scheduled checkpoints (output.checkpoint.every);
//   - SIGTERM (train.checkpoint_on_sigterm): at each step boundary every rank votes on the host
//     communicator (signals.h); when any rank received it, every rank writes the checkpoint of the
//     last completed step (unless that one is already written), the summary says why it stopped,
//     and the exit code is 143 (128 + SIGTERM);
//   - a non-finite loss or norm (every rank sees it) stops the run with exit 1, before the update;
//   - any other step failure, a failed checkpoint and a failed vote are faults that may leave ranks
//     waiting: abort_job() ends the job naming the ranks that do not answer;
//   - a step longer than half of train.timeout_s is warned about once: the per-operation timeouts
//     count from the host's issue, and the host runs up to a step ahead of a GPU.
#pragma once

#include <string>

#include "comm/communicator.h"
#include "runtime/core/config.h"
#include "runtime/core/topology.h"
#include "runtime/trainer.h"

namespace stp {

// Ends the job from a fault that may leave other ranks waiting: names the ranks that do not answer
// a liveness ping (hung or dead) after the message, then Communicator::abort.
[[noreturn]] void abort_job(Communicator& comm, const std::string& message, double timeout_s);

// Every rank learns whether every rank's set-up succeeded; a failing rank prints its own message
// first. A failed vote aborts the job.
bool agree(Communicator& comm, const std::string& my_error, double timeout_s);

// Installs the SIGTERM handler when train.checkpoint_on_sigterm (after MPI_Init, which may install
// its own); a failure is a warning naming the rank.
void sigterm_setup(const Config& cfg, Communicator& comm);

// Rank 0 prints the grid once, with every rank's host (gathered, so a TP group split across nodes
// is reported), and writes the resolved config to output.dir/config.json. Collective.
void announce_run(const Config& cfg, const Topology& topo, const LaunchEnv& env, Communicator& comm);

// StepRunner: runtime/trainer.h.
int train_loop(StepRunner& tr, const Config& cfg, Communicator& comm);

}  // namespace stp
