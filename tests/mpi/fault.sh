#!/usr/bin/env bash
# fault.sh BIN stop|kill: a 4-rank run (TP 1 x PP 4, train.timeout_s 5) in which global rank 2 is
# stopped (SIGSTOP: hung) or killed (SIGKILL: dead) after step 2. Passes when the job exits
# non-zero within the timeout plus a margin and its output names rank 2:
#   stop: the ranks waiting on it time out naming the operation they waited on, ping every rank,
#         name rank 2 as the one that does not answer, and abort;
#   kill: mpirun reports that rank 2 exited on signal 9 and ends the others.
set -u
BIN=$1
MODE=$2
HERE=$(cd "$(dirname "$0")" && pwd)
TIMEOUT=5
OUT=$(mktemp -d /tmp/stp_fault_XXXXXX)
export OPENBLAS_NUM_THREADS=1
mpirun --oversubscribe --allow-run-as-root --bind-to none -np 4 "$BIN" --config "$HERE/tiny_train.yaml" \
  --set train.steps=1000000 --set train.timeout_s=$TIMEOUT --set output.dir="$OUT" >"$OUT/log" 2>&1 &
MPIRUN=$!
cleanup() {
  [ -n "${VICTIM:-}" ] && kill -CONT "$VICTIM" 2>/dev/null && kill -KILL "$VICTIM" 2>/dev/null
  kill "$MPIRUN" 2>/dev/null
  rm -rf "$OUT"
}
trap cleanup EXIT
for _ in $(seq 1 300); do grep -q "step 2/" "$OUT/log" && break; sleep 0.1; done
grep -q "step 2/" "$OUT/log" || { echo "FAIL: the run did not reach step 2"; cat "$OUT/log"; exit 1; }
VICTIM=""
for p in $(pgrep -P "$MPIRUN"); do
  tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=2 && VICTIM=$p
done
[ -n "$VICTIM" ] || { echo "FAIL: rank 2's process not found under mpirun $MPIRUN"; exit 1; }
T0=$(date +%s.%N)
if [ "$MODE" = stop ]; then kill -STOP "$VICTIM"; else kill -KILL "$VICTIM"; fi
wait "$MPIRUN"
RC=$?
ELAPSED=$(echo "$(date +%s.%N) - $T0" | bc)
echo "# $MODE rank 2 (pid $VICTIM): job exited with $RC after ${ELAPSED}s (train.timeout_s $TIMEOUT)"
grep -E "FATAL|timed out|noticed|signal" "$OUT/log" | head -5 | sed 's/^/#   /'
FAIL=0
[ "$RC" -ne 0 ] || { echo "FAIL: the job exited 0"; FAIL=1; }
[ "$(echo "$ELAPSED < $TIMEOUT + 15" | bc)" = 1 ] || { echo "FAIL: took ${ELAPSED}s"; FAIL=1; }
if [ "$MODE" = stop ]; then
  grep -q "timed out after" "$OUT/log" && grep -q "rank 2 (tp 0, pp 2, dp 0) did not answer" "$OUT/log" \
    && grep -q "FATAL" "$OUT/log" || { echo "FAIL: no timeout message naming rank 2"; FAIL=1; }
else
  grep -Eq "rank 2 .*signal 9|rank 2 with PID" "$OUT/log" || { echo "FAIL: rank 2's death is not reported"; FAIL=1; }
fi
[ $FAIL -eq 0 ] && echo "1 passed, 0 failed" || { cat "$OUT/log" | tail -30; echo "0 passed, 1 failed"; }
exit $FAIL
