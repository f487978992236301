// nccl_staging.cpp: device-memory Staging for host reductions over NCCL (see nccl_comm.h).
#include <cuda_runtime.h>

#include <mutex>

#include "comm/nccl/nccl_comm.h"
#include "model/kernels/cuda/check.h"
#include "model/kernels/cuda/memory.h"

namespace stp {

namespace {

class CudaStaging final : public Staging, public std::enable_shared_from_this<CudaStaging> {
 public:
  std::shared_ptr<void> alloc(size_t bytes, std::string* error) override {
    std::lock_guard<std::mutex> lk(mu_);
    try {
      void* p = alloc_.allocate(bytes ? bytes : 1);
      // The deleter keeps the staging (its allocator) alive until the last buffer is back.
      std::shared_ptr<CudaStaging> self = shared_from_this();
      return std::shared_ptr<void>(p, [self, bytes](void* q) { self->release(q, bytes ? bytes : 1); });
    } catch (const cuda::CudaError& e) {
      *error = e.what();
      return nullptr;
    }
  }
  std::string put(void* staged, const void* host, size_t bytes) override {
    return copy(staged, host, bytes, cudaMemcpyHostToDevice);
  }
  std::string get(void* host, const void* staged, size_t bytes) override {
    return copy(host, staged, bytes, cudaMemcpyDeviceToHost);
  }

 private:
  void release(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lk(mu_);
    alloc_.deallocate(p, bytes);
  }
  // On the staging stream and waited for: done when it returns (a pageable cudaMemcpy may return
  // before its DMA lands, and the NCCL streams do not order after the legacy stream).
  std::string copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if (!bytes) return {};
    cudaError_t rc = cudaMemcpyAsync(dst, src, bytes, kind, stream_.get());
    if (rc == cudaSuccess) rc = cudaStreamSynchronize(stream_.get());
    return rc == cudaSuccess ? "" : std::string(cudaGetErrorName(rc)) + ": " + cudaGetErrorString(rc);
  }

  std::mutex mu_;  // the allocator is not thread-safe; a dropped handle may release from another thread
  cuda::DeviceAllocator alloc_;
  cuda::Stream stream_;
};

}  // namespace

std::shared_ptr<Staging> staging_cuda() { return std::make_shared<CudaStaging>(); }

}  // namespace stp
