#!/usr/bin/env bash
# Builds a byte-level token file (vocab 256, raw little-endian uint16, docs/data.md) from text that
# ships with every Debian system, and prints the corpus's byte unigram entropy in nats: the loss a
# model that ignores context would reach, which a trained model must beat.
#   scripts/make_corpus.sh [OUT] [TEXT_FILE...]
#   default OUT:  runs/corpus/corpus.u16
#   default text: /usr/share/common-licenses/* (about 300 KB of English), else the repo's *.md files
# Prints two lines: "# corpus: ..." (human) and "entropy_nats=<x>" (for scripts). Deterministic.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/runs/corpus/corpus.u16}
shift || true
if [ $# -gt 0 ]; then
  SOURCES=("$@")
else
  mapfile -t SOURCES < <(find /usr/share/common-licenses -maxdepth 1 -type f 2>/dev/null | LC_ALL=C sort)
  if [ ${#SOURCES[@]} -eq 0 ]; then
    mapfile -t SOURCES < <(find "$ROOT" -name '*.md' -not -path '*/.*' -not -path '*/build*' | LC_ALL=C sort)
  fi
fi
[ ${#SOURCES[@]} -gt 0 ] || { echo "make_corpus.sh: no text files found" >&2; exit 2; }
for f in "${SOURCES[@]}"; do
  [ -r "$f" ] || { echo "make_corpus.sh: cannot read text file '$f'" >&2; exit 2; }
done
mkdir -p "$(dirname "$OUT")"
python3 - "$OUT" "${SOURCES[@]}" <<'PY'
import math, struct, sys
out, sources = sys.argv[1], sys.argv[2:]
data = b"".join(open(p, "rb").read() for p in sources)
if len(data) < 2:
    sys.exit("make_corpus.sh: the text holds fewer than 2 bytes")
counts = [0] * 256
for byte in data:
    counts[byte] += 1
n = len(data)
entropy = -sum(c / n * math.log(c / n) for c in counts if c)
with open(out, "wb") as f:
    f.write(struct.pack("<%dH" % n, *data))  # one little-endian uint16 id per byte
print("# corpus: %s: %d tokens (bytes) from %d files, %d distinct ids, vocab 256, uint16"
      % (out, n, len(sources), sum(1 for c in counts if c)))
print("entropy_nats=%.4f" % entropy)
PY
