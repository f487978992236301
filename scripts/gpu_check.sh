#!/usr/bin/env bash
# gpu_check.sh: the CUDA backend's GPU session, in one build-free, fail-soft run.
#
# Runs on a GPU machine with the NVIDIA driver, the CUDA 13 libraries (cuBLASLt, NVRTC; cuDNN 9
# from the toolkit or PyTorch's wheels) and PyTorch, but none of our Debian packages and no network.
# It runs binaries built elsewhere: scripts/bench_gpu_bundle.sh makes build-c/gpu_bundle.tar.xz
# (test_cuda, stp-train and the non-NVIDIA shared libraries they need). Steps, each with its own
# PASS/FAIL/SKIPPED line and time limit, each in its own process so one crash does not stop the rest:
#   1. device and library discovery (ldd must resolve everything test_cuda and stp-train need), and
#      the bundle's SOURCES.sha256 against this checkout (a stale bundle is a FAIL line, first, and
#      then nothing runs on the GPU unless STP_ALLOW_STALE=1)
#   2. the kernel harness, one process per area: test_cuda "[cuda][<area>]"
#   2b. train.device=cuda (issue 7): test_cuda "[cuda][train]", two cases of 20 steps through NCCL
#      against the CPU trainer at tp=pp=dp=1 (the tiny GPT on 1F1B and its llama-style twin on ZB-V;
#      bounds in tests/cuda/test_cuda_train.cpp) and a third that compares every parameter's
#      step-1 gradient with the CPU's (a table in the log that names a wrong unit pass), then stp-train itself on the tiny GPT at
#      tp=pp=dp=1 with device cpu and device cuda, both loss curves, tokens/s, MFU (H200 peak) and
#      peak memory side by side. stp-train comes from the bundle (gpu_bundle/stp-train) or
#      STP_TRAIN_BIN; without one 2b's stp-train part and 2c say SKIPPED.
#   2c. SIGTERM on the CUDA path: exit 143 with the checkpoint of the last step, then train.resume
#      (tests/cuda/sigterm.sh)
#   3. benchmarks: large GEMM and one training step of gpt-125m, gpt-1.3b, llama7b-slice,
#      ours (test_cuda "[.bench]") and the PyTorch eager reference (scripts/bench_gpu.py)
#   4. a short table (stp vs torch: step time, tokens/s, TFLOPS, MFU, ratio)
# Output: ${OUT:-./out}/gpu_check.log (everything), bench.jsonl (one object per result),
# summary.txt (the PASS/FAIL lines and the table, also printed last).
#
#   scripts/gpu_check.sh                         # from the repository root
#   STP_BUNDLE=path/to/gpu_bundle.tar.xz STP_GPU_BUDGET_S=360 STP_BENCH_STEPS=8 scripts/gpu_check.sh
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
JSON=$OUT/bench.jsonl
SUMMARY=$OUT/summary.txt
: > "$LOG"; : > "$JSON"; : > "$SUMMARY"
BUNDLE=${STP_BUNDLE:-$ROOT/build-c/gpu_bundle.tar.xz}
BUDGET=${STP_GPU_BUDGET_S:-360}
STEPS=${STP_BENCH_STEPS:-8}
START=$(date +%s)

say() { echo "$*" | tee -a "$LOG"; }
result() { echo "$*" | tee -a "$LOG" >> "$SUMMARY"; echo "$*"; }
elapsed() { echo $(( $(date +%s) - START )); }

# run_check NAME TIMEOUT CMD...: runs CMD with its output in the log; PASS on exit 0, SKIPPED when
# the harness printed "SKIPPED: no CUDA device" and ran nothing else, FAIL otherwise (with rc).
run_check() {
  local name=$1 limit=$2; shift 2
  if [ "$(elapsed)" -ge "$BUDGET" ]; then result "SKIPPED $name (time budget ${BUDGET}s spent)"; return; fi
  say "## $name: $*"
  local t0 tmp=$OUT/.check.tmp rc
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$tmp" 2>&1
  rc=$?
  cat "$tmp" >> "$LOG"
  local dt=$(( $(date +%s) - t0 ))
  if grep -q "^SKIPPED: no CUDA device" "$tmp" && ! grep -q "^# " "$tmp"; then
    result "SKIPPED $name (no CUDA device) ${dt}s"
  elif [ $rc -eq 0 ]; then
    result "PASS    $name ${dt}s"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    result "FAIL    $name (timed out after ${limit}s)"
  else
    result "FAIL    $name (rc=$rc) ${dt}s: $(grep -m1 -E 'FAILED|error|Error|what\(\)' "$tmp" | cut -c1-160)"
  fi
  rm -f "$tmp"
}

