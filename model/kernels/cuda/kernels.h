// kernels.h: the CUDA twins of the CPU backend's kernels (model/kernels/cpu/kernels.h), namespace
// stp::cuda, llm.c style `<op>_forward` / `<op>_backward`.
//
// Numerics: activations and GEMM weights bf16; statistics, losses, weight gradients, master
// weights and AdamW state fp32; every reduction accumulates in fp32 (grad norms in fp64).
// Each function takes the same tensors as its CPU twin plus `Ctx&` (stream, allocator, GEMM and
// attention engines, scratch) last; all work is enqueued on ctx.stream and nothing synchronises.
// Shapes: N = b*T tokens, C hidden, NH/NKV heads, HD head dim, F ffn, V vocab (the TP shard's
// sizes when called from a TP rank), QKV = (NH + 2*NKV)*HD. Row-major everywhere.
// `accumulate` = add into the output (gradient accumulation), else overwrite it.
// Vector width: C, F and V must be multiples of 8 (16-byte accesses); kernels check and throw.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

#include "model/kernels/cuda/context.h"
#include "runtime/optimizer.h"

namespace stp::cuda {

// ---- matmul (cuBLASLt; see gemm.h). out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC).
void matmul_forward(bf16* out, const bf16* inp, const bf16* weight, const bf16* bias, int64_t N,
                    int64_t C, int64_t OC, Ctx& ctx);
// dinp (N, C) = dout @ weight (overwrites); dweight (OC, C) (+)= dout^T @ inp;
// dbias (OC) (+)= column sums of dout. Any of dinp / dweight / dbias may be null (B vs W passes).
void matmul_backward(bf16* dinp, float* dweight, float* dbias, const bf16* dout, const bf16* inp,
                     const bf16* weight, int64_t N, int64_t C, int64_t OC, bool accumulate,
                     Ctx& ctx);

// ---- norms (fp32 stats). x_out/inp2 optional: x = inp + inp2 (rounded to bf16) is normalised
// and stored in x_out (the fused residual add). mean/rstd (N).
void layernorm_forward(bf16* out, float* mean, float* rstd, bf16* x_out, const bf16* inp,
                       const bf16* inp2, const bf16* weight, const bf16* bias, int64_t N,
                       int64_t C, float eps, Ctx& ctx);
void rmsnorm_forward(bf16* out, float* rstd, bf16* x_out, const bf16* inp, const bf16* inp2,
                     const bf16* weight, int64_t N, int64_t C, float eps, Ctx& ctx);
void layernorm_backward_input(bf16* dinp, const bf16* dout, const bf16* x, const bf16* weight,
                              const float* mean, const float* rstd, int64_t N, int64_t C,
                              bool accumulate, Ctx& ctx);
void rmsnorm_backward_input(bf16* dinp, const bf16* dout, const bf16* x, const bf16* weight,
                            const float* rstd, int64_t N, int64_t C, bool accumulate, Ctx& ctx);
void layernorm_backward_weight(float* dweight, float* dbias, const bf16* dout, const bf16* x,
                               const float* mean, const float* rstd, int64_t N, int64_t C,
                               bool accumulate, Ctx& ctx);
void rmsnorm_backward_weight(float* dweight, const bf16* dout, const bf16* x, const float* rstd,
                             int64_t N, int64_t C, bool accumulate, Ctx& ctx);

// ---- elementwise (n elements; n % 8 == 0)
void gelu_forward(bf16* out, const bf16* inp, int64_t n, Ctx& ctx);
void gelu_backward(bf16* dinp, const bf16* inp, const bf16* dout, int64_t n, Ctx& ctx);
// SwiGLU on inp (N, 2F) = [gate (F) | up (F)] per row: out (N, F) = silu(gate) * up.
void swiglu_forward(bf16* out, const bf16* inp, int64_t N, int64_t F, Ctx& ctx);
void swiglu_backward(bf16* dinp, const bf16* inp, const bf16* dout, int64_t N, int64_t F, Ctx& ctx);
void residual_forward(bf16* out, const bf16* a, const bf16* b, int64_t n, Ctx& ctx);
void cast_f32_to_bf16(bf16* out, const float* inp, int64_t n, Ctx& ctx);
void cast_bf16_to_f32(float* out, const bf16* inp, int64_t n, Ctx& ctx);

// ---- RoPE, in place on the q and k heads of qkv (B, T, QKV) (rotate-half pairing: dims i and
// i + HD/2 rotate by angle t * theta^(-2i/HD)). The backward rotates dq, dk of dqkv back.
void rope_forward(bf16* qkv, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HD,
                  float theta, Ctx& ctx);
void rope_backward(bf16* dqkv, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HD,
                   float theta, Ctx& ctx);
// 2-D RoPE of the vision tower on qkv (B, Np, QKV), B images of Np = grid^2 patches in
// merge-window order: patch p's (row h, col w) and the angles (h * f_i for pair i < HD/4, w *
// f_(i - HD/4) above, f_j = theta^(-4j/HD)) as in the CPU twin. Throws unless HD % 4 == 0,
// grid % merge == 0 and Np == grid^2.
void rope2d_forward(bf16* qkv, int64_t B, int64_t Np, int64_t NH, int64_t NKV, int64_t HD,
                    int64_t grid, int64_t merge, float theta, Ctx& ctx);
void rope2d_backward(bf16* dqkv, int64_t B, int64_t Np, int64_t NH, int64_t NKV, int64_t HD,
                     int64_t grid, int64_t merge, float theta, Ctx& ctx);

// ---- attention (see attention.h): out (B, T, NH*HD), lse (B, NH, T); dqkv overwritten.
void attention_forward(bf16* out, float* lse, const bf16* qkv, const AttnShape& s, Ctx& ctx);
void attention_backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                        const float* lse, const AttnShape& s, Ctx& ctx);

