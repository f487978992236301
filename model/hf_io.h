// hf_io.h: full (unsharded) model export and import in Hugging Face naming.
//
// Naming (our name -> the file's), chosen by model.arch:
//   llama / qwen2 (HF LlamaForCausalLM / Qwen2ForCausalLM):
//     embed.weight                  model.embed_tokens.weight
//     layers.{i}.attn_norm.weight   model.layers.{i}.input_layernorm.weight
//     layers.{i}.attn.qkv.weight    model.layers.{i}.self_attn.{q,k,v}_proj.weight  (rows [Q; K;
//     V]) layers.{i}.attn.qkv.bias      model.layers.{i}.self_attn.{q,k,v}_proj.bias    (Qwen2)
//     layers.{i}.attn.out.weight    model.layers.{i}.self_attn.o_proj.weight
//     layers.{i}.mlp_norm.weight    model.layers.{i}.post_attention_layernorm.weight
//     layers.{i}.mlp.fc1.weight     model.layers.{i}.mlp.{gate,up}_proj.weight      (rows [gate;
//     up]) layers.{i}.mlp.fc2.weight     model.layers.{i}.mlp.down_proj.weight final_norm.weight
//     model.norm.weight lm_head.weight                lm_head.weight                (absent when
//     tied)
//   Off-preset options map the obvious way: norm biases to "<norm>.bias", linear biases to
//   "<proj>.bias", learned positions to model.embed_positions.weight, a GELU fc1 to up_proj.
//   gpt (HF GPT2LMHeadModel, whose linear layers are Conv1D with weights stored (in, out)):
//     embed.weight -> transformer.wte.weight, embed.pos -> transformer.wpe.weight,
//     layers.{i}.attn_norm -> transformer.h.{i}.ln_1, attn.qkv -> attn.c_attn, attn.out ->
//     attn.c_proj, mlp_norm -> ln_2, mlp.fc1 -> mlp.c_fc, mlp.fc2 -> mlp.c_proj, final_norm ->
//     transformer.ln_f, lm_head.weight -> lm_head.weight. 2-D linear weights are TRANSPOSED to
//     Conv1D's (in, out) layout on export and back on import; c_attn keeps [Q; K; V] fused.
//   Our fused layouts are HF's concatenations exactly, and our RoPE is HF's rotate_half, so an
//   imported checkpoint computes HF's logits (up to fp32 rounding).
// - Export writes one safetensors file (metadata {"format": "pt"}) atomically; import reads every
//   tensor the config needs, checks its shape (errors name the file's tensor, the one of ours it
//   feeds, expected and found shapes) and ignores tensors it does not need (e.g. a tied
//   lm_head, rotary caches).
// - No exception leaves this API: errors are strings ("" = ok).
#pragma once

#include <string>

#include "model/params.h"
#include "model/safetensors.h"
#include "runtime/core/config.h"

namespace stp {

// The full tensors (our naming, our shapes) a config's model has, values empty.
FullState hf_expected_state(const Config& cfg);

std::string hf_export(const Config& cfg, const FullState& state, const std::string& path,
                      StDtype dtype = StDtype::F32);
std::string hf_import(const Config& cfg, const std::string& path, FullState* state);

}  // namespace stp