# ---- 1. device, bundle, libraries -------------------------------------------------------------------
say "# gpu_check $(date -u +%FT%TZ) host $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
WORK=$(mktemp -d /tmp/stp_gpu.XXXXXX)
if [ -f "$BUNDLE" ] && tar -C "$WORK" -xJf "$BUNDLE"; then
  BIN=$WORK/gpu_bundle/test_cuda
  say "# bundle $(tr '\n' ' ' < "$WORK/gpu_bundle/BUILD_INFO")"
  # A bundle built from other sources than this checkout would test old code: say so first.
  # Unless STP_ALLOW_STALE=1, a stale or unverifiable bundle runs nothing on the GPU.
  STALE=""
  if [ -f "$WORK/gpu_bundle/SOURCES.sha256" ]; then
    stale=$(cd "$ROOT" && sha256sum -c --quiet "$WORK/gpu_bundle/SOURCES.sha256" 2>/dev/null | sed -n 's/: FAILED.*$//p' | head -5)
    if [ -n "$stale" ]; then
      STALE="built from other sources than this checkout ($(tr '\n' ' ' <<<"$stale"))"
    else
      result "PASS    bundle built from this checkout's sources"
    fi
  else
    STALE="no SOURCES.sha256 (made by an older bench_gpu_bundle.sh)"
  fi
  [ -n "$STALE" ] && result "FAIL    bundle is stale: $STALE"
else
  result "FAIL    bundle ($BUNDLE missing or unreadable: run scripts/bench_gpu_bundle.sh and carry it)"
  BIN=""
fi
TRAIN_BIN=${STP_TRAIN_BIN:-$WORK/gpu_bundle/stp-train}
if [ -n "${STALE:-}" ] && [ "${STP_ALLOW_STALE:-0}" != 1 ]; then
  say "# stale bundle: every GPU step is skipped (rebuild with scripts/bench_gpu_bundle.sh, or STP_ALLOW_STALE=1)"
  BIN=""
  TRAIN_BIN=/nonexistent/stp-train
fi

# Directories holding the NVIDIA libraries the bundle leaves out: the toolkit, then Python wheels.
find_lib_dir() {
  local lib=$1 d
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu \
           /usr/local/cuda/lib; do
    [ -e "$d/$lib" ] && { echo "$d"; return; }
  done
  local sp
  for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
    d=$(find "$sp/nvidia" -name "$lib" -print -quit 2>/dev/null)
    [ -n "$d" ] && { dirname "$d"; return; }
  done
  d=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name "$lib" -print -quit 2>/dev/null)
  [ -n "$d" ] && dirname "$d"
}
LIBPATH=$WORK/gpu_bundle/lib
for lib in libcublasLt.so.13 libnvrtc.so.13 libcudnn.so.9 libnccl.so.2; do
  d=$(find_lib_dir "$lib")
  say "# $lib -> ${d:-NOT FOUND}"
  [ -n "$d" ] && LIBPATH=$LIBPATH:$d
done
export LD_LIBRARY_PATH=$LIBPATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if [ -n "$BIN" ]; then
  deps=$(ldd "$BIN" "$TRAIN_BIN" 2>&1)
  echo "$deps" >> "$LOG"
  missing=$(grep -o '[^[:space:]].*not found' <<<"$deps")
  if [ -n "$missing" ]; then
    result "FAIL    libraries: $(tr '\n' ' ' <<<"$missing")"
  else
    result "PASS    libraries (ldd resolves every dependency)"
  fi
fi

# ---- 2. kernel harness, one process per area ----------------------------------------------------------
if [ -n "$BIN" ]; then
  for area in infra gemm norm elementwise rope embedding xent optimizer attention layer; do
    run_check "harness [$area]" 180 "$BIN" "[cuda][$area]" --durations yes
  done
  # NCCL with one rank per communicator (one GPU); the fault cases abort their communicators, so
  # each runs in its own process.
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  run_check "nccl one rank" 180 "$BIN" "[nccl]~[fault]" --durations yes
  run_check "nccl fault: op timeout" 60 "$BIN" "nccl one rank: an operation past its timeout aborts the communicators"
  run_check "nccl fault: watchdog" 60 "$BIN" "nccl one rank: the watchdog aborts a stuck operation by itself"
fi

# ---- 2b. train.device=cuda against the CPU trainer (tp=pp=dp=1) -------------------------------------------
if [ -n "$BIN" ]; then
  run_check "cuda train vs cpu (test)" 240 "$BIN" "[cuda][train]" --durations yes
fi
if [ -x "$TRAIN_BIN" ]; then
  for dev in cpu cuda; do
    rm -rf "$OUT/train_$dev"
    OPENBLAS_NUM_THREADS=4 run_check "stp-train device=$dev" 240 "$TRAIN_BIN" --config "$ROOT/configs/tiny_stp.yaml" \
      --set parallel.tp=1 --set parallel.pp=1 --set schedule.name=1f1b --set schedule.microbatches=2 \
      --set train.steps=20 --set data.kind=synthetic --set output.trace=true --set cluster.gpu.peak_tflops=989 \
      --set output.dir="$OUT/train_$dev" --set train.device=$dev
  done
  python3 - "$OUT/train_cpu/metrics.jsonl" "$OUT/train_cuda/metrics.jsonl" <<'EOF' | tee -a "$LOG" >> "$SUMMARY"
