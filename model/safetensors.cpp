// safetensors.cpp: the safetensors reader and writer (contract in safetensors.h).
#include "model/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack: hashing never allocates
#include <xxhash.h>

namespace stp {

const char* st_dtype_name(StDtype d) {
  switch (d) {
    case StDtype::F32:
      return "F32";
    case StDtype::BF16:
      return "BF16";
    case StDtype::F16:
      return "F16";
  }
  return "?";
}

int st_dtype_size(StDtype d) { return d == StDtype::F32 ? 4 : 2; }

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// ---- dtype conversions
// ---------------------------------------------------------------------------

uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if (std::isnan(f)) return uint16_t((x >> 16) | 0x40);
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

float bf16_to_f32(uint16_t h) {
  const uint32_t x = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  if (exp == 0xff) return uint16_t(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0u));
  const int e = int(exp) - 127 + 15;
  if (e >= 31) return uint16_t(sign | 0x7c00u);  // overflow: infinity
  if (e <= 0) {                                  // subnormal half (or zero)
    if (e < -10) return uint16_t(sign);
    mant |= 0x800000u;
    const int shift = 14 - e;
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return uint16_t(sign | h);
  }
  uint32_t h = sign | (uint32_t(e) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry rounds into the exponent
  return uint16_t(h);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {
    const float v = std::ldexp(float(mant), -24);
    return sign ? -v : v;
  }
  const uint32_t x = exp == 31 ? (sign | 0x7f800000u | (mant << 13))
                               : (sign | ((exp - 15 + 127) << 23) | (mant << 13));
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

namespace {

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string hex64(XXH64_hash_t h) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// The data section's XXH3-64 (the kStDataChecksumKey of older files).
std::string data_checksum(const uint8_t* p, size_t n) { return hex64(XXH3_64bits(p, n)); }

// The kStChecksumKey value: XXH3-64 of the header's content, then the data section. The content
// encodes every string as "<length>:<bytes>" and every number as "<decimal>;", so no two headers
// encode alike: per tensor in name order its name, dtype, rank, dims, begin and end; then per
// metadata pair in key order its key and value, skipping the checksum keys themselves. A file with
// no tensors and no metadata hashes its data alone.
std::string file_checksum(const std::map<std::string, SafetensorsFile::Entry>& entries,
                          const std::map<std::string, std::string>& metadata, const uint8_t* data,
                          size_t n) {
  std::string c;
  const auto str = [&c](const std::string& s) { c += std::to_string(s.size()) + ':' + s; };
  const auto num = [&c](auto v) { c += std::to_string(v) + ';'; };
  for (const auto& [name, e] : entries) {
    str(name);
    str(st_dtype_name(e.dtype));
    num(e.shape.size());
    for (int64_t d : e.shape) num(d);
    num(e.begin);
    num(e.end);
  }
  for (const auto& [k, v] : metadata) {
    if (k == kStChecksumKey || k == kStDataChecksumKey) continue;
    str(k);
    str(v);
  }
  XXH3_state_t st;
  XXH3_INITSTATE(&st);
  XXH3_64bits_reset(&st);
  XXH3_64bits_update(&st, c.data(), c.size());
  XXH3_64bits_update(&st, data, n);
  return hex64(XXH3_64bits_digest(&st));
}

void encode(const float* src, int64_t n, StDtype d, std::vector<uint8_t>& out) {
  const size_t at = out.size();
  out.resize(at + size_t(n) * size_t(st_dtype_size(d)));
  uint8_t* p = out.data() + at;
  if (d == StDtype::F32) {
    std::memcpy(p, src, size_t(n) * 4);  // little-endian host (x86-64, aarch64)
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = d == StDtype::BF16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
    std::memcpy(p + 2 * i, &h, 2);
  }
}

std::string sys_error(const std::string& what, const std::string& path) {
  return what + " '" + path + "': " + std::strerror(errno);
}

// Writes all bytes to a temp file beside `path`, fsyncs, renames, fsyncs the directory.
std::string write_atomic(const std::string& path, const std::vector<uint8_t>& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return sys_error("safetensors: cannot create", tmp);
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      std::string e = sys_error("safetensors: write failed on", tmp);
      ::close(fd);
      ::unlink(tmp.c_str());
      return e;
    }
    done += size_t(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    std::string e = sys_error("safetensors: fsync/close failed on", tmp);
    ::unlink(tmp.c_str());
    return e;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string e = sys_error("safetensors: rename onto", path);
    ::unlink(tmp.c_str());
    return e;
  }
  const size_t slash = path.find_last_of('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return sys_error("safetensors: cannot open directory", dir);
  const int rc = ::fsync(dfd);
  ::close(dfd);
  return rc == 0 ? "" : sys_error("safetensors: fsync of directory", dir);
}

}  // namespace

std::string safetensors_write(const std::string& path, const std::vector<StTensorIn>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  for (const char* key : {kStChecksumKey, kStDataChecksumKey})
    if (metadata.count(key))
      return "safetensors_write '" + path + "': metadata key '" + key + "' is reserved for the checksum";
  // The entries are both what the header says and what the checksum covers.
  std::map<std::string, SafetensorsFile::Entry> entries;
  std::vector<uint8_t> data;
  for (const StTensorIn& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__" || entries.count(t.name))
      return "safetensors_write '" + path + "': invalid or duplicate tensor name '" + t.name + "'";
    if (!t.data && numel(t.shape) > 0)
      return "safetensors_write '" + path + "': tensor '" + t.name + "' has no data";
    const uint64_t begin = data.size();
    encode(t.data, numel(t.shape), t.dtype, data);
    entries[t.name] = {t.dtype, t.shape, begin, uint64_t(data.size())};
  }
  nlohmann::json header = nlohmann::json::object();
  for (const auto& [name, e] : entries)
    header[name] = {{"dtype", st_dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {e.begin, e.end}}};
  std::map<std::string, std::string> meta = metadata;
  meta[kStChecksumKey] = file_checksum(entries, metadata, data.data(), data.size());
  header["__metadata__"] = meta;
  std::string h;
  try {
    h = header.dump();  // throws only on invalid UTF-8 in a name or metadata value
  } catch (const std::exception& ex) {
    return "safetensors_write '" + path + "': header: " + ex.what();
  }
  h.append((8 - h.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned
  std::vector<uint8_t> bytes(8 + h.size());
  const uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) bytes[size_t(i)] = uint8_t(n >> (8 * i));
  std::memcpy(bytes.data() + 8, h.data(), h.size());
  bytes.insert(bytes.end(), data.begin(), data.end());
  return write_atomic(path, bytes);
}

// ---- reading
// ---------------------------------------------------------------------------------------

std::string SafetensorsFile::open(const std::string& path, SafetensorsFile* out) {
  SafetensorsFile f;
  f.path_ = path;
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return sys_error("safetensors: cannot open", path);
  const std::streamoff size = in.tellg();
  if (size < 0) return sys_error("safetensors: cannot size", path);
  f.bytes_.resize(size_t(size));
  in.seekg(0);
  if (!in.read(reinterpret_cast<char*>(f.bytes_.data()), size))
    return sys_error("safetensors: cannot read", path);
  if (f.bytes_.size() < 8)
    return "safetensors '" + path + "': file has " + std::to_string(f.bytes_.size()) +
           " bytes, too short for the 8-byte header length (truncated?)";
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(f.bytes_[size_t(i)]) << (8 * i);
  if (n > f.bytes_.size() - 8 || n > (uint64_t(100) << 20))
    return "safetensors '" + path + "': header length " + std::to_string(n) +
           " exceeds the file's " + std::to_string(f.bytes_.size() - 8) +
           " remaining bytes (truncated or not safetensors)";
  f.data_start_ = 8 + n;
  std::string e = f.parse_header(std::string(f.bytes_.begin() + 8, f.bytes_.begin() + 8 + long(n)));
  if (!e.empty()) return "safetensors '" + path + "': " + e;
  const uint8_t* data = f.bytes_.data() + f.data_start_;
  const size_t data_size = f.bytes_.size() - f.data_start_;
  const auto mismatch = [&](const char* key, const std::string& stored, const std::string& got,
                            const char* what) {
    return "safetensors '" + path + "': checksum mismatch (" + key + " stored " + stored +
           ", computed " + got + "): " + what + " changed after the file was written (damaged or edited)";
  };
  if (const auto sum = f.metadata_.find(kStChecksumKey); sum != f.metadata_.end()) {
    const std::string got = file_checksum(f.entries_, f.metadata_, data, data_size);
    if (got != sum->second)
      return mismatch(kStChecksumKey, sum->second, got, "the header's tensors or metadata or the tensor data");
  } else if (const auto old = f.metadata_.find(kStDataChecksumKey); old != f.metadata_.end()) {
    const std::string got = data_checksum(data, data_size);
    if (got != old->second) return mismatch(kStDataChecksumKey, old->second, got, "the tensor data");
  }
  *out = std::move(f);
  return "";
}

namespace {

// A JSON value from the file, for an error message: short arrays of scalars in full, anything else
// by its kind and size (nlohmann's dump() recurses, so a hostile, deeply nested value must not be
// printed).
std::string json_brief(const nlohmann::json& v) {
  if (v.is_array() && v.size() <= 8 &&
      std::all_of(v.begin(), v.end(), [](const nlohmann::json& x) { return x.is_primitive(); }))
    return v.dump();
  if (v.is_primitive()) return v.dump().substr(0, 64);
  return std::string(v.type_name()) + " of " + std::to_string(v.size());
}

std::string parse_entry(const std::string& name, const nlohmann::json& v,
                        SafetensorsFile::Entry* e) {
  if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
    return "tensor '" + name + "': entry needs dtype, shape and data_offsets";
  const nlohmann::json &dt = v["dtype"], &sh = v["shape"], &off = v["data_offsets"];
  if (!dt.is_string()) return "tensor '" + name + "': dtype is not a string";
  const std::string d = dt.get<std::string>();
  if (d == "F32")
    e->dtype = StDtype::F32;
  else if (d == "BF16")
    e->dtype = StDtype::BF16;
  else if (d == "F16")
    e->dtype = StDtype::F16;
  else
    return "tensor '" + name + "': unsupported dtype " + d + " (F32, BF16, F16 are)";
  if (!sh.is_array()) return "tensor '" + name + "': shape is not an array";
  uint64_t bytes = uint64_t(st_dtype_size(e->dtype));
  for (const auto& x : sh) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0)
      return "tensor '" + name + "': shape " + json_brief(sh) + " has a non-integer or negative dim";
    const uint64_t d = uint64_t(x.get<int64_t>());
    if (d != 0 && bytes > (uint64_t(1) << 62) / d)
      return "tensor '" + name + "': shape " + json_brief(sh) + " is too large for any file";
    bytes *= d;
    e->shape.push_back(x.get<int64_t>());
  }
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
      !off[1].is_number_unsigned())
    return "tensor '" + name + "': data_offsets " + json_brief(off) + " is not [begin, end]";
  e->begin = off[0].get<uint64_t>();
  e->end = off[1].get<uint64_t>();
  const uint64_t want = bytes;
  if (e->end < e->begin || e->end - e->begin != want)
    return "tensor '" + name + "': data_offsets [" + std::to_string(e->begin) + ", " +
           std::to_string(e->end) + "] hold " + std::to_string(e->end - e->begin) + " bytes, but " +
           d + " " + shape_str(e->shape) + " needs " + std::to_string(want);
  return "";
}

}  // namespace

