#!/usr/bin/env bash
# The README's main job: set up and build stp-train, build the byte corpus, then train the tiny GPT
# of configs/tiny_stp.yaml with TP 2 x PP 2 (4 ranks under mpirun) on the STP schedule.
# Output: runs/tiny_stp/{metrics.jsonl,config.json,trace_rank*.json}. Extra args go to stp-train.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STP_TARGETS=stp-train scripts/setup.sh
scripts/make_corpus.sh runs/corpus/corpus.u16
export OPENBLAS_NUM_THREADS=1
MPI_ROOT_FLAG=""
[ "$(id -u)" -eq 0 ] && MPI_ROOT_FLAG=--allow-run-as-root
mpirun --oversubscribe $MPI_ROOT_FLAG --bind-to none -np 4 build/stp-train --config configs/tiny_stp.yaml "$@"
echo "# metrics: runs/tiny_stp/metrics.jsonl (last line: summary)"
tail -1 runs/tiny_stp/metrics.jsonl
