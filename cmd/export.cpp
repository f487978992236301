// export.cpp: `stp-train export`: the latest complete checkpoint under --checkpoint, reassembled
// into the full model (runtime/init_from.h) and written in Hugging Face naming (model/hf_io.h).
// Exit 0 on success, 2 on any bad input (directory, checkpoint, config mismatch, shard, tensor).
#include <cstdio>

#include "cmd/commands.h"
#include "model/hf_io.h"
#include "runtime/init_from.h"

namespace stp {

int cmd_export(const Config& cfg, const ExportOptions& opt) {
  FullState state;
  int64_t step = 0;
  std::string err = checkpoint_full_state(cfg, opt.checkpoint, &state, &step);
  if (err.empty()) err = hf_export(cfg, state, opt.out);
  if (!err.empty()) {
    std::fprintf(stderr, "error: export: %s\n", err.c_str());
    return 2;
  }
  std::printf("exported step %lld of '%s' (%zu tensors) to '%s'\n", static_cast<long long>(step),
              opt.checkpoint.c_str(), state.size(), opt.out.c_str());
  return 0;
}

}  // namespace stp
