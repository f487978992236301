#!/usr/bin/env bash
# sigterm.sh BIN: pre-emption on the CUDA path (train.device=cuda, train.checkpoint_on_sigterm,
# runtime/train_loop.h) on one GPU, tp = pp = dp = 1, synthetic data, constant learning rate.
# Passes when BIN, stopped by SIGTERM after it logged 3 steps, exits 143, logs "SIGTERM: checkpoint
# of step N written to", leaves the complete checkpoint of step N (manifest + shard), and a
# train.resume run then trains steps N+1 and N+2 and exits 0, appending them to metrics.jsonl.
# Without a GPU (no nvidia-smi device) it prints "SKIPPED: no CUDA device (sigterm.sh)" and checks
# nothing; CTest reports it skipped. scripts/gpu_check.sh runs it on the GPU machine.
set -u
BIN=$1
HERE=$(cd "$(dirname "$0")" && pwd)
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  echo "SKIPPED: no CUDA device (sigterm.sh)"
  exit 0
fi
OUT=$(mktemp -d /tmp/stp_cuda_sigterm_XXXXXX)
PID=""
cleanup() {
  [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null
  rm -rf "$OUT"
}
trap cleanup EXIT
ARGS=(--config "$HERE/../../configs/tiny_stp.yaml" --set parallel.tp=1 --set parallel.pp=1
      --set schedule.name=1f1b --set schedule.microbatches=2 --set data.kind=synthetic
      --set train.device=cuda --set train.lr_schedule=constant --set output.dir="$OUT/run")
"$BIN" "${ARGS[@]}" --set train.steps=1000000 >"$OUT/run.log" 2>&1 &
PID=$!
for _ in $(seq 1 1200); do
  [ -f "$OUT/run/metrics.jsonl" ] && [ "$(wc -l <"$OUT/run/metrics.jsonl")" -ge 3 ] && break
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.1
done
kill -TERM "$PID" 2>/dev/null
wait "$PID"
RC=$?
PID=""
cat "$OUT/run.log"
if [ "$RC" -ne 143 ]; then
  echo "FAIL: exit $RC after SIGTERM, expected 143"
  exit 1
fi
N=$(python3 -c 'import json,sys; print([d for d in map(json.loads, open(sys.argv[1])) if "step" in d][-1]["step"])' \
    "$OUT/run/metrics.jsonl")
grep -q "SIGTERM: checkpoint of step $N written to $OUT/run/checkpoint; exiting" "$OUT/run.log" ||
  { echo "FAIL: no 'SIGTERM: checkpoint of step $N written to' line"; exit 1; }
STEP_DIR=$OUT/run/checkpoint/$(printf 'step_%08d' "$N")
if [ ! -f "$STEP_DIR/manifest.json" ] || [ -z "$(find "$STEP_DIR" -name 'rank_*.safetensors')" ]; then
  echo "FAIL: $STEP_DIR lacks the manifest or the shard"
  exit 1
fi
"$BIN" "${ARGS[@]}" --set train.steps=$((N + 2)) --set train.resume=true \
  --set output.checkpoint.dir="$OUT/run/checkpoint" >"$OUT/resume.log" 2>&1
RC=$?
cat "$OUT/resume.log"
[ "$RC" -eq 0 ] || { echo "FAIL: the resumed run exited $RC"; exit 1; }
python3 - "$OUT/run/metrics.jsonl" "$N" <<'PY' || exit 1
import json, sys
steps = [d["step"] for d in map(json.loads, open(sys.argv[1])) if "step" in d]
n = int(sys.argv[2])
if steps[-2:] != [n + 1, n + 2]:
    sys.exit(f"FAIL: the steps after the resume are {steps[-4:]}, expected ... {n}, {n + 1}, {n + 2}")
PY
echo "# SIGTERM at step $N: exit 143, checkpoint of step $N, resumed to step $((N + 2))"
