// validate_units.h: checks of lowered unit programs (DESIGN.md: "A validator checks every program
// before use"). The pipeline-level rules (one F and one backward per (stage, mb), dependency order)
// are validate_pipeline's; these are the rules of the ops themselves, in the order reported:
//   range     stage, mb, unit, tensor, peer and tag are in range (nothing else runs otherwise)
//   tag       CommStart/Send/Recv tags are unique on their rank; a CommWait names an earlier
//             CommStart or Recv; every CommStart and Recv is waited exactly once
//   unit      every unit pass of every (stage, mb) the rank holds runs exactly once, on that rank
//   tensor    per rank, a tensor is written before it is read, never touched after its Free,
//             freed once, and freed at all
//   channel   per directed pair of pipeline ranks (each TP group runs its pipeline rank's program,
//             so pairs of pipeline ranks are the communicators to check): the k-th send of a to b
//             and the k-th recv of b from a carry the same message (stage, mb, direction) and the
//             same element count; counts agree
//   deadlock  the simulator (unit costs, T_AR = 0, one blocking pp stream per rank: the strictest
//             model, PPStreams::Single) runs every program to its end; a rank blocked forever is
//             reported with its op and the op its peer is stuck at
// Each issue names the rank, the op index in that rank's program and the rule.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/desc/desc.h"
#include "scheduler/lower.h"

namespace stp {

enum class UnitRule : uint8_t { Range, Tag, Unit, Tensor, Channel, Deadlock };
const char* unit_rule_name(UnitRule r);  // "range", "tag", ...

struct UnitIssue {
  UnitRule rule = UnitRule::Range;
  int rank = -1;  // -1: not tied to one rank
  int op = -1;    // index into ranks[rank].ops; -1: not tied to one op
  std::string message;
  std::string to_string() const;  // "rank 1, op 57 [channel]: ..."
};

// Every issue, grouped by rule in the order above (later rules are skipped after a range issue,
// and deadlock is only checked when the earlier rules pass); empty = valid.
std::vector<UnitIssue> validate_units(const LoweredProgram& prog, const ModelDesc& desc);
std::optional<UnitIssue> validate_units_first(const LoweredProgram& prog, const ModelDesc& desc);

}  // namespace stp
