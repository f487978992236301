// test_checkpoint.cpp: safetensors reader/writer and Hugging Face export/import. Round trips are
// exact in F32 and within the dtype's rounding in BF16/F16; damaged files (truncated, corrupt
// header, bad offsets, wrong dtype or shape, changed data or header under the checksum) are errors that name
// the tensor or the file; export -> import
// reproduces the logits bit for bit.
#include <unistd.h>

#include <xxhash.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "model/hf_io.h"
#include "model/safetensors.h"
#include "model_test_util.h"
#include "tests/fuzz_util.h"

using namespace stp;
using namespace stp::test;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path dir;
  TempDir() {
    dir = fs::temp_directory_path() / ("stp_test_model_" + std::to_string(::getpid()));
    fs::create_directories(dir);
  }
  ~TempDir() { fs::remove_all(dir); }
  std::string file(const std::string& name) const { return (dir / name).string(); }
};

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

// The file layout by hand, independently of the writer: an 8-byte little-endian header length
// (`length`; a damaged file may state a wrong one), the header text, then the data section.
uint64_t header_length(const std::vector<uint8_t>& file) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(file[size_t(i)]) << (8 * i);
  return n;
}
std::vector<uint8_t> file_bytes(const std::string& header, const std::vector<uint8_t>& data, uint64_t length) {
  std::vector<uint8_t> b;
  b.reserve(8 + header.size() + data.size());
  for (int i = 0; i < 8; ++i) b.push_back(uint8_t(length >> (8 * i)));
  b.insert(b.end(), header.begin(), header.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

// A file with a hand-written header and `data_bytes` zero bytes of data.
void write_raw(const std::string& path, const std::string& header, size_t data_bytes) {
  write_bytes(path, file_bytes(header, std::vector<uint8_t>(data_bytes, 0), header.size()));
}

// The header text and the data section of a well-formed file's bytes, and the file with its
// header replaced (length adjusted, data section unchanged).
std::string header_of(const std::vector<uint8_t>& file) {
  return std::string(file.begin() + 8, file.begin() + 8 + long(header_length(file)));
}
std::vector<uint8_t> data_of(const std::vector<uint8_t>& file) {
  return std::vector<uint8_t>(file.begin() + 8 + long(header_length(file)), file.end());
}
std::vector<uint8_t> with_header(const std::vector<uint8_t>& file, const std::string& h) {
  return file_bytes(h, data_of(file), h.size());
}

std::string open_error(const std::string& path) {
  SafetensorsFile f;
  return SafetensorsFile::open(path, &f);
}

}  // namespace

TEST_CASE("safetensors: F32 round trip is exact, layout follows the spec", "[ckpt]") {
  // Fails if the header length is not little-endian u64, offsets are not relative to the data
  // section, the data section is not 8-byte aligned, or values / shapes / metadata change.
  TempDir tmp;
  const std::vector<float> a = {1.5f, -2.25f, 3e-38f, 1e30f, 0.0f, -0.0f};
  const std::vector<float> b = {7.0f, 8.0f};
  const std::string path = tmp.file("a.safetensors");
  REQUIRE(safetensors_write(path, {{"a", {2, 3}, a.data()}, {"b.c", {2}, b.data()}},
                            {{"k", "v"}}) == "");
  const std::vector<uint8_t> bytes = read_bytes(path);
  const uint64_t n = header_length(bytes);
  CHECK((8 + n) % 8 == 0);
  CHECK(bytes.size() == 8 + n + 4 * (6 + 2));
  CHECK(std::memcmp(bytes.data() + 8 + n, a.data(), 24) == 0);  // first tensor at offset 0
  SafetensorsFile f;
  REQUIRE(SafetensorsFile::open(path, &f) == "");
  CHECK(f.metadata().at("k") == "v");
  std::vector<float> ra, rb;
  REQUIRE(f.read_f32("a", {2, 3}, &ra) == "");
  REQUIRE(f.read_f32("b.c", {2}, &rb) == "");
  CHECK(std::memcmp(ra.data(), a.data(), 24) == 0);  // bit-exact, including -0.0
  CHECK(rb == b);
  CHECK_FALSE(fs::exists(path + ".tmp." + std::to_string(::getpid())));  // temp file renamed away
}

TEST_CASE("safetensors: BF16 and F16 conversions round to nearest even", "[ckpt]") {
  // Fails if bf16/f16 truncate instead of rounding, mishandle ties, subnormals, overflow or NaN.
  CHECK(f32_to_bf16(1.0f) == 0x3f80);
  CHECK(f32_to_bf16(bf16_to_f32(0x3f80) + std::ldexp(1.0f, -8)) == 0x3f80);           // tie -> even
  CHECK(f32_to_bf16(bf16_to_f32(0x3f81) + std::ldexp(1.0f, -8)) == 0x3f82);           // tie -> even
  CHECK(f32_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -12)) == 0x3f81);  // above tie
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  CHECK(f32_to_f16(1.0f) == 0x3c00);
  CHECK(f32_to_f16(65504.0f) == 0x7bff);
  CHECK(f32_to_f16(65520.0f) == 0x7c00);                      // rounds up to infinity
  CHECK(f32_to_f16(std::ldexp(1.0f, -24)) == 0x0001);         // smallest subnormal
  CHECK(f32_to_f16(std::ldexp(1.0f, -25)) == 0x0000);         // tie between 0 and 1 ulp -> even (0)
  CHECK(f32_to_f16(std::ldexp(3.0f, -25)) == 0x0002);         // 1.5 ulp -> 2
  CHECK(f32_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);  // tie -> even
  CHECK(f16_to_f32(0x0001) == std::ldexp(1.0f, -24));
  CHECK(f16_to_f32(0xc000) == -2.0f);
  CHECK(std::isnan(f16_to_f32(f32_to_f16(NAN))));
  // Every finite f16 survives f16 -> f32 -> f16.
  for (uint32_t h = 0; h < 0x7c00; ++h) REQUIRE(f32_to_f16(f16_to_f32(uint16_t(h))) == h);
  // Files: values come back within half an ulp of the dtype.
  TempDir tmp;
  const std::vector<double> v = random_vec(1000, 3);
  const std::vector<float> x = to_float(v);
  for (StDtype d : {StDtype::BF16, StDtype::F16}) {
    const std::string path = tmp.file(std::string(st_dtype_name(d)) + ".safetensors");
    REQUIRE(safetensors_write(path, {{"x", {1000}, x.data(), d}}) == "");
    SafetensorsFile f;
    REQUIRE(SafetensorsFile::open(path, &f) == "");
    CHECK(f.entries().at("x").dtype == d);
    std::vector<float> r;
    REQUIRE(f.read_f32("x", {1000}, &r) == "");
    // Half an ulp with 7 (bf16) or 10 (f16) mantissa bits is at most |x| * 2^-8 or 2^-11.
    const double half_ulp = d == StDtype::BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
    for (size_t i = 0; i < x.size(); ++i)
      REQUIRE(std::abs(r[i] - x[i]) <= half_ulp * std::abs(x[i]) + 1e-7);
  }
}

