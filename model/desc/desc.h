// desc.h: the model *description*, the one contract between the model, lowering, the simulator and
// the executor (DESIGN.md: "The model publishes one table of tensors per unit").
//
// A virtual stage (one model chunk) is a list of units in forward order:
//
//   In            stage 0: vocab-parallel embedding lookup (partial sum over TP, all-reduced);
//                 other stages: receives the activation (no compute). B: adds the last reduced
//                 input-gradient into the residual gradient (stage 0: feeds In.W; else: sent).
//                 W (stage 0 only): token- and position-embedding gradients.
//   Attn(l),Mlp(l) one per layer. F starts by finishing the residual add of the previous unit's
//                 reduced partial output, then norm, column-parallel GEMM, ..., row-parallel GEMM,
//                 and ends with a TP-partial output that is all-reduced *between* units.
//                 B starts by finishing the residual-gradient add of the previous B unit's reduced
//                 partial, then runs the input-gradient path *including the norm backward* (the
//                 norm backward is linear in its output gradient, so it commutes with the TP sum)
//                 and ends with a TP-partial input gradient that is all-reduced.
//                 W: GEMM weight gradients, biases, and the norm's weight gradient (a TP-partial
//                 sum: `ParamDesc::tp_partial_grad`, all-reduced over TP once per step).
//   Head          last stage: residual add, final norm, vocab-parallel logits, row max (AR max).
//   Loss          last stage: local sum-exp and target logit (AR sum). No B, no W.
//                 Head.B: softmax - one-hot, logits input gradient through the final norm (AR sum).
//   Out           other stages: finishes the last residual add; the result is sent. Its B receives
//                 the gradient (no compute).
//
// Vision-language models (model.vision, a Qwen2-VL-style tower): the vision units come first, on the
// stages config_vision_stage_layers names, in the same kinds and cuts with `vision` set:
//   In (vision)   stage 0: patch embedding, a row-parallel GEMM over the K = channels*patch^2
//                 values of each patch (TP-partial, all-reduced); other vision stages: receives.
//   Attn, Mlp     vision blocks: LayerNorm, bidirectional attention with the 2-D rotary embedding,
//                 GELU MLP, biases; B = b*images sequences of Np patches.
//   Merge         after the last vision layer: LayerNorm per patch, the m x m patches of a window
//                 (contiguous) as one row of m^2*Cv, fc1 (column-parallel) + GELU + fc2 (row-
//                 parallel) to the LLM hidden C, spliced at the visual positions into the text
//                 embedding partial (vocab-parallel lookup of the text ids; ids -1 at the visual
//                 positions embed as 0): one TP-partial (N, C) `out`, all-reduced. Merge.B starts
//                 from the LLM-side residual gradient `ge`, takes its visual rows back through
//                 fc2/fc1/norm and ends with the vision-side partial `dx`. Merge.W: merger weights
//                 and the text embedding (visual rows excluded).
//   The LLM units follow on the same stage (or the next ones); a stage whose input or output is
//   the vision stream sends/receives (b*images*Np, Cv) elements instead of (N, C).
// Backward order is the reverse of forward order over the units that have a B pass.
// Tensors: every activation/gradient that outlives the unit pass that produced it is a TensorDesc
// with its element count, producer and readers. Lowering frees a tensor after its last reader;
// the simulator charges exactly these bytes; the executor allocates exactly these. Anything a
// unit needs only while it runs is workspace and not in the table.
//
// Shapes use the fixed vocabulary: N = b*T tokens of a micro-batch, C hidden, NH_tp/NKV_tp heads,
// HD head dim, F_tp ffn, V_tp vocab shard, QKV_tp = (NH_tp + 2*NKV_tp)*HD.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/core/config.h"

