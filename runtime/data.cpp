// data.cpp: token and image sources and the deterministic sequence order (contract in data.h).
#include "runtime/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <vector>

namespace stp {

// A read-only memory map of a whole file (RAII).
class MappedFile {
 public:
  static std::unique_ptr<MappedFile> open(const std::string& path, std::string* error) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      *error = "cannot open: " + std::string(std::strerror(errno));
      return nullptr;
    }
    struct stat st {};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      *error = "not a regular file";
      ::close(fd);
      return nullptr;
    }
    std::unique_ptr<MappedFile> f(new MappedFile());
    f->size_ = size_t(st.st_size);
    if (f->size_ > 0) {
      void* p = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        *error = "mmap failed: " + std::string(std::strerror(errno));
        ::close(fd);
        return nullptr;
      }
      f->data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);  // the mapping keeps the file
    return f;
  }
  ~MappedFile() {
    if (data_) munmap(const_cast<uint8_t*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

uint64_t data_mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

int32_t data_synthetic_token(uint64_t seed, int64_t p, int vocab) {
  const uint64_t start = data_mix64(seed * 0x632be59bd9b4e019ull ^ data_mix64(uint64_t(p / 8)));
  return int32_t((start % uint64_t(vocab) + uint64_t(p % 8)) % uint64_t(vocab));
}

int64_t data_permute(int64_t x, int64_t n, uint64_t key) {
  int half = 1;  // bits per Feistel half: 4^half >= n
  while ((int64_t(1) << (2 * half)) < n) ++half;
  const uint64_t mask = (uint64_t(1) << half) - 1;
  uint64_t v = uint64_t(x);
  do {
    uint64_t l = v >> half, r = v & mask;
    for (uint64_t round = 0; round < 4; ++round) {
      const uint64_t f = data_mix64(key ^ (round << 56) ^ r) & mask;
      const uint64_t nl = r;
      r = l ^ f;
      l = nl;
    }
    v = (l << half) | r;
  } while (v >= uint64_t(n));  // cycle-walk back into 0..n-1
  return int64_t(v);
}

namespace {

uint32_t read_le32(const uint8_t* p) {  // little-endian on any host
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

// Uniform in [-1, 1) on a 2^-23 grid (24 bits of h), so 0.5*a + 0.5*b is exact in float.
float unit_interval(uint64_t h) { return float(int64_t(h >> 40) - (int64_t(1) << 23)) * 0x1p-23f; }

// The per-sequence keys of the synthetic image: proto depends on (seed, class), noise on (seed, i).
uint64_t pixel_proto_key(uint64_t seed, int cls) {
  return data_mix64(data_mix64(seed ^ 0x70726f746f000000ull) ^ uint64_t(cls));
}
uint64_t pixel_noise_key(uint64_t seed, int64_t i) {
  return data_mix64(data_mix64(seed ^ 0x6e6f697365000000ull) ^ uint64_t(i));
}
float pixel_from_keys(uint64_t proto_key, uint64_t noise_key, int64_t k) {
  return 0.5f * unit_interval(data_mix64(proto_key ^ uint64_t(k))) +
         0.5f * unit_interval(data_mix64(noise_key ^ uint64_t(k)));
}

// One row of s = [t0, IMG x Vt, t1 .. t_Tt] (T+1 entries, IMG = kDataImageToken): inputs = s[0..T-1],
// targets = s[1..T]. With Vt = 0 this is the plain shift by one.
void splice_row(const int32_t* text, int T, int Vt, int32_t* inputs, int32_t* targets) {
  auto s = [&](int p) { return p == 0 ? text[0] : p <= Vt ? kDataImageToken : text[p - Vt]; };
  for (int p = 0; p < T; ++p) {
    inputs[p] = s(p);
    targets[p] = s(p + 1);
  }
}

std::string check_shape(const DataShape& sh) {
  if (sh.seq_len < 1 || sh.micro_batch < 1 || sh.microbatches < 1 || sh.dp < 1 || sh.vocab < 2)
    return "data: batch shape must be positive (T, b, M, dp >= 1, vocab >= 2)";
  if (sh.visual_tokens < 0 || sh.patch_values < 0 || (sh.visual_tokens > 0) != (sh.patch_values > 0))
    return "data: " + std::to_string(sh.visual_tokens) + " visual tokens and " +
           std::to_string(sh.patch_values) + " pixel values per sequence: both must be 0 (text " +
           "only) or both positive (model.vision)";
  if (sh.visual_tokens >= sh.seq_len)
    return "data: model.seq_len " + std::to_string(sh.seq_len) + " leaves no text after " +
           std::to_string(sh.visual_tokens) + " visual tokens (T - n*Nv = " +
           std::to_string(sh.text_len()) + ", must be >= 1)";
  return {};
}

// data.patches belongs to exactly the runs that read images from a token file.
std::string check_patches_key(const DataConfig& cfg, const DataShape& sh) {
  const std::string key = "data.patches '" + cfg.patches + "'";
  if (!cfg.patches.empty() && sh.visual_tokens == 0)
    return key + " is set, but model.vision is not enabled (patches are read only for a vision tower)";
  if (!cfg.patches.empty() && cfg.kind == "synthetic")
    return key + " is set, but data.kind is synthetic (synthetic runs generate their images; " +
           "data.patches is read with data.kind tokens)";
  if (cfg.patches.empty() && sh.visual_tokens > 0 && cfg.kind == "tokens")
    return "data.patches is empty, but model.vision is enabled and data.kind is tokens (the " +
           std::string("images of a token file come from a float32 patch file, docs/data.md)");
  return {};
}

}  // namespace

float data_synthetic_pixel(uint64_t seed, int64_t i, int cls, int64_t k) {
  return pixel_from_keys(pixel_proto_key(seed, cls), pixel_noise_key(seed, i), k);
}

DataShape data_shape_of(const Config& cfg) {
  const VisionGeometry g = vision_geometry(cfg);  // all zero without a vision tower
  DataShape s{cfg.model.seq_len, cfg.schedule.micro_batch_size, cfg.schedule.microbatches,
              cfg.parallel.dp, cfg.model.vocab};
  s.visual_tokens = g.visual_tokens;
  s.patch_values = int64_t(cfg.model.vision.images_per_sample) * g.patches * g.patch_dim;
  return s;
}

DataLoader::~DataLoader() = default;

DataLoader::Result DataLoader::open(const DataConfig& cfg, const DataShape& shape) {
  std::unique_ptr<DataLoader> d(new DataLoader());
  d->cfg_ = cfg;
  d->shape_ = shape;
  std::string err = check_shape(shape);
  if (!err.empty()) return {nullptr, err};
  if (cfg.kind != "synthetic" && cfg.kind != "tokens")
    return {nullptr, "data.kind '" + cfg.kind + "' is not one of: synthetic, tokens"};
  err = check_patches_key(cfg, shape);
  if (!err.empty()) return {nullptr, err};
  if (cfg.kind == "synthetic") return {std::move(d), ""};
  err = d->open_file();
  if (err.empty() && shape.visual_tokens > 0) err = d->open_patches();
  if (!err.empty()) return {nullptr, err};
  return {std::move(d), ""};
}

std::string DataLoader::open_file() {
  const std::string where = "data.path '" + cfg_.path + "'";
  if (cfg_.path.empty()) return "data.kind is tokens but data.path is empty";
  if (cfg_.dtype == "uint16") elem_ = 2;
  else if (cfg_.dtype == "uint32") elem_ = 4;
  else return "data.dtype '" + cfg_.dtype + "' is not one of: uint16, uint32";
  std::string err;
  file_ = MappedFile::open(cfg_.path, &err);
  if (!file_) return where + ": " + err;
  if (file_->size() % size_t(elem_) != 0)
    return where + ": " + std::to_string(file_->size()) + " bytes is not a whole number of " +
           cfg_.dtype + " ids (" + std::to_string(elem_) + " bytes each)";
  n_tokens_ = int64_t(file_->size() / size_t(elem_));
  const int Tt = shape_.text_len();
  if (n_tokens_ < Tt + 1) {
    const std::string need = shape_.visual_tokens == 0
        ? "model.seq_len + 1 = " + std::to_string(Tt + 1)
        : "model.seq_len - visual tokens + 1 = " + std::to_string(shape_.seq_len) + " - " +
              std::to_string(shape_.visual_tokens) + " + 1 = " + std::to_string(Tt + 1);
    return where + " holds " + std::to_string(n_tokens_) + " tokens, fewer than one sequence of " +
           need;
  }
  n_seq_ = (n_tokens_ - 1) / Tt;
  return n_tokens_ <= kScanLimitTokens ? scan_file() : std::string();
}

uint32_t DataLoader::token_at(int64_t pos) const {
  const uint8_t* p = file_->data() + size_t(pos) * size_t(elem_);
  if (elem_ == 2) return uint32_t(p[0]) | uint32_t(p[1]) << 8;  // little-endian on any host
  return read_le32(p);
}

std::string DataLoader::open_patches() {
  const std::string where = "data.patches '" + cfg_.patches + "'";
  std::string err;
  patches_ = MappedFile::open(cfg_.patches, &err);
  if (!patches_) return where + ": " + err;
  const size_t sample_bytes = size_t(shape_.patch_values) * sizeof(float);
  if (patches_->size() % sample_bytes != 0)
    return where + ": " + std::to_string(patches_->size()) + " bytes is not a whole number of " +
           "samples of n*Np*K = " + std::to_string(shape_.patch_values) + " float32 values (" +
           std::to_string(sample_bytes) + " bytes each)";
  n_patch_samples_ = int64_t(patches_->size() / sample_bytes);
  if (n_patch_samples_ < n_seq_)
    return where + " holds " + std::to_string(n_patch_samples_) + " samples, fewer than the " +
           std::to_string(n_seq_) + " sequences of data.path '" + cfg_.path +
           "' (sample s holds the images of text slot s)";
  return {};
}

std::string DataLoader::scan_file() const {
  const uint32_t V = uint32_t(shape_.vocab);
  for (int64_t pos = 0; pos < n_tokens_; ++pos) {
    const uint32_t id = token_at(pos);
    if (id >= V)
      return "data.path '" + cfg_.path + "': token " + std::to_string(pos) + " (byte offset " +
             std::to_string(pos * elem_) + ") is " + std::to_string(id) + ", but model.vocab is " +
             std::to_string(V) + " (ids must be < vocab)";
  }
  return {};
}

int64_t DataLoader::slot_of(int64_t i) const {
  const int64_t epoch = i / n_seq_, r = i % n_seq_;
  if (!cfg_.shuffle) return r;
  return data_permute(r, n_seq_, data_mix64(cfg_.seed ^ data_mix64(uint64_t(epoch))));
}

std::string DataLoader::read_sequence(int64_t i, int32_t* out) const {
  const int Tt = shape_.text_len();
  if (i < 0) return "data: negative sequence index " + std::to_string(i);
  if (!file_) {
    for (int t = 0; t <= Tt; ++t) out[t] = data_synthetic_token(cfg_.seed, i * Tt + t, shape_.vocab);
    return {};
  }
  const int64_t start = slot_of(i) * Tt;
  for (int t = 0; t <= Tt; ++t) {
    const uint32_t id = token_at(start + t);
    if (id >= uint32_t(shape_.vocab))
      return "data.path '" + cfg_.path + "': token " + std::to_string(start + t) + " is " +
             std::to_string(id) + ", but model.vocab is " + std::to_string(shape_.vocab) +
             " (ids must be < vocab)";
    out[t] = int32_t(id);
  }
  return {};
}

std::string DataLoader::read_pixels(int64_t i, const int32_t* text, float* out) const {
  const int64_t K = shape_.patch_values;
  if (i < 0) return "data: negative sequence index " + std::to_string(i);
  if (!file_) {
    const uint64_t pk = pixel_proto_key(cfg_.seed, text[1] % kSyntheticImageClasses);
    const uint64_t nk = pixel_noise_key(cfg_.seed, i);
    for (int64_t k = 0; k < K; ++k) out[k] = pixel_from_keys(pk, nk, k);
    return {};
  }
  const int64_t slot = slot_of(i);
  const uint8_t* p = patches_->data() + size_t(slot) * size_t(K) * sizeof(float);
  for (int64_t k = 0; k < K; ++k) {
    const uint32_t bits = read_le32(p + size_t(k) * sizeof(float));
    float v;
    std::memcpy(&v, &bits, sizeof v);
    if (!std::isfinite(v))
      return "data.patches '" + cfg_.patches + "': sample " + std::to_string(slot) + ", value " +
             std::to_string(k) + " (byte offset " + std::to_string((slot * K + k) * 4) + ") is " +
             (std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf") + " (pixel values must be finite)";
    out[k] = v;
  }
  return {};
}

int64_t DataLoader::sequence_index(int64_t step, int d, int m, int j) const {
  const int64_t Mb = int64_t(shape_.microbatches) * shape_.micro_batch;
  return ((step - 1) * shape_.dp + d) * Mb + int64_t(m) * shape_.micro_batch + j;
}

std::string DataLoader::load(int64_t step, int d, int m, int32_t* inputs, int32_t* targets,
                             float* pixels) const {
  const int T = shape_.seq_len, Vt = shape_.visual_tokens;
  if (step < 1) return "data: step " + std::to_string(step) + " (steps count from 1)";
  std::vector<int32_t> text(size_t(shape_.text_len()) + 1);
  for (int j = 0; j < shape_.micro_batch; ++j) {
    const int64_t i = sequence_index(step, d, m, j);
    std::string err = read_sequence(i, text.data());
    if (err.empty() && pixels && Vt > 0)
      err = read_pixels(i, text.data(), pixels + size_t(j) * size_t(shape_.patch_values));
    if (!err.empty()) return err;
    splice_row(text.data(), T, Vt, inputs + size_t(j) * T, targets + size_t(j) * T);
  }
  return {};
}

std::string DataLoader::describe() const {
  const int Vt = shape_.visual_tokens;
  const std::string images = std::to_string(Vt) + " visual tokens + " +
                             std::to_string(shape_.text_len()) + " text per sequence";
  if (!file_)
    return "synthetic (seed " + std::to_string(cfg_.seed) + ", vocab " +
           std::to_string(shape_.vocab) + ", runs of 8 counting ids" +
           (Vt > 0 ? ", " + images + ", images of class t[1] % 16" : "") + ")";
  const std::string shape = Vt > 0 ? images + ", images from " + cfg_.patches + " (" +
                                         std::to_string(n_patch_samples_) + " samples)"
                                   : std::to_string(shape_.seq_len) + "+1";
  return "tokens " + cfg_.path + " (" + cfg_.dtype + ", " + std::to_string(n_tokens_) + " tokens, " +
         std::to_string(n_seq_) + " sequences" + (Vt > 0 ? ", " : " of ") + shape +
         (cfg_.shuffle ? ", shuffled" : "") + ")";
}

}  // namespace stp