TEST_CASE("safetensors: damaged files are errors that name the tensor", "[ckpt]") {
  // Fails if a truncated, corrupt or inconsistent file is accepted, or if the message does not
  // say which tensor and what was expected.
  TempDir tmp;
  const std::vector<float> a(12, 1.0f), b(4, 2.0f);
  const std::string good = tmp.file("good.safetensors");
  REQUIRE(safetensors_write(good, {{"alpha", {3, 4}, a.data()}, {"beta", {4}, b.data()}}) == "");
  const std::vector<uint8_t> bytes = read_bytes(good);

  SECTION("truncated data") {
    const std::string p = tmp.file("trunc.safetensors");
    write_bytes(p, std::vector<uint8_t>(bytes.begin(), bytes.end() - 3));
    const std::string e = open_error(p);
    CHECK(e.find("truncated") != std::string::npos);
    CHECK(e.find("'beta'") != std::string::npos);  // the last tensor is the one cut short
  }
  SECTION("truncated header") {
    const std::string p = tmp.file("trunc_h.safetensors");
    write_bytes(p, std::vector<uint8_t>(bytes.begin(), bytes.begin() + 20));
    CHECK(open_error(p).find("header length") != std::string::npos);
    write_bytes(p, std::vector<uint8_t>(bytes.begin(), bytes.begin() + 5));
    CHECK(open_error(p).find("too short") != std::string::npos);
  }
  SECTION("corrupt JSON") {
    const std::string p = tmp.file("json.safetensors");
    write_raw(p, "{\"alpha\": {\"dtype\": \"F32\", ", 0);
    CHECK(open_error(p).find("not a JSON object") != std::string::npos);
  }
  SECTION("unsupported dtype") {
    const std::string p = tmp.file("dtype.safetensors");
    write_raw(p, R"({"ids": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}})", 16);
    const std::string e = open_error(p);
    CHECK(e.find("'ids'") != std::string::npos);
    CHECK(e.find("I64") != std::string::npos);
  }
  SECTION("size disagrees with shape") {
    const std::string p = tmp.file("size.safetensors");
    write_raw(p, R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", 20);
    const std::string e = open_error(p);
    CHECK(e.find("'w'") != std::string::npos);
    CHECK(e.find("needs 24") != std::string::npos);
  }
  SECTION("overlapping offsets") {
    const std::string p = tmp.file("overlap.safetensors");
    write_raw(p, R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
              12);
    CHECK(open_error(p).find("overlap or leave a gap") != std::string::npos);
  }
  SECTION("wrong shape on read names both shapes") {
    SafetensorsFile f;
    REQUIRE(SafetensorsFile::open(good, &f) == "");
    std::vector<float> r;
    const std::string e = f.read_f32("alpha", {4, 3}, &r);
    CHECK(e.find("'alpha'") != std::string::npos);
    CHECK(e.find("[3, 4]") != std::string::npos);
    CHECK(e.find("expected [4, 3]") != std::string::npos);
    CHECK(f.read_f32("gamma", {1}, &r).find("'gamma' is missing") != std::string::npos);
  }
  SECTION("a flipped bit in the tensor data fails the checksum, naming the file") {
    SafetensorsFile f;
    REQUIRE(SafetensorsFile::open(good, &f) == "");
    REQUIRE(f.metadata().count(kStChecksumKey) == 1);
    CHECK(f.metadata().at(kStChecksumKey).size() == 16);
    for (const size_t from_end : {size_t(1), size_t(40)}) {  // in 'beta', in 'alpha'
      std::vector<uint8_t> bad = bytes;
      bad[bad.size() - from_end] ^= 0x10;
      const std::string p = tmp.file("flip.safetensors");
      write_bytes(p, bad);
      const std::string e = open_error(p);
      CHECK(e.find("flip.safetensors") != std::string::npos);
      CHECK(e.find("checksum mismatch") != std::string::npos);
    }
  }
  SECTION("a header edit that leaves a valid layout fails the checksum, naming the file") {
    // Each edit is structurally valid (the same file without its checksum opens), so only the
    // hash over the header's content can catch it.
    const std::string p = tmp.file("typed.safetensors");
    REQUIRE(safetensors_write(p, {{"alpha", {3, 4}, a.data(), StDtype::BF16}, {"beta", {4}, b.data()}},
                              {{"step", "3"}}) == "");
    const std::vector<uint8_t> typed = read_bytes(p);
    const nlohmann::json h = nlohmann::json::parse(header_of(typed));
    nlohmann::json dtype = h, shape = h, step = h;
    dtype["alpha"]["dtype"] = "F16";
    shape["alpha"]["shape"] = {4, 3};
    step["__metadata__"]["step"] = "4";
    for (nlohmann::json edited : {dtype, shape, step}) {
      INFO("edited header " << edited.dump());
      const std::string q = tmp.file("edited.safetensors");
      write_bytes(q, with_header(typed, edited.dump()));
      const std::string e = open_error(q);
      CHECK(e.find("edited.safetensors") != std::string::npos);
      CHECK(e.find("checksum mismatch") != std::string::npos);
      edited["__metadata__"].erase(kStChecksumKey);
      write_bytes(q, with_header(typed, edited.dump()));
      CHECK(open_error(q) == "");
    }
  }
  SECTION("whitespace and key order in the header do not change the checksum") {
    const nlohmann::json h = nlohmann::json::parse(header_of(bytes));
    const std::string p = tmp.file("pretty.safetensors");
    write_bytes(p, with_header(bytes, "\n  " + h.dump(4) + std::string(13, ' ')));
    CHECK(open_error(p) == "");
    std::string swapped = R"({"beta": )" + h["beta"].dump() + R"(, "__metadata__": )" +
                          h["__metadata__"].dump() + R"(, "alpha": )" + h["alpha"].dump() + "}";
    write_bytes(p, with_header(bytes, swapped));
    CHECK(open_error(p) == "");
  }
  SECTION("an older file with the data-only checksum is verified on its data") {
    const std::vector<uint8_t> zeros(8, 0);
    char want[17];
    std::snprintf(want, sizeof want, "%016llx", static_cast<unsigned long long>(XXH3_64bits(zeros.data(), 8)));
    const std::string header = R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                   "__metadata__": {")" + std::string(kStDataChecksumKey) + R"(": ")" + want + R"("}})";
    const std::string p = tmp.file("old.safetensors");
    write_raw(p, header, 8);
    CHECK(open_error(p) == "");
    std::vector<uint8_t> flipped = read_bytes(p);
    flipped.back() ^= 1;
    write_bytes(p, flipped);
    const std::string e = open_error(p);
    CHECK(e.find("checksum mismatch") != std::string::npos);
    CHECK(e.find(kStDataChecksumKey) != std::string::npos);
  }
  SECTION("a file with no tensors and no metadata hashes to XXH3-64 of empty input") {
    const std::string p = tmp.file("empty.safetensors");
    REQUIRE(safetensors_write(p, {}) == "");
    SafetensorsFile f;
    REQUIRE(SafetensorsFile::open(p, &f) == "");
    CHECK(f.metadata().at(kStChecksumKey) == "2d06800538d394c2");  // xxHash's published XXH3_64bits("")
  }
  SECTION("the checksum keys are reserved to the writer") {
    for (const char* key : {kStChecksumKey, kStDataChecksumKey}) {
      const std::string e = safetensors_write(tmp.file("r.safetensors"), {{"a", {12}, a.data()}},
                                              {{key, "0000000000000000"}});
      CHECK(e.find("reserved") != std::string::npos);
    }
  }
  SECTION("a file without a checksum (as other writers make them) is read as before") {
    const std::string p = tmp.file("plain.safetensors");
    write_raw(p, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 8);
    SafetensorsFile f;
    REQUIRE(SafetensorsFile::open(p, &f) == "");
    std::vector<float> r;
    REQUIRE(f.read_f32("w", {2}, &r) == "");
    CHECK(r == std::vector<float>{0.f, 0.f});
  }
  SECTION("a shape whose byte size overflows 64 bits is refused") {
    const std::string p = tmp.file("huge.safetensors");
    write_raw(p, R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 0]}})", 0);
    const std::string e = open_error(p);
    CHECK(e.find("'w'") != std::string::npos);
    CHECK(e.find("too large") != std::string::npos);
  }
  SECTION("a deeply nested shape or data_offsets is an error, not a stack overflow") {
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    const std::string p = tmp.file("deep.safetensors");
    write_raw(p, R"({"w": {"dtype": "F32", "shape": )" + deep + R"(, "data_offsets": [0, 0]}})", 0);
    CHECK(open_error(p).find("'w'") != std::string::npos);
    write_raw(p, R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": )" + deep + "}}", 0);
    CHECK(open_error(p).find("data_offsets array of 1") != std::string::npos);
  }
  SECTION("unwritable directory is an error value") {
    const std::string e =
        safetensors_write(tmp.file("no/such/dir/x.safetensors"), {{"a", {12}, a.data()}});
    CHECK(e.find("cannot create") != std::string::npos);
  }
}

