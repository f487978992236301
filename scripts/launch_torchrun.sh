#!/usr/bin/env bash
# launch_torchrun.sh: runs stp-train under torchrun, one process per GPU (docs/launch.md).
#
# torchrun only starts processes and sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
# MASTER_ADDR and MASTER_PORT; stp-train is not Python, hence --no_python (spelled with an
# underscore, which every torchrun accepts; torch >= 2 also takes --no-python). NCCL bootstraps from
# NCCL_COMM_ID = MASTER_ADDR:(MASTER_PORT + 1), or STP_NCCL_PORT; MASTER_PORT itself is torchrun's
# store. With world size > 1 this is the GPU path: the CPU backend needs mpirun.
#
# Usage:
#   one node:  scripts/launch_torchrun.sh CONFIG [stp-train options, e.g. --set train.steps=20]
#   N nodes:   on every node: NNODES=N NODE_RANK=<0..N-1> MASTER_ADDR=<node 0> \
#                scripts/launch_torchrun.sh CONFIG ...
# Environment (defaults): NPROC_PER_NODE (GPUs that nvidia-smi lists, else 1), NNODES (1),
# NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500), STP_NCCL_PORT (MASTER_PORT + 1),
# STP_BIN (build/stp-train), TORCHRUN (torchrun), TORCHRUN_ARGS (extra torchrun options),
# DRY_RUN=1 prints the command instead.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ $# -lt 1 ]]; then
  echo "usage: $0 CONFIG [stp-train options]" >&2
  exit 2
fi
CONFIG=$1
shift

gpus() { nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true; }
NPROC_PER_NODE=${NPROC_PER_NODE:-$(gpus)}
[[ "$NPROC_PER_NODE" -ge 1 ]] 2>/dev/null || NPROC_PER_NODE=1
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
STP_BIN=${STP_BIN:-$ROOT/build/stp-train}
TORCHRUN=${TORCHRUN:-torchrun}

if [[ ! -x "$STP_BIN" ]]; then
  echo "$0: no stp-train at $STP_BIN (build it, or set STP_BIN)" >&2
  exit 2
fi
if [[ -n "${STP_NCCL_PORT:-}" ]]; then export STP_NCCL_PORT; fi

cmd=("$TORCHRUN" --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE"
     --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --no_python)
# shellcheck disable=SC2206  # TORCHRUN_ARGS is a list of options on purpose
cmd+=(${TORCHRUN_ARGS:-})
cmd+=("$STP_BIN" --config "$CONFIG" "$@")
echo "# node $NODE_RANK of $NNODES: ${NPROC_PER_NODE} ranks, MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT" \
     "NCCL port ${STP_NCCL_PORT:-$((MASTER_PORT + 1))}" >&2
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
