// sched_test_util.h: what the scheduler tests share: the golden programs and the tiny GPT whose
// unit lists the lowering, stream, simulator and renderer tests use.
#pragma once

#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>
#include <string>

#include "runtime/core/config.h"
#include "scheduler/schedules.h"
#include "scheduler/simulator.h"
#include "scheduler/text_io.h"

namespace stp_test {

// The text of tests/golden/<name>.
inline std::string read_golden(const std::string& name) {
  std::ifstream f(std::string(STP_GOLDEN_DIR) + "/" + name);
  REQUIRE(f.good());
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A golden CSV (all of them are V-placed, 2 chunks per rank) parsed for `pp` ranks.
inline stp::PipelineProgram golden_program(const std::string& name, int pp) {
  stp::PipelineParseResult r = stp::pipeline_from_csv(read_golden(name), pp, 2, stp::Placement::V);
  INFO(name);
  REQUIRE(r.ok());
  return *r.program;
}

// A tiny GPT (C 64, 4 heads, vocab 256, T 16) with `layers` layers on tp x pp ranks.
inline stp::Config tiny_gpt(int tp, int pp, int layers) {
  stp::Config c;
  c.model.layers = layers;
  c.model.hidden = 64;
  c.model.heads = 4;
  c.model.vocab = 256;
  c.model.seq_len = 16;
  c.parallel.tp = tp;
  c.parallel.pp = pp;
  return c;
}

// The same model, `layers_per_stage` layers on each virtual stage of `sched`, with M micro-batches.
inline stp::Config tiny_gpt_schedule(const std::string& sched, int pp, int M, int tp = 2, int layers_per_stage = 1) {
  stp::Config c = tiny_gpt(tp, pp, layers_per_stage * pp * stp::pipeline_default_chunks(sched));
  c.schedule.name = sched;
  c.schedule.microbatches = M;
  return c;
}

// One iteration of `c` with unit costs (F = B = W = 1 per chunk, a TP collective = t_ar).
inline stp::SimResult simulate_unit(stp::Config c, double t_ar = 0) {
  c.schedule.t_ar = t_ar;
  stp::SimOptions o;
  o.cost = stp::CostMode::Unit;
  stp::SimResult r = stp::simulate(c, o);
  INFO(r.error);
  REQUIRE(r.ok());
  return r;
}

}  // namespace stp_test
