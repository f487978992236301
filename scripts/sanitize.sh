#!/usr/bin/env bash
# Runs the CPU test suite under sanitizers: a CPU-only build (no CUDA: its kernels cannot run here)
# with the host code instrumented, then CTest as scripts/test.sh runs it. Not part of CI (the
# instrumented build takes about 9 minutes on 2 cores); run it before a release or after touching
# memory-owning or threaded code. Any report fails the test that triggered it.
#   scripts/sanitize.sh              # AddressSanitizer + UndefinedBehaviorSanitizer, build-asan/
#   scripts/sanitize.sh thread       # ThreadSanitizer, build-tsan/ (all but the README job; below)
#   scripts/sanitize.sh address -L model     # extra arguments go to ctest
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=${1:-address}
[ $# -gt 0 ] && shift
case "$MODE" in
  address)
    BUILD=$ROOT/build-asan
    SAN=address,undefined,float-cast-overflow
    # Open MPI and OpenBLAS keep process-lifetime allocations that LeakSanitizer would report.
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:strict_string_checks=1:detect_stack_use_after_return=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    ;;
  thread)
    BUILD=$ROOT/build-tsan
    SAN=thread
    # Open MPI is not instrumented: tests/tsan.supp silences reports inside its modules only.
    export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$ROOT/tests/tsan.supp}
    # The README job (150 steps on 4 ranks) runs past its 120 s limit at TSan's speed; the same
    # trainer and communicator run in every other mpi test.
    # A caller's own -E is merged with it (ctest keeps only the last -E it is given).
    exclude=readme_stp args=()
    while [ $# -gt 0 ]; do
      case "$1" in
        -E|--exclude-regex) exclude="$exclude|${2:?sanitize.sh: $1 needs a regex}"; shift 2 ;;
        *) args+=("$1"); shift ;;
      esac
    done
    set -- -E "$exclude" ${args[@]+"${args[@]}"}
    ;;
  *) echo "sanitize.sh: unknown mode '$MODE' (address or thread)" >&2; exit 2 ;;
esac
STP_BUILD_DIR=$BUILD \
  STP_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTP_CUDA=OFF -DSTP_SANITIZE=$SAN" \
  "$ROOT/scripts/setup.sh"
cd "$BUILD"
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
ctest --output-on-failure -j "${STP_TEST_JOBS:-2}" "$@"
