// data.cpp: token sources and the deterministic sequence order (contract in data.h).
#include "runtime/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
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

DataLoader::~DataLoader() = default;

DataLoader::Result DataLoader::open(const DataConfig& cfg, const DataShape& shape) {
  std::unique_ptr<DataLoader> d(new DataLoader());
  d->cfg_ = cfg;
  d->shape_ = shape;
  if (shape.seq_len < 1 || shape.micro_batch < 1 || shape.microbatches < 1 || shape.dp < 1 ||
      shape.vocab < 2)
    return {nullptr, "data: batch shape must be positive (T, b, M, dp >= 1, vocab >= 2)"};
  if (cfg.kind == "synthetic") return {std::move(d), ""};
  if (cfg.kind != "tokens")
    return {nullptr, "data.kind '" + cfg.kind + "' is not one of: synthetic, tokens"};
  std::string err = d->open_file();
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
  const int T = shape_.seq_len;
  if (n_tokens_ < T + 1)
    return where + " holds " + std::to_string(n_tokens_) + " tokens, fewer than one sequence of " +
           "model.seq_len + 1 = " + std::to_string(T + 1);
  n_seq_ = (n_tokens_ - 1) / T;
  return n_tokens_ <= kScanLimitTokens ? scan_file() : std::string();
}

uint32_t DataLoader::token_at(int64_t pos) const {
  const uint8_t* p = file_->data() + size_t(pos) * size_t(elem_);
  if (elem_ == 2) return uint32_t(p[0]) | uint32_t(p[1]) << 8;  // little-endian on any host
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
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
  const int T = shape_.seq_len;
  if (i < 0) return "data: negative sequence index " + std::to_string(i);
  if (!file_) {
    for (int t = 0; t <= T; ++t) out[t] = data_synthetic_token(cfg_.seed, i * T + t, shape_.vocab);
    return {};
  }
  const int64_t start = slot_of(i) * T;
  for (int t = 0; t <= T; ++t) {
    const uint32_t id = token_at(start + t);
    if (id >= uint32_t(shape_.vocab))
      return "data.path '" + cfg_.path + "': token " + std::to_string(start + t) + " is " +
             std::to_string(id) + ", but model.vocab is " + std::to_string(shape_.vocab) +
             " (ids must be < vocab)";
    out[t] = int32_t(id);
  }
  return {};
}

int64_t DataLoader::sequence_index(int64_t step, int d, int m, int j) const {
  const int64_t Mb = int64_t(shape_.microbatches) * shape_.micro_batch;
  return ((step - 1) * shape_.dp + d) * Mb + int64_t(m) * shape_.micro_batch + j;
}

std::string DataLoader::load(int64_t step, int d, int m, int32_t* inputs, int32_t* targets) const {
  const int T = shape_.seq_len;
  if (step < 1) return "data: step " + std::to_string(step) + " (steps count from 1)";
  std::vector<int32_t> seq(size_t(T) + 1);
  for (int j = 0; j < shape_.micro_batch; ++j) {
    std::string err = read_sequence(sequence_index(step, d, m, j), seq.data());
    if (!err.empty()) return err;
    std::memcpy(inputs + size_t(j) * T, seq.data(), sizeof(int32_t) * T);
    std::memcpy(targets + size_t(j) * T, seq.data() + 1, sizeof(int32_t) * T);
  }
  return {};
}

std::string DataLoader::describe() const {
  const std::string shape = std::to_string(shape_.seq_len) + "+1";
  if (!file_) return "synthetic (seed " + std::to_string(cfg_.seed) + ", vocab " +
                     std::to_string(shape_.vocab) + ", runs of 8 counting ids)";
  return "tokens " + cfg_.path + " (" + cfg_.dtype + ", " + std::to_string(n_tokens_) + " tokens, " +
         std::to_string(n_seq_) + " sequences of " + shape + (cfg_.shuffle ? ", shuffled" : "") + ")";
}

}  // namespace stp
