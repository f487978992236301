// main.cpp: the stp-train command line. Only cmd/ decides exit codes: 0 ok, 1 runtime failure,
// 2 bad input (unknown flags or keys, invalid config, world-size mismatch).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "cmd/commands.h"
#include "runtime/core/log.h"

namespace {

const char* kExamples = R"(
Examples:
  stp-train --config configs/gpt13b.yaml --dry-run          resolve config + topology, print, exit
  mpirun -np 4 stp-train --config configs/tiny_stp.yaml     train (tp*pp*dp ranks)
  torchrun --nproc-per-node 8 --no-python stp-train --config configs/gpt13b.yaml
  stp-train simulate --config configs/gpt13b.yaml --compare every schedule on the cost model
  stp-train schedule --config configs/tiny_stp.yaml --format csv
  stp-train --config X.yaml --set schedule.name=zb-v --set schedule.microbatches=16
)";

}  // namespace

int main(int argc, char** argv) {
  stp::CommonOptions common;
  stp::SimulateOptions sim;
  stp::ScheduleOptions sched;
  stp::ExportOptions exp;

  CLI::App app{"stp-train: TP x PP x DP training with braided pipeline schedules (STP, ZB-V, 1F1B, ...)"};
  app.footer(kExamples);
  app.set_version_flag("--version", std::string("stp-train ") + STP_VERSION);
  app.require_subcommand(0, 1);
  app.fallthrough();
  app.add_option("-c,--config", common.config, "run config (YAML)")->check(CLI::ExistingFile);
  app.add_option("--set", common.sets, "override a config key: key.path=value (repeatable)");
  app.add_option("--log-level", common.log_level, "trace|debug|info|warn|error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  app.add_flag("--dry-run", common.dry_run, "resolve the config and topology, print them, exit");

  app.add_subcommand("train", "train (the default when no subcommand is given)");
  CLI::App* simulate = app.add_subcommand("simulate", "run the schedule on the cost model (no GPU)");
  simulate->add_flag("--compare", sim.compare, "simulate every schedule valid for the config, ranked");
  simulate->add_flag("--json", sim.json, "print JSON instead of a table");
  simulate->add_option("--cost", sim.cost, "cost model: flops (from the cluster preset) or unit (F=B=W=1 per chunk, T_AR = schedule.t_ar)")
      ->check(CLI::IsMember({"flops", "unit"}));
  simulate->add_option("--trace", sim.trace, "write a Chrome trace (Perfetto) of the simulated timeline");
  simulate->add_option("--svg", sim.svg, "write an SVG timeline");
  simulate->add_option("--pp-streams", sim.pp_streams,
                       "PP transfers: channel (one stream per peer and direction, as the MPI executor runs) or single "
                       "(one PP stream per rank, head-of-line blocking)")
      ->check(CLI::IsMember({"channel", "single"}));
  CLI::App* schedule = app.add_subcommand("schedule", "print or draw the pipeline program of every rank");
  schedule->add_option("--format", sched.format, "text | csv | svg")->check(CLI::IsMember({"text", "csv", "svg"}));
  schedule->add_option("-o,--out", sched.out, "output file (default: stdout)");
  CLI::App* exportc = app.add_subcommand("export", "write the full model from a checkpoint in Hugging Face naming");
  exportc->add_option("--checkpoint", exp.checkpoint, "checkpoint directory")->required();
  exportc->add_option("--out", exp.out, "output .safetensors file")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (common.config.empty()) {
    std::fprintf(stderr, "error: --config is required (see --help)\n");
    return 2;
  }

  const stp::LaunchResult launch = stp::launch_env_detect([](const char* n) { return std::getenv(n); });
  if (!launch.env) {
    std::fprintf(stderr, "error: launcher environment: %s\n", launch.error.c_str());
    return 2;
  }
  stp::log_init(launch.env->rank, common.log_level);

  const stp::ConfigResult loaded = stp::config_load(common.config, common.sets);
  if (!loaded.ok()) {
    std::fprintf(stderr, "error: %s\n", loaded.error->to_string().c_str());
    return 2;
  }
  const stp::Config& cfg = *loaded.config;

  if (*simulate) return common.dry_run ? stp::cmd_dry_run(cfg, *launch.env) : stp::cmd_simulate(cfg, sim);
  if (*schedule) return common.dry_run ? stp::cmd_dry_run(cfg, *launch.env) : stp::cmd_schedule(cfg, sched);
  if (*exportc) return stp::cmd_export(cfg, exp);
  if (common.dry_run) return stp::cmd_dry_run(cfg, *launch.env);
  return stp::cmd_train(cfg, *launch.env, common);
}