// ---- embedding, vocab-parallel: this rank holds rows [vocab_start, vocab_start + V) of wte.
// out (N, C) = wte[tok - vocab_start] (0 for tokens outside the shard) + wpe[t] (if wpe, t = n % T).
void embedding_forward(bf16* out, const int* tokens, const bf16* wte, const bf16* wpe, int64_t N,
                       int64_t T, int64_t C, int64_t vocab_start, int64_t V, Ctx& ctx);
// dwte (V, C) += scatter of dout by token (deterministic: tokens sorted, rows summed in token
// order); dwpe (T, C) += sum over sequences (if dwpe).
void embedding_backward(float* dwte, float* dwpe, const bf16* dout, const int* tokens, int64_t N,
                        int64_t T, int64_t C, int64_t vocab_start, int64_t V, Ctx& ctx);

// ---- vocab-parallel cross-entropy on logits (N, V) of this shard; targets global ids.
// A target < 0 means "no loss here": its row has loss 0 and dlogits 0 on every rank (a mean loss
// divides by the number of targets >= 0).
// The TP pieces, in order (the caller all-reduces between them):
//   xent_row_max:   rowmax (N) = max_v logits                           -> all-reduce MAX
//   xent_sumexp:    sumexp (N) = sum_v exp(l - rowmax); tlogit (N) = the target's logit on the
//                   rank that holds it, else 0 (also for targets < 0)   -> all-reduce SUM (both)
//   xent_loss:      losses (N) = log(sumexp) + rowmax - tlogit, 0 where targets[n] < 0 (targets
//                   may be null: no row is ignored)
//   xent_backward:  dlogits = dscale * (softmax - onehot), 0 on rows whose target < 0; in place
//                   allowed (dlogits == logits)
// xent_fused: TP = 1, all of it in one pass per row (online softmax), logits overwritten by
// their gradient: the full-vocab softmax is never stored in fp32. Ignores targets < 0 likewise.
void xent_row_max(float* rowmax, const bf16* logits, int64_t N, int64_t V, Ctx& ctx);
void xent_sumexp(float* sumexp, float* tlogit, const bf16* logits, const float* rowmax,
                 const int* targets, int64_t N, int64_t V, int64_t vocab_start, Ctx& ctx);
void xent_loss(float* losses, const float* rowmax, const float* sumexp, const float* tlogit,
               int64_t N, const int* targets, Ctx& ctx);
void xent_backward(bf16* dlogits, const bf16* logits, const float* rowmax, const float* sumexp,
                   const int* targets, float dscale, int64_t N, int64_t V, int64_t vocab_start,
                   Ctx& ctx);
void xent_fused(float* losses, bf16* logits_to_grad, const int* targets, float dscale, int64_t N,
                int64_t V, Ctx& ctx);

// ---- optimizer: AdamW over fp32 master weights (formula and order of operations identical to
// stp::adamw_update), also writing the bf16 copy the GEMMs read (p_bf16 may be null).
void adamw_update(float* p, bf16* p_bf16, const float* g, float* m, float* v, int64_t n,
                  const AdamWHyper& h, float grad_scale, Ctx& ctx);
// out (1 double, device) = sum g^2 in fp64, deterministic (fixed-order two-stage reduction).
void grad_sq_norm(double* out, const float* g, int64_t n, Ctx& ctx);

}  // namespace stp::cuda
