# sigterm_lib.sh: helpers of the pre-emption tests (train.checkpoint_on_sigterm) tests/mpi/sigterm.sh
# and tests/cuda/sigterm.sh, which source it from their own directory. They start a long training run
# in the background, stop it with SIGTERM and check the checkpoint it left. A run with output.dir DIR
# logs to DIR.log.
# shellcheck shell=bash

# sigterm_setup PREFIX: OUT = a new directory /tmp/PREFIX_XXXXXX; when the script exits, the background
# run ($PID, if any) is killed and OUT removed.
sigterm_setup() {
  OUT=$(mktemp -d "/tmp/$1_XXXXXX")
  PID=""
  trap sigterm_cleanup EXIT
}
sigterm_cleanup() {
  [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null
  rm -rf "$OUT"
}

# start_run DIR SECONDS CMD...: runs CMD in the background (PID = its process, output in DIR.log) and
# waits until DIR/metrics.jsonl holds 3 lines. If the run ends first or SECONDS pass, prints the last
# 20 lines of the log and a FAIL line and exits 1.
start_run() {
  local dir=$1 seconds=$2
  shift 2
  "$@" >"$dir.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 $((seconds * 10))); do
    [ -f "$dir/metrics.jsonl" ] && [ "$(wc -l <"$dir/metrics.jsonl")" -ge 3 ] && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  tail -20 "$dir.log"
  echo "FAIL: $dir: no 3 steps logged (the run ended, or $seconds s passed)"
  exit 1
}

# reap: waits for the background run to end; RC = its exit status, PID = "".
reap() {
  wait "$PID"
  # shellcheck disable=SC2034  # RC is read by the caller
  RC=$?
  PID=""
}

# last_step FILE: the last step number in a metrics file (the summary line has none).
last_step() {
  python3 -c 'import json,sys; print([d for d in map(json.loads, open(sys.argv[1])) if "step" in d][-1]["step"])' "$1"
}

# check_checkpoint NAME DIR CKPT N SHARDS: DIR.log says "SIGTERM: checkpoint of step N written to CKPT;
# exiting" and CKPT/step_<N as %08d> holds manifest.json and SHARDS rank_*.safetensors shards. Prints
# "FAIL: NAME: ..." for each check that fails and then returns 1.
check_checkpoint() {
  local name=$1 dir=$2 ckpt=$3 n=$4 want=$5 bad=0 step_dir shards
  grep -q "SIGTERM: checkpoint of step $n written to $ckpt; exiting" "$dir.log" ||
    { echo "FAIL: $name: no 'SIGTERM: checkpoint of step $n written to $ckpt; exiting' in the log"; bad=1; }
  step_dir=$ckpt/$(printf 'step_%08d' "$n")
  shards=$(find "$step_dir" -name 'rank_*.safetensors' 2>/dev/null | wc -l)
  if [ ! -f "$step_dir/manifest.json" ] || [ "$shards" -ne "$want" ]; then
    echo "FAIL: $name: $step_dir lacks the manifest or has $shards of $want shards"
    bad=1
  fi
  return $bad
}