std::string SafetensorsFile::parse_header(const std::string& text) {
  nlohmann::json h = nlohmann::json::parse(text, nullptr, false);
  if (h.is_discarded() || !h.is_object()) return "header is not a JSON object";
  std::vector<std::pair<uint64_t, std::string>> order;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) return "__metadata__ is not an object";
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) return "__metadata__ value of '" + m.key() + "' is not a string";
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    Entry e;
    std::string err = parse_entry(it.key(), *it, &e);
    if (!err.empty()) return err;
    order.emplace_back(e.begin, it.key());
    entries_[it.key()] = e;
  }
  // The offsets must tile the data section: sorted, contiguous, ending at its end.
  std::sort(order.begin(), order.end());
  const uint64_t data_size = bytes_.size() - data_start_;
  uint64_t at = 0;
  for (const auto& [begin, name] : order) {
    const Entry& e = entries_[name];
    if (e.begin != at)
      return "tensor '" + name + "': data begins at byte " + std::to_string(e.begin) +
             ", expected " + std::to_string(at) + " (offsets overlap or leave a gap)";
    if (e.end > data_size)
      return "tensor '" + name + "': data ends at byte " + std::to_string(e.end) +
             " but the data section has " + std::to_string(data_size) + " bytes (file truncated)";
    at = e.end;
  }
  if (at != data_size)
    return "data section has " + std::to_string(data_size) + " bytes but the tensors cover " +
           std::to_string(at);
  return "";
}

std::string SafetensorsFile::read_f32(const std::string& name, std::vector<int64_t>* shape,
                                      std::vector<float>* out) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) return "safetensors '" + path_ + "': tensor '" + name + "' is missing";
  const Entry& e = it->second;
  const int64_t n = numel(e.shape);
  const uint8_t* p = bytes_.data() + data_start_ + e.begin;
  out->resize(size_t(n));
  if (e.dtype == StDtype::F32) {
    std::memcpy(out->data(), p, size_t(n) * 4);
  } else {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      (*out)[size_t(i)] = e.dtype == StDtype::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
  }
  if (shape) *shape = e.shape;
  return "";
}

std::string SafetensorsFile::read_f32(const std::string& name, const std::vector<int64_t>& expected,
                                      std::vector<float>* out) const {
  auto it = entries_.find(name);
  if (it != entries_.end() && it->second.shape != expected)
    return "safetensors '" + path_ + "': tensor '" + name + "' has shape " +
           shape_str(it->second.shape) + ", expected " + shape_str(expected);
  return read_f32(name, nullptr, out);
}

}  // namespace stp
