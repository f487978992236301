// gemm.cpp: cuBLASLt plans and the row-major -> column-major mapping (see gemm.h).
//
// cuBLASLt is column-major; a row-major (R, K) matrix is a column-major (K, R) one. So
//   linear_forward:  D^T (OC, N) = W (OC, C)      @ inp^T (C, N)    -> A = W stored (C, OC), op T
//   backward_input:  dinp^T (C, N) = W^T (C, OC)  @ dout^T (OC, N)  -> no transposes
//   backward_weight: dW^T (C, OC) = inp^T (C, N)  @ dout (N, OC)    -> B = dout stored (OC, N), op T
// Bias and the GELU aux are per output feature / per element of D, which these mappings keep.
#include "model/kernels/cuda/gemm.h"

#include <sstream>

#include "model/kernels/cuda/check.h"

namespace stp::cuda {

namespace {

// Largest power of two (<= 256) that divides every pointer: cuBLASLt's heuristic must know it.
int64_t common_alignment(std::initializer_list<const void*> ptrs) {
  int64_t a = 256;
  for (const void* p : ptrs) {
    if (!p) continue;
    const auto v = reinterpret_cast<uintptr_t>(p);
    while (a > 1 && (v % a) != 0) a /= 2;
  }
  return a;
}

std::string key_string(const GemmKey& k) {
  std::ostringstream os;
  os << "m=" << k.m << " n=" << k.n << " k=" << k.k << " op(A)=" << (k.trans_a ? "T" : "N")
     << " op(B)=" << (k.trans_b ? "T" : "N") << " lda=" << k.lda << " ldb=" << k.ldb
     << " ldd=" << k.ldd << " D=" << (k.d_fp32 ? "fp32" : "bf16") << " epilogue="
     << int(k.epilogue) << " align=" << k.align;
  return os.str();
}

cublasLtEpilogue_t lt_epilogue(GemmEpilogue e) {
  switch (e) {
    case GemmEpilogue::None: return CUBLASLT_EPILOGUE_DEFAULT;
    case GemmEpilogue::Bias: return CUBLASLT_EPILOGUE_BIAS;
    case GemmEpilogue::Gelu: return CUBLASLT_EPILOGUE_GELU_AUX;
    case GemmEpilogue::GeluBias: return CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    case GemmEpilogue::DGelu: return CUBLASLT_EPILOGUE_DGELU;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}

}  // namespace

struct Gemm::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

Gemm::Gemm(DeviceAllocator& alloc, size_t workspace_bytes) : workspace_(alloc, workspace_bytes) {
  CUBLAS_CHECK(cublasLtCreate(&handle_));
}

Gemm::~Gemm() {
  plans_.clear();
  if (handle_) cublasLtDestroy(handle_);
}

Gemm::Plan& Gemm::plan_for(const GemmKey& k) {
  auto it = plans_.find(k);
  if (it != plans_.end()) return *it->second;
  auto p = std::make_unique<Plan>();
  const cudaDataType_t dt = k.d_fp32 ? CUDA_R_32F : CUDA_R_16BF;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = k.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = k.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const cublasLtEpilogue_t epi = lt_epilogue(k.epilogue);
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (k.epilogue == GemmEpilogue::Gelu || k.epilogue == GemmEpilogue::GeluBias ||
      k.epilogue == GemmEpilogue::DGelu) {
    const int64_t aux_ld = k.ldd;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                                                &aux_ld, sizeof(aux_ld)));
  }
  // Stored shapes: op(A) is (m, k), so A is stored (k, m) when transposed.
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, k.trans_a ? k.k : k.m,
                                          k.trans_a ? k.m : k.k, k.lda));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, k.trans_b ? k.n : k.k,
                                          k.trans_b ? k.k : k.n, k.ldb));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, dt, k.m, k.n, k.ldd));

  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = workspace_.bytes();
  const uint32_t align = uint32_t(k.align);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof(align));
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle_, p->op, p->a, p->b, p->d, p->d, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0)
    check_fail("cuBLASLt", "no algorithm for this GEMM", int(st), key_string(k).c_str(), __FILE__,
               __LINE__);
  p->algo = res.algo;
  return *plans_.emplace(k, std::move(p)).first->second;
}

