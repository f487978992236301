// pending.cpp: subcommands whose engines are still being wired in. Each says so and fails with
// exit code 1 rather than pretending to work. Replaced file by file as the engines land.
#include <cstdio>

#include "cmd/commands.h"

namespace stp {

static int unavailable(const char* what) {
  std::fprintf(stderr, "error: '%s' is not available in this build yet\n", what);
  return 1;
}

int cmd_train(const Config&, const LaunchEnv&, const CommonOptions&) { return unavailable("train"); }
int cmd_simulate(const Config&, const SimulateOptions&) { return unavailable("simulate"); }
int cmd_schedule(const Config&, const ScheduleOptions&) { return unavailable("schedule"); }
int cmd_export(const Config&, const ExportOptions&) { return unavailable("export"); }

}  // namespace stp
