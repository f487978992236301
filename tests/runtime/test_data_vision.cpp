// test_data_vision.cpp: image-text sequences (runtime/data.h, "Image-text sequences"; docs/data.md,
// "Image-text data (VLM)"). The expected rows are built from the text-only loader reading the same
// stream with seq_len Tt = T - n*Nv, and the patch files are written here with known values, so no
// expectation is computed by the code under test.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "runtime/data.h"
#include "tests/runtime/temp_file.h"

using namespace stp;
using stp_test::TempFile;

namespace {

DataConfig tokens_cfg(const std::string& path, const std::string& patches, bool shuffle) {
  DataConfig c;
  c.kind = "tokens";
  c.path = path;
  c.dtype = "uint16";
  c.patches = patches;
  c.shuffle = shuffle;
  c.seed = 11;
  return c;
}

// Token p of the file is p % 251: a sequence's slot is readable from its first token.
std::vector<uint16_t> counting_ids(size_t n) {
  std::vector<uint16_t> ids(n);
  for (size_t p = 0; p < n; ++p) ids[p] = uint16_t(p % 251);
  return ids;
}

// Pixel k of patch-file sample s: distinct per (s, k), exact in float, negative and fractional.
float designed_pixel(int64_t s, int64_t k) { return -float(s * 1000 + k) * 0.125f - 0.375f; }

std::vector<float> designed_patches(int64_t samples, int64_t values) {
  std::vector<float> out;
  for (int64_t s = 0; s < samples; ++s)
    for (int64_t k = 0; k < values; ++k) out.push_back(designed_pixel(s, k));
  return out;
}

// The expected row: s = [t0, -1 x Vt, t1 .. t_Tt] from the text-only row (in = t0..t_{Tt-1},
// tg = t1..t_Tt), inputs s[0..T-1], targets s[1..T].
void expected_row(const int32_t* plain_in, const int32_t* plain_tg, int T, int Vt,
                  std::vector<int32_t>* in, std::vector<int32_t>* tg) {
  std::vector<int32_t> s{plain_in[0]};
  for (int v = 0; v < Vt; ++v) s.push_back(-1);
  for (int q = 0; q < T - Vt; ++q) s.push_back(plain_tg[q]);
  REQUIRE(int(s.size()) == T + 1);
  in->assign(s.begin(), s.end() - 1);
  tg->assign(s.begin() + 1, s.end());
}

// Loads micro-batch (step, d, m) from the vision loader and the text-only loader and checks every
// row against expected_row.
void check_splice(const DataLoader& vis, const DataLoader& text, int64_t step, int d, int m) {
  const DataShape& sh = vis.shape();
  const int T = sh.seq_len, Vt = sh.visual_tokens, Tt = T - Vt, b = sh.micro_batch;
  std::vector<int32_t> in(size_t(b) * T), tg(size_t(b) * T), pin(size_t(b) * Tt), ptg(size_t(b) * Tt);
  std::vector<float> px(size_t(b * sh.patch_values));
  REQUIRE(vis.load(step, d, m, in.data(), tg.data(), px.data()).empty());
  REQUIRE(text.load(step, d, m, pin.data(), ptg.data()).empty());
  for (int j = 0; j < b; ++j) {
    std::vector<int32_t> ein, etg;
    expected_row(&pin[size_t(j) * Tt], &ptg[size_t(j) * Tt], T, Vt, &ein, &etg);
    CHECK(std::vector<int32_t>(in.begin() + j * T, in.begin() + (j + 1) * T) == ein);
    CHECK(std::vector<int32_t>(tg.begin() + j * T, tg.begin() + (j + 1) * T) == etg);
    int visual_in = 0, loss_tokens = 0;
    for (int t = 0; t < T; ++t) {
      visual_in += in[size_t(j) * T + t] == -1;
      loss_tokens += tg[size_t(j) * T + t] != -1;
    }
    CHECK(visual_in == Vt);
    CHECK(loss_tokens == T - Vt);
    for (int t = 1; t <= Vt; ++t) CHECK(in[size_t(j) * T + t] == -1);  // positions 1..n*Nv
    for (int t = 0; t < Vt; ++t) CHECK(tg[size_t(j) * T + t] == -1);   // targets 0..n*Nv-1
  }
}

}  // namespace

