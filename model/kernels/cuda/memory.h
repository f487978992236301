// memory.h: owning, move-only wrappers over device memory, streams and events, and a caching
// device allocator that reports current and peak bytes.
//
// DeviceAllocator: cudaMalloc'd blocks are cached by rounded size and reused; `in_use_bytes()` is
// what callers hold now, `peak_bytes()` its high-water mark, `reserved_bytes()` what the cache
// holds from the driver (in use + free). Not thread-safe: one allocator per device, used from the
// thread that issues the work. Reuse is safe for work ordered on one stream; a buffer read by
// another stream must outlive that stream's use (record an event and wait, as the executor does).
// Sizes round up to 512 B below 1 MiB and to 2 MiB above, so a block fits every request of its
// class and 16-byte vector access is always aligned.
//
// DeviceBuffer<T>: `n` elements from an allocator, returned to it on destruction.
// Stream, Event: RAII over cudaStream_t / cudaEvent_t.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

namespace stp::cuda {

class DeviceAllocator {
 public:
  DeviceAllocator() = default;
  ~DeviceAllocator();
  DeviceAllocator(const DeviceAllocator&) = delete;
  DeviceAllocator& operator=(const DeviceAllocator&) = delete;

  void* allocate(size_t bytes);          // throws CudaError if the device is out of memory
  void deallocate(void* p, size_t bytes);  // `bytes` as passed to allocate
  void release_cached();                 // cudaFree every free cached block

  size_t in_use_bytes() const { return in_use_; }
  size_t peak_bytes() const { return peak_; }
  size_t reserved_bytes() const { return reserved_; }
  void reset_peak() { peak_ = in_use_; }
  static size_t round_size(size_t bytes);

 private:
  std::multimap<size_t, void*> free_;    // rounded size -> cached free block
  size_t in_use_ = 0, peak_ = 0, reserved_ = 0;
};

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(DeviceAllocator& a, size_t n) : alloc_(&a), n_(n) {
    p_ = static_cast<T*>(n ? a.allocate(n * sizeof(T)) : nullptr);
  }
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      std::swap(alloc_, o.alloc_);
      std::swap(p_, o.p_);
      std::swap(n_, o.n_);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }
  void reset() {
    if (p_) alloc_->deallocate(p_, n_ * sizeof(T));
    p_ = nullptr;
    n_ = 0;
  }

 private:
  DeviceAllocator* alloc_ = nullptr;
  T* p_ = nullptr;
  size_t n_ = 0;
};

class Stream {
 public:
  Stream();                              // non-blocking w.r.t. the legacy default stream
  ~Stream();
  Stream(Stream&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  Stream& operator=(Stream&& o) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  void synchronize() const;

 private:
  cudaStream_t s_ = nullptr;
};

class Event {
 public:
  explicit Event(bool timing = false);
  ~Event();
  Event(Event&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  Event& operator=(Event&& o) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return e_; }
  void record(cudaStream_t s);
  void synchronize() const;
  float elapsed_ms_since(const Event& start) const;  // both recorded with timing=true

 private:
  cudaEvent_t e_ = nullptr;
};

// Host <-> device copies on a stream; the _sync forms wait for the stream.
void copy_to_device(void* dst, const void* src, size_t bytes, cudaStream_t s);
void copy_to_host_sync(void* dst, const void* src, size_t bytes, cudaStream_t s);

template <class T>
void upload(DeviceBuffer<T>& dst, const std::vector<T>& src, cudaStream_t s) {
  copy_to_device(dst.data(), src.data(), std::min(dst.size(), src.size()) * sizeof(T), s);
}
template <class T>
std::vector<T> download(const DeviceBuffer<T>& src, cudaStream_t s) {
  std::vector<T> h(src.size());
  copy_to_host_sync(h.data(), src.data(), src.bytes(), s);
  return h;
}

// Number of CUDA devices, 0 when there is no driver or no device (never throws).
int device_count();

}  // namespace stp::cuda
