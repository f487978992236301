// render.cpp: text, SVG and Chrome-trace views of a SimResult (render.h).
#include "scheduler/render.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

namespace stp {
namespace {

enum class WaitKind : uint8_t { None, TP, DP, PP };

// Per rank: what each tag stands for, so that a CommWait can be charged to TP, DP or PP.
std::vector<WaitKind> tag_kinds(const UnitProgram& up) {
  int n = 0;
  for (const Op& o : up.ops) n = std::max(n, o.tag + 1);
  std::vector<WaitKind> k(n, WaitKind::None);
  for (const Op& o : up.ops) {
    if (o.kind == OpKind::CommStart) k[o.tag] = o.group == CommGroup::DP ? WaitKind::DP : WaitKind::TP;
    if (o.kind == OpKind::Recv) k[o.tag] = WaitKind::PP;
  }
  return k;
}

WaitKind wait_kind(const std::vector<WaitKind>& kinds, const Op& o) {
  return o.tag >= 0 && o.tag < int(kinds.size()) ? kinds[o.tag] : WaitKind::None;
}

const char* wait_name(WaitKind k) {
  switch (k) {
    case WaitKind::TP: return "tp";
    case WaitKind::DP: return "dp";
    case WaitKind::PP: return "pp";
    default: return "?";
  }
}

char pass_glyph(const SimResult& r, const Op& o) {
  const char upper = o.unit.pass == UnitPass::F ? 'F' : o.unit.pass == UnitPass::B ? 'B' : 'W';
  const int chunk = stage_chunk(r.pp, o.stage);
  if (chunk == 0) return upper;
  if (chunk == 1) return char(upper - 'A' + 'a');
  return char('0' + std::min(chunk, 9));
}

bool braided_step(const SimResult& r, int rank, int step) {
  const auto& steps = r.program.pipeline.ranks[rank];
  return step >= 0 && step < int(steps.size()) && steps[step].braided;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string time_unit(const SimResult& r) { return r.cost == CostMode::Unit ? "units" : "s"; }

// ---- text ---------------------------------------------------------------------------------------

// One rank's timeline and braid rows: per column, the glyph that covers most of its time slice.
std::pair<std::string, std::string> text_rows(const SimResult& r, int rank, int width, double dt) {
  std::vector<std::map<char, double>> cover(width);
  std::vector<double> braid(width, 0);
  auto add = [&](double a, double b, char g, bool braided) {
    for (int c = std::max(0, int(a / dt)); c < width && c * dt < b; ++c) {
      const double ov = std::min(b, (c + 1) * dt) - std::max(a, c * dt);
      if (ov <= 0) continue;
      cover[c][g] += ov;
      if (braided) braid[c] += ov;
    }
  };
  const UnitProgram& up = r.program.ranks[rank];
  const std::vector<WaitKind> kinds = tag_kinds(up);
  for (size_t i = 0; i < up.ops.size(); ++i) {
    const Op& o = up.ops[i];
    const OpTime& t = r.times[rank][i];
    if (t.end <= t.start) continue;
    if (o.kind == OpKind::Compute) add(t.start, t.end, pass_glyph(r, o), braided_step(r, rank, o.step));
    if (o.kind == OpKind::CommWait) {
      const WaitKind k = wait_kind(kinds, o);
      add(t.start, t.end, k == WaitKind::TP ? '~' : k == WaitKind::DP ? '#' : '.', false);
    }
  }
  std::string line(width, '.'), marks(width, ' ');
  for (int c = 0; c < width; ++c) {
    double best = 0;
    for (const auto& [g, v] : cover[c])
      if (v > best) best = v, line[c] = g;
    if (braid[c] > dt / 2) marks[c] = '=';
  }
  return {line, marks};
}

}  // namespace

std::string render_text(const SimResult& r, int width) {
  std::ostringstream os;
  if (!r.ok()) return "# error: " + r.error + "\n";
  width = std::max(1, width);
  const double T = std::max(r.iteration_time, 1e-30), dt = T / width;
  os << "# " << r.schedule << ": pp " << r.pp << ", tp " << r.tp << ", dp " << r.dp << ", chunks " << r.chunks
     << ", " << r.microbatches << " micro-batches, cost " << cost_mode_name(r.cost) << "; iteration "
     << fmt("%.6g", r.iteration_time) << " " << time_unit(r) << "\n";
  os << "# one column = " << fmt("%.4g", dt) << " " << time_unit(r)
     << "; F B W chunk 0, f b w chunk 1, ~ TP wait, # DP wait, . idle; '=' marks braided steps\n";
  for (int rank = 0; rank < r.pp; ++rank) {
    const auto [line, marks] = text_rows(r, rank, width, dt);
    os << "rank " << fmt("%-3.0f", rank) << "|" << line << "|\n";
    os << "         " << marks << "\n";
  }
  os << "# rank        busy  tp_exposed   pp_bubble  dp_exposed  peak_mem_MiB  accum_depth\n";
  for (const RankReport& k : r.ranks)
    os << "  " << fmt("%-4.0f", k.rank) << fmt("%12.5g", k.busy) << fmt("%12.5g", k.tp_exposed)
       << fmt("%12.5g", k.pp_bubble) << fmt("%12.5g", k.dp_exposed)
       << fmt("%14.1f", double(k.peak_mem_bytes) / (1024.0 * 1024.0)) << fmt("%13.0f", k.accum_depth)
       << (k.fits ? "" : "  does not fit") << "\n";
  os << "# pp_bubble " << fmt("%.4g", r.pp_bubble) << " (" << fmt("%.1f", 100 * r.pp_bubble_fraction) << "%), tp_exposed "
     << fmt("%.4g", r.tp_exposed) << " (" << fmt("%.1f", 100 * r.tp_exposed_fraction) << "%)";
  if (r.cost == CostMode::Flops)
    os << ", " << fmt("%.4g", r.tokens_per_s) << " tokens/s, " << fmt("%.4g", r.tflops_per_gpu)
       << " TFLOP/s per GPU, MFU " << fmt("%.3f", r.mfu);
  os << "\n";
  return os.str();
}

// ---- SVG ----------------------------------------------------------------------------------------

namespace {

struct SvgGeom {
  double left = 70, right = 20, top = 50, plot_w = 1200;
  double lane_c = 22, lane_tp = 6, lane_pp = 6, gap = 10;
  double row() const { return lane_c + lane_tp + lane_pp + 2 + gap; }
};

std::string pass_colour(UnitPass p, int chunk) {
  static const char* dark[3] = {"#4e79a7", "#f28e2b", "#59a14f"};
  static const char* light[3] = {"#a0cbe8", "#ffbe7d", "#8cd17d"};
  return chunk % 2 == 0 ? dark[int(p)] : light[int(p)];
}

void svg_rect(std::ostringstream& os, double x, double y, double w, double h, const std::string& fill,
              const std::string& extra = "") {
  os << "<rect x=\"" << fmt("%.2f", x) << "\" y=\"" << fmt("%.2f", y) << "\" width=\"" << fmt("%.2f", std::max(w, 0.3))
     << "\" height=\"" << fmt("%.2f", h) << "\" fill=\"" << fill << "\"" << extra << "/>\n";
}

// One step's frame and label: the span of its compute ops.
struct StepSpan {
  double a = 1e300, b = -1e300;
};

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '&') out += "&amp;";
    else if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else out += c;
  }
  return out;
}

