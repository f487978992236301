// check.cpp: formatting of CUDA/cuBLAS/cuDNN failures (see check.h).
#include "model/kernels/cuda/check.h"

#include <unistd.h>

#include <cstdlib>
#include <sstream>

namespace stp::cuda {

namespace {

// The launcher's rank variable, in the order topology.cpp reads them; "?" when none is set.
std::string rank_from_env() {
  for (const char* var : {"RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"}) {
    if (const char* v = std::getenv(var)) return v;
  }
  return "0";
}

}  // namespace

std::string process_where() {
  char host[256] = "?";
  gethostname(host, sizeof(host) - 1);
  int dev = -1;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    dev = -1;
    cudaGetLastError();  // do not leave a sticky non-fault error behind
  }
  std::ostringstream os;
  os << "rank " << rank_from_env() << " (host " << host << ", pid " << getpid() << ", device "
     << dev << ")";
  return os.str();
}

void check_fail(const char* lib, const std::string& what, int code, const char* stmt,
                const char* file, int line) {
  std::ostringstream os;
  os << lib << " error '" << what << "' (" << code << ") in `" << stmt << "` at " << file << ":"
     << line << " on " << process_where();
  throw CudaError(os.str());
}

const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

}  // namespace stp::cuda
