// simulator.cpp: the event engine of simulator.h and the simulate() entry points.
//
// The engine resolves each rank's ops in program order. Every op's start depends only on ops
// before it in its rank's program (stream FIFO order, the compute event a CommStart/Send waits for,
// the tag a CommWait waits for) and, for a Send/Recv, on the matching op of the peer. A rank stops
// at an op it cannot resolve yet (single mode: a posted Send/Recv whose partner has not come;
// both modes: a wait for an unmatched receive); nothing later on that rank can affect its peers
// before that op resolves, so resolving in this order gives the exact times of the stream
// semantics, and "no rank can move" is exactly a deadlock of the real program.
#include "scheduler/simulator.h"

#include <algorithm>
#include <deque>

#include <nlohmann/json.hpp>

#include "scheduler/program.h"
#include "scheduler/schedules.h"
#include "scheduler/validate_pipeline.h"
#include "scheduler/validate_units.h"

namespace stp {
namespace {

enum class Wait : uint8_t { Unknown, TP, DP, PP };

// A Send or Recv posted on its channel, waiting for the partner.
struct Posted {
  int rank = 0, op = 0;
  double ready = 0;
};

struct Channel {
  std::deque<Posted> sends, recvs;
  double free = 0;  // end of the channel's last transfer
};

struct RankState {
  size_t pos = 0;
  bool posted = false;  // the pp op at pos is posted and waits for its partner
  double compute_free = 0, tp_free = 0, pp_free = 0;
  std::vector<double> tag_done;  // per tag: completion time (-1 unknown)
  std::vector<Wait> tag_kind;
  std::vector<std::pair<double, double>> tp_busy;  // collective intervals, in FIFO order
  size_t tp_first = 0;                             // first interval that may still overlap
  std::vector<double> send_end;                    // flat: end of the tensor's send (-1 not yet)
  std::vector<int> pending_free;                   // flat: a pp-stream Free waiting for its send
};

class Engine {
 public:
  Engine(const LoweredProgram& p, const ModelDesc& d, const CostModel& c, PPStreams mode)
      : prog_(p), desc_(d), cost_(c), mode_(mode), access_(d, &p.pipeline), pp_(int(p.ranks.size())) {
    res_.times.resize(pp_);
    res_.ranks.resize(pp_);
    st_.resize(pp_);
    chan_.resize(size_t(pp_) * pp_);
    max_mb_ = std::max(1, p.pipeline.microbatches);
    for (int r = 0; r < pp_; ++r) init_rank(r);
  }

  EngineResult run() {
    for (bool progress = true; progress;) {
      progress = false;
      for (int r = 0; r < pp_; ++r) progress |= advance(r);
    }
    finish();
    return std::move(res_);
  }

 private:
  void init_rank(int r) {
    const std::vector<Op>& ops = prog_.ranks[r].ops;
    int tags = 0;
    for (const Op& o : ops) tags = std::max(tags, o.tag + 1);
    st_[r].tag_done.assign(tags, -1);
    st_[r].tag_kind.assign(tags, Wait::Unknown);
    const size_t flat = size_t(desc_.stages.size()) * max_mb_ * access_.max_tensors();
    st_[r].send_end.assign(flat, -1.0);
    st_[r].pending_free.assign(flat, -1);
    res_.times[r].assign(ops.size(), OpTime{});
    res_.ranks[r].rank = r;
  }

  bool advance(int r) {
    bool progress = false;
    while (st_[r].pos < prog_.ranks[r].ops.size() && step_op(r)) progress = true;
    return progress;
  }

