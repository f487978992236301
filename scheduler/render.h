// render.h: views of one simulated iteration (DESIGN.md, "Renderers"). All three read only a
// SimResult (its lowered program and per-op times) and return text; none of them writes files.
//
//   render_text          a `#` header, one timeline row per pipeline rank of `width` columns
//                        (each column shows what the compute stream did most in its time slice),
//                        a row under it marking braided steps, and a per-rank table.
//                        Glyphs: F B W = forward / input-gradient / weight-gradient units, upper
//                        case for chunk 0, lower case for chunk 1 (digits 2.. for later chunks);
//                        '~' compute idle waiting for a TP collective, '#' for the DP all-reduce,
//                        '.' idle otherwise (PP bubble); '=' under a column of a braided step.
//   render_svg           a timeline in the style of the paper's figures: one row per rank with a
//                        compute lane (one box per unit pass, colour by pass and chunk, each step
//                        framed and labelled with its micro-batches, braided steps framed in bold
//                        with both labels), a TP lane (collectives; red where compute waited) and
//                        a PP lane (sends above receives), a time axis and a legend.
//   render_chrome_trace  Chrome trace-event JSON (opens in Perfetto / chrome://tracing): one process
//                        per pipeline rank, threads compute, tp and one per pp channel
//                        ("pp send->1", "pp recv<-1": transfers of different channels overlap), complete
//                        events ("X") for unit passes, collectives, transfers and exposed waits, with
//                        stage, mb and step in args. Times in microseconds; in unit cost mode one
//                        unit is drawn as 1000 us.
#pragma once

#include <string>

#include "scheduler/simulator.h"

namespace stp {

std::string render_text(const SimResult& r, int width = 100);
std::string render_svg(const SimResult& r);
std::string render_chrome_trace(const SimResult& r);

}  // namespace stp
