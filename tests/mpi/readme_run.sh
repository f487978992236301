#!/usr/bin/env bash
# readme_run.sh BIN: the README's main job on this CPU machine: the byte corpus from
# scripts/make_corpus.sh, then configs/tiny_stp.yaml (TP 2 x PP 2 = 4 ranks, STP schedule) under
# mpirun. Passes when the final loss is below the corpus's byte unigram entropy and the run wrote
# metrics.jsonl (a line per step with the documented keys, then the summary) and a trace per rank.
set -u
BIN=$1
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mktemp -d /tmp/stp_readme_XXXXXX)
trap 'rm -rf "$OUT"' EXIT
ENTROPY=$("$ROOT/scripts/make_corpus.sh" "$OUT/corpus.u16" | sed -n 's/^entropy_nats=//p')
export OPENBLAS_NUM_THREADS=1
T0=$(date +%s.%N)
mpirun --oversubscribe --allow-run-as-root --bind-to none -np 4 "$BIN" --config "$ROOT/configs/tiny_stp.yaml" \
  --set data.path="$OUT/corpus.u16" --set output.dir="$OUT/run" >"$OUT/log" 2>&1
RC=$?
echo "# mpirun -np 4 ... --config configs/tiny_stp.yaml: exit $RC after $(echo "$(date +%s.%N) - $T0" | bc | cut -c1-5) s"
grep -E "step (1|50|100|150)/" "$OUT/log" | sed 's/^.*info: /#   /'
[ "$RC" -eq 0 ] || { tail -20 "$OUT/log"; echo "0 passed, 1 failed"; exit 1; }
python3 - "$OUT/run" "$ENTROPY" <<'PY'
import json, os, sys
run, entropy = sys.argv[1], float(sys.argv[2])
lines = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
steps, summary = lines[:-1], lines[-1]
keys = ["step", "loss", "lr", "grad_norm", "tokens", "step_time_s", "tokens_per_s", "tflops_per_gpu",
        "mfu", "peak_mem_bytes", "peak_mem_bytes_per_rank", "exposed_comm_s"]
problems = []
if summary.get("summary") is not True: problems.append("the last line is not the summary")
for s in steps:
    missing = [k for k in keys if k not in s]
    if missing: problems.append("step %s lacks %s" % (s.get("step"), missing)); break
if [s["step"] for s in steps] != list(range(1, len(steps) + 1)): problems.append("steps are not 1..n")
for r in range(4):
    t = json.load(open(os.path.join(run, "trace_rank%d.json" % r)))
    if not any(e.get("ph") == "X" and e.get("cat") == "compute" for e in t["traceEvents"]):
        problems.append("trace_rank%d.json has no compute events" % r)
final = summary["final_loss"]
print("# loss %.4f -> %.4f over %d steps; corpus byte unigram entropy %.4f nats"
      % (steps[0]["loss"], final, len(steps), entropy))
if not final < entropy: problems.append("final loss %.4f is not below the entropy %.4f" % (final, entropy))
for p in problems: print("FAIL: " + p)
print("%d passed, %d failed" % (0 if problems else 1, 1 if problems else 0))
sys.exit(1 if problems else 0)
PY
