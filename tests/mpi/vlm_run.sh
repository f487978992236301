#!/usr/bin/env bash
# vlm_run.sh BIN: the tiny VLM of configs/tiny_vlm.yaml (TP 2 x PP 2 = 4 ranks, STP) end to end
# through the binary, on both data sources: the seeded synthetic image-text samples, and a byte
# corpus (scripts/make_corpus.sh) with a float32 patches file written here in the documented
# on-disk format (docs/data.md). Passes when both runs finish and their loss falls by at least a
# third, and when a patches file one sample short is refused with an error naming data.patches.
set -u
BIN=$1
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mktemp -d /tmp/stp_vlm_XXXXXX)
trap 'rm -rf "$OUT"' EXIT
export OPENBLAS_NUM_THREADS=1
MPIRUN=(mpirun --oversubscribe --allow-run-as-root --bind-to none -np 4)
"$ROOT/scripts/make_corpus.sh" "$OUT/corpus.u16" >/dev/null
# The patches file: one sample of 16 patches x 12 values per text slot of Tt = 32 - 4 = 28 tokens.
python3 - "$OUT/corpus.u16" "$OUT/patches.f32" <<'PY'
import os, random, struct, sys
tokens = os.path.getsize(sys.argv[1]) // 2
slots = (tokens - 1) // 28
rng = random.Random(5)
with open(sys.argv[2], "wb") as f:
    for s in range(slots):
        f.write(struct.pack("<192f", *[rng.uniform(-1, 1) for _ in range(192)]))
PY
fail=0
run() {  # name, extra args...
  local name=$1; shift
  "${MPIRUN[@]}" "$BIN" --config "$ROOT/configs/tiny_vlm.yaml" --set train.steps=40 \
    --set output.dir="$OUT/$name" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "# $name: exit $rc"
  grep -E "step (1|40)/" "$OUT/$name.log" | sed 's/^.*info: /#   /'
  [ "$rc" -eq 0 ] || { tail -20 "$OUT/$name.log"; fail=1; return; }
  python3 - "$OUT/$name/metrics.jsonl" <<'PY' || fail=1
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
steps = lines[:-1]
first, last = steps[0]["loss"], lines[-1]["final_loss"]
print("#   loss %.4f -> %.4f" % (first, last))
sys.exit(0 if last < first * 2 / 3 else 1)
PY
}
run synthetic
run files --set data.kind=tokens --set data.path="$OUT/corpus.u16" --set data.patches="$OUT/patches.f32"
# A patches file one sample short is refused before training, naming the key.
truncate -s -768 "$OUT/patches.f32"
"${MPIRUN[@]}" "$BIN" --config "$ROOT/configs/tiny_vlm.yaml" --set data.kind=tokens \
  --set data.path="$OUT/corpus.u16" --set data.patches="$OUT/patches.f32" --set output.dir="$OUT/short" \
  >"$OUT/short.log" 2>&1
rc=$?
if [ "$rc" -ne 0 ] && grep -q "data.patches" "$OUT/short.log"; then
  echo "# short patches file: exit $rc, $(grep -m1 'data.patches' "$OUT/short.log" | sed 's/^.*error: //' | cut -c1-160)"
else
  echo "FAIL: a short patches file gave exit $rc without naming data.patches"; fail=1
fi
echo "$((1 - fail)) passed, $fail failed"
exit $fail
