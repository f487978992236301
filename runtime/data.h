// data.h: training tokens (docs/data.md is the user-facing description of this contract).
//
// The run reads a stream of sequences; sequence i is T+1 consecutive tokens, inputs the first T and
// targets the last T (targets are inputs shifted by one). For step s (from 1), DP rank d,
// micro-batch m (0..M-1) and row j (0..b-1) of a micro-batch of b sequences:
//     i = ((s-1)*dp + d)*M*b + m*b + j
// so every (step, dp, mb, row) is reproducible on its own (resume needs only the step).
//
// Sources (DataConfig::kind):
//   tokens     a pre-tokenized file of raw little-endian uint16 or uint32 ids (data.dtype), read
//              through mmap. With data.shuffle false, sequence i is tokens [i*T, i*T+T] of the file:
//              sequences overlap by one token, and after n = (tokens-1)/T sequences the run wraps to
//              the start (i is taken mod n; the last (tokens-1) % T tokens are never read). With
//              data.shuffle true, sequence i reads slot perm_e(i mod n), where e = i / n is the epoch
//              and perm_e a seeded bijection of 0..n-1 (a Feistel network keyed by data.seed and e).
//              Every id must be < model.vocab: files up to kScanLimitTokens tokens are checked whole
//              when opened, and every read checks the ids it returns.
//   synthetic  an endless virtual token stream from data.seed: position p holds
//              (h(seed, p / 8) + p % 8) mod V, runs of 8 counting ids from a hashed start (h =
//              splitmix64), so the next token is predictable 7 times in 8 and the loss can fall.
//              It is addressed exactly like a file (sequence i = positions [i*T, i*T+T]).
// Errors are values: messages name the key (data.path, data.dtype), the file, and the position.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "runtime/core/config.h"

namespace stp {

// The shape of the batches a run reads.
struct DataShape {
  int seq_len = 1;        // T
  int micro_batch = 1;    // b
  int microbatches = 1;   // M
  int dp = 1;
  int vocab = 2;          // V
};

constexpr int64_t kScanLimitTokens = int64_t(1) << 28;

class MappedFile;

class DataLoader {
 public:
  struct Result;
  // Opens the source the config names (for tokens: maps and validates the file).
  static Result open(const DataConfig& cfg, const DataShape& shape);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // i = ((s-1)*dp + d)*M*b + m*b + j.
  int64_t sequence_index(int64_t step, int d, int m, int j) const;
  // Fills inputs and targets, each (b, T) row-major, for micro-batch m of step s on DP rank d.
  // Returns an error message (empty on success).
  std::string load(int64_t step, int d, int m, int32_t* inputs, int32_t* targets) const;
  // Reads the T+1 tokens of sequence i into out.
  std::string read_sequence(int64_t i, int32_t* out) const;

  // Sequences before the file wraps (synthetic: -1, never).
  int64_t sequences_per_epoch() const { return n_seq_; }
  int64_t file_tokens() const { return n_tokens_; }
  const DataShape& shape() const { return shape_; }
  std::string describe() const;  // "tokens /path (uint16, 151552 tokens, 2368 sequences of 64+1)"

 private:
  DataLoader() = default;
  std::string open_file();
  std::string scan_file() const;
  int64_t slot_of(int64_t i) const;  // file slot of sequence i (wrap + shuffle)
  uint32_t token_at(int64_t pos) const;

  DataConfig cfg_;
  DataShape shape_;
  std::unique_ptr<MappedFile> file_;
  int elem_ = 2;           // bytes per id in the file
  int64_t n_tokens_ = 0;
  int64_t n_seq_ = -1;
};

struct DataLoader::Result {
  std::unique_ptr<DataLoader> loader;
  std::string error;
};

// splitmix64: the counter-based mixer the synthetic stream and the shuffle use.
uint64_t data_mix64(uint64_t x);
// The synthetic stream's token at position p.
int32_t data_synthetic_token(uint64_t seed, int64_t p, int vocab);
// A seeded bijection of 0..n-1 (n >= 1): Feistel rounds on the next power of four, cycle-walking.
int64_t data_permute(int64_t x, int64_t n, uint64_t key);

}  // namespace stp
