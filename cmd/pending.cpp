// pending.cpp: subcommands whose engines are still being wired in. Each says so and fails with
// exit code 1 rather than pretending to work. Replaced file by file as the engines land.
#include <cstdio>

#include "cmd/commands.h"

namespace stp {

// Unused while every subcommand has landed; kept for the next one that is wired in late.
[[maybe_unused]] static int unavailable(const char* what) {
  std::fprintf(stderr, "error: '%s' is not available in this build yet\n", what);
  return 1;
}

}  // namespace stp
