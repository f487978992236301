// fuzz_util.h: the byte-level mutation of the fuzz tests (config files, safetensors headers), so
// every fuzz test damages its input the same way. One copy for every test area.
#pragma once

#include <random>
#include <string>

namespace stp_test {

// Applies 1 .. max_edits random edits to s, each a replacement, an insertion or an erasure of one
// character drawn from `alphabet` at a random position. Deterministic for a given rng state.
inline void mutate_text(std::string& s, std::mt19937& rng, const std::string& alphabet, int max_edits) {
  const int edits = 1 + int(rng() % unsigned(max_edits));
  for (int e = 0; e < edits && !s.empty(); ++e) {
    const size_t k = rng() % s.size();
    const char c = alphabet[rng() % alphabet.size()];
    switch (rng() % 3) {
      case 0: s[k] = c; break;
      case 1: s.insert(s.begin() + long(k), c); break;
      default: s.erase(k, 1);
    }
  }
}

}  // namespace stp_test
