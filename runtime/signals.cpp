// signals.cpp: the SIGTERM flag and its vote (contract in signals.h).
#include "runtime/signals.h"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>

namespace stp {

namespace {

// Lock-free, so setting it from the handler is async-signal-safe.
std::atomic<int> g_sigterm{0};
static_assert(std::atomic<int>::is_always_lock_free, "the SIGTERM flag must be lock-free");

extern "C" void on_sigterm(int) { g_sigterm.store(1, std::memory_order_relaxed); }

}  // namespace

std::string sigterm_install() {
  struct sigaction sa {};
  sa.sa_handler = on_sigterm;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  if (sigaction(SIGTERM, &sa, nullptr) != 0) return std::string("sigaction(SIGTERM): ") + std::strerror(errno);
  return {};
}

bool sigterm_received() { return g_sigterm.load(std::memory_order_relaxed) != 0; }

bool sigterm_agree(Communicator& comm, double timeout_s, std::string* error) {
  bool any = false;
  const CommStatus st = comm_any(comm, sigterm_received(), timeout_s, &any);
  if (!st.ok()) *error = "SIGTERM vote: " + st.error;
  return any;
}

}  // namespace stp
