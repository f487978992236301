// mpi_main.cpp: Catch2 main for the multi-rank test executables (run under mpirun). Every rank runs
// the same test cases in the same order; a failure on any rank makes that rank, and so mpirun,
// exit non-zero. Tests reach the MPI session through test_mpi_session().
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

#include "tests/mpi/mpi_test_util.h"

namespace {
stp::MpiSession* g_session = nullptr;  // test harness only: the session main() owns
}

stp::MpiSession& test_mpi_session() { return *g_session; }

int main(int argc, char** argv) {
  stp::MpiSession::Result s = stp::MpiSession::start(&argc, &argv);
  if (!s.session) {
    std::fprintf(stderr, "%s\n", s.error.c_str());
    return 2;
  }
  g_session = s.session.get();
  const int rc = Catch::Session().run(argc, argv);
  g_session = nullptr;
  return rc;
}
