// log.h: rank-aware spdlog set-up. Rank 0 logs at the chosen level; other ranks log warnings and
// errors only (so a fatal error is printed by every rank), unless all_ranks is set.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace stp {

// Configures the default spdlog logger: pattern "[time] [rank R] level: msg" to stderr.
// Returns false (and leaves the logger alone) if `level` is not a spdlog level name.
bool log_init(int rank, const std::string& level, bool all_ranks = false);

}  // namespace stp