void Gemm::run(const GemmKey& key0, const Ptrs& ptr, cudaStream_t s) {
  GemmKey key = key0;
  key.align = common_alignment({ptr.a, ptr.b, ptr.d});
  // The bias and aux pointers live on the cached descriptor: without this check a call missing
  // one would silently read or write the previous call's buffer.
  const GemmEpilogue e = key.epilogue;
  const bool needs_bias = e == GemmEpilogue::Bias || e == GemmEpilogue::GeluBias;
  const bool needs_aux = e == GemmEpilogue::Gelu || e == GemmEpilogue::GeluBias || e == GemmEpilogue::DGelu;
  if (needs_bias != (ptr.bias != nullptr) || needs_aux != (ptr.aux != nullptr))
    check_fail("cuBLASLt", needs_aux && !ptr.aux ? "epilogue needs the aux (pre-activation) pointer"
                                                 : "epilogue and bias/aux pointers disagree",
               0, key_string(key).c_str(), __FILE__, __LINE__);
  Plan& p = plan_for(key);
  if (ptr.bias)
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ptr.bias,
                                                sizeof(ptr.bias)));
  if (ptr.aux)
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                                &ptr.aux, sizeof(ptr.aux)));
  const float alpha = 1.0f, beta = key.accumulate ? 1.0f : 0.0f;
  CUBLAS_CHECK(cublasLtMatmul(handle_, p.op, &alpha, ptr.a, p.a, ptr.b, p.b, &beta, ptr.d, p.d,
                              ptr.d, p.d, &p.algo, workspace_.data(), workspace_.bytes(), s));
}

void Gemm::linear_forward(bf16* out, bf16* pre, const bf16* inp, const bf16* weight,
                          const bf16* bias, int64_t N, int64_t C, int64_t OC, bool gelu,
                          cudaStream_t s) {
  GemmKey k;
  k.trans_a = true;
  k.m = OC, k.n = N, k.k = C, k.lda = C, k.ldb = C, k.ldd = OC;
  k.epilogue = gelu ? (bias ? GemmEpilogue::GeluBias : GemmEpilogue::Gelu)
                    : (bias ? GemmEpilogue::Bias : GemmEpilogue::None);
  Ptrs p;
  p.a = weight, p.b = inp, p.d = out, p.bias = bias, p.aux = gelu ? pre : nullptr;
  run(k, p, s);
}

void Gemm::linear_backward_input(bf16* dinp, const bf16* dout, const bf16* weight,
                                 const bf16* pre, int64_t N, int64_t C, int64_t OC,
                                 cudaStream_t s) {
  GemmKey k;
  k.m = C, k.n = N, k.k = OC, k.lda = C, k.ldb = OC, k.ldd = C;
  k.epilogue = pre ? GemmEpilogue::DGelu : GemmEpilogue::None;
  Ptrs p;
  p.a = weight, p.b = dout, p.d = dinp, p.aux = pre;
  run(k, p, s);
}

void Gemm::linear_backward_weight(float* dweight, const bf16* dout, const bf16* inp, int64_t N,
                                  int64_t C, int64_t OC, bool accumulate, cudaStream_t s) {
  GemmKey k;
  k.trans_b = true;
  k.m = C, k.n = OC, k.k = N, k.lda = C, k.ldb = OC, k.ldd = C;
  k.d_fp32 = true;
  k.accumulate = accumulate;
  Ptrs p;
  p.a = inp, p.b = dout, p.d = dweight;
  run(k, p, s);
}

void Gemm::matmul_bf16(bf16* D, const bf16* A, const bf16* B, int64_t M, int64_t N, int64_t K,
                       cudaStream_t s) {
  GemmKey k;
  k.m = N, k.n = M, k.k = K, k.lda = N, k.ldb = K, k.ldd = N;
  Ptrs p;
  p.a = B, p.b = A, p.d = D;
  run(k, p, s);
}

}  // namespace stp::cuda
