// memory.cpp: caching allocator, streams, events, copies (see memory.h).
#include "model/kernels/cuda/memory.h"

#include <algorithm>
#include <sstream>

#include "model/kernels/cuda/check.h"

namespace stp::cuda {

size_t DeviceAllocator::round_size(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = size_t(2) << 20, kSplit = size_t(1) << 20;
  const size_t q = bytes < kSplit ? kSmall : kLarge;
  return std::max(q, (bytes + q - 1) / q * q);
}

DeviceAllocator::~DeviceAllocator() {
  // Blocks still held by live buffers are the owners' to return; only the cache is freed here.
  for (auto& [sz, p] : free_) cudaFree(p);
}

void* DeviceAllocator::allocate(size_t bytes) {
  const size_t sz = round_size(bytes);
  void* p = nullptr;
  auto it = free_.find(sz);
  if (it != free_.end()) {
    p = it->second;
    free_.erase(it);
  } else {
    cudaError_t e = cudaMalloc(&p, sz);
    if (e == cudaErrorMemoryAllocation && !free_.empty()) {
      cudaGetLastError();
      release_cached();  // the cache may hold what the driver needs; retry once
      e = cudaMalloc(&p, sz);
    }
    if (e != cudaSuccess) {
      std::ostringstream os;
      os << "cudaMalloc of " << sz << " bytes (" << bytes << " asked; in use " << in_use_
         << ", reserved " << reserved_ << ", peak " << peak_ << ")";
      check_fail("CUDA", cudaGetErrorString(e), int(e), os.str().c_str(), __FILE__, __LINE__);
    }
    reserved_ += sz;
  }
  in_use_ += sz;
  peak_ = std::max(peak_, in_use_);
  return p;
}

void DeviceAllocator::deallocate(void* p, size_t bytes) {
  if (!p) return;
  const size_t sz = round_size(bytes);
  in_use_ -= sz;
  free_.emplace(sz, p);
}

void DeviceAllocator::release_cached() {
  for (auto& [sz, p] : free_) {
    cudaFree(p);
    reserved_ -= sz;
  }
  free_.clear();
}

Stream::Stream() { CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
Stream::~Stream() {
  if (s_) cudaStreamDestroy(s_);
}
Stream& Stream::operator=(Stream&& o) noexcept {
  if (this != &o) {
    if (s_) cudaStreamDestroy(s_);
    s_ = std::exchange(o.s_, nullptr);
  }
  return *this;
}
void Stream::synchronize() const { CUDA_CHECK(cudaStreamSynchronize(s_)); }

Event::Event(bool timing) {
  CUDA_CHECK(cudaEventCreateWithFlags(&e_, timing ? cudaEventDefault : cudaEventDisableTiming));
}
Event::~Event() {
  if (e_) cudaEventDestroy(e_);
}
Event& Event::operator=(Event&& o) noexcept {
  if (this != &o) {
    if (e_) cudaEventDestroy(e_);
    e_ = std::exchange(o.e_, nullptr);
  }
  return *this;
}
void Event::record(cudaStream_t s) { CUDA_CHECK(cudaEventRecord(e_, s)); }
void Event::synchronize() const { CUDA_CHECK(cudaEventSynchronize(e_)); }
float Event::elapsed_ms_since(const Event& start) const {
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start.e_, e_));
  return ms;
}

void copy_to_device(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
}

void copy_to_host_sync(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace stp::cuda
