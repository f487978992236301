// safetensors.h: reader and writer of the safetensors format (Hugging Face): an 8-byte
// little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin,
// end]}, "__metadata__": {string: string}}, then the data section; offsets are relative to it.
//
// Contract:
// - dtypes F32, BF16, F16 (values are converted from / to fp32; fp32 -> bf16/f16 rounds to
//   nearest even). Other dtypes in a file are an error naming the tensor.
// - Writing is atomic: a temporary file in the same directory, fsync, rename over the target,
//   fsync of the directory. A crash leaves the old file or the new one, never half of one.
// - Reading validates everything before use: header length within the file, JSON shape, known
//   dtype, shape dims >= 0 (and a byte size that fits 64 bits), end - begin == elements * dtype
//   size, and offsets that tile the data section exactly (sorted, no gap, no overlap, nothing past
//   the end: a truncated file is an error). Every error names the file and the tensor; a shape
//   mismatch prints expected and found.
// - Integrity: every file written here carries, in __metadata__ under kStChecksumKey (16
//   lowercase hex digits), the XXH3-64 hash of the header's content followed by the data section.
//   The header's content is its parsed form (each tensor's name, dtype, shape and offsets, each
//   metadata pair but the checksum's own) in a fixed encoding, so whitespace and key order do not
//   matter but every value does. open() recomputes it and refuses the file on a mismatch: a
//   flipped bit in the tensor data, a BF16 <-> F16 dtype edit or a changed "step" is an error
//   rather than silently different weights. Files written before the header was covered carry
//   kStDataChecksumKey (the data section only) and are verified that way. Files with neither key
//   (Hugging Face's) are read as before. Both keys are reserved to the writer.
// - No exception leaves this API: errors are strings ("" = ok).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace stp {

enum class StDtype : uint8_t { F32, BF16, F16 };
const char* st_dtype_name(StDtype d);  // "F32", "BF16", "F16"
int st_dtype_size(StDtype d);

// One tensor to write: fp32 data (elements = product of shape), stored as `dtype`.
struct StTensorIn {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
  StDtype dtype = StDtype::F32;
};

// The __metadata__ keys of the checksums (see the contract above): header content + data, and
// the data-only form that older files carry (read, never written).
inline constexpr const char* kStChecksumKey = "stp.xxh3_64";
inline constexpr const char* kStDataChecksumKey = "stp.data_xxh3_64";

std::string safetensors_write(const std::string& path, const std::vector<StTensorIn>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

class SafetensorsFile {
 public:
  struct Entry {
    StDtype dtype = StDtype::F32;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;  // within the data section
  };
  // Reads and validates the whole file.
  static std::string open(const std::string& path, SafetensorsFile* out);
  const std::map<std::string, Entry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool has(const std::string& name) const { return entries_.count(name) > 0; }
  // Tensor `name` as fp32. The first form requires its shape to be `expected`.
  std::string read_f32(const std::string& name, const std::vector<int64_t>& expected,
                       std::vector<float>* out) const;
  std::string read_f32(const std::string& name, std::vector<int64_t>* shape,
                       std::vector<float>* out) const;

 private:
  std::string parse_header(const std::string& json);
  std::string path_;
  std::vector<uint8_t> bytes_;
  uint64_t data_start_ = 0;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// fp32 <-> bf16 / f16 bit conversions (round to nearest even; NaN stays NaN).
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);

std::string shape_str(const std::vector<int64_t>& shape);  // "[2, 3]"

}  // namespace stp