// Fails if data_shape_of drops a field or miscounts the vision geometry: 28 px images, 14 px
// patches -> a 2 x 2 grid, Np = 4, K = 3*1*14*14 = 588, merge 2 -> Nv = 1; two images per sample
// -> n*Nv = 2 and n*Np*K = 2*4*588 = 4704.
TEST_CASE("data_shape_of: text shape from the config, vision fields when enabled", "[data][vision]") {
  Config cfg;
  cfg.model.seq_len = 64;
  cfg.model.vocab = 300;
  cfg.schedule.micro_batch_size = 3;
  cfg.schedule.microbatches = 5;
  cfg.parallel.dp = 2;
  DataShape sh = data_shape_of(cfg);
  CHECK(sh.seq_len == 64);
  CHECK(sh.micro_batch == 3);
  CHECK(sh.microbatches == 5);
  CHECK(sh.dp == 2);
  CHECK(sh.vocab == 300);
  CHECK(sh.visual_tokens == 0);
  CHECK(sh.patch_values == 0);
  cfg.model.vision.enabled = true;
  cfg.model.vision.image_size = 28;
  cfg.model.vision.patch_size = 14;
  cfg.model.vision.channels = 3;
  cfg.model.vision.temporal_patch = 1;
  cfg.model.vision.merge_size = 2;
  cfg.model.vision.images_per_sample = 2;
  sh = data_shape_of(cfg);
  CHECK(sh.visual_tokens == 2);
  CHECK(sh.patch_values == 4704);
  CHECK(sh.text_len() == 62);
}

// Fails if a visual position holds anything but -1 in the inputs, a target before a visual
// position is not -1, a row has other than T - n*Nv loss tokens, or the text differs from (or is
// reordered against) the text-only loader reading the same stream with seq_len Tt: for the
// synthetic stream and for a shuffled token file, b = 2, several (step, dp, mb).
TEST_CASE("image-text rows: [t0, IMG x n*Nv, t1..] spliced from the Tt text stream", "[data][vision]") {
  const int T = 12, Vt = 5, Tt = T - Vt, b = 2, M = 3, dp = 2;
  const int64_t P = 6;  // pixel values per sequence
  SECTION("synthetic") {
    DataConfig c;
    c.seed = 5;
    auto vis = DataLoader::open(c, DataShape{T, b, M, dp, 97, Vt, P});
    auto text = DataLoader::open(c, DataShape{Tt, b, M, dp, 97});
    INFO(vis.error);
    REQUIRE(vis.loader);
    REQUIRE(text.loader);
    for (int64_t s : {1, 2, 7})
      for (int d = 0; d < dp; ++d)
        for (int m = 0; m < M; ++m) check_splice(*vis.loader, *text.loader, s, d, m);
  }
  SECTION("token file, shuffled") {
    const int64_t n = 9;  // slots of Tt tokens
    TempFile ids(counting_ids(size_t(n * Tt + 1)));
    TempFile px(designed_patches(n, P));
    auto vis = DataLoader::open(tokens_cfg(ids.path, px.path, true), DataShape{T, b, M, dp, 256, Vt, P});
    auto text = DataLoader::open(tokens_cfg(ids.path, "", true), DataShape{Tt, b, M, dp, 256});
    INFO(vis.error);
    REQUIRE(vis.loader);
    REQUIRE(text.loader);
    CHECK(vis.loader->sequences_per_epoch() == n);  // (n*Tt + 1 - 1) / Tt
    for (int64_t s : {1, 2, 3})  // 24 sequences per step: wraps within step 1
      for (int d = 0; d < dp; ++d)
        for (int m = 0; m < M; ++m) check_splice(*vis.loader, *text.loader, s, d, m);
  }
}

