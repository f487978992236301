// kernels.h: the CPU backend's kernels, llm.c style (`<op>_forward` / `<op>_backward`), namespace
// stp::cpu. The CUDA backend (model/kernels/cuda/kernels.h, namespace stp::cuda) has a twin of each
// with the same name and the same tensor arguments in the same order (bf16 in place of T for
// activations and weights, plus a trailing `Ctx&`), so one reads as a diff of the other.
//
// Contract:
// - Every kernel is a template on the element type T, explicitly instantiated for float (the
//   product: fp32 everywhere) and double (the finite-difference gradient checks run the very same
//   code in double precision). Statistics (mean, rstd, lse, row max, sum-exp) have type T too.
// - Row-major everywhere. Shapes: N = b*T tokens, C hidden, NH/NKV heads, HD head dim,
//   QKV = (NH + 2*NKV)*HD, F ffn, V vocab -- the TP shard's sizes when called from a TP rank.
// - `accumulate`: add into the output (gradient accumulation, GEMM beta = 1), else overwrite
//   (beta = 0). Outputs that have no `accumulate` flag are overwritten.
// - All matrix products go through cblas_{s,d}gemm (OpenBLAS threads them); no GEMM loops here.
// - Inputs and outputs may not alias unless the comment says "in place".
// - Float exps in softmax, GELU's tanh, SwiGLU's sigmoid and cross-entropy use exp_fast
//   (fast_math.h, |relative error| < 3e-7); the double instantiations use std::exp. Hot loops are
//   compiled for AVX2+FMA and the baseline and picked by the CPU at load time, so two machines of
//   different ISA may differ in the last bits; one machine is always bit-reproducible.
// - Large calls split rows / columns / (b, head) over up to openblas_get_num_threads() workers;
//   every output element is computed by one worker in a fixed order (thread-count independent).
#pragma once

#include <cstdint>

#include "runtime/optimizer.h"  // AdamWHyper (header-only use: the struct, no link dependency)

namespace stp::cpu {

// ---- matmul. out (N, OC) = inp (N, C) @ weight (OC, C)^T [+ bias (OC)] (bias may be null).
template <typename T>
void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, int64_t N, int64_t C,
                    int64_t OC);
// dinp (N, C) = dout (N, OC) @ weight (OC, C) (overwrites); dweight (OC, C) (+)= dout^T @ inp;
// dbias (OC) (+)= column sums of dout. Any of dinp / dweight / dbias may be null: the B pass
// passes only dinp, the W pass only dweight and dbias.
template <typename T>
void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int64_t N, int64_t C, int64_t OC, bool accumulate);
// The general row-major GEMM the kernels and units are built on:
// c (M, N) = alpha * op(a) @ op(b) + beta * c, op = transpose when the flag is set; lda/ldb/ldc are
// row strides (elements).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// ---- norms. x = inp + inp2 (the fused residual add; inp2 may be null, then x = inp) is stored in
// x_out (may be null when inp2 is null) and normalised into out (N, C). mean, rstd (N).
// layernorm: out = (x - mean) * rstd * weight + bias;  rmsnorm: out = x * rstd * weight,
// rstd = 1 / sqrt(mean(x^2) + eps). Statistics are accumulated in double for float inputs.
template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, T* x_out, const T* inp, const T* inp2,
                       const T* weight, const T* bias, int64_t N, int64_t C, float eps);
template <typename T>
void rmsnorm_forward(T* out, T* rstd, T* x_out, const T* inp, const T* inp2, const T* weight,
                     int64_t N, int64_t C, float eps);
// dinp (N, C) (+)= d loss / d x given dout = d loss / d out. Linear in dout, so a TP-partial dout
// gives a TP-partial dinp (the design runs the norm backward before the all-reduce).
template <typename T>
void layernorm_backward_input(T* dinp, const T* dout, const T* x, const T* weight, const T* mean,
                              const T* rstd, int64_t N, int64_t C, bool accumulate);
template <typename T>
void rmsnorm_backward_input(T* dinp, const T* dout, const T* x, const T* weight, const T* rstd,
                            int64_t N, int64_t C, bool accumulate);
// dweight (C) (+)= sum_n dout * xhat; dbias (C) (+)= sum_n dout (dbias may be null).
template <typename T>
void layernorm_backward_weight(T* dweight, T* dbias, const T* dout, const T* x, const T* mean,
                               const T* rstd, int64_t N, int64_t C, bool accumulate);
template <typename T>
void rmsnorm_backward_weight(T* dweight, const T* dout, const T* x, const T* rstd, int64_t N,
                             int64_t C, bool accumulate);

// ---- elementwise (n elements)
// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (as cuBLASLt's
// epilogue).
template <typename T>
void gelu_forward(T* out, const T* inp, int64_t n);
template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n);  // dinp overwritten
// SwiGLU on inp (N, 2F) = [gate (F) | up (F)] per row: out (N, F) = silu(gate) * up.
template <typename T>
void swiglu_forward(T* out, const T* inp, int64_t N, int64_t F);
template <typename T>
void swiglu_backward(T* dinp, const T* inp, const T* dout, int64_t N, int64_t F);  // dinp (N, 2F)
// out = a + b (out may alias a or b).
template <typename T>
void residual_forward(T* out, const T* a, const T* b, int64_t n);

