#!/usr/bin/env bash
# Simulator tables at the paper's scales (PAPER.md "The experiments"): GPT-3 13B and a Qwen2-style
# ~12.6B on A800 and H20, TP 8, PP 2 and 4, 64 and 256 micro-batches; every schedule, ranked.
#   scripts/paper_tables.sh [build/stp-train]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/build/stp-train}
for model in gpt3-13b qwen2-12b; do
  for gpu in a800 h20; do
    for pp in 2 4; do
      for m in 64 256; do
        "$BIN" simulate --compare --config "$ROOT/configs/paper/${model}_${gpu}.yaml" \
          --set parallel.pp=$pp --set cluster.nodes=$pp --set schedule.microbatches=$m | sed "s#$ROOT/##"
      done
    done
  done
done
