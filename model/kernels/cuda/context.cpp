// context.cpp: the device queries of Ctx (see context.h).
#include "model/kernels/cuda/context.h"

#include "model/kernels/cuda/check.h"

namespace stp::cuda {

int Ctx::num_sms() const {
  if (sms_ == 0) {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, dev));
  }
  return sms_;
}

}  // namespace stp::cuda
