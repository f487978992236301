#!/usr/bin/env bash
# The test command (README, CI): installs dependencies, builds everything (CUDA compiled in when
# nvcc is present), and runs every test with CTest: unit tests, golden schedules, multi-rank runs
# under mpirun. GPU tests report themselves skipped on machines without a GPU.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export STP_BUILD_DIR=${STP_BUILD_DIR:-$ROOT/build}
"$ROOT/scripts/setup.sh"
cd "$STP_BUILD_DIR"
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
ctest --output-on-failure -j "${STP_TEST_JOBS:-2}" "$@"
