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
// - Integrity: every file written here carries the XXH3-64 hash of its data section in
//   __metadata__ under kStChecksumKey (16 lowercase hex digits). open() recomputes it and refuses
//   the file on a mismatch, so a flipped bit or an overwritten range in the tensor data is an
//   error rather than silently different weights. Files without the key (Hugging Face's, or ours
//   from before it existed) are read as before; the key is reserved to the writer.
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

// The __metadata__ key of the data section's checksum (see the contract above).
inline constexpr const char* kStChecksumKey = "stp.data_xxh3_64";

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
