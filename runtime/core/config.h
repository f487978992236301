// config.h: the typed run configuration (DESIGN.md, "Config").
//
// A run config is one YAML file that may `include:` others (paths relative to the including file);
// later keys override earlier ones, and `--set key.path=value` overrides everything. The parsed
// result is these plain structs; every field has a default except the ones marked REQUIRED.
// Parsing and validation live in config.cpp and return errors as values (ConfigError) that name
// the file, the key and the rule; only cmd/ decides to exit.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace stp {

// A GPU (or CPU) preset: numbers the simulator and the MFU figures use.
struct GpuSpec {
  std::string name = "cpu";
  double peak_tflops = 1.0;        // dense BF16 (GPU) or fp32 (CPU) peak, TFLOP/s
  double hbm_gb = 24.0;            // device memory, GB (1e9 bytes)
  double hbm_bw_gbs = 50.0;        // memory bandwidth, GB/s
  double intra_bw_gbs = 10.0;      // per-GPU NVLink (intra-node) bandwidth, GB/s, one direction
  double inter_bw_gbs = 10.0;      // per-GPU inter-node bandwidth, GB/s, one direction
  double intra_latency_us = 5.0;   // collective latency within a node
  double inter_latency_us = 10.0;  // collective latency across nodes
};

struct ClusterConfig {
  int nodes = 1;
  int gpus_per_node = 1;
  GpuSpec gpu;
  double compute_efficiency = 0.6;   // achieved fraction of peak for unit FLOPs (simulator)
  double overlap_slowdown = 0.0;     // compute slowdown while a collective overlaps it (0.1 = 10%)
};

struct VisionConfig {
  bool enabled = false;
  int image_size = 224;
  int patch_size = 14;
  int channels = 3;
  int temporal_patch = 1;            // frames per patch (Qwen2-VL: 2, a still image repeated)
  int layers = 0;
  int hidden = 0;
  int heads = 0;
  int ffn_hidden = 0;
  int merge_size = 2;                // spatial merge (2 = 2x2 patches -> one visual token)
  int images_per_sample = 1;
  std::string placement = "front";   // front | spread
  int spread_stages = 1;             // with placement=spread: over how many first stages

  int ffn() const { return ffn_hidden > 0 ? ffn_hidden : 4 * hidden; }
};

struct ModelConfig {
  std::string arch = "gpt";          // gpt | llama | qwen2 (a preset name; fields below decide)
  int layers = 0;                    // REQUIRED
  int hidden = 0;                    // REQUIRED (C)
  int heads = 0;                     // REQUIRED (NH)
  int kv_heads = 0;                  // 0 = heads (MHA)
  int ffn_hidden = 0;                // 0 = 4*hidden (F)
  int vocab = 0;                     // REQUIRED (V)
  int seq_len = 0;                   // REQUIRED (T)
  std::string norm = "layernorm";    // layernorm | rmsnorm
  std::string activation = "gelu";   // gelu | swiglu
  std::string position = "learned";  // learned | rope
  bool qkv_bias = true;
  bool bias = true;                  // biases on the other linear layers (GPT) or not (llama/qwen2)
  bool tie_embeddings = false;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  double init_std = 0.02;
  VisionConfig vision;

  int head_dim() const { return hidden / heads; }
  int kv() const { return kv_heads > 0 ? kv_heads : heads; }
  int ffn() const { return ffn_hidden > 0 ? ffn_hidden : 4 * hidden; }
};

struct ParallelConfig {
  int tp = 1;
  int pp = 1;
  int dp = 1;
  int chunks = 0;                    // model chunks per rank; 0 = the schedule's default
  bool sequence_parallel = false;
  std::vector<int> stage_layers;     // optional explicit layers per virtual stage (sum = layers)
};

struct ScheduleConfig {
  std::string name = "stp";          // gpipe | 1f1b | 1f1b-i | zb-h1 | zb-v | dualpipe-v | stp | csv
  std::string file;                  // with name=csv: the per-rank CSV to import
  int microbatches = 1;              // M
  int micro_batch_size = 1;          // b (sequences per micro-batch)
  double t_ar = 0.0;                 // simulate --cost unit: cost of one TP collective (T_AR)
};

struct TrainConfig {
  int steps = 10;
  double lr = 3e-4;
  double min_lr = 3e-5;
  int warmup_steps = 0;
  std::string lr_schedule = "cosine";  // cosine | constant
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;            // 0 = off
  uint64_t seed = 1234;
  std::string precision = "fp32";    // fp32 (CPU) | bf16 (CUDA)
  std::string device = "cpu";        // cpu | cuda
  bool deterministic = true;
  bool recompute = false;
  bool offload = false;
  bool resume = false;
  std::string init_from;             // safetensors file in Hugging Face naming
  double timeout_s = 60.0;           // a communication wait longer than this is a fault
  bool checkpoint_on_sigterm = true; // SIGTERM (Slurm pre-emption): checkpoint, then exit
};

