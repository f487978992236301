// text_io.cpp: CSV and text forms of pipeline programs (contract in text_io.h).
#include "scheduler/text_io.h"

#include <algorithm>
#include <cctype>
#include <sstream>
#include <string_view>
#include <vector>

namespace stp {
namespace {

std::string str(int v) { return std::to_string(v); }

char csv_kind(PassKind k) {
  switch (k) {
    case PassKind::F: return 'F';
    case PassKind::B: return 'I';
    case PassKind::W: return 'W';
    case PassKind::BW: return 'B';
  }
  return '?';
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// ---- parsing one action --------------------------------------------------------------------------

struct ActionParse {
  enum Kind { Compute, Ignored, Error } kind = Error;
  Pass pass;
  std::string why;
};

ActionParse parse_fail(std::string why) { return ActionParse{ActionParse::Error, Pass{}, std::move(why)}; }

// Reads a decimal number at s[i...]; false when there is none or it has more than 9 digits.
bool read_number(std::string_view s, size_t& i, int& out, std::string& why) {
  size_t start = i;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == start) return false;
  if (i - start > 9) {
    why = "number '" + std::string(s.substr(start, i - start)) + "' is too large";
    return false;
  }
  out = std::stoi(std::string(s.substr(start, i - start)));
  return true;
}

// PyTorch's non-compute actions: communication, FSDP unshard/reshard, gradient reduction.
bool read_ignored_kind(std::string_view s, size_t& i) {
  static const char* kinds[] = {"SEND_F", "SEND_B", "RECV_F", "RECV_B", "UNSHARD", "RESHARD", "REDUCE_GRAD"};
  for (const char* k : kinds) {
    std::string_view kv(k);
    if (s.substr(i, kv.size()) == kv) {
      i += kv.size();
      return true;
    }
  }
  return false;
}

bool compute_kind(char c, PassKind& k) {
  switch (c) {
    case 'F': k = PassKind::F; return true;
    case 'I': k = PassKind::B; return true;
    case 'W': k = PassKind::W; return true;
    case 'B': k = PassKind::BW; return true;
    default: return false;
  }
}

ActionParse parse_action(std::string_view s, int stages) {
  size_t i = 0;
  int stage = 0, mb = 0;
  std::string why;
  if (!read_number(s, i, stage, why))
    return parse_fail(why.empty() ? "an action starts with its stage number (e.g. 0F3)" : why);
  if (stage >= stages)
    return parse_fail("stage " + str(stage) + " is out of range: there are " + str(stages) +
                      " stages (0.." + str(stages - 1) + ")");
  if (read_ignored_kind(s, i)) {
    int ignored_mb = 0;
    read_number(s, i, ignored_mb, why);
    if (!why.empty()) return parse_fail(why);
    if (i != s.size()) return parse_fail("unexpected '" + std::string(s.substr(i)) + "' after the action");
    return ActionParse{ActionParse::Ignored, Pass{}, ""};
  }
  PassKind kind;
  if (i >= s.size() || !compute_kind(s[i], kind))
    return parse_fail("unknown action kind '" + std::string(s.substr(i, 1)) +
                      "' (expected F, I, W, B or a PyTorch communication action such as SEND_F)");
  ++i;
  if (!read_number(s, i, mb, why))
    return parse_fail(why.empty() ? "missing micro-batch number after '" + std::string(1, s[i - 1]) + "'" : why);
  if (i != s.size()) return parse_fail("unexpected '" + std::string(s.substr(i)) + "' after the action");
  return ActionParse{ActionParse::Compute, Pass{kind, stage, mb}, ""};
}

// A cell: empty (idle), one action, or a braided pair "(a;b)" with an optional OVERLAP_F_B suffix.
struct CellParse {
  bool has_step = false;
  Step step;
  std::string why;  // non-empty = error
};

CellParse parse_pair(std::string_view cell, int stages) {
  const size_t close = cell.find(')');
  if (close == std::string_view::npos) return {false, {}, "unclosed '(' in a braided pair"};
  std::string_view suffix = trim(cell.substr(close + 1));
  if (!suffix.empty() && suffix != "OVERLAP_F_B")
    return {false, {}, "unexpected '" + std::string(suffix) + "' after a braided pair (only OVERLAP_F_B may follow)"};
  std::string_view inner = cell.substr(1, close - 1);
  std::vector<std::string_view> parts;
  for (size_t start = 0;;) {
    size_t semi = inner.find(';', start);
    parts.push_back(trim(inner.substr(start, semi == std::string_view::npos ? semi : semi - start)));
    if (semi == std::string_view::npos) break;
    start = semi + 1;
  }
  if (parts.size() != 2)
    return {false, {}, "a braided pair holds exactly two actions, got " + str(int(parts.size()))};
  Pass p[2];
  for (int k = 0; k < 2; ++k) {
    ActionParse a = parse_action(parts[k], stages);
    if (a.kind == ActionParse::Error) return {false, {}, "in '" + std::string(parts[k]) + "': " + a.why};
    if (a.kind == ActionParse::Ignored)
      return {false, {}, "'" + std::string(parts[k]) + "' is not a compute action; a braided pair joins two compute actions"};
    p[k] = a.pass;
  }
  if (p[0].kind != PassKind::F)
    return {false, {}, "the first action of a braided pair must be a forward (F), got '" + pass_to_csv(p[0]) + "'"};
  return {true, step_pair(p[0], p[1]), ""};
}

CellParse parse_cell(std::string_view cell, int stages) {
  if (cell.size() >= 2 && cell.front() == '"' && cell.back() == '"') cell = trim(cell.substr(1, cell.size() - 2));
  if (cell.empty()) return {};
  if (cell.front() == '(') return parse_pair(cell, stages);
  ActionParse a = parse_action(cell, stages);
  if (a.kind == ActionParse::Error) return {false, {}, a.why};
  if (a.kind == ActionParse::Ignored) return {};
  return {true, Step{a.pass, false, Pass{}}, ""};
}

// ---- parsing the whole text -----------------------------------------------------------------------

struct Located {  // where a step came from, for errors found after parsing
  int line = 0, column = 0;
  std::string token;
};

CsvError make_error(int line, int column, std::string token, std::string message) {
  return CsvError{line, column, std::move(token), std::move(message)};
}

// Parses one rank line into steps; returns an error or nothing.
std::optional<CsvError> parse_line(std::string_view line, int line_no, int stages, std::vector<Step>& steps,
                                   std::vector<Located>& where) {
  size_t start = 0;
  while (start <= line.size()) {
    size_t comma = line.find(',', start);
    size_t end = comma == std::string_view::npos ? line.size() : comma;
    std::string_view raw = line.substr(start, end - start);
    std::string_view cell = trim(raw);
    const int column = int(start + (cell.empty() ? 0 : raw.find(cell.front()))) + 1;
    CellParse c = parse_cell(cell, stages);
    if (!c.why.empty()) return make_error(line_no, column, std::string(cell), c.why);
    if (c.has_step) {
      steps.push_back(c.step);
      where.push_back(Located{line_no, column, std::string(cell)});
    }
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return std::nullopt;
}

// First step (rank, index) with a pass off its rank under `pl`; {-1, -1} when all fit.
std::pair<int, int> first_misplaced(const std::vector<std::vector<Step>>& ranks, Placement pl, int pp) {
  for (int r = 0; r < int(ranks.size()); ++r)
    for (int i = 0; i < int(ranks[r].size()); ++i) {
      const Step& s = ranks[r][i];
      if (stage_rank(pl, pp, s.a.stage) != r || (s.braided && stage_rank(pl, pp, s.b.stage) != r)) return {r, i};
    }
  return {-1, -1};
}

std::optional<CsvError> infer_placement(const std::vector<std::vector<Step>>& ranks,
                                        const std::vector<std::vector<Located>>& where, int pp,
                                        Placement& out) {
  auto looped = first_misplaced(ranks, Placement::Looped, pp);
  if (looped.first < 0) {
    out = Placement::Looped;
    return std::nullopt;
  }
  auto v = first_misplaced(ranks, Placement::V, pp);
  if (v.first < 0) {
    out = Placement::V;
    return std::nullopt;
  }
  const Located& lv = where[v.first][v.second];
  const Located& ll = where[looped.first][looped.second];
  return make_error(lv.line, lv.column, lv.token,
                    "no placement puts every action on the rank of its line: '" + lv.token +
                        "' is off rank " + str(v.first) + " under the V placement and '" + ll.token + "' (line " +
                        str(ll.line) + ") is off rank " + str(looped.first) + " under the looped placement");
}

// Splits the text into rank lines (skipping blank and '#' lines) and parses each; exactly pp lines.
std::optional<CsvError> parse_rank_lines(const std::string& text, int pp, int stages,
                                         std::vector<std::vector<Step>>& ranks,
                                         std::vector<std::vector<Located>>& where) {
  std::istringstream in(text);
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::string_view body = trim(line);
    if (body.empty() || body.front() == '#') continue;
    if (int(ranks.size()) == pp) return make_error(line_no, 1, "", "more rank lines than pp = " + str(pp));
    ranks.emplace_back();
    where.emplace_back();
    if (auto e = parse_line(line, line_no, stages, ranks.back(), where.back())) return e;
  }
  if (int(ranks.size()) != pp)
    return make_error(line_no, 0, "", "found " + str(int(ranks.size())) + " rank lines, expected one per rank: pp = " + str(pp));
  return std::nullopt;
}

}  // namespace

// ---- writing --------------------------------------------------------------------------------------

std::string pass_to_csv(const Pass& p) { return str(p.stage) + csv_kind(p.kind) + str(p.mb); }

std::string step_to_csv(const Step& s) {
  if (!s.braided) return pass_to_csv(s.a);
  return "(" + pass_to_csv(s.a) + ";" + pass_to_csv(s.b) + ")";
}

std::string pipeline_to_csv(const PipelineProgram& prog) {
  std::string out;
  for (const std::vector<Step>& rank : prog.ranks) {
    for (size_t i = 0; i < rank.size(); ++i) {
      if (i) out += ',';
      out += step_to_csv(rank[i]);
    }
    out += '\n';
  }
  return out;
}

std::string pipeline_to_text(const PipelineProgram& prog) {
  std::ostringstream os;
  os << "# " << prog.schedule << ": pp=" << prog.pp << " chunks=" << prog.chunks
     << " microbatches=" << prog.microbatches
     << " placement=" << placement_name(prog.placement)
     << " (F forward, B input-grad with W deferred, W deferred weight-grad, BW full backward; stage.mb)\n";
  for (size_t r = 0; r < prog.ranks.size(); ++r) {
    os << "rank " << r << ":";
    for (const Step& s : prog.ranks[r]) {
      if (s.braided)
        os << " [" << pass_to_text(s.a) << " & " << pass_to_text(s.b) << "]";
      else
        os << " " << pass_to_text(s.a);
    }
    os << "\n";
  }
  return os.str();
}

std::string CsvError::to_string() const {
  std::string out = "line " + str(line);
  if (column > 0) out += ", column " + str(column);
  if (!token.empty()) out += ", token '" + token + "'";
  return out + ": " + message;
}

// ---- reading --------------------------------------------------------------------------------------

PipelineParseResult pipeline_from_csv(const std::string& text, int pp, int chunks,
                                      std::optional<Placement> placement) {
  PipelineParseResult res;
  if (pp < 1 || chunks < 1) {
    res.error = make_error(0, 0, "", "pp and chunks must be >= 1, got pp = " + str(pp) + ", chunks = " + str(chunks));
    return res;
  }
  if (placement == Placement::V && chunks != 2) {
    res.error = make_error(0, 0, "", "the V placement holds exactly 2 chunks per rank, got chunks = " + str(chunks));
    return res;
  }
  std::vector<std::vector<Step>> ranks;
  std::vector<std::vector<Located>> where;
  if (auto e = parse_rank_lines(text, pp, pp * chunks, ranks, where)) {
    res.error = e;
    return res;
  }
  Placement pl = Placement::Looped;  // with 1 chunk both placements agree; with > 2 only looped exists
  if (placement) {
    pl = *placement;
  } else if (chunks == 2) {
    if (auto e = infer_placement(ranks, where, pp, pl)) {
      res.error = e;
      return res;
    }
  }
  int max_mb = -1;
  for (const auto& r : ranks)
    for (const Step& s : r) max_mb = std::max({max_mb, s.a.mb, s.braided ? s.b.mb : -1});
  if (max_mb < 0) {
    res.error = make_error(0, 0, "", "the CSV holds no compute action");
    return res;
  }
  PipelineProgram prog;
  prog.schedule = "csv";
  prog.pp = pp;
  prog.chunks = chunks;
  prog.microbatches = max_mb + 1;
  prog.placement = pl;
  prog.ranks = std::move(ranks);
  res.program = std::move(prog);
  return res;
}

const char* pass_kind_text(PassKind k) {
  switch (k) {
    case PassKind::F: return "F";
    case PassKind::B: return "B";
    case PassKind::W: return "W";
    case PassKind::BW: return "BW";
  }
  return "?";
}

std::string pass_to_text(const Pass& p) {
  return pass_kind_text(p.kind) + std::to_string(p.stage) + "." + std::to_string(p.mb);
}

std::string step_to_text(const Step& s) {
  return s.braided ? pass_to_text(s.a) + " & " + pass_to_text(s.b) : pass_to_text(s.a);
}

}  // namespace stp
