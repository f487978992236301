// dry_run.cpp: `--dry-run`: the resolved config and this rank's place in the grid.
#include <cstdio>

#include "cmd/commands.h"
#include "scheduler/schedules.h"

namespace stp {

namespace {

std::string list(const std::vector<int>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// What each virtual stage holds and which pipeline rank runs it (the validator's view).
void print_stages(const Config& cfg) {
  const int chunks = config_chunks(cfg), S = cfg.parallel.pp * chunks;
  const std::vector<int> llm = config_stage_layers(cfg), vis = config_vision_stage_layers(cfg, S);
  const Placement pl = pipeline_placement(cfg.schedule.name);
  std::printf("# virtual stages: %d chunk(s) per rank, %s placement\n#  stage  pp rank  holds\n", chunks,
              pl == Placement::V ? "V" : "looped");
  // The merger follows the last vision layer, on the last vision stage (-1: no vision tower).
  const int merge_stage = vision_geometry(cfg).stages - 1;
  int l0 = 0, v0 = 0;
  for (int s = 0; s < S; ++s) {
    std::string h;
    auto add = [&](const std::string& x) { h += (h.empty() ? "" : ", ") + x; };
    auto range = [](const char* what, int a, int n) {
      return std::string(what) + " " + std::to_string(a) + (n > 1 ? "-" + std::to_string(a + n - 1) : "");
    };
    if (s == 0) add(cfg.model.vision.enabled ? "patch embedding" : "embedding");
    if (vis[size_t(s)] > 0) add(range("vision blocks", v0, vis[size_t(s)]));
    if (s == merge_stage) add("merger + text embedding");
    if (llm[size_t(s)] > 0) add(range("layers", l0, llm[size_t(s)]));
    if (s == S - 1) add("head + loss");
    std::printf("  %5d  %7d  %s\n", s, stage_rank(pl, cfg.parallel.pp, s), h.c_str());
    l0 += llm[size_t(s)];
    v0 += vis[size_t(s)];
  }
}

}  // namespace

int cmd_dry_run(const Config& cfg, const LaunchEnv& env_in) {
  LaunchEnv env = env_in;
  const int need = cfg.parallel.tp * cfg.parallel.pp * cfg.parallel.dp;
  if (env.launcher == "none" && need > 1) {
    // No launcher: show the plan as rank 0 of the configured world would see it.
    std::printf("# no launcher detected: showing rank 0 of the %d ranks the config asks for\n", need);
    env.world = need;
    env.local_world = cfg.cluster.gpus_per_node;
  } else if (auto e = config_validate_world(cfg, env.world)) {
    std::fprintf(stderr, "error: %s\n", e->to_string().c_str());
    return 2;
  }
  const Topology t = topology_build(cfg.parallel, env);
  const bool v = pipeline_placement(cfg.schedule.name) == Placement::V;
  std::printf("# config: %s (schedule %s, launcher %s)\n", cfg.source.c_str(), cfg.schedule.name.c_str(),
              env.launcher.c_str());
  std::printf("%s\n", t.to_string().c_str());
  std::printf("local rank %d of %d on this node (node %d)\n", env.local_rank, t.local_world, t.node_of(t.rank));
  std::printf("tp group %s\npp group %s\ndp group %s\nembedding group %s\n", list(t.tp_group()).c_str(),
              list(t.pp_group()).c_str(), list(t.dp_group()).c_str(), list(t.embedding_group(v)).c_str());
  std::printf("pp prev %d, pp next %d\n", t.pp_prev(), t.pp_next());
  std::vector<std::string> hosts(t.world());
  hosts[t.rank] = env.host;
  std::printf("%s", topology_table(t, hosts).c_str());
  print_stages(cfg);
  std::printf("%s\n", config_to_json(cfg).c_str());
  return 0;
}

}  // namespace stp
