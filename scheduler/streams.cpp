// streams.cpp: the stream assignment of streams.h, in one pass over the ops plus a renumbering of
// the events into program order. State of the pass:
//   last_compute   the last compute-stream op that orders the stream (Compute, CommWait)
//   joined[s]      the last op of comm stream s the compute stream has waited for (FIFO: every op
//                  of s up to it is complete as far as the compute stream is concerned)
//   touch[key][s]  the last op of comm stream s that reads or writes tensor key
//   writer[key]    the last collective that reduces tensor key in place, with the compute op its
//                  own wait covered
#include "scheduler/streams.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <map>
#include <tuple>

namespace stp {

const char* exec_stream_name(ExecStream s) {
  switch (s) {
    case ExecStream::Compute: return "compute";
    case ExecStream::Tp: return "tp";
    case ExecStream::Pp: return "pp";
    case ExecStream::Dp: return "dp";
  }
  return "?";
}

std::vector<int> StreamPlan::ops_on(ExecStream s) const {
  std::vector<int> out;
  for (size_t i = 0; i < stream.size(); ++i)
    if (stream[i] == s) out.push_back(int(i));
  return out;
}

namespace {

using Key = std::tuple<int, int, int>;  // (stage, mb, tensor); (-1, -1, -1) = the gradients

struct Writer {
  int op = -1;
  int covered_compute = -1;  // the compute op whose event this collective waited on
};

class Assigner {
 public:
  explicit Assigner(const std::vector<Op>& ops) : ops_(ops) {
    const size_t n = ops.size();
    plan_.stream.assign(n, ExecStream::Compute);
    plan_.record.assign(n, -1);
    plan_.wait.assign(n, -1);
    plan_.free_after.assign(n, -1);
  }

  StreamPlanResult run() {
    for (int i = 0; i < int(ops_.size()); ++i) {
      std::string err = place(i);
      if (!err.empty())
        return {std::nullopt, "op " + std::to_string(i) + " (" + op_kind_name(ops_[i].kind) + "): " + err};
    }
    renumber();
    return {std::move(plan_), ""};
  }

 private:
  std::string place(int i) {
    const Op& o = ops_[i];
    switch (o.kind) {
      case OpKind::Compute:
        last_compute_ = i;
        return {};
      case OpKind::CommWait: return place_wait(i);
      case OpKind::CommStart:
        if (o.group != CommGroup::TP && o.group != CommGroup::DP)
          return std::string("a collective on group ") + comm_group_name(o.group) + " (only tp and dp have a stream)";
        return place_issue(i, o.group == CommGroup::TP ? ExecStream::Tp : ExecStream::Dp);
      case OpKind::Send: return place_issue(i, ExecStream::Pp);
      case OpKind::Recv:
        plan_.stream[i] = ExecStream::Pp;
        touched(key(o))[int(ExecStream::Pp)] = i;
        return register_tag(i);
      case OpKind::Free: return place_free(i);
    }
    return "unknown op kind";
  }

  std::array<int, kExecStreams>& touched(const Key& k) {
    return touch_.try_emplace(k, std::array<int, kExecStreams>{-1, -1, -1, -1}).first->second;
  }

  static Key key(const Op& o) { return o.tensor < 0 ? Key{-1, -1, -1} : Key{o.stage, o.mb, o.tensor}; }

  int event_after(int op) {
    if (plan_.record[op] < 0) {
      plan_.record[op] = int(plan_.events.size());
      plan_.events.push_back(StreamEvent{plan_.stream[op], op});
    }
    return plan_.record[op];
  }

  void add_wait(int op, int event) {
    plan_.wait[op] = event;
    plan_.waits.push_back(StreamWait{plan_.stream[op], event, op});
  }

  std::string register_tag(int i) {
    if (!tag_op_.emplace(ops_[i].tag, i).second)
      return "tag " + std::to_string(ops_[i].tag) + " is already used by op " + std::to_string(tag_op_[ops_[i].tag]);
    return {};
  }

  std::string place_wait(int i) {
    auto it = tag_op_.find(ops_[i].tag);
    if (it == tag_op_.end()) return "no earlier comm_start or recv has tag " + std::to_string(ops_[i].tag);
    const int src = it->second;
    if (src < 0) return "tag " + std::to_string(ops_[i].tag) + " was waited on already";
    it->second = -1;
    add_wait(i, event_after(src));
    ++plan_.program_waits;
    const int s = int(plan_.stream[src]);
    joined_[s] = std::max(joined_[s], src);
    last_compute_ = i;
    return {};
  }

