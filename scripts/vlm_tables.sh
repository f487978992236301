#!/usr/bin/env bash
# Simulator tables for the two Qwen2-VL-scale models (PAPER.md "The experiments": ~15B and ~29B,
# ~3k visual tokens per sample): A800 and H20, TP 8, PP 2 and 4, 64 and 256 micro-batches, every
# schedule ranked, for two placements of the vision tower:
#   front     the whole tower at the front of stage 0 and the LLM layers split evenly (the
#             unbalanced default: the tower costs as much as ~15 (15B) / ~10 (29B) LLM layers);
#   balanced  stage_layers (and for PP 4 the tower spread over the first two stages) chosen so
#             every virtual stage carries about the same FLOPs.
#   scripts/vlm_tables.sh [build/stp-train]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/build/stp-train}
balanced() {  # model pp -> --set arguments
  case "$1/$2" in
    qwen2-vl-15b/2) echo "--set parallel.stage_layers=[1,16,16,15]" ;;
    qwen2-vl-15b/4) echo "--set model.vision.placement=spread --set model.vision.spread_stages=2 --set parallel.stage_layers=[0,1,8,8,8,8,8,7]" ;;
    qwen2-vl-29b/2) echo "--set parallel.stage_layers=[8,19,19,18]" ;;
    qwen2-vl-29b/4) echo "--set model.vision.placement=spread --set model.vision.spread_stages=2 --set parallel.stage_layers=[0,4,10,10,10,10,10,10]" ;;
  esac
}
for model in qwen2-vl-15b qwen2-vl-29b; do
  for gpu in a800 h20; do
    for pp in 2 4; do
      for m in 64 256; do
        for placement in front balanced; do
          extra=""
          [ "$placement" = balanced ] && extra=$(balanced "$model" "$pp")
          echo "## $model on $gpu, PP $pp, M $m, placement $placement ${extra:+($extra)}"
          # shellcheck disable=SC2086
          "$BIN" simulate --compare --config "$ROOT/configs/paper/${model}_${gpu}.yaml" \
            --set parallel.pp=$pp --set cluster.nodes=$pp --set schedule.microbatches=$m $extra | sed "s#$ROOT/##"
        done
      done
    done
  done
done