  // Resolves the op at pos; false when it cannot be resolved yet (single mode: a Send/Recv whose
  // partner has not come; both modes: a wait for a receive that is not matched yet).
  bool step_op(int r) {
    RankState& s = st_[r];
    const Op& op = prog_.ranks[r].ops[s.pos];
    OpTime& t = res_.times[r][s.pos];
    switch (op.kind) {
      case OpKind::Compute: compute(r, op, t); break;
      case OpKind::CommStart: comm_start(r, op, t); break;
      case OpKind::CommWait:
        if (!comm_wait_ready(r, op)) return false;
        comm_wait(r, op, t);
        break;
      case OpKind::Free: free_tensor(r, op, t); break;
      case OpKind::Send:
      case OpKind::Recv: return post(r, op);
    }
    ++s.pos;
    return true;
  }

  // Duration of `work` starting at `start` when compute runs 1/(1+slowdown) as fast while a
  // collective of this rank is in flight.
  double slowed_end(RankState& s, double start, double work) const {
    const double k = 1 + cost_.overlap_slowdown;
    if (cost_.overlap_slowdown <= 0) return start + work;
    while (s.tp_first < s.tp_busy.size() && s.tp_busy[s.tp_first].second <= start) ++s.tp_first;
    double t = start;
    for (size_t i = s.tp_first; i < s.tp_busy.size() && work > 0; ++i) {
      const auto [a, b] = s.tp_busy[i];
      if (a > t) {
        if (work <= a - t) return t + work;
        work -= a - t;
        t = a;
      }
      const double can = (b - t) / k;
      if (work <= can) return t + work * k;
      work -= can;
      t = b;
    }
    return t + work;
  }

  void compute(int r, const Op& op, OpTime& t) {
    RankState& s = st_[r];
    t.start = s.compute_free;
    t.end = slowed_end(s, t.start, cost_.compute(op.stage, op.unit));
    s.compute_free = t.end;
    res_.ranks[r].busy += t.end - t.start;
  }

  void comm_start(int r, const Op& op, OpTime& t) {
    RankState& s = st_[r];
    t.start = std::max(s.tp_free, s.compute_free);
    t.end = t.start + cost_.op_time(op, r);
    s.tp_free = t.end;
    if (t.end > t.start) s.tp_busy.push_back({t.start, t.end});
    s.tag_done[op.tag] = t.end;
    s.tag_kind[op.tag] = op.group == CommGroup::DP ? Wait::DP : Wait::TP;
  }

  // A wait on a receive that is posted but not yet matched (channel mode) cannot be resolved yet.
  bool comm_wait_ready(int r, const Op& op) const {
    const RankState& s = st_[r];
    return op.tag < 0 || op.tag >= int(s.tag_done.size()) || s.tag_done[op.tag] >= 0 ||
           s.tag_kind[op.tag] != Wait::PP;
  }

  void comm_wait(int r, const Op& op, OpTime& t) {
    RankState& s = st_[r];
    t.start = s.compute_free;
    const bool known = op.tag >= 0 && op.tag < int(s.tag_done.size()) && s.tag_done[op.tag] >= 0;
    t.end = known ? std::max(t.start, s.tag_done[op.tag]) : t.start;
    const double idle = t.end - t.start;
    s.compute_free = t.end;
    RankReport& rep = res_.ranks[r];
    switch (known ? s.tag_kind[op.tag] : Wait::Unknown) {
      case Wait::TP: rep.tp_exposed += idle; break;
      case Wait::DP: rep.dp_exposed += idle; break;
      default: break;  // PP: the remainder of the idle time is the pp bubble (finish())
    }
  }

  // Timing only; the bytes are counted in program order (activation_peak).
  void free_tensor(int r, const Op& op, OpTime& t) {
    RankState& s = st_[r];
    t.start = t.end = s.compute_free;
    if (op.stage < 0 || op.tensor < 0 || op.stream != Stream::PP) return;
    const size_t k = key(op.stage, op.mb, op.tensor);
    if (s.send_end[k] < 0) {  // after its send: at the send's end, once the send is matched
      s.pending_free[k] = int(s.pos);
      return;
    }
    t.start = t.end = s.send_end[k];
  }