std::string step_label(const Step& s) {
  auto one = [](const Pass& p) {
    const char* k = p.kind == PassKind::F ? "F" : p.kind == PassKind::B ? "B" : p.kind == PassKind::W ? "W" : "BW";
    return std::string(k) + std::to_string(p.mb);
  };
  return s.braided ? one(s.a) + "&" + one(s.b) : one(s.a);
}

void svg_rank(std::ostringstream& os, const SimResult& r, int rank, const SvgGeom& g, double scale) {
  const double y0 = g.top + rank * g.row();
  const UnitProgram& up = r.program.ranks[rank];
  const std::vector<WaitKind> kinds = tag_kinds(up);
  std::vector<StepSpan> spans(r.program.pipeline.ranks[rank].size());
  os << "<text x=\"4\" y=\"" << fmt("%.1f", y0 + g.lane_c * 0.7) << "\" class=\"rl\">rank " << rank << "</text>\n";
  for (size_t i = 0; i < up.ops.size(); ++i) {
    const Op& o = up.ops[i];
    const OpTime& t = r.times[rank][i];
    const double x = g.left + t.start * scale, w = (t.end - t.start) * scale;
    if (o.kind == OpKind::Compute) {
      if (t.end > t.start) svg_rect(os, x, y0, w, g.lane_c, pass_colour(o.unit.pass, stage_chunk(r.pp, o.stage)));
      if (o.step >= 0 && o.step < int(spans.size())) {
        spans[o.step].a = std::min(spans[o.step].a, t.start);
        spans[o.step].b = std::max(spans[o.step].b, t.end);
      }
    } else if (o.kind == OpKind::CommStart && t.end > t.start) {
      svg_rect(os, x, y0 + g.lane_c + 1, w, g.lane_tp, o.group == CommGroup::DP ? "#76b7b2" : "#9d9d9d");
    } else if ((o.kind == OpKind::Send || o.kind == OpKind::Recv) && t.end > t.start) {
      const double half = g.lane_pp / 2, y = y0 + g.lane_c + g.lane_tp + 2 + (o.kind == OpKind::Recv ? half : 0);
      svg_rect(os, x, y, w, half, o.kind == OpKind::Send ? "#b07aa1" : "#d4a6c8");  // sends above receives
    } else if (o.kind == OpKind::CommWait && t.end > t.start && wait_kind(kinds, o) != WaitKind::PP) {
      svg_rect(os, x, y0 + g.lane_c + 1, w, g.lane_tp, "#e15759");  // exposed collective
    }
  }
  const auto& steps = r.program.pipeline.ranks[rank];
  for (size_t k = 0; k < spans.size(); ++k) {
    if (spans[k].b <= spans[k].a) continue;
    const double x = g.left + spans[k].a * scale, w = (spans[k].b - spans[k].a) * scale;
    const bool br = steps[k].braided;
    svg_rect(os, x, y0, w, g.lane_c, "none",
             std::string(" stroke=\"#222\" stroke-width=\"") + (br ? "1.6" : "0.4") + "\"");
    const std::string label = step_label(steps[k]);
    if (w > 4.6 * label.size())
      os << "<text x=\"" << fmt("%.2f", x + w / 2) << "\" y=\"" << fmt("%.2f", y0 + g.lane_c * 0.68)
         << "\" class=\"sl\">" << xml_escape(label) << "</text>\n";
  }
}

