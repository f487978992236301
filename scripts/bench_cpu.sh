#!/usr/bin/env bash
# bench_cpu.sh: stp-train's CPU backend vs PyTorch eager, one training step (median of several),
# same shapes and at most the same number of threads, for the tiny and small configs of
# tests/model/bench_model.cpp (goal: stp-train >= 1.2x PyTorch's tokens/s).
#
# PyTorch gets its best of three thread layouts with <= THREADS threads, because Debian's build
# runs OpenMP (its own ops) and OpenBLAS (its GEMMs) as two pools that spin against each other:
#   omp=THREADS blas=THREADS (OMP_WAIT_POLICY=PASSIVE) | omp=1 blas=THREADS | omp=THREADS blas=1
# (A PyPI wheel does its GEMMs in MKL under torch.set_num_threads, so its layouts differ only in
# the OpenMP count.) On PyTorch >= 2.0 each layout is also run with scaled_dot_product_attention,
# and the best of all of them is the peer.
# stp-train runs with OPENBLAS_NUM_THREADS=THREADS (its attention splits over the same count).
# Output: '#' comment lines, one JSON line per (config, PyTorch layout), then one summary JSON line
# per config: {"summary": name, "stp_tokens_per_s", "torch_best_tokens_per_s", "ratio", ...}.
#   THREADS (2), STEPS (7 timed after 2 warm-up; TINY_STEPS, 50, for the tiny-* configs, whose
#   ~10 ms steps need more samples on a shared VM), ONLY (a config name), PYTHON (/usr/bin/python3
#   with Debian's python3-torch), BUILD_DIR (build-bench; configured and built here).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
THREADS="${THREADS:-2}"
STEPS="${STEPS:-7}"
BUILD_DIR="${BUILD_DIR:-$ROOT/build-bench}"
PYTHON="${PYTHON:-/usr/bin/python3}"
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "# PyTorch not importable by $PYTHON: apt-get install python3-torch (Debian, 1.13)" >&2
  exit 1
fi
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DSTP_CUDA=OFF > /dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target test_model > /dev/null
attns="explicit"
if "$PYTHON" -c "import torch.nn.functional as F; F.scaled_dot_product_attention" 2>/dev/null; then
  attns="explicit sdpa"
fi
echo "# host $(hostname) cores $(nproc) load $(cut -d' ' -f1-3 /proc/loadavg) threads $THREADS" \
  "steps $STEPS (tiny ${TINY_STEPS:-50}) torch $("$PYTHON" -c 'import torch; print(torch.__version__)') attention: $attns"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for name in ${ONLY:-tiny-gpt tiny-qwen2 small-gpt small-qwen2}; do
  steps=$STEPS
  case "$name" in tiny-*) steps=${TINY_STEPS:-50} ;; esac
  OPENBLAS_NUM_THREADS="$THREADS" STP_BENCH_ONLY="$name" STP_BENCH_STEPS="$steps" \
    "$BUILD_DIR/test_model" "[.bench]" | grep '^{' > "$work/stp.jsonl"
  : > "$work/torch.jsonl"
  for attn in $attns; do
    for layout in "$THREADS $THREADS PASSIVE" "1 $THREADS PASSIVE" "$THREADS 1 PASSIVE"; do
      set -- $layout
      OMP_NUM_THREADS="$1" OPENBLAS_NUM_THREADS="$2" OMP_WAIT_POLICY="$3" \
        "$PYTHON" "$ROOT/scripts/bench_cpu_model.py" "$work/stp.jsonl" --threads "$1" \
        --steps "$steps" --tag "omp=$1 blas=$2" --attn "$attn" | tee -a "$work/torch.jsonl"
    done
  done
  "$PYTHON" - "$work/torch.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
best = max(rows, key=lambda r: r["torch_tokens_per_s"])
print(json.dumps({"summary": best["name"], "stp_step_ms": best["stp_step_ms"],
                  "stp_tokens_per_s": best["stp_tokens_per_s"],
                  "torch_best_step_ms": best["torch_step_ms"],
                  "torch_best_tokens_per_s": best["torch_tokens_per_s"], "torch_best_env": best["env"],
                  "torch_best_attn": best["attn"], "torch": best["torch"],
                  "ratio": round(best["stp_tokens_per_s"] / best["torch_tokens_per_s"], 3)}))
PY
done
