// commands.h: the subcommands of stp-train. Each returns the process exit code:
// 0 success, 1 a runtime failure, 2 bad input (config, arguments, files).
#pragma once

#include <string>
#include <vector>

#include "runtime/core/config.h"
#include "runtime/core/topology.h"

namespace stp {

struct CommonOptions {
  std::string config;
  std::vector<std::string> sets;
  std::string log_level = "info";
  bool dry_run = false;
};

struct SimulateOptions {
  bool compare = false;
  bool json = false;
  std::string cost = "flops";   // flops | unit
  std::string trace;            // Chrome trace output file
  std::string svg;              // SVG timeline output file
  std::string pp_streams = "channel";  // channel (one PP stream per peer and direction) | single
};

struct ScheduleOptions {
  std::string format = "text";  // text | csv | svg
  std::string out;              // file (default: stdout)
};

struct ExportOptions {
  std::string checkpoint;
  std::string out;
};

int cmd_train(const Config& cfg, const LaunchEnv& env, const CommonOptions& opt);
int cmd_simulate(const Config& cfg, const SimulateOptions& opt);
int cmd_schedule(const Config& cfg, const ScheduleOptions& opt);
int cmd_export(const Config& cfg, const ExportOptions& opt);

// Prints the resolved config and this rank's topology (--dry-run). Returns the exit code.
int cmd_dry_run(const Config& cfg, const LaunchEnv& env);

}  // namespace stp