import json, sys
def rows(p):
    try:
        return [json.loads(l) for l in open(p) if l.strip()]
    except OSError as e:
        return [{"error": str(e)}]
cpu, gpu = rows(sys.argv[1]), rows(sys.argv[2])
print("# stp-train tiny GPT tp=pp=dp=1, 20 steps: step  loss_cpu  loss_cuda  diff")
steps_c = [r for r in cpu if "loss" in r and not r.get("summary")]
steps_g = [r for r in gpu if "loss" in r and not r.get("summary")]
for c, g in zip(steps_c, steps_g):
    print(f"  {c['step']:3d}  {c['loss']:.5f}  {g['loss']:.5f}  {g['loss'] - c['loss']:+.5f}")
for name, st, raw in (("cpu", steps_c, cpu), ("cuda", steps_g, gpu)):
    if len(st) < 2:
        print(f"  {name}: no steps ({raw[:1]})")
        continue
    late = st[len(st) // 2:]  # steady state: the second half
    tps = sum(r["tokens_per_s"] for r in late) / len(late)
    mfu = sum(r["mfu"] for r in late) / len(late)
    mem = max(r["peak_mem_bytes"] for r in st)
    exp = sum(r["exposed_comm_s"] for r in late) / len(late)
    print(f"  {name:5s} tokens/s {tps:10.0f}  MFU {100 * mfu:6.3f}%  peak mem {mem / 2**20:8.2f} MiB  "
          f"exposed comm {1e3 * exp:.3f} ms/step")
EOF
  # ---- 2c. SIGTERM on the CUDA path: checkpoint of the last step, exit 143, resume (tests/cuda/sigterm.sh)
  run_check "stp-train device=cuda SIGTERM checkpoint + resume" 240 "$ROOT/tests/cuda/sigterm.sh" "$TRAIN_BIN"
else
  result "SKIPPED stp-train cpu vs cuda, SIGTERM (no $TRAIN_BIN: add stp-train to the bundle or set STP_TRAIN_BIN)"
fi

if [ "${STP_GPU_SKIP_BENCH:-0}" = 1 ]; then
  say "# benchmarks skipped (STP_GPU_SKIP_BENCH=1)"
  JSON_SKIP=1
fi

# ---- 3. benchmarks ----------------------------------------------------------------------------------------
export STP_BENCH_JSON=$JSON STP_BENCH_STEPS=$STEPS
if [ "${JSON_SKIP:-0}" = 1 ]; then BENCH_MODELS=""; else BENCH_MODELS="gpt-125m gpt-1.3b llama7b-slice"; fi
if [ -n "$BIN" ] && [ -n "$BENCH_MODELS" ]; then
  run_check "bench stp gemm-8192" 60 "$BIN" "bench: large bf16 GEMM through cuBLASLt"
fi
[ -n "$BENCH_MODELS" ] && run_check "bench torch gemm-8192" 120 python3 "$ROOT/scripts/bench_gpu.py" --models gemm-8192 --json "$JSON"
for model in $BENCH_MODELS; do
  if [ -n "$BIN" ]; then
    STP_BENCH_MODELS=$model run_check "bench stp $model" 150 "$BIN" "bench: one training step of single-GPU models"
  fi
  run_check "bench torch $model" 180 python3 "$ROOT/scripts/bench_gpu.py" --models "$model" --steps "$STEPS" --json "$JSON"
done

# ---- 4. table -----------------------------------------------------------------------------------------------
python3 - "$JSON" <<'EOF' | tee -a "$LOG" >> "$SUMMARY"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
by = {}
for r in rows:
    by.setdefault(r["model"], {})[r["impl"]] = r
print("# model           impl    step_ms   tokens/s   TFLOPS    MFU   peak_GB  loss first->last")
for model, impls in by.items():
    for impl in ("stp", "torch"):
        r = impls.get(impl)
        if r is None:
            continue
        if "error" in r:
            print(f"  {model:15s} {impl:6s} ERROR {r['error'][:90]}")
            continue
        tps = f"{r['tokens_per_s']:10.0f}" if "tokens_per_s" in r else " " * 10
        mem = f"{r['peak_mem_gb']:8.1f}" if "peak_mem_gb" in r else " " * 8
        loss = f"  {r['loss_first']:.3f}->{r['loss_last']:.3f}" if "loss_first" in r else ""
        print(f"  {model:15s} {impl:6s} {r['step_ms']:8.2f} {tps} {r['tflops']:8.1f} {100*r['mfu']:5.1f}% {mem}{loss}")
    s, t = impls.get("stp"), impls.get("torch")
    if s and t and "tflops" in s and "tflops" in t:
        print(f"  {model:15s} ratio stp/torch throughput = {s['tflops']/t['tflops']:.2f}x")
EOF
rm -rf "$WORK"
echo "# ---- summary (${OUT}) after $(elapsed)s ----"
cat "$SUMMARY"
grep -q "^FAIL" "$SUMMARY" && exit 1
exit 0
