// parallel.h: a fork-join split of independent tasks over threads, for the few CPU kernels whose
// work is not one big GEMM (attention over (b, head)). The thread count is OpenBLAS's
// (OPENBLAS_NUM_THREADS / openblas_set_num_threads), so one knob sizes both, and the result never
// depends on the split: each task writes only its own outputs.
#pragma once

#include <cstdint>
#include <functional>

namespace stp::cpu {

// Runs fn(task, worker) for task in [0, tasks), worker in [0, workers). Uses more than one thread
// only when `work` (an estimate of the flops of all tasks) makes it worth a thread start.
// Returns the number of workers used (so callers can size per-worker scratch up front: call
// parallel_workers first).
int parallel_workers(int64_t tasks, double work);
void parallel_for(int64_t tasks, int workers, const std::function<void(int64_t, int)>& fn);

// Splits [0, n) into contiguous ranges, one per worker, and runs fn(lo, hi) on each; `work` is
// the flop estimate of the whole range (see parallel_workers). Deterministic when fn's outputs
// for one index do not depend on the split (row-wise kernels).
template <typename F>
void parallel_range(int64_t n, double work, F fn) {
  const int workers = parallel_workers(n, work);
  parallel_for(workers, workers,
               [&](int64_t w, int) { fn(n * w / workers, n * (w + 1) / workers); });
}

// While alive (and `on`), OpenBLAS runs single-threaded: the tasks of a parallel_for that call
// BLAS themselves must not also fan out to OpenBLAS's pool (two callers contending for it spin in
// exec_blas_async; measured 1.7x slower on 2 cores). Restores the previous count on destruction.
// OpenBLAS's thread count is process state: only the thread that runs the model may use this.
class BlasSerial {
 public:
  explicit BlasSerial(bool on);
  ~BlasSerial();
  BlasSerial(const BlasSerial&) = delete;
  BlasSerial& operator=(const BlasSerial&) = delete;

 private:
  int saved_ = 0;
};

}  // namespace stp::cpu