  // Channel mode: posting never blocks the rank. Single mode: the pp stream stops at the op until
  // the partner comes (match() then moves the rank on).
  bool post(int r, const Op& op) {
    RankState& s = st_[r];
    const bool single = mode_ == PPStreams::Single;
    if (single && s.posted) return false;
    Posted p{r, int(s.pos), single ? s.pp_free : 0.0};
    if (op.kind == OpKind::Send) p.ready = std::max(p.ready, s.compute_free);
    if (single) {
      s.posted = true;
    } else {
      ++s.pos;
    }
    const int src = op.kind == OpKind::Send ? r : op.peer, dst = op.kind == OpKind::Send ? op.peer : r;
    Channel& c = chan_[size_t(src) * pp_ + dst];
    (op.kind == OpKind::Send ? c.sends : c.recvs).push_back(p);
    if (op.kind == OpKind::Recv) s.tag_kind[op.tag] = Wait::PP;
    match(src, dst);
    return !single || !s.posted;
  }

  void match(int src, int dst) {
    Channel& c = chan_[size_t(src) * pp_ + dst];
    while (!c.sends.empty() && !c.recvs.empty()) {
      const Posted snd = c.sends.front(), rcv = c.recvs.front();
      c.sends.pop_front();
      c.recvs.pop_front();
      const Op& sop = prog_.ranks[src].ops[snd.op];
      const Op& rop = prog_.ranks[dst].ops[rcv.op];
      const double start = std::max({snd.ready, rcv.ready, c.free}), end = start + cost_.op_time(sop, src);
      c.free = end;
      res_.times[src][snd.op] = {start, end};
      res_.times[dst][rcv.op] = {start, end};
      st_[dst].tag_done[rop.tag] = end;
      st_[dst].tag_kind[rop.tag] = Wait::PP;
      sent(src, sop, end);
      if (mode_ == PPStreams::Single)
        for (int r : {src, dst}) {
          st_[r].pp_free = end;
          st_[r].posted = false;
          ++st_[r].pos;
        }
    }
  }

  // A send completed: a Free that already waits for it ends now.
  void sent(int r, const Op& sop, double end) {
    RankState& s = st_[r];
    const size_t k = key(sop.stage, sop.mb, sop.tensor);
    s.send_end[k] = end;
    if (s.pending_free[k] < 0) return;
    res_.times[r][s.pending_free[k]] = {end, end};
    s.pending_free[k] = -1;
  }

  size_t key(int stage, int mb, int tensor) const {
    return (size_t(stage) * max_mb_ + mb) * access_.max_tensors() + tensor;
  }
  int64_t bytes(int stage, int tensor) const {
    return int64_t(double(desc_.stages[stage].tensors[tensor].elems) * cost_.act_bytes);
  }

  // Peak activation bytes of rank r, counted as the executor's TensorStore counts them
  // (runtime/executor.h, "Memory"), in program order whatever the timing: a tensor is charged at
  // the first op that writes it (its producing unit pass, or the Recv that posts its buffer, not
  // when the transfer starts) and released at its Free op, a sent tensor's too (its buffer stays
  // until the send completes, but no longer counts: a stream-ordered free).
  int64_t activation_peak(int r) {
    std::vector<char> live(st_[r].send_end.size(), 0);
    int64_t cur = 0, best = 0;
    for (const Op& op : prog_.ranks[r].ops) {
      if (op.kind == OpKind::Free) {
        if (op.stage < 0 || op.tensor < 0) continue;
        const size_t k = key(op.stage, op.mb, op.tensor);
        if (live[k]) cur -= bytes(op.stage, op.tensor);
        live[k] = 0;
        continue;
      }
      reads_.clear();
      writes_.clear();
      access_.touches(op, r, &reads_, &writes_);
      for (const TensorRef& w : writes_) {
        if (w.tensor < 0) continue;
        const size_t k = key(w.stage, w.mb, w.tensor);
        if (live[k]) continue;
        live[k] = 1;
        best = std::max(best, cur += bytes(w.stage, w.tensor));
      }
    }
    return best;
  }

