// parallel.cpp: fork-join over std::thread (contract in parallel.h). Tasks are dealt in contiguous
// blocks, one block per worker; worker 0 is the calling thread.
#include "model/kernels/cpu/parallel.h"

#include <cblas.h>

#include <algorithm>
#include <thread>
#include <vector>

namespace stp::cpu {

int parallel_workers(int64_t tasks, double work) {
  constexpr double kMinWorkPerThread = 2e6;  // flops; below this a thread start (~20 us) dominates
  const int blas = std::max(1, openblas_get_num_threads());
  const int64_t by_work = std::max<int64_t>(1, int64_t(work / kMinWorkPerThread));
  return int(std::max<int64_t>(1, std::min<int64_t>({int64_t(blas), tasks, by_work})));
}

BlasSerial::BlasSerial(bool on) : saved_(on ? openblas_get_num_threads() : 0) {
  if (saved_ > 1) openblas_set_num_threads(1);
}

BlasSerial::~BlasSerial() {
  if (saved_ > 1) openblas_set_num_threads(saved_);
}

void parallel_for(int64_t tasks, int workers, const std::function<void(int64_t, int)>& fn) {
  if (workers <= 1 || tasks <= 1) {
    for (int64_t i = 0; i < tasks; ++i) fn(i, 0);
    return;
  }
  auto block = [&](int w) {
    const int64_t lo = tasks * w / workers, hi = tasks * (w + 1) / workers;
    for (int64_t i = lo; i < hi; ++i) fn(i, w);
  };
  std::vector<std::thread> threads;
  threads.reserve(size_t(workers - 1));
  for (int w = 1; w < workers; ++w) threads.emplace_back(block, w);
  block(0);
  for (std::thread& t : threads) t.join();
}

}  // namespace stp::cpu