// ---- RoPE, in place on the q and k heads of qkv (B, T, QKV), Hugging Face's rotate_half pairing:
// dims i and i + HD/2 of a head rotate by the angle t * theta^(-2i/HD), t the position in the
// sequence. The backward applies the inverse rotation to dq and dk of dqkv (in place).
template <typename T>
void rope_forward(T* qkv, int64_t B, int64_t T_, int64_t NH, int64_t NKV, int64_t HD, float theta);
template <typename T>
void rope_backward(T* dqkv, int64_t B, int64_t T_, int64_t NH, int64_t NKV, int64_t HD,
                   float theta);
// 2-D RoPE of the vision tower (Qwen2-VL's VisionRotaryEmbedding), in place on the q and k heads
// of qkv (B, Np, QKV): B images of Np = grid * grid patches each, in merge-window order (every
// merge x merge window contiguous, windows row-major): patch p has window wi = p / merge^2, q =
// p % merge^2, row h = (wi / (grid/merge)) * merge + q / merge, col w = (wi % (grid/merge)) *
// merge + q % merge. Same rotate_half pairing as rope_forward; pair i < HD/4 rotates by
// h * f_i, pair i >= HD/4 by w * f_(i - HD/4), f_j = theta^(-4j/HD). Requires HD % 4 == 0 and
// grid % merge == 0 (unchecked here, like every CPU kernel: the config validates them). The
// backward applies the inverse rotation to dq and dk of dqkv (in place).
template <typename T>
void rope2d_forward(T* qkv, int64_t B, int64_t Np, int64_t NH, int64_t NKV, int64_t HD,
                    int64_t grid, int64_t merge, float theta);
template <typename T>
void rope2d_backward(T* dqkv, int64_t B, int64_t Np, int64_t NH, int64_t NKV, int64_t HD,
                     int64_t grid, int64_t merge, float theta);

// ---- causal softmax attention, GQA. qkv (B, T, QKV): per token NH query heads, then NKV key
// heads, then NKV value heads, each HD contiguous. Query head h reads key/value head h / (NH/NKV).
// Scale 1/sqrt(HD); query t sees keys 0..t. out (B, T, NH*HD); lse (B, NH, T) natural log.
struct AttnShape {
  int64_t B = 1, T = 1, NH = 1, NKV = 1, HD = 64;
  bool causal = true;
  int64_t qkv_width() const { return (NH + 2 * NKV) * HD; }
};
template <typename T>
void attention_forward(T* out, T* lse, const T* qkv, const AttnShape& s);
// dqkv (B, T, QKV) overwritten; recomputes the probabilities from qkv and lse (no T x T storage
// between passes); D = rowsum(dout * out) as in FlashAttention.
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse,
                        const AttnShape& s);

// ---- embedding, vocab-parallel: this rank holds rows [vocab_start, vocab_start + V) of wte (V,
// C). out (N, C) = wte[tok - vocab_start] (0 for tokens outside the shard) + wpe[n % T] (if wpe).
template <typename T>
void embedding_forward(T* out, const int* tokens, const T* wte, const T* wpe, int64_t N, int64_t T_,
                       int64_t C, int64_t vocab_start, int64_t V);
// dwte (V, C) += dout rows scattered by token, in token order (deterministic); dwpe (T, C) +=
// the sum over sequences (if dwpe).
template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int* tokens, int64_t N, int64_t T_,
                        int64_t C, int64_t vocab_start, int64_t V);

// ---- vocab-parallel cross-entropy on this shard's logits (N, V); targets are global ids.
// A target < 0 means "no loss here" (the visual positions of a VLM sequence): its row has loss 0
// and dlogits 0 on every rank, so a mean loss must divide by the number of targets >= 0.
// In order (the caller all-reduces between them):
//   xent_row_max:  rowmax (N) = max_v logits                               -> all-reduce MAX
//   xent_sumexp:   sumexp (N) = sum_v exp(l - rowmax); tlogit (N) = the target's logit on the
//                  rank that holds it, else 0 (also 0 for a target < 0)    -> all-reduce SUM (both)
//   xent_loss:     losses (N) = log(sumexp) + rowmax - tlogit, 0 where targets[n] < 0 (targets
//                  may be null: no row is ignored)
//   xent_backward: dlogits = dscale * (softmax - onehot), 0 on rows whose target < 0; dlogits
//                  may alias logits (in place)
template <typename T>
void xent_row_max(T* rowmax, const T* logits, int64_t N, int64_t V);
template <typename T>
void xent_sumexp(T* sumexp, T* tlogit, const T* logits, const T* rowmax, const int* targets,
                 int64_t N, int64_t V, int64_t vocab_start);
template <typename T>
void xent_loss(T* losses, const T* rowmax, const T* sumexp, const T* tlogit, int64_t N,
               const int* targets);
template <typename T>
void xent_backward(T* dlogits, const T* logits, const T* rowmax, const T* sumexp,
                   const int* targets, float dscale, int64_t N, int64_t V, int64_t vocab_start);

// ---- optimizer. AdamW (decoupled decay), the formula and order of operations of
// runtime/optimizer.h's stp::adamw_update, elementwise, split over threads for large n (the
// result does not depend on the split). g is multiplied by grad_scale first (clipping).
template <typename T>
void adamw_update(T* p, const T* g, T* m, T* v, int64_t n, const AdamWHyper& h, float grad_scale);
// sum of g^2 in double, fixed order (deterministic).
template <typename T>
double grad_sq_norm(const T* g, int64_t n);

}  // namespace stp::cpu