// Fails if some damaged header makes open() throw, crash or read outside the file (run it under
// scripts/sanitize.sh), or accepts a file whose tensors cannot then be read in full. 3000 random
// edits of the header text and of the header-length field of a valid file; the data section is
// left alone. The checksum covers the header's content, so a mutation that keeps the checksum key
// opens only if it changed nothing but layout (whitespace); one that removes the key must be
// caught by the structural checks alone.
TEST_CASE("safetensors: mutated headers open cleanly or fail with an error, never crash", "[ckpt][fuzz]") {
  TempDir tmp;
  const std::vector<float> a(6, 1.5f), b(3, -2.0f);
  const std::string good = tmp.file("good.safetensors");
  REQUIRE(safetensors_write(good, {{"alpha", {2, 3}, a.data(), StDtype::BF16}, {"beta", {3}, b.data()}},
                            {{"format", "pt"}}) == "");
  const std::vector<uint8_t> base = read_bytes(good);
  const std::string header = header_of(base);
  const std::vector<uint8_t> data = data_of(base);
  const std::string alphabet = "{}[]\",:0123456789-.eE \\FBU";
  std::mt19937 rng(11);
  const std::string p = tmp.file("fuzz.safetensors");
  int opened = 0, refused = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string h = header;
    stp_test::mutate_text(h, rng, alphabet, 4);
    uint64_t n = h.size();
    if (rng() % 8 == 0) n += uint64_t(int64_t(rng() % 33) - 16);  // a wrong header length
    write_bytes(p, file_bytes(h, data, n));
    INFO("mutation " << i << ": header length " << n << ", header " << h);
    SafetensorsFile f;
    std::string err;
    try {
      err = SafetensorsFile::open(p, &f);
    } catch (const std::exception& ex) {
      FAIL("open() threw: " << ex.what());
    }
    if (!err.empty()) {
      CHECK(err.find("fuzz.safetensors") != std::string::npos);
      ++refused;
      continue;
    }
    ++opened;
    for (const auto& [name, e] : f.entries()) {
      std::vector<int64_t> shape;
      std::vector<float> v;
      REQUIRE(f.read_f32(name, &shape, &v) == "");
      int64_t count = 1;
      for (int64_t d : shape) count *= d;
      CHECK(int64_t(v.size()) == count);
      CHECK(e.end <= uint64_t(data.size()));
    }
  }
  std::printf("# safetensors header fuzz: %d opened, %d refused\n", opened, refused);
  CHECK(refused > 2500);  // nearly every edit breaks the JSON or the layout
  CHECK(opened > 0);      // ...but some (whitespace, metadata text) are harmless
}

