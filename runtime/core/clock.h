// clock.h: elapsed wall time on the monotonic clock, the one measure every timeout, step time and
// stream statistic uses.
#pragma once

#include <chrono>

namespace stp {

// Seconds from t0 to now (steady_clock: never jumps with the system time).
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace stp
