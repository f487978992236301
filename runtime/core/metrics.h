// metrics.h: machine-readable output. One JSON object per line appended to output.dir/metrics.jsonl
// and flushed per line (so a crashed run keeps every finished step); the resolved config written
// once to output.dir/config.json. Only rank 0 writes (the caller decides).
#pragma once

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

namespace stp {

class MetricsWriter {
 public:
  MetricsWriter() = default;
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  MetricsWriter(MetricsWriter&& o) noexcept : f_(o.f_), path_(std::move(o.path_)) { o.f_ = nullptr; }

  // Creates `dir` if needed and opens dir/metrics.jsonl (truncating unless `append`).
  // Returns an error message, empty on success.
  std::string open(const std::string& dir, bool append = false);
  bool is_open() const { return f_ != nullptr; }
  void write(const nlohmann::json& obj);   // one line, flushed
  const std::string& path() const { return path_; }

 private:
  std::FILE* f_ = nullptr;
  std::string path_;
};

// Writes `text` to dir/name atomically (temporary file, fsync, rename). Returns an error message.
std::string write_file_atomic(const std::string& dir, const std::string& name, const std::string& text);

}  // namespace stp
