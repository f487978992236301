#!/usr/bin/env bash
# sigterm.sh BIN: pre-emption (train.checkpoint_on_sigterm, runtime/signals.h) on a 4-rank run
# (TP 2 x PP 2, STP; constant learning rate, so the losses do not depend on train.steps):
#   A  `kill -TERM` to mpirun, as on a desk: Open MPI 4.1 sends SIGCONT, waits
#      odls_base_sigkill_timeout (3 s here), forwards SIGTERM to every rank, waits again, then
#      SIGKILLs what is left; mpirun itself then exits 1 (measured: it does so whatever the ranks
#      return). Passes when rank 0 logs "SIGTERM: checkpoint of step N written to
#      OUT/a/checkpoint; exiting" (output.checkpoint.dir is unset, so output.dir/checkpoint) with N
#      the last step in metrics.jsonl, the checkpoint of step N is complete (manifest and 4
#      shards), the summary line says why the run stopped, and no rank was killed.
#   B  SIGTERM straight to every rank, twice (as Slurm's scancel or pre-emption does, with mpirun
#      forwarding a second one): every rank exits 143 (128 + SIGTERM), so mpirun exits 143; the
#      second signal changes nothing; the checkpoint goes to the configured output.checkpoint.dir.
#   C  one process (no launcher), SIGTERM once it has printed the topology (the handler is in
#      place) and before its first step, which takes about a second here: it exits 143 saying that
#      no checkpoint was written, and writes none.
#   D  train.resume from A's checkpoint for 3 more steps reproduces an uninterrupted run of N + 3
#      steps bit for bit (loss and gradient norm of steps N+1..N+3), and A's step N matches it too.
set -u
BIN=$1
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=SCRIPTDIR/../sigterm_lib.sh
. "$HERE/../sigterm_lib.sh"
sigterm_setup stp_sigterm
export OPENBLAS_NUM_THREADS=1
MPIRUN=(mpirun --oversubscribe --allow-run-as-root --bind-to none --mca odls_base_sigkill_timeout 3 -np 4)
ARGS=(--config "$HERE/tiny_train.yaml" --set parallel.tp=2 --set parallel.pp=2 --set schedule.name=stp
      --set schedule.microbatches=6 --set train.lr_schedule=constant)
FAIL=0
fail() { echo "FAIL: $*"; FAIL=1; }

# Starts a long 4-rank run with output.dir DIR in the background (PID = mpirun) and waits for 3 steps.
start_long_run() {
  local dir=$1
  shift
  start_run "$dir" 30 "${MPIRUN[@]}" "$BIN" "${ARGS[@]}" --set train.steps=1000000 --set output.dir="$dir" "$@"
}

# Checks a SIGTERM stop: the log line, the complete checkpoint of the last step (and no other), the
# summary, no rank killed.
check_stop() {
  local name=$1 dir=$2 ckpt=$3 n steps
  n=$(last_step "$dir/metrics.jsonl")
  echo "#   $name: last step in metrics.jsonl: $n; $(grep -o 'SIGTERM: checkpoint.*' "$dir.log")"
  check_checkpoint "$name" "$dir" "$ckpt" "$n" 4 || FAIL=1
  steps=$(find "$ckpt" -mindepth 1 -maxdepth 1 -name 'step_*' 2>/dev/null | wc -l)
  [ "$steps" -eq 1 ] || fail "$name: $steps checkpoints in $ckpt, expected the one of step $n"
  tail -1 "$dir/metrics.jsonl" | grep -q '"stopped":"SIGTERM: checkpoint of step' ||
    fail "$name: the summary line does not say the run stopped on SIGTERM"
  grep -Eq "signal 9|Killed|FATAL" "$dir.log" && fail "$name: a rank was killed or aborted"
}

T0=$(date +%s.%N)
# --- A: SIGTERM to mpirun -------------------------------------------------------------------------
start_long_run "$OUT/a"
kill -TERM "$PID"
reap
echo "# A: kill -TERM mpirun: mpirun exited $RC"
[ "$RC" -eq 1 ] || fail "A: mpirun exited $RC, expected 1 (Open MPI 4.1 after SIGTERM)"
check_stop A "$OUT/a" "$OUT/a/checkpoint"

