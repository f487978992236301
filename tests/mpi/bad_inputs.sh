#!/usr/bin/env bash
# bad_inputs.sh BIN: a 2-rank run (TP 1 x PP 2) refuses bad inputs at set-up with exit code 2 and
# a message that names what is wrong: a missing token file, a token file with an id >= vocab, and
# a checkpoint written by another configuration; and two ranks of the CPU path under torchrun
# (which starts no MPI job: each rank refuses at once instead of waiting for peers).
set -u
BIN=$1
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mktemp -d /tmp/stp_bad_XXXXXX)
trap 'rm -rf "$OUT"' EXIT
export OPENBLAS_NUM_THREADS=1
PASS=0
FAIL=0
run() {  # run NAME EXPECTED_RC PATTERN [--set ...]
  local name=$1 want=$2 pattern=$3
  shift 3
  mpirun --oversubscribe --allow-run-as-root --bind-to none -np 2 "$BIN" --config "$HERE/tiny_train.yaml" \
    --set parallel.pp=2 --set schedule.microbatches=2 --set output.dir="$OUT/run" "$@" >"$OUT/log" 2>&1
  local rc=$?
  if [ "$rc" -eq "$want" ] && grep -q -- "$pattern" "$OUT/log"; then
    echo "# ok: $name (exit $rc): $(grep -m1 -- "$pattern" "$OUT/log" | sed 's/^.*\] //' | cut -c1-160)"
    PASS=$((PASS + 1))
  else
    echo "FAIL: $name: exit $rc (want $want), pattern '$pattern'"
    tail -20 "$OUT/log"
    FAIL=$((FAIL + 1))
  fi
}
run "missing token file" 2 "data.path '/nonexistent/corpus.u16': cannot open" \
  --set data.kind=tokens --set data.path=/nonexistent/corpus.u16
python3 -c "
import struct
ids = [5] * 200
ids[37] = 100  # model.vocab is 64
open('$OUT/over.u16', 'wb').write(struct.pack('<200H', *ids))"
run "id over the vocabulary" 2 "token 37 (byte offset 74) is 100, but model.vocab is 64" \
  --set data.kind=tokens --set data.path="$OUT/over.u16"
run "write a checkpoint" 0 "checkpoint: step 2" \
  --set train.steps=2 --set output.checkpoint.dir="$OUT/ckpt"
run "checkpoint from another config" 2 "model.hidden is 32 there, 64 here" \
  --set train.steps=4 --set output.checkpoint.dir="$OUT/ckpt" --set train.resume=true --set model.hidden=64
run "resume the same config" 0 "resumed from" \
  --set train.steps=4 --set output.checkpoint.dir="$OUT/ckpt" --set train.resume=true
# torchrun's variables, no mpirun: both ranks exit 2 naming mpirun.
for r in 0 1; do
  RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 \
    timeout 60 "$BIN" --config "$HERE/tiny_train.yaml" --set parallel.pp=2 --set schedule.microbatches=2 \
    --set output.dir="$OUT/torchrun" >"$OUT/log.$r" 2>&1 &
done
TR_FAIL=0
for r in 0 1; do
  wait -n
  rc=$?
  [ "$rc" -eq 2 ] || TR_FAIL=1
done
if [ "$TR_FAIL" -eq 0 ] && grep -q "rank 0: train.device=cpu with 2 ranks needs mpirun" "$OUT/log.0" &&
   grep -q "rank 1: train.device=cpu with 2 ranks needs mpirun" "$OUT/log.1"; then
  echo "# ok: cpu path under torchrun (exit 2): $(grep -m1 needs "$OUT/log.1" | sed 's/^.*\] //' | cut -c1-160)"
  PASS=$((PASS + 1))
else
  echo "FAIL: cpu path under torchrun"
  cat "$OUT/log.0" "$OUT/log.1"
  FAIL=$((FAIL + 1))
fi
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
