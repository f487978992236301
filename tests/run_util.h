// run_util.h: runs a command (the real stp-train binary, usually) and captures its exit code and
// output, for tests of the command line. One copy for every test area.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace stp_test {

struct RunResult {
  int rc = -1;       // exit code; 128 + signal when killed
  std::string out;   // stdout, and stderr too unless `merge_stderr` is false (then it is dropped)
};

inline RunResult run_command(const std::string& cmd, bool merge_stderr = true) {
  RunResult r;
  FILE* p = popen((cmd + (merge_stderr ? " 2>&1" : " 2>/dev/null")).c_str(), "r");
  if (p == nullptr) throw std::runtime_error("popen failed: " + cmd);
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

}  // namespace stp_test
