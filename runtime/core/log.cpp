#include "runtime/core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

namespace stp {

bool log_init(int rank, const std::string& level, bool all_ranks) {
  const spdlog::level::level_enum lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off") return false;
  auto logger = spdlog::stderr_color_mt("stp-r" + std::to_string(rank));
  logger->set_pattern("[%H:%M:%S.%e] [rank " + std::to_string(rank) + "] %^%l%$: %v");
  logger->set_level(rank == 0 || all_ranks ? lvl : std::max(lvl, spdlog::level::warn));
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
  return true;
}

}  // namespace stp
