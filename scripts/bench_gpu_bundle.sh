#!/usr/bin/env bash
# Packs the CUDA harness and stp-train for a GPU machine that has the CUDA driver and toolkit libraries
# (cuBLASLt, NVRTC, cuDNN through PyTorch's wheels) but none of our Debian packages and no network.
#
#   scripts/bench_gpu_bundle.sh [build-dir]     (default build-c; builds test_cuda and stp-train first)
#
# Writes <build-dir>/gpu_bundle.tar.xz holding test_cuda, stp-train and every shared library they
# need except the C runtime and the NVIDIA libraries found on the GPU machine (libc/libm/libstdc++/
# libgcc_s/libdl/libpthread/librt/ld-linux, libcuda, libcublas*, libcudnn*, libnvrtc*, libnccl*).
# The libcudart this build was linked against travels with it. gpu_check.sh unpacks it and puts
# lib/ first on LD_LIBRARY_PATH. Carry: <build-dir>/gpu_bundle.tar.xz (about 12 MB).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:-$ROOT/build-c}
case "$BUILD" in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSTP_CUDA=ON \
        "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--as-needed" >/dev/null
fi
BINS=(test_cuda stp-train)
# Hashed before and after the build: an edit while it compiled would make the two differ.
hash_sources() {
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- CMakeLists.txt cmake cmd comm model \
     runtime scheduler tests | while IFS= read -r -d '' f; do [ -f "$f" ] && sha256sum "$f"; done; true)
}
before=$(hash_sources)
cmake --build "$BUILD" -j2 --target "${BINS[@]}"

STAGE=$BUILD/gpu_bundle
rm -rf "$STAGE"
mkdir -p "$STAGE/lib"
for b in "${BINS[@]}"; do cp "$BUILD/$b" "$STAGE/"; done
skip='^(linux-vdso|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|ld-linux|libstdc\+\+|libgcc_s|libcuda\.so|libcublas|libcudnn|libnvrtc|libnccl)'
for b in "${BINS[@]}"; do ldd "$BUILD/$b"; done | awk '/=>/ {print $1, $3}' | sort -u | while read -r name path; do
  if [[ "$name" =~ $skip ]]; then continue; fi
  [ -f "$path" ] || { echo "bundle: $name not found here ($path)" >&2; exit 1; }
  cp -L "$path" "$STAGE/lib/$name"
done
git -C "$ROOT" describe --always --dirty > "$STAGE/BUILD_INFO" 2>/dev/null || echo unknown > "$STAGE/BUILD_INFO"
date -u +%FT%TZ >> "$STAGE/BUILD_INFO"
# The sources the binaries were built from (working tree, not HEAD), so gpu_check.sh can refuse to
# spend a GPU session on a bundle older than the checkout it runs in.
hash_sources > "$STAGE/SOURCES.sha256"
if [ "$before" != "$(cat "$STAGE/SOURCES.sha256")" ]; then
  echo "bundle: sources changed during the build; run it again" >&2
  exit 1
fi
find "$STAGE/lib" -type f -printf '# bundled: %f\n' | sort
tar -C "$BUILD" -cJf "$BUILD/gpu_bundle.tar.xz" gpu_bundle
du -h "$BUILD/gpu_bundle.tar.xz" | awk '{print "# bundle: " $2 " (" $1 ")"}'