// NCCL options (train.device = cuda).
struct NcclConfig {
  int port = 0;                      // torchrun bootstrap port; 0 = MASTER_PORT + 1
  double watchdog_ms = 100;          // how often the watchdog polls ncclCommGetAsyncError
  bool blocking = true;              // ncclConfig_t.blocking (false: non-blocking communicators)
  int cga_cluster_size = 0;          // ncclConfig_t.cgaClusterSize; 0 = NCCL's default
  int min_ctas = 0;                  // ncclConfig_t.minCTAs; 0 = NCCL's default
  int max_ctas = 0;                  // ncclConfig_t.maxCTAs; 0 = NCCL's default
};

struct DataConfig {
  std::string kind = "synthetic";    // synthetic | tokens
  std::string path;
  std::string dtype = "uint16";      // uint16 | uint32
  std::string patches;               // VLM with kind=tokens: float32 patch file (docs/data.md)
  bool shuffle = false;
  uint64_t seed = 0;
};

struct CheckpointConfig {
  std::string dir;
  int every = 0;                     // steps; 0 = only at the end when dir is set
};

struct OutputConfig {
  std::string dir = "out";
  bool metrics = true;
  bool trace = false;
  CheckpointConfig checkpoint;
};

struct Config {
  ClusterConfig cluster;
  ModelConfig model;
  ParallelConfig parallel;
  ScheduleConfig schedule;
  TrainConfig train;
  DataConfig data;
  OutputConfig output;
  NcclConfig nccl;
  std::string source;                // the top-level file it came from
};

// A failure to load or validate: where (file, key, line/col when known) and why.
struct ConfigError {
  std::string file;
  std::string key;                   // dotted path, e.g. "parallel.tp"
  int line = -1;
  int column = -1;
  std::string message;               // the rule broken, with the arithmetic
  std::string to_string() const;
};

// Result of a load: a config or an error (no exceptions escape).
struct ConfigResult {
  std::optional<Config> config;
  std::optional<ConfigError> error;
  bool ok() const { return config.has_value(); }
};

// Loads `path` (following include:), applies `overrides` ("a.b=value"), validates everything that
// needs no launcher (see validate_world for that part).
ConfigResult config_load(const std::string& path, const std::vector<std::string>& overrides);
// Same from YAML text (tests); `name` stands in for the file name in errors.
ConfigResult config_load_string(const std::string& yaml, const std::string& name,
                                const std::vector<std::string>& overrides = {});
// Checks tp*pp*dp against the launcher's world size.
std::optional<ConfigError> config_validate_world(const Config& cfg, int world_size);
// The resolved config as JSON text (output.dir/config.json, --dry-run).
std::string config_to_json(const Config& cfg, int indent = 2);

// The schedule names the runtime knows, in display order.
const std::vector<std::string>& schedule_names();
// Minimum micro-batches a schedule needs with `pp` stages (STP: 3P-1), for validation.
int schedule_min_microbatches(const std::string& name, int pp, int chunks);
// Model chunks per rank a schedule uses by default (2 for V schedules and 1f1b-i, else 1).
int schedule_default_chunks(const std::string& name);
// Model chunks per rank of this run: parallel.chunks, or the schedule's default (required with csv).
int config_chunks(const Config& cfg);
// Number of LLM layers on each virtual stage (pp*chunks entries), from stage_layers or an even
// split. With a vision tower spread over k stages, stages 0..k-2 hold vision layers only (0 here)
// and the LLM layers split evenly over stages k-1..S-1.
std::vector<int> config_stage_layers(const Config& cfg);

// The vision tower's geometry per sample (docs: the VLM section of model/desc/desc.h); all zero
// when model.vision is disabled.
struct VisionGeometry {
  int grid = 0;             // patches per image side: image_size / patch_size
  int patches = 0;          // Np = grid^2 patches per image
  int patch_dim = 0;        // K = channels * temporal_patch * patch_size^2 values per patch
  int tokens_per_image = 0; // Nv = Np / merge^2
  int visual_tokens = 0;    // n * Nv visual positions per sequence (1 .. n*Nv)
  int stages = 0;           // virtual stages holding vision layers (front: 1; spread: spread_stages)
};
VisionGeometry vision_geometry(const Config& cfg);
// Vision layers on each of `stages` virtual stages (all 0 without a vision tower): the first
// vision_geometry().stages stages split them evenly. The patch merger and the text embedding sit on
// the last of those, after its vision layers.
std::vector<int> config_vision_stage_layers(const Config& cfg, int stages);
// Tokens of one sequence that carry a loss: T minus the visual positions.
int config_loss_tokens_per_sequence(const Config& cfg);
// Sequences of one step's global batch: dp * microbatches * micro_batch_size.
int64_t config_sequences_per_step(const Config& cfg);

}  // namespace stp