void svg_axis_legend(std::ostringstream& os, const SimResult& r, const SvgGeom& g, double scale, double height) {
  const double T = r.iteration_time;
  const double raw = T / 10, mag = std::pow(10.0, std::floor(std::log10(std::max(raw, 1e-30))));
  const double tick = raw / mag < 2 ? 2 * mag : raw / mag < 5 ? 5 * mag : 10 * mag;
  const double ya = height - 24;
  for (double t = 0; t <= T * 1.0001; t += tick) {
    const double x = g.left + t * scale;
    os << "<line x1=\"" << fmt("%.2f", x) << "\" y1=\"" << fmt("%.1f", g.top - 4) << "\" x2=\"" << fmt("%.2f", x)
       << "\" y2=\"" << fmt("%.1f", ya) << "\" stroke=\"#ddd\" stroke-width=\"0.5\"/>\n";
    os << "<text x=\"" << fmt("%.2f", x) << "\" y=\"" << fmt("%.1f", ya + 12) << "\" class=\"ax\">" << fmt("%.4g", t) << "</text>\n";
  }
  struct Item { const char* name; std::string colour; };
  const Item items[] = {{"F chunk 0", pass_colour(UnitPass::F, 0)}, {"F chunk 1", pass_colour(UnitPass::F, 1)},
                        {"B chunk 0", pass_colour(UnitPass::B, 0)}, {"B chunk 1", pass_colour(UnitPass::B, 1)},
                        {"W chunk 0", pass_colour(UnitPass::W, 0)}, {"W chunk 1", pass_colour(UnitPass::W, 1)},
                        {"TP collective", "#9d9d9d"}, {"exposed TP wait", "#e15759"}, {"PP transfer", "#b07aa1"}};
  double x = g.left;
  for (const Item& it : items) {
    svg_rect(os, x, 26, 10, 10, it.colour);
    os << "<text x=\"" << fmt("%.1f", x + 13) << "\" y=\"35\" class=\"lg\">" << it.name << "</text>\n";
    x += 16 + 6.2 * std::string(it.name).size();
  }
}

}  // namespace