  // CommStart and Send: after the compute stream's last op, or after the in-flight collective of
  // another comm stream that reduces the same tensor (which itself came after that compute op).
  std::string place_issue(int i, ExecStream s) {
    const Op& o = ops_[i];
    plan_.stream[i] = s;
    const Key k = key(o);
    touched(k)[int(s)] = i;
    if (o.kind == OpKind::CommStart) {
      std::string err = register_tag(i);
      if (!err.empty()) return err;
    }
    int via = -1;  // another stream's collective to wait on instead of the compute stream
    auto w = writer_.find(k);
    if (w != writer_.end() && plan_.stream[w->second.op] != s &&
        w->second.op > joined_[int(plan_.stream[w->second.op])]) {
      if (w->second.covered_compute != last_compute_)
        return std::string("reads a tensor that ") + exec_stream_name(plan_.stream[w->second.op]) +
               " op " + std::to_string(w->second.op) +
               " still reduces, with compute ops in between: it would need two waits";
      via = w->second.op;
    }
    if (o.kind == OpKind::CommStart) writer_[k] = Writer{i, last_compute_};
    if (last_compute_ < 0 && via < 0) return {};  // nothing before it to wait for
    add_wait(i, event_after(via >= 0 ? via : last_compute_));
    ++plan_.program_waits;
    return {};
  }

  std::string place_free(int i) {
    const Op& o = ops_[i];
    const ExecStream own = o.stream == Stream::PP ? ExecStream::Pp : ExecStream::Compute;
    plan_.stream[i] = own;
    auto t = touch_.find(key(o));
    if (t == touch_.end()) return {};
    int pending = -1;
    for (int s = 1; s < kExecStreams; ++s) {
      const int last = t->second[s];
      if (s == int(own) || last < 0 || last <= joined_[s]) continue;
      if (pending >= 0)
        return std::string("the tensor is still read by both ") + exec_stream_name(plan_.stream[pending]) +
               " op " + std::to_string(pending) + " and " + exec_stream_name(ExecStream(s)) + " op " +
               std::to_string(last) + "; a free can follow one event";
      pending = last;
    }
    if (pending >= 0) plan_.free_after[i] = event_after(pending);
    return {};
  }

  // Event ids in the order their ops run (program order), so plans read top to bottom.
  void renumber() {
    std::vector<int> order(plan_.events.size());
    for (size_t e = 0; e < order.size(); ++e) order[e] = int(e);
    std::sort(order.begin(), order.end(),
              [&](int a, int b) { return plan_.events[a].after_op < plan_.events[b].after_op; });
    std::vector<int> new_id(order.size());
    std::vector<StreamEvent> events(order.size());
    for (size_t n = 0; n < order.size(); ++n) {
      new_id[order[n]] = int(n);
      events[n] = plan_.events[order[n]];
    }
    plan_.events = std::move(events);
    auto remap = [&](int& e) {
      if (e >= 0) e = new_id[e];
    };
    for (int& e : plan_.record) remap(e);
    for (int& e : plan_.wait) remap(e);
    for (int& e : plan_.free_after) remap(e);
    for (StreamWait& w : plan_.waits) remap(w.event);
  }

  const std::vector<Op>& ops_;
  StreamPlan plan_;
  int last_compute_ = -1;
  int joined_[kExecStreams] = {-1, -1, -1, -1};
  std::map<int, int> tag_op_;  // tag -> op index; -1 once waited
  std::map<Key, std::array<int, kExecStreams>> touch_;
  std::map<Key, Writer> writer_;
};

}  // namespace

StreamPlanResult streams_assign(const std::vector<Op>& ops) { return Assigner(ops).run(); }

std::string stream_plan_to_string(const StreamPlan& plan, const std::vector<Op>& ops) {
  std::string out;
  char buf[160];
  for (size_t i = 0; i < ops.size() && i < plan.stream.size(); ++i) {
    const Op& o = ops[i];
    std::snprintf(buf, sizeof buf, "%4zu %-8s %-10s tag %-4d s%-3d mb%-3d t%-3d", i,
                  exec_stream_name(plan.stream[i]), op_kind_name(o.kind), o.tag, o.stage, o.mb, o.tensor);
    out += buf;
    if (plan.wait[i] >= 0) out += " wait e" + std::to_string(plan.wait[i]);
    if (plan.record[i] >= 0) out += " record e" + std::to_string(plan.record[i]);
    if (plan.free_after[i] >= 0) out += " after e" + std::to_string(plan.free_after[i]);
    out += "\n";
  }
  return out;
}

}  // namespace stp
