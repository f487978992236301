#!/usr/bin/env bash
# sigterm.sh BIN: pre-emption on the CUDA path (train.device=cuda, train.checkpoint_on_sigterm,
# runtime/train_loop.h) on one GPU, tp = pp = dp = 1, synthetic data, constant learning rate.
# Passes when BIN, stopped by SIGTERM after it logged 3 steps (within 120 s), exits 143, logs
# "SIGTERM: checkpoint of step N written to OUT/run/checkpoint; exiting", leaves the complete
# checkpoint of step N (manifest + the one shard), and a train.resume run then trains steps N+1 and
# N+2 and exits 0, appending them to metrics.jsonl. Helpers: tests/sigterm_lib.sh.
# Without a GPU (no nvidia-smi device) it prints "SKIPPED: no CUDA device (sigterm.sh)" and checks
# nothing; CTest reports it skipped. scripts/gpu_check.sh runs it on the GPU machine.
set -u
BIN=$1
HERE=$(cd "$(dirname "$0")" && pwd)
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  echo "SKIPPED: no CUDA device (sigterm.sh)"
  exit 0
fi
# shellcheck source=SCRIPTDIR/../sigterm_lib.sh
. "$HERE/../sigterm_lib.sh"
sigterm_setup stp_cuda_sigterm
ARGS=(--config "$HERE/../../configs/tiny_stp.yaml" --set parallel.tp=1 --set parallel.pp=1
      --set schedule.name=1f1b --set schedule.microbatches=2 --set data.kind=synthetic
      --set train.device=cuda --set train.lr_schedule=constant --set output.dir="$OUT/run")
start_run "$OUT/run" 120 "$BIN" "${ARGS[@]}" --set train.steps=1000000
kill -TERM "$PID"
reap
cat "$OUT/run.log"
if [ "$RC" -ne 143 ]; then
  echo "FAIL: exit $RC after SIGTERM, expected 143"
  exit 1
fi
N=$(last_step "$OUT/run/metrics.jsonl")
check_checkpoint cuda "$OUT/run" "$OUT/run/checkpoint" "$N" 1 || exit 1
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