TEST_CASE("hf_io: fused tensors split into Hugging Face's tensors exactly", "[ckpt]") {
  // Fails if q/k/v rows, gate/up rows or GPT-2's Conv1D transposition are laid out differently
  // from HF's q_proj/k_proj/v_proj, gate_proj/up_proj and c_attn.
  TempDir tmp;
  for (const char* arch : {"qwen2", "gpt"}) {
    INFO(arch);
    const Config c = tiny_config(arch);
    FullState st = hf_expected_state(c);
    for (auto& [name, t] : st) {  // element value = its flat index: positions are visible
      int64_t n = 1;
      for (int64_t d : t.shape) n *= d;
      t.data.resize(size_t(n));
      for (int64_t i = 0; i < n; ++i) t.data[size_t(i)] = float(i);
    }
    const std::string path = tmp.file(std::string(arch) + ".safetensors");
    REQUIRE(hf_export(c, st, path) == "");
    SafetensorsFile f;
    REQUIRE(SafetensorsFile::open(path, &f) == "");
    const int64_t C = 16, HD = 4, q = 4 * HD, kv = c.model.kv() * HD;
    std::vector<float> r;
    if (std::string(arch) == "qwen2") {
      REQUIRE(f.read_f32("model.layers.1.self_attn.k_proj.weight", {kv, C}, &r) == "");
      CHECK(r[0] == float(q * C));  // k rows follow the q rows
      REQUIRE(f.read_f32("model.layers.0.self_attn.v_proj.bias", {kv}, &r) == "");
      CHECK(r[0] == float(q + kv));
      REQUIRE(f.read_f32("model.layers.0.mlp.up_proj.weight", {32, C}, &r) == "");
      CHECK(r[0] == float(32 * C));  // up rows follow the gate rows
      CHECK(f.has("lm_head.weight"));
      CHECK_FALSE(f.has("model.embed_positions.weight"));
    } else {
      REQUIRE(f.read_f32("transformer.h.0.attn.c_attn.weight", {C, 3 * C}, &r) == "");
      CHECK(r[1] == float(1 * C));  // (in, out): element [0][1] is our [1][0]
      REQUIRE(f.read_f32("transformer.h.0.mlp.c_proj.weight", {32, C}, &r) == "");
      CHECK(r[1] == float(32));
      CHECK(f.has("transformer.wpe.weight"));
    }
  }
}

