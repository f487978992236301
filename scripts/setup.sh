#!/usr/bin/env bash
# Installs what stp-train needs on a Debian machine and configures + builds it.
# Idempotent and fast when everything is already there.
#   scripts/setup.sh            # packages + build (build/)
#   STP_BUILD_DIR=... STP_CMAKE_ARGS=... scripts/setup.sh
#   scripts/setup.sh --deps-only
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${STP_BUILD_DIR:-$ROOT/build}

PKGS=(build-essential cmake ccache pkg-config libyaml-cpp-dev libcli11-dev nlohmann-json3-dev
      libspdlog-dev catch2 libopenmpi-dev openmpi-bin libopenblas-dev libxxhash-dev python3-pip)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "# setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# cuDNN frontend C++ headers (Debian lacks them): PyPI wheel, headers only, into the repo's .deps/.
if [ -x /usr/local/cuda/bin/nvcc ] && [ ! -f "$ROOT/.deps/pydeps/include/cudnn_frontend.h" ]; then
  echo "# setup: fetching cuDNN frontend headers (nvidia-cudnn-frontend, --no-deps)"
  python3 -m pip install -q --no-deps --target "$ROOT/.deps/pydeps" nvidia-cudnn-frontend \
    || echo "# setup: warning: cuDNN frontend headers unavailable; attention falls back to the plain CUDA kernel"
fi

[ "${1:-}" = "--deps-only" ] && exit 0

export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
# Relative paths in the cache keys, so a fresh clone elsewhere (CI) reuses this machine's cache.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$ROOT} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-true}
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
JOBS=${STP_JOBS:-$(nproc)}
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release ${STP_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD" -j "$JOBS" ${STP_TARGETS:+--target $STP_TARGETS}
