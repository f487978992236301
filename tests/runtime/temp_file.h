// temp_file.h: a temporary file of little-endian values (token ids, float32 pixels) for the data
// tests, written as the host's bytes (little-endian on every machine we build for), and removed at
// scope exit.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

namespace stp_test {

struct TempFile {
  std::string path;
  template <class T>
  explicit TempFile(const std::vector<T>& values) {
    char tmpl[] = "/tmp/stp_data_XXXXXX";
    const int fd = mkstemp(tmpl);
    REQUIRE(fd >= 0);
    path = tmpl;
    std::vector<unsigned char> bytes;
    for (T v : values) {
      uint64_t bits = 0;
      std::memcpy(&bits, &v, sizeof(T));
      for (size_t k = 0; k < sizeof(T); ++k) bytes.push_back((bits >> (8 * k)) & 0xff);
    }
    REQUIRE(write(fd, bytes.data(), bytes.size()) == ssize_t(bytes.size()));
    close(fd);
  }
  ~TempFile() { std::remove(path.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
};

}  // namespace stp_test
