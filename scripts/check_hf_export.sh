#!/usr/bin/env bash
# Proves that an exported checkpoint opens in Hugging Face transformers and is the same model:
# trains tiny-qwen2 for 30 steps, exports it (Hugging Face naming), starts a 1-step run from the
# export (train.init_from), and compares that run's step-1 loss with the loss transformers'
# Qwen2ForCausalLM computes from the exported file on the same batch. Needs Debian's python3-torch
# and a transformers that runs on it, e.g.
#   apt-get install python3-torch
#   /usr/bin/python3 -m pip install --target /tmp/hfpy "transformers==4.40.2" "tokenizers<0.20" \
#       "huggingface_hub<0.24" safetensors
#   STP_HF_PYPATH=/tmp/hfpy scripts/check_hf_export.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$ROOT/build/stp-train}
W=$(mktemp -d /tmp/stp_hf_XXXXXX)
trap 'rm -rf "$W"' EXIT
[ -f "$ROOT/runs/corpus/corpus.u16" ] || "$ROOT/scripts/make_corpus.sh" >/dev/null
cat > "$W/run.yaml" <<YAML
include: $ROOT/configs/models/tiny-qwen2.yaml
parallel: {tp: 1, pp: 1, dp: 1}
schedule: {name: 1f1b, microbatches: 2, micro_batch_size: 2}
train: {steps: 30, lr: 3.0e-3, warmup_steps: 0}
data: {kind: tokens, path: $ROOT/runs/corpus/corpus.u16, dtype: uint16}
output: {dir: $W/run, checkpoint: {dir: $W/ckpt}}
YAML
"$BIN" --config "$W/run.yaml" --log-level warn
"$BIN" export --config "$W/run.yaml" --checkpoint "$W/ckpt" --out "$W/model.safetensors"
"$BIN" --config "$W/run.yaml" --set train.init_from="$W/model.safetensors" --set train.steps=1 \
  --set output.dir="$W/run2" --set output.checkpoint.dir="$W/ck2" --log-level warn
STP=$(head -1 "$W/run2/metrics.jsonl" | python3 -c "import json,sys; print(repr(json.load(sys.stdin)['loss']))")
HF=$(/usr/bin/python3 "$ROOT/scripts/hf_loss_qwen2.py" "$W/model.safetensors" "$ROOT/runs/corpus/corpus.u16" | tail -1)
echo "# stp-train step-1 loss from the export: $STP"
echo "# $HF"
python3 - "$STP" "${HF##* }" <<'PY'
import sys
a, b = float(sys.argv[1]), float(sys.argv[2])
rel = abs(a - b) / abs(a)
print("# relative difference %.2e (bound 1e-5: fp32 rounding)" % rel)
print("1 passed, 0 failed" if rel < 1e-5 else "0 passed, 1 failed")
sys.exit(0 if rel < 1e-5 else 1)
PY
