#!/usr/bin/env bash
# launch_mpirun.sh: runs stp-train under Open MPI's mpirun (docs/launch.md).
#
# The CPU backend needs this launcher for more than one rank; the GPU backend accepts it too (the
# NCCL unique id is then broadcast with MPI). Ranks are numbered by node, so a TP group (TP
# innermost in rank = ((dp*PP)+pp)*TP+tp) stays inside a node when NP_PER_NODE is a multiple of TP.
#
# Usage:
#   one machine:  NP=4 scripts/launch_mpirun.sh configs/tiny_stp.yaml [stp-train options]
#   N nodes:      NP=32 NP_PER_NODE=8 HOSTFILE=hosts.txt scripts/launch_mpirun.sh CONFIG ...
#                 (hosts.txt: one "hostname slots=8" line per node; stp-train at the same path)
# Environment: NP (required: tp*pp*dp of the config), NP_PER_NODE (ranks per node, multi-node),
# HOSTFILE, STP_BIN (build/stp-train), MPIRUN_ARGS (extra mpirun options), DRY_RUN=1 prints the
# command. More ranks than cores (the CPU path on a small machine) needs --oversubscribe, which is
# added when NP exceeds the cores of this machine; OPENBLAS_NUM_THREADS defaults to 1.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ $# -lt 1 || -z "${NP:-}" ]]; then
  echo "usage: NP=<tp*pp*dp> $0 CONFIG [stp-train options]" >&2
  exit 2
fi
CONFIG=$1
shift
STP_BIN=${STP_BIN:-$ROOT/build/stp-train}
if [[ ! -x "$STP_BIN" ]]; then
  echo "$0: no stp-train at $STP_BIN (build it, or set STP_BIN)" >&2
  exit 2
fi
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}

args=(-np "$NP" --bind-to none)
if [[ -n "${HOSTFILE:-}" ]]; then
  args+=(--hostfile "$HOSTFILE" --map-by "ppr:${NP_PER_NODE:?set NP_PER_NODE with HOSTFILE}:node")
elif [[ "$NP" -gt "$(nproc)" ]]; then
  args+=(--oversubscribe)
fi
if [[ "$(id -u)" == 0 ]]; then args+=(--allow-run-as-root); fi
# Forward the variables the ranks read (Open MPI exports only what -x names to remote nodes).
for v in OPENBLAS_NUM_THREADS CUDA_VISIBLE_DEVICES STP_NCCL_PORT NCCL_DEBUG NCCL_SOCKET_IFNAME NCCL_IB_HCA; do
  if [[ -n "${!v:-}" ]]; then args+=(-x "$v"); fi
done
# shellcheck disable=SC2206  # MPIRUN_ARGS is a list of options on purpose
args+=(${MPIRUN_ARGS:-})

cmd=(mpirun "${args[@]}" "$STP_BIN" --config "$CONFIG" "$@")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