  void finish() {
    for (int r = 0; r < pp_; ++r) {
      double end = 0;
      for (const OpTime& t : res_.times[r]) end = std::max(end, t.end);
      res_.ranks[r].finish = end;
      res_.makespan = std::max(res_.makespan, end);
      res_.ranks[r].activation_peak_bytes = activation_peak(r);
    }
    for (RankReport& rep : res_.ranks)
      rep.pp_bubble = std::max(0.0, res_.makespan - rep.busy - rep.tp_exposed - rep.dp_exposed);
    report_deadlock();
  }

  void report_deadlock() {
    std::string msg;
    for (int r = 0; r < pp_; ++r) {
      const std::vector<Op>& ops = prog_.ranks[r].ops;
      if (st_[r].pos >= ops.size()) continue;
      const Op& op = ops[st_[r].pos];
      res_.blocked.push_back({r, int(st_[r].pos)});
      msg += (msg.empty() ? "" : "; ") + std::string("rank ") + std::to_string(r) + " blocked at op " +
             std::to_string(st_[r].pos) + " (" + op_to_string(op, desc_) + ")" + waiting_for(r, op);
    }
    if (!msg.empty()) res_.deadlock = "deadlock: " + msg;
  }

  // ", waiting for rank 1 to reach the matching send; rank 1 is at op 7 (...)"
  std::string waiting_for(int r, const Op& op) const {
    int peer = -1;
    const char* partner = "send";
    if (op.kind == OpKind::Send || op.kind == OpKind::Recv) {
      peer = op.peer;
      partner = op.kind == OpKind::Send ? "recv" : "send";
    } else if (op.kind == OpKind::CommWait) {
      for (const Op& o : prog_.ranks[r].ops)
        if (o.kind == OpKind::Recv && o.tag == op.tag) peer = o.peer;
    }
    if (peer < 0) return "";
    const size_t ppos = st_[peer].pos;
    const std::vector<Op>& pops = prog_.ranks[peer].ops;
    return ", waiting for rank " + std::to_string(peer) + " to reach the matching " + partner + "; rank " +
           std::to_string(peer) +
           (ppos < pops.size() ? " is at op " + std::to_string(ppos) + " (" + op_to_string(pops[ppos], desc_) + ")"
                               : " has finished its program");
  }