namespace stp {

enum class UnitKind : uint8_t { In, Attn, Mlp, Head, Loss, Out, Merge };
enum class UnitPass : uint8_t { F, B, W };

const char* unit_kind_name(UnitKind k);   // "in", "attn", "mlp", "head", "loss", "out", "merge"
const char* unit_pass_name(UnitPass p);   // "F", "B", "W"

enum class CollKind : uint8_t { None, AllReduceSum, AllReduceMax, ReduceScatter, AllGather };
const char* coll_kind_name(CollKind k);

// A TP collective that follows a unit pass: the op and how many elements it moves per rank.
struct CollDesc {
  CollKind kind = CollKind::None;
  int64_t elems = 0;
  int tensor = -1;  // the tensor it reduces in place (index into StageDesc::tensors)
};

struct UnitDesc {
  UnitKind kind = UnitKind::In;
  int layer = -1;                 // global layer index for Attn/Mlp, -1 otherwise
  bool vision = false;            // runs on the vision stream (vision In/Attn/Mlp; Merge reads it)
  bool has_f = true, has_b = false, has_w = false;
  double flops[3] = {0, 0, 0};    // per micro-batch on one TP rank: F, B, W
  double bytes[3] = {0, 0, 0};    // activation bytes touched (memory-bound part), per pass
  CollDesc coll[2];               // after F, after B (W never ends in a collective)
};

struct UnitRef {
  int unit = 0;                   // index into StageDesc::units
  UnitPass pass = UnitPass::F;
  bool operator==(const UnitRef& o) const { return unit == o.unit && pass == o.pass; }
};

struct TensorDesc {
  std::string name;               // "attn3.qkv" (unit name + layer + '.' + field)
  int64_t elems = 0;              // per micro-batch, on one TP rank
  UnitRef producer;
  std::vector<UnitRef> readers;   // may be empty: freed right after it is produced (or sent)
  bool sent = false;              // read by a PP send (Out.F output, In.B output on stage > 0)
};

// One entry of the sharding table: a parameter of the full model and how TP splits it.
struct ParamDesc {
  std::string name;               // our name, e.g. "layers.3.attn.qkv.weight"
  std::vector<int64_t> shape;     // full (unsharded) shape, row-major, e.g. {QKV, C}
  int shard_dim = -1;             // dim split over TP (-1 = replicated)
  bool tp_partial_grad = false;   // replicated, but each TP rank computes a partial gradient
  int unit = -1;                  // index of the unit (in its stage) whose W computes the gradient
  // Fused tensors (qkv = [Q; K; V], SwiGLU fc1 = [gate; up]) are concatenations along shard_dim
  // whose parts are split over TP separately: TP rank r holds part k's r-th slice of each part, in
  // part order (so its local qkv is [Q_r; K_r; V_r]). Sizes along shard_dim; empty = one part.
  std::vector<int64_t> segments;
  int64_t local_elems(int tp) const;
  int64_t full_elems() const;
};

struct StageDesc {
  int stage = 0;                  // virtual stage
  int first_layer = 0, num_layers = 0;
  bool first = false, last = false;  // first / last virtual stage (head and loss on the last)
  bool embeds = false;               // holds the text embedding (stage 0, or a VLM's Merge stage)
  int vision_layers = 0;             // vision blocks on this stage
  std::vector<UnitDesc> units;       // forward order
  std::vector<TensorDesc> tensors;
  std::vector<ParamDesc> params;

  std::vector<int> backward_order() const;  // unit indices with a B pass, in backward order
  int find_tensor(const std::string& field, int unit) const;  // -1 if absent
};

struct ModelDesc {
  int tp = 1;
  int micro_batch_size = 1;
  int seq_len = 1;
  std::vector<StageDesc> stages;     // one per virtual stage, pp*chunks
  double flops_per_token_fwd = 0;    // full model (all TP ranks), forward
  int64_t total_params = 0;          // full model
  int64_t tokens_per_microbatch() const { return int64_t(micro_batch_size) * seq_len; }
};

// Builds the description for a validated config with `chunks` chunks per rank. `layer_split` gives
// the layers per virtual stage (config_stage_layers).
ModelDesc model_desc_build(const Config& cfg, int chunks, const std::vector<int>& layer_split);

// Unit name as used in tensor names and traces: "in", "attn3", "mlp3", "head", "loss", "out",
// and for the vision tower "vin", "vattn3", "vmlp3", "merge".
std::string unit_name(const UnitDesc& u);

}  // namespace stp
