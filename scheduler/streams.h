// streams.h: which device stream runs each op of a rank's unit program (scheduler/lower.h), and the
// events that order the streams. A pure function of the op list: the CUDA executor replays the
// plan with cudaEventRecord / cudaStreamWaitEvent, tests and traces read it as data.
//
// Streams (one FIFO each):
//   compute  Compute, CommWait, Free (lower.h's compute stream)
//   tp       CommStart on the TP group (high priority: it sits on the critical path of a braid)
//   dp       CommStart on the DP group (the end-of-iteration gradient all-reduce)
//   pp       Send, Recv, and a Free that lower.h put on the pp stream (after a Send)
//
// Dependencies: every cross-stream wait is one event recorded on one stream and waited on by
// another; each op waits on at most one event:
//   CommWait   the compute stream waits on the event recorded right after the op of that tag
//              (a CommStart on tp/dp, or a Recv on pp).
//   CommStart, Send  their stream waits on the compute stream's event recorded after the last
//              stream op of the compute stream before them (Compute or CommWait: "every
//              compute-stream op before it in program order", lower.h). Ops that follow the same
//              compute op share its event. Exception, data written by another comm stream: a
//              CommStart whose tensor (stage, mb, tensor; -1 = the gradients) a collective of another
//              comm stream still reduces (not yet waited on by the compute stream) waits on that
//              collective's event instead. The end-of-iteration DP all-reduce thus waits for the TP
//              reduction of the TP-partial gradients, and reaches the compute stream through it.
//   Recv       no wait: lower.h makes it depend on the pp stream only (posted early).
//   Free       a Free on the compute stream of a tensor that a comm stream read (CommStart, Send)
//              and that the compute stream has not waited for since is *deferred* to that op's
//              event (the executor releases the buffer once the event completes); no stream waits.
//              A Free on the pp stream is ordered by the pp FIFO after its Send.
// Program waits = the CommWait, CommStart and Send ops (a CommStart or Send counts only when a
// compute-stream op precedes it). The plan has exactly one cross-stream wait per program wait,
// and no other synchronisation: no stream or device synchronisation inside a step.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "scheduler/lower.h"

namespace stp {

enum class ExecStream : uint8_t { Compute, Tp, Pp, Dp };
constexpr int kExecStreams = 4;
const char* exec_stream_name(ExecStream s);  // "compute", "tp", "pp", "dp"

// An event recorded on `stream` right after op `after_op` (an op of that stream) runs.
struct StreamEvent {
  ExecStream stream = ExecStream::Compute;
  int after_op = -1;
};

// `stream` waits for event `event` before it runs op `before_op`.
struct StreamWait {
  ExecStream stream = ExecStream::Compute;
  int event = -1;
  int before_op = -1;
};

struct StreamPlan {
  std::vector<ExecStream> stream;   // per op
  std::vector<int> record;          // per op: the event recorded right after it, or -1
  std::vector<int> wait;            // per op: the event its stream waits on before it, or -1
  std::vector<int> free_after;      // per op (Free): the event its release is deferred to, or -1
  std::vector<StreamEvent> events;  // by event id, in the order the ops that record them run
  std::vector<StreamWait> waits;    // in program order
  int program_waits = 0;            // CommWait + CommStart + Send with a compute op before them

  std::vector<int> ops_on(ExecStream s) const;  // op indices of one stream, in program order
};

struct StreamPlanResult {
  std::optional<StreamPlan> plan;
  std::string error;  // "op 12 (comm_wait tag 7): no earlier op has tag 7"
  bool ok() const { return plan.has_value(); }
};

// Assigns streams and events to one rank's ops. Errors: a CommWait whose tag no earlier
// CommStart/Recv carries (or that was waited already), a CommStart on a group other than TP/DP,
// a tensor freed while two comm streams still read it, a CommStart that would need two waits.
StreamPlanResult streams_assign(const std::vector<Op>& ops);

// One line per op: "  12 tp     comm_start tag 4   wait e3 record e5", for traces and test failures.
std::string stream_plan_to_string(const StreamPlan& plan, const std::vector<Op>& ops);

}  // namespace stp
