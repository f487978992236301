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
//
// Image-text sequences (DataShape::visual_tokens = n*Nv > 0, a run with model.vision): everything
// above applies to the *text* with length Tt = T - n*Nv (sequence i = Tt+1 text tokens t[0..Tt],
// n = (tokens-1)/Tt slots). The text is spliced around the images (runtime: VLM design, issue 8):
//     s = [t0, IMG x n*Nv, t1 .. t_Tt]  (T+1 entries), inputs = s[0..T-1], targets = s[1..T],
// IMG written as -1 in both: inputs are -1 at positions 1..n*Nv, targets -1 at 0..n*Nv-1, so each
// row has exactly Tt = T - n*Nv loss tokens and the text order is the text-only loader's with Tt.
// Pixels, n*Np*K floats per sequence (DataShape::patch_values; image k at k*Np*K, patches in
// merge-window order, each patch's K values in (channel, dy, dx) order), come from
//   tokens     data.patches, raw little-endian float32: slot s (the text's slot after wrap and
//              shuffle) is the patch_values floats at offset s*patch_values; it must hold at least
//              as many samples as the token file has slots, and every value read must be finite.
//   synthetic  value k of sequence i = 0.5*proto(c, k) + 0.5*noise(i, k), both uniform in [-1, 1)
//              and counter-based (data_synthetic_pixel), with class c = t[1] % 16. t[1] is the
//              target of the last visual position, whose own input is an image token: the text
//              reaches it only by attending back to t0 (and tells nothing where t[1] starts a new
//              run of 8), while the image states t[1] mod 16 right there, so learning to read the
//              images is what lowers the loss at that position.
// Errors are values: messages name the key (data.path, data.dtype, data.patches), the file, and the
// position.
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
  int visual_tokens = 0;  // n*Nv visual positions per sequence (0: text only)
  int64_t patch_values = 0;  // n*Np*K pixel floats per sequence

  // Tt = T - n*Nv: a sequence reads Tt+1 text tokens.
  int text_len() const { return seq_len - visual_tokens; }
};

// The shape a run reads: T, b, M, dp, V and, with model.vision enabled, n*Nv and n*Np*K.
DataShape data_shape_of(const Config& cfg);

// The id written at visual positions (inputs) and before them (targets): it embeds as zero and
// carries no loss.
constexpr int32_t kDataImageToken = -1;
// Classes of the synthetic images: c = t[1] % kSyntheticImageClasses.
constexpr int kSyntheticImageClasses = 16;

constexpr int64_t kScanLimitTokens = int64_t(1) << 28;

class MappedFile;

class DataLoader {
 public:
  struct Result;
  // Opens the source the config names (for tokens: maps and validates the file, and with
  // visual_tokens > 0 the data.patches file).
  static Result open(const DataConfig& cfg, const DataShape& shape);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // i = ((s-1)*dp + d)*M*b + m*b + j.
  int64_t sequence_index(int64_t step, int d, int m, int j) const;
  // Fills inputs and targets, each (b, T) row-major, for micro-batch m of step s on DP rank d, and,
  // when pixels is not null and visual_tokens > 0, pixels (b, patch_values) row-major. inputs and
  // targets may alias (a rank that needs neither). Returns an error message (empty on success).
  std::string load(int64_t step, int d, int m, int32_t* inputs, int32_t* targets,
                   float* pixels = nullptr) const;
  // Reads the Tt+1 text tokens of sequence i into out (Tt = T without visual tokens).
  std::string read_sequence(int64_t i, int32_t* out) const;
  // Reads the patch_values pixel floats of sequence i, whose text read_sequence gave (synthetic
  // images take their class from text[1]).
  std::string read_pixels(int64_t i, const int32_t* text, float* out) const;

  // Sequences before the file wraps (synthetic: -1, never).
  int64_t sequences_per_epoch() const { return n_seq_; }
  int64_t file_tokens() const { return n_tokens_; }
  int64_t patch_samples() const { return n_patch_samples_; }  // samples in data.patches (0: none)
  const DataShape& shape() const { return shape_; }
  // "tokens /path (uint16, 151552 tokens, 2368 sequences of 64+1)"; with images "..., 2368
  // sequences of 3025 visual tokens + 1071 text, images from /path.f32)".
  std::string describe() const;

 private:
  DataLoader() = default;
  std::string open_file();
  std::string scan_file() const;
  std::string open_patches();
  int64_t slot_of(int64_t i) const;  // file slot of sequence i (wrap + shuffle)
  uint32_t token_at(int64_t pos) const;

  DataConfig cfg_;
  DataShape shape_;
  std::unique_ptr<MappedFile> file_;
  int elem_ = 2;           // bytes per id in the file
  int64_t n_tokens_ = 0;
  int64_t n_seq_ = -1;
  std::unique_ptr<MappedFile> patches_;  // data.patches (tokens source with images)
  int64_t n_patch_samples_ = 0;
};

struct DataLoader::Result {
  std::unique_ptr<DataLoader> loader;
  std::string error;
};

// splitmix64: the counter-based mixer the synthetic stream and the shuffle use.
uint64_t data_mix64(uint64_t x);
// The synthetic stream's token at position p.
int32_t data_synthetic_token(uint64_t seed, int64_t p, int vocab);
// Value k (0 <= k < patch_values) of the synthetic image of sequence i whose class is cls:
// 0.5*proto(cls, k) + 0.5*noise(i, k), each uniform in [-1, 1) on a 2^-23 grid (exact in float).
float data_synthetic_pixel(uint64_t seed, int64_t i, int cls, int64_t k);
// A seeded bijection of 0..n-1 (n >= 1): Feistel rounds on the next power of four, cycle-walking.
int64_t data_permute(int64_t x, int64_t n, uint64_t key);

}  // namespace stp
