// context.h: what every CUDA kernel call needs besides its tensors, passed explicitly (no global
// state): the stream to run on, the allocator, the GEMM and attention engines with their caches,
// and a grow-only fp32 scratch buffer for two-stage reductions.
//
// Scratch is stream-ordered: a kernel that uses it finishes on `stream` before the next kernel
// on `stream` can reuse it, so one context serves one stream. Use one context per stream.
#pragma once

#include <cstddef>

#include "model/kernels/cuda/attention.h"
#include "model/kernels/cuda/gemm.h"
#include "model/kernels/cuda/memory.h"

namespace stp::cuda {

struct Ctx {
  Ctx(DeviceAllocator& a, cudaStream_t s, bool deterministic)
      : alloc(a), stream(s), deterministic(deterministic), gemm(a), attention(a, deterministic) {}
  Ctx(const Ctx&) = delete;
  Ctx& operator=(const Ctx&) = delete;

  // At least n floats of scratch, valid until the next call on this context's stream.
  float* scratch(size_t n) {
    if (scratch_.size() < n) scratch_ = DeviceBuffer<float>(alloc, n);
    return scratch_.data();
  }
  int num_sms() const;  // multiprocessors of the current device (cached)

  DeviceAllocator& alloc;
  cudaStream_t stream;
  bool deterministic;
  Gemm gemm;
  Attention attention;

 private:
  DeviceBuffer<float> scratch_;
  mutable int sms_ = 0;
};

}  // namespace stp::cuda