TEST_CASE("hf_io: export -> import reproduces the logits bit for bit (tp=1 and tp=2)", "[ckpt]") {
  // Fails if a tensor is lost, renamed, split or transposed inconsistently between export and
  // import, or if gathering / scattering by the sharding table mixes up shards.
  TempDir tmp;
  for (const char* arch : {"gpt", "llama", "qwen2"}) {
    for (int tp : {1, 2}) {
      INFO(arch << " tp=" << tp);
      Config c = tiny_config(arch, tp);
      Reference<float> src, dst;
      REQUIRE(reference_init(src, c, {}, ParamInit{1, 0.2, 2, true}) == "");
      REQUIRE(reference_init(dst, c, {1, 1}, ParamInit{2, 0.2, 2, true}) ==
              "");  // other seed, 2 stages
      const MicroBatch mb = random_batch(src.shapes[0].N, c.model.vocab, 4);
      std::vector<double> l_src, l_dst;
      REQUIRE(reference_logits(src, mb, &l_src) == "");
      const std::string path = tmp.file("hf.safetensors");
      REQUIRE(hf_export(c, reference_full_state(src, false), path) == "");
      FullState st;
      REQUIRE(hf_import(c, path, &st) == "");
      REQUIRE(reference_load_full_state(dst, st) == "");
      REQUIRE(reference_logits(dst, mb, &l_dst) == "");
      CHECK(l_dst == l_src);
    }
  }
}

TEST_CASE("hf_io: import errors name the file's tensor, ours, and both shapes", "[ckpt]") {
  // Fails if a missing or mis-shaped tensor is accepted or reported without its names.
  TempDir tmp;
  const Config c = tiny_config("llama");
  Reference<float> r;
  REQUIRE(reference_init(r, c, {}, ParamInit{}) == "");
  FullState st = reference_full_state(r, false);
  Config wrong = c;
  wrong.model.ffn_hidden = 48;
  const std::string path = tmp.file("x.safetensors");
  REQUIRE(hf_export(c, st, path) == "");
  FullState out;
  std::string e = hf_import(wrong, path, &out);
  CHECK(e.find("gate_proj.weight") != std::string::npos);
  CHECK(e.find("[32, 16]") != std::string::npos);
  CHECK(e.find("expected [48, 16]") != std::string::npos);
  CHECK(e.find("layers.0.mlp.fc1.weight") != std::string::npos);
  st.erase("final_norm.weight");
  REQUIRE(hf_export(c, st, path) == "");
  e = hf_import(c, path, &out);
  CHECK(e.find("no tensor 'model.norm.weight'") != std::string::npos);
}