  const LoweredProgram& prog_;
  const ModelDesc& desc_;
  const CostModel& cost_;
  PPStreams mode_;
  TensorAccess access_;
  int pp_;
  int max_mb_ = 1;
  std::vector<RankState> st_;
  std::vector<Channel> chan_;
  std::vector<TensorRef> reads_, writes_;
  EngineResult res_;
};

}  // namespace

const char* pp_streams_name(PPStreams m) { return m == PPStreams::Single ? "single" : "channel"; }

EngineResult simulate_program(const LoweredProgram& prog, const ModelDesc& desc, const CostModel& cost,
                              PPStreams pp_streams) {
  return Engine(prog, desc, cost, pp_streams).run();
}

// ---- simulate(): config -> schedule -> lowering -> validation -> engine -> metrics -----------------

namespace {

std::string str(int v) { return std::to_string(v); }

// The config with the options applied: schedule name, chunks, micro-batches, layer split.
std::string resolve_config(const Config& in, const SimOptions& opt, Config& c) {
  c = in;
  if (!opt.schedule.empty() && opt.schedule != c.schedule.name) {
    c.schedule.name = opt.schedule;
    if (c.schedule.name != "1f1b-i" || c.parallel.chunks < 2) c.parallel.chunks = 0;
  }
  if (opt.microbatches > 0) c.schedule.microbatches = opt.microbatches;
  if (c.parallel.chunks <= 0)
    c.parallel.chunks = c.schedule.name == "csv" ? 1 : pipeline_default_chunks(c.schedule.name);
  const int S = c.parallel.pp * c.parallel.chunks;
  if (!c.parallel.stage_layers.empty() && int(c.parallel.stage_layers.size()) != S) c.parallel.stage_layers.clear();
  if (c.schedule.name != "csv")
    if (auto e = pipeline_check_args(c.schedule.name, c.parallel.pp, c.schedule.microbatches, c.parallel.chunks))
      return "schedule: " + *e;
  int sum = 0;
  for (int l : config_stage_layers(c)) sum += l;
  if (sum != c.model.layers)
    return "model.layers = " + str(c.model.layers) + " does not split evenly over pp*chunks = " +
           str(c.parallel.pp) + "*" + str(c.parallel.chunks) + " = " + str(S) +
           " virtual stages (the split sums to " + str(sum) + "; set parallel.stage_layers)";
  return "";
}

void fill_metrics(const Config& c, SimResult& r, const EngineResult& e) {
  const double tokens = double(c.schedule.microbatches) * c.schedule.micro_batch_size * c.model.seq_len * c.parallel.dp;
  r.iteration_time = e.makespan;
  if (e.makespan > 0) {
    r.tokens_per_s = tokens / e.makespan;
    r.samples_per_s = double(c.schedule.microbatches) * c.schedule.micro_batch_size * c.parallel.dp / e.makespan;
  }
  if (r.cost == CostMode::Flops && e.makespan > 0) {
    const double gpus = double(c.parallel.tp) * c.parallel.pp * c.parallel.dp;
    r.tflops_per_gpu = 3.0 * r.desc.flops_per_token_fwd * tokens / e.makespan / gpus / 1e12;
    r.mfu = r.tflops_per_gpu / c.cluster.gpu.peak_tflops;
  }
  for (const RankReport& rep : r.ranks) {
    r.pp_bubble += rep.pp_bubble / r.ranks.size();
    r.tp_exposed += rep.tp_exposed / r.ranks.size();
    r.dp_exposed += rep.dp_exposed / r.ranks.size();
    r.peak_mem_bytes.push_back(rep.peak_mem_bytes);
  }
  if (e.makespan > 0) {
    r.pp_bubble_fraction = r.pp_bubble / e.makespan;
    r.tp_exposed_fraction = r.tp_exposed / e.makespan;
  }
}

void fill_memory(const Config& c, SimResult& r, const CostModel& cm) {
  r.device_mem_bytes = int64_t(c.cluster.gpu.hbm_gb * 1e9);
  const std::vector<int> depth = pipeline_accum_depth(r.program.pipeline);
  for (RankReport& rep : r.ranks) {
    const RankStatic st = rank_static_memory(r.desc, r.program.pipeline, rep.rank, cm);
    rep.state_bytes = st.state_bytes;
    rep.accum_depth = rep.rank < int(depth.size()) ? depth[rep.rank] : 0;
    rep.side_buffer_bytes = c.train.deterministic ? rep.accum_depth * st.max_contribution_bytes : 0;
    rep.peak_mem_bytes = rep.state_bytes + rep.activation_peak_bytes + rep.side_buffer_bytes;
    rep.fits = rep.peak_mem_bytes <= r.device_mem_bytes;
  }
}

}  // namespace

SimResult simulate(const Config& cfg, const SimOptions& opt) {
  SimResult r;
  r.cost = opt.cost;
  r.pp_streams = opt.pp_streams;
  Config c;
  if (std::string e = resolve_config(cfg, opt, c); !e.empty()) {
    r.error = e;
    return r;
  }
  r.schedule = c.schedule.name;
  r.tp = c.parallel.tp;
  r.pp = c.parallel.pp;
  r.dp = c.parallel.dp;
  r.chunks = c.parallel.chunks;
  r.microbatches = c.schedule.microbatches;
  r.micro_batch_size = c.schedule.micro_batch_size;
  r.seq_len = c.model.seq_len;
  ProgramResult pr = pipeline_from_config(c);
  if (!pr.ok()) {
    r.error = pr.error;
    return r;
  }
  const PipelineProgram& prog = *pr.program;
  r.desc = model_desc_build(c, c.parallel.chunks, config_stage_layers(c));
  LowerOptions lo;
  lo.dp = c.parallel.dp;
  LowerResult lr = lower(prog, r.desc, lo);
  if (!lr.ok()) {
    r.error = lr.error;
    return r;
  }
  r.program = std::move(*lr.program);
  if (auto issue = validate_units_first(r.program, r.desc)) {
    r.error = "unit program: " + issue->to_string();
    return r;
  }
  const CostModel cm = cost_model_build(c, r.desc, opt.cost);
  EngineResult e = simulate_program(r.program, r.desc, cm, opt.pp_streams);
  if (!e.ok()) {
    r.error = e.deadlock;
    return r;
  }
  r.ranks = e.ranks;
  fill_memory(c, r, cm);
  fill_metrics(c, r, e);
  r.times = std::move(e.times);
  return r;
}

std::vector<SimResult> simulate_compare(const Config& cfg, const SimOptions& opt, std::vector<std::string>* skipped) {
  std::vector<SimResult> out;
  for (const std::string& name : pipeline_schedule_names()) {
    SimOptions o = opt;
    o.schedule = name;
    SimResult r = simulate(cfg, o);
    if (r.ok()) {
      out.push_back(std::move(r));
    } else if (skipped) {
      skipped->push_back(name + ": " + r.error);
    }
  }
  return out;
}

std::string sim_result_to_json(const SimResult& r, int indent) {
  using nlohmann::json;
  json j;
  if (!r.ok()) {
    j["error"] = r.error;
    return j.dump(indent);
  }
  j["schedule"] = r.schedule;
  j["cost"] = cost_mode_name(r.cost);
  j["pp_streams"] = pp_streams_name(r.pp_streams);
  j["tp"] = r.tp;
  j["pp"] = r.pp;
  j["dp"] = r.dp;
  j["chunks"] = r.chunks;
  j["microbatches"] = r.microbatches;
  j["iteration_time"] = r.iteration_time;
  j["tokens_per_s"] = r.tokens_per_s;
  j["samples_per_s"] = r.samples_per_s;
  j["tflops_per_gpu"] = r.tflops_per_gpu;
  j["mfu"] = r.mfu;
  j["pp_bubble"] = {{"time", r.pp_bubble}, {"fraction", r.pp_bubble_fraction}};
  j["tp_exposed"] = {{"time", r.tp_exposed}, {"fraction", r.tp_exposed_fraction}};
  j["dp_exposed"] = r.dp_exposed;
  j["peak_mem_bytes"] = r.peak_mem_bytes;
  j["device_mem_bytes"] = r.device_mem_bytes;
  j["fits"] = std::all_of(r.ranks.begin(), r.ranks.end(), [](const RankReport& k) { return k.fits; });
  json ranks = json::array();
  for (const RankReport& k : r.ranks)
    ranks.push_back({{"rank", k.rank}, {"busy", k.busy}, {"tp_exposed", k.tp_exposed},
                     {"dp_exposed", k.dp_exposed}, {"pp_bubble", k.pp_bubble}, {"finish", k.finish},
                     {"accum_depth", k.accum_depth}, {"state_bytes", k.state_bytes},
                     {"activation_peak_bytes", k.activation_peak_bytes},
                     {"side_buffer_bytes", k.side_buffer_bytes}, {"peak_mem_bytes", k.peak_mem_bytes},
                     {"fits", k.fits}});
  j["ranks"] = ranks;
  return j.dump(indent);
}

}  // namespace stp