# --- B: SIGTERM to every rank, twice ---------------------------------------------------------------
start_long_run "$OUT/b" --set output.checkpoint.dir="$OUT/b_ckpt"
mapfile -t RANKS < <(pgrep -P "$PID")
[ "${#RANKS[@]}" -eq 4 ] || fail "B: found ranks '${RANKS[*]}' under mpirun $PID"
kill -TERM "${RANKS[@]}"
sleep 0.05
kill -TERM "${RANKS[@]}" 2>/dev/null
reap
echo "# B: kill -TERM (twice) every rank: mpirun exited $RC"
[ "$RC" -eq 143 ] || fail "B: mpirun exited $RC, expected 143"
check_stop B "$OUT/b" "$OUT/b_ckpt"

# --- C: SIGTERM before step 1 -------------------------------------------------------------------------
"$BIN" "${ARGS[@]}" --set parallel.tp=1 --set parallel.pp=1 --set schedule.name=1f1b --set schedule.microbatches=2 \
  --set model.hidden=512 --set model.heads=8 --set model.ffn_hidden=2048 --set model.seq_len=512 --set model.vocab=256 \
  --set train.steps=5 --set output.dir="$OUT/c" >"$OUT/c.log" 2>&1 &
PID=$!
for _ in $(seq 1 1000); do grep -q "# topology" "$OUT/c.log" && break; sleep 0.01; done
kill -TERM "$PID"
reap
echo "# C: SIGTERM before step 1: exit $RC; $(grep -o 'SIGTERM.*' "$OUT/c.log")"
[ "$RC" -eq 143 ] || fail "C: exit $RC, expected 143"
grep -q "SIGTERM before step 1 completed: no checkpoint written; exiting" "$OUT/c.log" || fail "C: no message"
grep -q "step 1/" "$OUT/c.log" && fail "C: step 1 ran"
[ -e "$OUT/c/checkpoint" ] && fail "C: a checkpoint was written"

# --- D: resume from A's checkpoint against an uninterrupted run ------------------------------------
N=$(last_step "$OUT/a/metrics.jsonl")
if [ "$N" -ge 1 ]; then
  "${MPIRUN[@]}" "$BIN" "${ARGS[@]}" --set train.steps=$((N + 3)) --set train.resume=true \
    --set output.checkpoint.dir="$OUT/a/checkpoint" --set output.dir="$OUT/resumed" >"$OUT/resumed.log" 2>&1 ||
    { tail -20 "$OUT/resumed.log"; fail "D: the resumed run failed"; }
  grep -q "resumed from $OUT/a/checkpoint at step $((N + 1))" "$OUT/resumed.log" || fail "D: the run did not resume at step $((N + 1))"
  "${MPIRUN[@]}" "$BIN" "${ARGS[@]}" --set train.steps=$((N + 3)) --set output.dir="$OUT/ref" >"$OUT/ref.log" 2>&1 ||
    { tail -20 "$OUT/ref.log"; fail "D: the reference run failed"; }
  python3 - "$OUT" "$N" <<'PY' || FAIL=1
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
def steps(run):
    return {d["step"]: (d["loss"], d["grad_norm"]) for d in map(json.loads, open(out + "/" + run + "/metrics.jsonl")) if "step" in d}
ref, res, a = steps("ref"), steps("resumed"), steps("a")
bad = 0
for s in range(n + 1, n + 4):
    same = res.get(s) == ref.get(s)
    print("#   D: step %d  resumed loss %r  uninterrupted %r  %s" % (s, res.get(s, (None,))[0], ref[s][0], "same" if same else "DIFFERENT"))
    bad += not same
if sorted(res) != list(range(n + 1, n + 4)):
    print("FAIL: D: the resumed run reported steps %s" % sorted(res)); bad += 1
if a[n] != ref[n]:
    print("FAIL: D: step %d before SIGTERM %r differs from the uninterrupted run's %r" % (n, a[n], ref[n])); bad += 1
if bad: print("FAIL: D: the resumed run is not bit-identical to the uninterrupted one")
sys.exit(1 if bad else 0)
PY
fi
echo "# total $(echo "$(date +%s.%N) - $T0" | bc | cut -c1-5) s"
[ $FAIL -eq 0 ] && echo "1 passed, 0 failed" || echo "0 passed, 1 failed"
exit $FAIL