std::string render_svg(const SimResult& r) {
  SvgGeom g;
  const double height = g.top + r.pp * g.row() + 30, width = g.left + g.plot_w + g.right;
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << fmt("%.0f", height)
     << "\" font-family=\"sans-serif\">\n"
     << "<style>.rl{font-size:12px}.sl{font-size:8px;text-anchor:middle;fill:#111}.ax{font-size:9px;"
        "text-anchor:middle;fill:#555}.lg{font-size:10px}.tt{font-size:13px;font-weight:bold}</style>\n"
     << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  if (!r.ok()) {
    os << "<text x=\"10\" y=\"20\" class=\"tt\">error: " << xml_escape(r.error) << "</text>\n</svg>\n";
    return os.str();
  }
  os << "<text x=\"10\" y=\"16\" class=\"tt\">" << r.schedule << " - pp " << r.pp << ", tp " << r.tp << ", "
     << r.microbatches << " micro-batches, iteration " << fmt("%.5g", r.iteration_time) << " " << time_unit(r)
     << " (cost " << cost_mode_name(r.cost) << "; bold frames = braided steps)</text>\n";
  const double scale = g.plot_w / std::max(r.iteration_time, 1e-30);
  svg_axis_legend(os, r, g, scale, height);
  for (int rank = 0; rank < r.pp; ++rank) svg_rank(os, r, rank, g, scale);
  os << "</svg>\n";
  return os.str();
}

// ---- Chrome trace -------------------------------------------------------------------------------

namespace {

// Threads: 0 compute, 1 tp, then one per pp channel (transfers on different channels may overlap).
int pp_thread(const Op& o) { return 2 + 2 * o.peer + (o.kind == OpKind::Recv ? 1 : 0); }

std::string pp_thread_name(int tid) {
  const int peer = (tid - 2) / 2;
  return (tid % 2 == 0 ? "pp send->" : "pp recv<-") + std::to_string(peer);
}

nlohmann::json trace_event(const std::string& name, const char* cat, int pid, int tid, double ts, double dur) {
  return {{"name", name}, {"cat", cat}, {"ph", "X"}, {"pid", pid}, {"tid", tid}, {"ts", ts}, {"dur", dur}};
}

void trace_rank(nlohmann::json& ev, const SimResult& r, int rank, double us) {
  const UnitProgram& up = r.program.ranks[rank];
  const std::vector<WaitKind> kinds = tag_kinds(up);
  for (size_t i = 0; i < up.ops.size(); ++i) {
    const Op& o = up.ops[i];
    const OpTime& t = r.times[rank][i];
    const double ts = t.start * us, dur = (t.end - t.start) * us;
    nlohmann::json e;
    if (o.kind == OpKind::Compute) {
      e = trace_event(op_to_string(o, r.desc), unit_pass_name(o.unit.pass), rank, 0, ts, dur);
    } else if (o.kind == OpKind::CommStart) {
      e = trace_event(op_to_string(o, r.desc), comm_group_name(o.group), rank, 1, ts, dur);
    } else if (o.kind == OpKind::Send || o.kind == OpKind::Recv) {
      e = trace_event(op_to_string(o, r.desc), "pp", rank, pp_thread(o), ts, dur);
    } else if (o.kind == OpKind::CommWait && dur > 0) {
      e = trace_event(std::string("wait ") + wait_name(wait_kind(kinds, o)), "exposed", rank, 0, ts, dur);
    } else {
      continue;
    }
    e["args"] = {{"stage", o.stage}, {"mb", o.mb}, {"step", o.step}, {"op", i}};
    ev.push_back(std::move(e));
  }
}

}  // namespace

std::string render_chrome_trace(const SimResult& r) {
  using nlohmann::json;
  json ev = json::array();
  if (r.ok()) {
    const double us = r.cost == CostMode::Unit ? 1000.0 : 1e6;
    for (int rank = 0; rank < r.pp; ++rank) {
      ev.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", rank}, {"args", {{"name", "pp rank " + std::to_string(rank)}}}});
      ev.push_back({{"name", "process_sort_index"}, {"ph", "M"}, {"pid", rank}, {"args", {{"sort_index", rank}}}});
      std::set<int> tids = {0, 1};
      for (const Op& o : r.program.ranks[rank].ops)
        if (o.kind == OpKind::Send || o.kind == OpKind::Recv) tids.insert(pp_thread(o));
      for (int t : tids)
        ev.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", rank}, {"tid", t},
                      {"args", {{"name", t == 0 ? "compute" : t == 1 ? "tp" : pp_thread_name(t)}}}});
      trace_rank(ev, r, rank, us);
    }
  }
  json j;
  j["traceEvents"] = std::move(ev);
  j["displayTimeUnit"] = "ms";
  j["otherData"] = {{"schedule", r.schedule}, {"cost", cost_mode_name(r.cost)}, {"iteration_time", r.iteration_time},
                    {"error", r.error}};
  return j.dump();
}

}  // namespace stp
