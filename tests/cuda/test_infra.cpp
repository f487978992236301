// test_infra.cpp: the CUDA backend's infrastructure: CHECK macros, allocator accounting, RAII.
// The macro and size-class tests need no GPU and run everywhere; the allocator test needs one.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <string>

#include "model/kernels/cuda/check.h"
#include "tests/cuda/cuda_test_util.h"

using namespace stp::cuda;

// Fails if a failing call does not throw, or the message lacks the statement, file:line, the
// library's error text or the launcher's rank.
TEST_CASE("CUDA_CHECK names the statement, file:line, error and rank", "[cuda][infra]") {
  setenv("RANK", "7", 1);
  std::string msg;
  try {
    CUDA_CHECK(cudaError_t(cudaErrorInvalidValue));
  } catch (const CudaError& e) {
    msg = e.what();
  }
  unsetenv("RANK");
  INFO(msg);
  CHECK(msg.find("`cudaError_t(cudaErrorInvalidValue)`") != std::string::npos);
  CHECK(msg.find("test_infra.cpp:") != std::string::npos);
  CHECK(msg.find(cudaGetErrorString(cudaErrorInvalidValue)) != std::string::npos);
  CHECK(msg.find("rank 7") != std::string::npos);
}

TEST_CASE("CUBLAS_CHECK and CUDNN_CHECK name the library status", "[cuda][infra]") {
  std::string a, b;
  try {
    CUBLAS_CHECK(CUBLAS_STATUS_NOT_SUPPORTED);
  } catch (const CudaError& e) {
    a = e.what();
  }
  try {
    CUDNN_CHECK(CUDNN_STATUS_BAD_PARAM);
  } catch (const CudaError& e) {
    b = e.what();
  }
  CHECK(a.find("cuBLAS error 'CUBLAS_STATUS_NOT_SUPPORTED'") != std::string::npos);
  CHECK(b.find("cuDNN error") != std::string::npos);
  CHECK(b.find("CUDNN_STATUS_BAD_PARAM") != std::string::npos);
}

// Fails if a size class could not hold its request or broke 16-byte alignment of sub-allocations.
TEST_CASE("allocator size classes cover the request and keep 512-byte granularity",
          "[cuda][infra]") {
  CHECK(DeviceAllocator::round_size(1) == 512);
  CHECK(DeviceAllocator::round_size(512) == 512);
  CHECK(DeviceAllocator::round_size(513) == 1024);
  CHECK(DeviceAllocator::round_size((1u << 20) + 1) == (size_t(2) << 20));
  CHECK(DeviceAllocator::round_size(size_t(5) << 20) == (size_t(6) << 20));
}

// Fails if in-use/peak bytes are miscounted, a freed block is not reused, or a moved-from buffer
// frees twice.
TEST_CASE("allocator reports in-use and peak bytes and reuses freed blocks", "[cuda][infra]") {
  STP_REQUIRE_GPU();
  DeviceAllocator a;
  void* first = nullptr;
  {
    DeviceBuffer<float> x(a, 1000);  // 4000 B -> 4096
    first = x.data();
    CHECK(a.in_use_bytes() == 4096);
    DeviceBuffer<float> y(a, 300000);  // 1.2 MB -> 2 MiB
    CHECK(a.in_use_bytes() == 4096 + (size_t(2) << 20));
    DeviceBuffer<float> z = std::move(y);
    CHECK(y.data() == nullptr);
    CHECK(a.in_use_bytes() == 4096 + (size_t(2) << 20));
  }
  CHECK(a.in_use_bytes() == 0);
  CHECK(a.peak_bytes() == 4096 + (size_t(2) << 20));
  CHECK(a.reserved_bytes() == 4096 + (size_t(2) << 20));
  DeviceBuffer<float> again(a, 1024);  // same class as the first block
  CHECK(again.data() == first);
  CHECK(a.reserved_bytes() == 4096 + (size_t(2) << 20));
  a.release_cached();
  CHECK(a.reserved_bytes() == 4096);
}