// Fails if synthetic pixels depend on the read order or on whether tokens are read with them,
// leave [-1, 1], ignore the class t[1] % 16 (same-class images must correlate through the shared
// prototype: E[x*y] = 0.25*E[proto^2] = 1/12, different classes E[x*y] = 0; over 4000 values the
// sample mean's standard deviation is about 0.003), or repeat the noise between sequences.
TEST_CASE("synthetic images: counter-based, in [-1, 1], carry the class of t[1]", "[data][vision]") {
  const int T = 10, Vt = 3, b = 2, M = 2;
  const int64_t P = 4000;
  DataConfig c;
  c.seed = 21;
  auto r = DataLoader::open(c, DataShape{T, b, M, 1, 200, Vt, P});
  REQUIRE(r.loader);
  const DataLoader& dl = *r.loader;
  std::vector<int32_t> in(b * T), tg(b * T), in2(b * T), tg2(b * T);
  std::vector<float> px(size_t(b * P)), px2(size_t(b * P));
  REQUIRE(dl.load(4, 0, 1, in.data(), tg.data(), px.data()).empty());
  REQUIRE(dl.load(1, 0, 0, in2.data(), tg2.data(), px2.data()).empty());
  REQUIRE(dl.load(4, 0, 1, in2.data(), tg2.data(), px2.data()).empty());
  CHECK(px == px2);
  REQUIRE(dl.load(4, 0, 1, in2.data(), tg2.data()).empty());  // no pixels: same tokens
  CHECK(in == in2);
  CHECK(tg == tg2);
  for (int j = 0; j < b; ++j) {
    const int64_t i = dl.sequence_index(4, 0, 1, j);
    const int cls = tg[size_t(j) * T + Vt] % 16;  // target of the last visual position is t[1]
    for (int64_t k = 0; k < P; ++k) {
      const float v = px[size_t(j * P + k)];
      REQUIRE(v >= -1.0f);
      REQUIRE(v <= 1.0f);
      REQUIRE(v == data_synthetic_pixel(21, i, cls, k));
    }
  }

  // Images of 48 sequences grouped by class.
  std::vector<std::vector<float>> img;
  std::vector<int> cls;
  for (int64_t i = 0; i < 48; ++i) {
    std::vector<int32_t> text(T - Vt + 1);
    std::vector<float> x(static_cast<size_t>(P));
    REQUIRE(dl.read_sequence(i, text.data()).empty());
    REQUIRE(dl.read_pixels(i, text.data(), x.data()).empty());
    img.push_back(x);
    cls.push_back(text[1] % 16);
  }
  int same = 0, differ = 0;
  for (size_t a = 0; a < img.size(); ++a)
    for (size_t e = a + 1; e < img.size(); ++e) {
      double dot = 0;
      for (int64_t k = 0; k < P; ++k) dot += double(img[a][size_t(k)]) * img[e][size_t(k)];
      dot /= double(P);
      CHECK(img[a] != img[e]);
      if (cls[a] == cls[e]) {
        ++same;
        CHECK(dot > 1.0 / 12 - 0.02);
        CHECK(dot < 1.0 / 12 + 0.02);
      } else {
        ++differ;
        CHECK(std::fabs(dot) < 0.02);
      }
    }
  CHECK(same > 10);  // 48 sequences over 16 classes: many same-class pairs
  CHECK(differ > 500);
}

// Fails if pixels are not the designed file values bit for bit, or come from a slot other than
// the one the text read (shuffle off: slot i mod n; on: perm_e(i mod n), checked through the text,
// whose first token names its slot), including after the run wraps into the next epoch.
TEST_CASE("token file + patch file: text and images share the slot, read back exactly", "[data][vision]") {
  const int T = 10, Vt = 3, Tt = T - Vt, b = 2, M = 3;
  const int64_t n = 6, P = 5;
  TempFile ids(counting_ids(size_t(n * Tt + 1)));
  TempFile px(designed_patches(n + 1, P));  // one spare sample is allowed
  for (bool shuffle : {false, true}) {
    INFO("shuffle " << shuffle);
    auto r = DataLoader::open(tokens_cfg(ids.path, px.path, shuffle), DataShape{T, b, M, 1, 256, Vt, P});
    INFO(r.error);
    REQUIRE(r.loader);
    CHECK(r.loader->patch_samples() == n + 1);
    std::vector<int32_t> in(b * T), tg(b * T);
    std::vector<float> got(size_t(b * P));
    int moved = 0;
    for (int64_t s = 1; s <= 2; ++s)  // 12 sequences: two epochs of 6
      for (int m = 0; m < M; ++m) {
        REQUIRE(r.loader->load(s, 0, m, in.data(), tg.data(), got.data()).empty());
        for (int j = 0; j < b; ++j) {
          const int64_t i = r.loader->sequence_index(s, 0, m, j);
          const int64_t slot = in[size_t(j) * T] / Tt;  // token p is p (< 251): slot = t0 / Tt
          REQUIRE(in[size_t(j) * T] == slot * Tt);
          if (!shuffle) CHECK(slot == i % n);
          moved += slot != i % n;
          for (int64_t k = 0; k < P; ++k) {
            const float want = designed_pixel(slot, k);
            CHECK(std::memcmp(&got[size_t(j * P + k)], &want, sizeof(float)) == 0);
          }
        }
      }
    if (shuffle) CHECK(moved > 0);
  }
}

