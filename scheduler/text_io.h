// text_io.h: pipeline programs as text, compatible with torch.distributed.pipelining.
//
// CSV (pipeline_to_csv / pipeline_from_csv): one line per rank, rank 0 first, comma-separated
// actions. An action is `{stage}{kind}{mb}` with kind F (forward), I (input-gradient backward, our
// B), W (deferred weight gradient, our W), B (unsplit backward, our BW); a braided pair is
// `({a};{b})`, `a` the forward. The writer emits exactly this (the golden files' notation).
// The reader also takes PyTorch's CSVs: the `OVERLAP_F_B` suffix after a pair, spaces around
// tokens, empty cells (PyTorch's idle slots), and PyTorch's non-compute actions (`0SEND_F1`,
// `1RECV_B0`, `2UNSHARD`, `2RESHARD`, `0REDUCE_GRAD`), which are dropped: the import keeps compute
// only; our lowering re-derives communication. Errors name line, column (1-based), the token and
// why; nothing throws.
//
// Text (pipeline_to_text): for people. A `#` header line, then one line per rank:
//   rank 0: F0.0 F0.1 ... [F7.1 & B7.0] [F0.8 & W7.0] ... BW0.11
// with `F`, `B` (W deferred), `W`, `BW` followed by stage.mb and braided pairs in brackets.
#pragma once

#include <optional>
#include <string>

#include "scheduler/ir.h"

namespace stp {

// "3F1", "3I0" (B), "3W0", "3B1" (BW).
std::string pass_to_csv(const Pass& p);
// "3F1" or "(3F1;3I0)".
std::string step_to_csv(const Step& s);

// The human notation of pipeline_to_text: "F3.0" (kind, stage, micro-batch), "BW3.0";
// a braided step "F7.1 & B7.0".
const char* pass_kind_text(PassKind k);
std::string pass_to_text(const Pass& p);
std::string step_to_text(const Step& s);

std::string pipeline_to_csv(const PipelineProgram& prog);
std::string pipeline_to_text(const PipelineProgram& prog);

struct CsvError {
  int line = 0;    // 1-based
  int column = 0;  // 1-based, where the token starts (0 when the error is about the whole text)
  std::string token;
  std::string message;
  std::string to_string() const;  // "line 2, column 14, token '7X3': unknown action kind 'X' ..."
};

struct PipelineParseResult {
  std::optional<PipelineProgram> program;
  std::optional<CsvError> error;
  bool ok() const { return program.has_value(); }
};

// Parses a CSV written for `pp` ranks with `chunks` chunks per rank. `placement` when known; when
// absent it is inferred: the one placement that puts every pass on the line (rank) it is written
// on (looped when both fit). Micro-batch count = largest mb + 1; schedule name "csv". Stage numbers
// must be < pp*chunks and there must be exactly pp non-empty lines (blank lines and lines starting
// with '#' are skipped).
PipelineParseResult pipeline_from_csv(const std::string& text, int pp, int chunks,
                                      std::optional<Placement> placement = std::nullopt);

}  // namespace stp
