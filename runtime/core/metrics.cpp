#include "runtime/core/metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace stp {

MetricsWriter::~MetricsWriter() {
  if (f_) std::fclose(f_);
}

std::string MetricsWriter::open(const std::string& dir, bool append) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return "cannot create output.dir '" + dir + "': " + ec.message();
  path_ = (std::filesystem::path(dir) / "metrics.jsonl").string();
  f_ = std::fopen(path_.c_str(), append ? "a" : "w");
  if (!f_) return "cannot open '" + path_ + "': " + std::strerror(errno);
  return "";
}

void MetricsWriter::write(const nlohmann::json& obj) {
  if (!f_) return;
  const std::string line = obj.dump() + "\n";
  std::fwrite(line.data(), 1, line.size(), f_);
  std::fflush(f_);
}

std::string write_file_atomic(const std::string& dir, const std::string& name, const std::string& text) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return "cannot create '" + dir + "': " + ec.message();
  const std::string final_path = (std::filesystem::path(dir) / name).string();
  const std::string tmp = final_path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return "cannot create '" + tmp + "': " + std::strerror(errno);
  size_t off = 0;
  while (off < text.size()) {
    const ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      const std::string e = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      return "cannot write '" + tmp + "': " + e;
    }
    off += size_t(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    return "cannot flush '" + tmp + "'";
  }
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
    const std::string e = std::strerror(errno);
    ::unlink(tmp.c_str());
    return "cannot rename '" + tmp + "' to '" + final_path + "': " + e;
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return "";
}

}  // namespace stp