// Fails if a bad patch file or a wrong data.patches setting is accepted, or its error does not
// name the key, the file and the rule (with both numbers where two disagree).
TEST_CASE("image-text data errors name data.patches and the rule", "[data][vision]") {
  const int T = 10, Vt = 3, Tt = T - Vt;
  const int64_t n = 6, P = 5;
  const DataShape vis{T, 1, 1, 1, 256, Vt, P};
  TempFile ids(counting_ids(size_t(n * Tt + 1)));

  SECTION("missing file") {
    auto r = DataLoader::open(tokens_cfg(ids.path, "/nonexistent/p.f32", false), vis);
    CHECK(!r.loader);
    CHECK_THAT(r.error,
               Catch::Contains("data.patches '/nonexistent/p.f32'") && Catch::Contains("cannot open"));
  }
  SECTION("size not a whole number of samples") {
    TempFile px(std::vector<float>(7, 0.5f));  // 28 bytes, samples of 20
    auto r = DataLoader::open(tokens_cfg(ids.path, px.path, false), vis);
    CHECK(!r.loader);
    CHECK_THAT(r.error, Catch::Contains("data.patches '" + px.path + "'") &&
                            Catch::Contains("28 bytes is not a whole number of samples") &&
                            Catch::Contains("5 float32 values (20 bytes each)"));
  }
  SECTION("fewer samples than token sequences") {
    TempFile px(designed_patches(n - 1, P));
    auto r = DataLoader::open(tokens_cfg(ids.path, px.path, false), vis);
    CHECK(!r.loader);
    CHECK_THAT(r.error, Catch::Contains("data.patches '" + px.path + "'") &&
                            Catch::Contains("holds 5 samples, fewer than the 6 sequences") &&
                            Catch::Contains(ids.path));
  }
  SECTION("non-finite values are refused when read") {
    std::vector<float> v = designed_patches(n, P);
    v[size_t(2 * P + 3)] = std::numeric_limits<float>::quiet_NaN();
    v[size_t(4 * P + 1)] = -std::numeric_limits<float>::infinity();
    TempFile px(v);
    auto r = DataLoader::open(tokens_cfg(ids.path, px.path, false), vis);
    INFO(r.error);
    REQUIRE(r.loader);
    std::vector<int32_t> in(T), tg(T);
    std::vector<float> got(static_cast<size_t>(P));
    CHECK(r.loader->load(2, 0, 0, in.data(), tg.data(), got.data()).empty());  // slot 1: fine
    CHECK_THAT(r.loader->load(3, 0, 0, in.data(), tg.data(), got.data()),
               Catch::Contains("data.patches '" + px.path + "': sample 2, value 3 (byte offset 52) is nan"));
    CHECK_THAT(r.loader->load(5, 0, 0, in.data(), tg.data(), got.data()),
               Catch::Contains("sample 4, value 1 (byte offset 84) is -inf") && Catch::Contains("finite"));
    CHECK(r.loader->load(3, 0, 0, in.data(), tg.data()).empty());  // a rank without pixels
  }
  SECTION("data.patches without a vision tower") {
    TempFile px(designed_patches(n, P));
    auto r = DataLoader::open(tokens_cfg(ids.path, px.path, false), DataShape{T, 1, 1, 1, 256});
    CHECK(!r.loader);
    CHECK_THAT(r.error, Catch::Contains("data.patches '" + px.path + "' is set") &&
                            Catch::Contains("model.vision is not enabled"));
  }
  SECTION("a vision tower reading a token file without data.patches") {
    auto r = DataLoader::open(tokens_cfg(ids.path, "", false), vis);
    CHECK(!r.loader);
    CHECK_THAT(r.error, Catch::Contains("data.patches is empty") && Catch::Contains("model.vision"));
  }
  SECTION("data.patches with synthetic data") {
    DataConfig c;
    c.patches = "p.f32";
    auto r = DataLoader::open(c, vis);
    CHECK(!r.loader);
    CHECK_THAT(r.error, Catch::Contains("data.patches 'p.f32'") && Catch::Contains("data.kind is synthetic"));
  }
  SECTION("no text left, or too little for one sequence") {
    auto r = DataLoader::open(DataConfig{}, DataShape{4, 1, 1, 1, 256, 4, P});
    CHECK_THAT(r.error, Catch::Contains("model.seq_len 4 leaves no text after 4 visual tokens"));
    r = DataLoader::open(DataConfig{}, DataShape{8, 1, 1, 1, 256, 2, 0});
    CHECK_THAT(r.error, Catch::Contains("both must be 0"));
    TempFile few(counting_ids(size_t(Tt)));  // Tt tokens: one short of Tt + 1
    TempFile px(designed_patches(1, P));
    r = DataLoader::open(tokens_cfg(few.path, px.path, false), vis);
    CHECK_THAT(r.error, Catch::Contains("7 tokens, fewer than one sequence of model.seq_len - visual "
                                        "tokens + 1 = 10 - 3 + 1 = 8"));
  }
}

// Fails if describe() does not mention the images and the text length of a sequence.
TEST_CASE("describe() names the visual and text tokens per sequence", "[data][vision]") {
  auto s = DataLoader::open(DataConfig{}, DataShape{4096, 1, 1, 1, 256, 3025, 12100});
  REQUIRE(s.loader);
  CHECK_THAT(s.loader->describe(), Catch::Contains("3025 visual tokens + 1071 text per sequence"));
  TempFile ids(counting_ids(43));
  TempFile px(designed_patches(6, 5));
  auto t = DataLoader::open(tokens_cfg(ids.path, px.path, true), DataShape{10, 1, 1, 1, 256, 3, 5});
  REQUIRE(t.loader);
  CHECK_THAT(t.loader->describe(), Catch::Contains("6 sequences, 3 visual tokens + 7 text per sequence") &&
                                       Catch::Contains(px.path) && Catch::Contains("shuffled"));
}
