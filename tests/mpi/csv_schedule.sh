#!/usr/bin/env bash
# csv_schedule.sh BIN: `schedule.name: csv` trains an imported program. The STP program of a
# 2-rank pipeline is exported with `stp-train schedule --format csv`, imported back as csv, and
# both runs must give bit-identical losses; an invalid CSV (a backward before its forward) is
# refused at set-up with exit code 2, naming the rank and the rule.
set -u
BIN=$1
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mktemp -d /tmp/stp_csv_XXXXXX)
trap 'rm -rf "$OUT"' EXIT
export OPENBLAS_NUM_THREADS=1
COMMON=(--config "$HERE/tiny_train.yaml" --set parallel.pp=2 --set schedule.microbatches=5 --set train.steps=3)
train() {  # train NAME [--set ...]
  local name=$1
  shift
  mpirun --oversubscribe --allow-run-as-root --bind-to none -np 2 "$BIN" "${COMMON[@]}" \
    --set output.dir="$OUT/$name" "$@" >"$OUT/$name.log" 2>&1
}
FAIL=0
"$BIN" schedule "${COMMON[@]}" --set schedule.name=stp --format csv >"$OUT/stp.csv" || FAIL=1
train generated --set schedule.name=stp || { echo "FAIL: stp run"; tail -5 "$OUT/generated.log"; FAIL=1; }
train imported --set schedule.name=csv --set schedule.file="$OUT/stp.csv" --set parallel.chunks=2 ||
  { echo "FAIL: csv run"; tail -5 "$OUT/imported.log"; FAIL=1; }
if [ $FAIL -eq 0 ]; then
  a=$(python3 -c "import json,sys; print([json.loads(l)['loss'] for l in open(sys.argv[1]) if '\"step\"' in l])" "$OUT/generated/metrics.jsonl")
  b=$(python3 -c "import json,sys; print([json.loads(l)['loss'] for l in open(sys.argv[1]) if '\"step\"' in l])" "$OUT/imported/metrics.jsonl")
  echo "# stp losses       $a"
  echo "# imported losses  $b"
  [ "$a" = "$b" ] && [ -n "$a" ] || { echo "FAIL: losses differ"; FAIL=1; }
fi
printf '0B0,0F0,0F1,0F2,0F3,0F4,0B1,0B2,0B3,0B4\n1F0,1B0,1F1,1B1,1F2,1B2,1F3,1B3,1F4,1B4\n' >"$OUT/bad.csv"
train bad --set schedule.name=csv --set schedule.file="$OUT/bad.csv" --set parallel.chunks=1
rc=$?
if [ $rc -eq 2 ] && grep -q "rank 0, step 0 \[order\]" "$OUT/bad.log"; then
  echo "# ok: invalid csv refused: $(grep -m1 'order' "$OUT/bad.log" | sed 's/^.*\] //' | cut -c1-160)"
else
  echo "FAIL: invalid csv: exit $rc"
  tail -5 "$OUT/bad.log"
  FAIL=1
fi
[ $FAIL -eq 0 ] && echo "1 passed, 0 failed" || echo "0 passed, 1 failed"
exit $FAIL
