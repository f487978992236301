// check.h: the CHECK macro family of the CUDA backend (STYLE.md habit 5: errors say where).
//
// CUDA_CHECK(stmt), CUBLAS_CHECK(stmt), CUDNN_CHECK(stmt) evaluate a library call once; on failure
// they throw stp::cuda::CudaError whose message names the library, the error string and code, the
// failing statement, file:line, and where the process is: global rank (read from the launcher's
// environment at failure time, so no global state is needed), host, pid and CUDA device.
// CUDA_CHECK_LAUNCH() checks the last kernel launch (configuration errors surface immediately;
// faults inside a kernel surface at the next synchronising call).
//
// Device faults are not recoverable in a CUDA context, so these throw instead of returning values;
// cmd/ catches at the top, prints the message and exits. Recoverable conditions (cuDNN refusing a
// shape) are returned as values by the functions that meet them.
#pragma once

#include <stdexcept>
#include <string>

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn.h>

namespace stp::cuda {

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "rank 3 (host gpu07, pid 1234, device 1)": the process's place, for error messages.
std::string process_where();

[[noreturn]] void check_fail(const char* lib, const std::string& what, int code, const char* stmt,
                             const char* file, int line);

const char* cublas_status_name(cublasStatus_t s);

}  // namespace stp::cuda

#define CUDA_CHECK(stmt)                                                                       \
  do {                                                                                         \
    cudaError_t stp_err_ = (stmt);                                                             \
    if (stp_err_ != cudaSuccess)                                                               \
      ::stp::cuda::check_fail("CUDA", cudaGetErrorString(stp_err_), int(stp_err_), #stmt,       \
                              __FILE__, __LINE__);                                             \
  } while (0)

#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

#define CUBLAS_CHECK(stmt)                                                                     \
  do {                                                                                         \
    cublasStatus_t stp_st_ = (stmt);                                                           \
    if (stp_st_ != CUBLAS_STATUS_SUCCESS)                                                      \
      ::stp::cuda::check_fail("cuBLAS", ::stp::cuda::cublas_status_name(stp_st_), int(stp_st_), \
                              #stmt, __FILE__, __LINE__);                                      \
  } while (0)

#define CUDNN_CHECK(stmt)                                                                      \
  do {                                                                                         \
    cudnnStatus_t stp_st_ = (stmt);                                                            \
    if (stp_st_ != CUDNN_STATUS_SUCCESS)                                                       \
      ::stp::cuda::check_fail("cuDNN", cudnnGetErrorString(stp_st_), int(stp_st_), #stmt,       \
                              __FILE__, __LINE__);                                             \
  } while (0)
