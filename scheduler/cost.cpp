// cost.cpp: the formulas of cost.h. Every number the simulator charges comes from here.
#include "scheduler/cost.h"

#include <algorithm>

namespace stp {

const char* cost_mode_name(CostMode m) { return m == CostMode::Unit ? "unit" : "flops"; }

std::optional<CostMode> cost_mode_parse(const std::string& s) {
  if (s == "flops") return CostMode::Flops;
  if (s == "unit") return CostMode::Unit;
  return std::nullopt;
}

namespace {

// Ring algorithm traffic factor per rank: all-reduce moves 2(n-1)/n of the buffer, the halves n-1/n.
double ring_factor(CollKind k, int n) {
  if (n <= 1) return 0;
  const double f = double(n - 1) / n;
  return (k == CollKind::ReduceScatter || k == CollKind::AllGather) ? f : 2 * f;
}

Link link_of(const GpuSpec& g, bool inter) {
  Link l;
  l.sec_per_byte = 1.0 / ((inter ? g.inter_bw_gbs : g.intra_bw_gbs) * 1e9);
  l.latency = (inter ? g.inter_latency_us : g.intra_latency_us) * 1e-6;
  return l;
}

int node_of(int global_rank, int gpus_per_node) { return global_rank / std::max(1, gpus_per_node); }

// Rank grid (DESIGN.md): rank = ((dp * PP) + pp) * TP + tp. TP groups are contiguous; a group spans
// nodes when its first and last member are on different nodes (checked for every group).
bool tp_spans_nodes(int tp, int pp, int dp, int gpn) {
  for (int g = 0; g < pp * dp; ++g)
    if (node_of(g * tp, gpn) != node_of(g * tp + tp - 1, gpn)) return true;
  return false;
}

bool dp_spans_nodes(int tp, int pp, int dp, int gpn) {
  return dp > 1 && node_of(0, gpn) != node_of((dp - 1) * pp * tp, gpn);
}

std::vector<std::vector<std::array<double, 3>>> unit_times_flops(const Config& cfg, const ModelDesc& desc,
                                                                double act_bytes) {
  const double flop_rate = cfg.cluster.gpu.peak_tflops * 1e12 * cfg.cluster.compute_efficiency;
  const double byte_rate = cfg.cluster.gpu.hbm_bw_gbs * 1e9;
  std::vector<std::vector<std::array<double, 3>>> t;
  for (const StageDesc& s : desc.stages) {
    std::vector<std::array<double, 3>> st;
    for (const UnitDesc& u : s.units) {
      std::array<double, 3> a{};
      for (int p = 0; p < 3; ++p) a[p] = u.flops[p] / flop_rate + u.bytes[p] * (act_bytes / 4.0) / byte_rate;
      st.push_back(a);
    }
    t.push_back(st);
  }
  return t;
}

std::vector<std::vector<std::array<double, 3>>> unit_times_unit(const ModelDesc& desc) {
  std::vector<std::vector<std::array<double, 3>>> t;
  for (const StageDesc& s : desc.stages) {
    int n[3] = {0, 0, 0};
    for (const UnitDesc& u : s.units) {
      n[0] += u.has_f;
      n[1] += u.has_b;
      n[2] += u.has_w;
    }
    std::vector<std::array<double, 3>> st;
    for (const UnitDesc& u : s.units) {
      const bool has[3] = {u.has_f, u.has_b, u.has_w};
      std::array<double, 3> a{};
      for (int p = 0; p < 3; ++p) a[p] = has[p] ? 1.0 / n[p] : 0.0;
      st.push_back(a);
    }
    t.push_back(st);
  }
  return t;
}

}  // namespace

double CostModel::collective(CollKind k, CommGroup g, int64_t elems) const {
  if (mode == CostMode::Unit) return g == CommGroup::TP && elems > 0 ? t_ar : 0.0;
  const int n = g == CommGroup::DP ? dp : tp;
  if (n <= 1) return 0;
  const Link& l = g == CommGroup::DP ? dp_link : tp_link;
  const double bytes = double(elems) * (g == CommGroup::DP ? grad_bytes : act_bytes);
  return ring_factor(k, n) * bytes * l.sec_per_byte + l.latency;
}

double CostModel::op_time(const Op& op, int rank) const {
  if (op.kind == OpKind::CommStart) {
    // In unit mode only the per-unit TP collectives cost T_AR; the end-of-iteration gradient
    // reductions (stage -1) are free.
    if (mode == CostMode::Unit && op.stage < 0) return 0;
    return collective(op.coll, op.group, op.elems);
  }
  if (op.kind == OpKind::Send || op.kind == OpKind::Recv) {
    if (mode == CostMode::Unit) return 0;
    const int from = op.kind == OpKind::Send ? rank : op.peer, to = op.kind == OpKind::Send ? op.peer : rank;
    const Link& l = pp_link[from][to];
    return double(op.elems) * act_bytes * l.sec_per_byte + l.latency;
  }
  return 0;
}

CostModel cost_model_build(const Config& cfg, const ModelDesc& desc, CostMode mode) {
  const int tp = cfg.parallel.tp, pp = cfg.parallel.pp, dp = cfg.parallel.dp;
  if (mode == CostMode::Unit) {
    CostModel cm = cost_model_unit(desc, pp, cfg.schedule.t_ar);
    cm.tp = tp;
    cm.dp = dp;
    cm.act_bytes = cfg.train.precision == "bf16" ? 2 : 4;
    cm.state_bytes_per_param = cfg.train.precision == "bf16" ? 18 : 16;
    return cm;
  }
  CostModel cm;
  cm.mode = mode;
  cm.tp = tp;
  cm.pp = pp;
  cm.dp = dp;
  cm.overlap_slowdown = cfg.cluster.overlap_slowdown;
  cm.act_bytes = cfg.train.precision == "bf16" ? 2 : 4;
  cm.state_bytes_per_param = cfg.train.precision == "bf16" ? 18 : 16;
  const int gpn = cfg.cluster.gpus_per_node;
  cm.tp_link = link_of(cfg.cluster.gpu, tp_spans_nodes(tp, pp, dp, gpn));
  cm.dp_link = link_of(cfg.cluster.gpu, dp_spans_nodes(tp, pp, dp, gpn));
  cm.pp_link.assign(pp, std::vector<Link>(pp));
  for (int a = 0; a < pp; ++a)
    for (int b = 0; b < pp; ++b) cm.pp_link[a][b] = link_of(cfg.cluster.gpu, node_of(a * tp, gpn) != node_of(b * tp, gpn));
  cm.unit_time = unit_times_flops(cfg, desc, cm.act_bytes);
  return cm;
}

CostModel cost_model_unit(const ModelDesc& desc, int pp, double t_ar) {
  CostModel cm;
  cm.mode = CostMode::Unit;
  cm.tp = desc.tp;
  cm.pp = pp;
  cm.t_ar = t_ar;
  cm.pp_link.assign(pp, std::vector<Link>(pp));
  cm.unit_time = unit_times_unit(desc);
  return cm;
}

RankStatic rank_static_memory(const ModelDesc& desc, const PipelineProgram& prog, int rank, const CostModel& cm) {
  RankStatic rs;
  for (int s = 0; s < prog.stages(); ++s) {
    if (stage_rank(prog.placement, prog.pp, s) != rank) continue;
    int64_t elems = 0;
    for (const ParamDesc& p : desc.stages[s].params) elems += p.local_elems(desc.tp);
    rs.state_bytes += int64_t(double(elems) * cm.state_bytes_per_param);
    rs.max_contribution_bytes = std::max(rs.max_contribution_bytes, int64_t(double(elems) * cm.grad_bytes));
  }
  return rs;
}

}  // namespace stp
