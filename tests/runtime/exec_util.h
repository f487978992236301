// exec_util.h: tiny configs and program building shared by the executor tests.
#pragma once

#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "model/desc/desc.h"
#include "runtime/core/config.h"
#include "runtime/trainer.h"
#include "scheduler/lower.h"
#include "scheduler/schedules.h"

namespace stp_test {

// A tiny GPT: C 16, 2 heads, vocab 32, T 8, and one layer per virtual stage of a two-chunk
// schedule (4 layers up to pp 2, 2*pp beyond).
inline stp::Config tiny_config(int tp, int pp, int dp, const std::string& schedule, int M) {
  stp::Config c;
  c.model.layers = 2 * (pp > 2 ? pp : 2);
  c.model.hidden = 16;
  c.model.heads = 2;
  c.model.vocab = 32;
  c.model.seq_len = 8;
  c.model.ffn_hidden = 32;
  c.parallel.tp = tp;
  c.parallel.pp = pp;
  c.parallel.dp = dp;
  c.schedule.name = schedule;
  c.schedule.microbatches = M;
  c.schedule.micro_batch_size = 1;
  return c;
}

// Micro-batches every schedule accepts with `pp` ranks (stp's 3pp-1 is the largest minimum;
// 1f1b-i wants a multiple of pp).
inline int common_microbatches(int pp) {
  int m = 3 * pp - 1;
  while (m % pp) ++m;
  return m;
}

struct Built {
  stp::ModelDesc desc;
  stp::LoweredProgram prog;
  std::string error;
};

inline Built build_program(const stp::Config& cfg) {
  Built b;
  const int chunks = stp::pipeline_default_chunks(cfg.schedule.name);
  stp::Config c = cfg;
  c.parallel.chunks = chunks;
  if (auto bad = stp::pipeline_check_args(cfg.schedule.name, cfg.parallel.pp, cfg.schedule.microbatches, chunks)) {
    b.error = *bad;
    return b;
  }
  b.desc = stp::model_desc_build(c, chunks, stp::config_stage_layers(c));
  stp::PipelineProgram pp = stp::pipeline_generate(cfg.schedule.name, cfg.parallel.pp, cfg.schedule.microbatches, chunks);
  stp::LowerOptions lo;
  lo.dp = cfg.parallel.dp;
  stp::LowerResult lr = stp::lower(pp, b.desc, lo);
  if (!lr.ok()) {
    b.error = lr.error;
    return b;
  }
  b.prog = std::move(*lr.program);
  return b;
}

// Runs `n` training steps, requiring each to succeed; returns their reports.
inline std::vector<stp::StepReport> run_steps(stp::Trainer& tr, int n) {
  std::vector<stp::StepReport> out;
  for (int i = 0; i < n; ++i) {
    stp::StepReport r;
    bool fatal = false;
    const std::string err = tr.step(&r, &fatal);
    INFO(err);
    REQUIRE(err.empty());
    out.push_back(r);
  }
  return out;
}

}  // namespace stp_test
