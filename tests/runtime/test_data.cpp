// test_data.cpp: the token sources and their order (runtime/data.h). Files are written here with
// known contents, so every expected token is computed independently of the loader.
#include <catch2/catch.hpp>

#include <set>
#include <string>
#include <vector>

#include "runtime/data.h"
#include "tests/runtime/temp_file.h"

using namespace stp;
using stp_test::TempFile;

namespace {

DataConfig tokens_cfg(const std::string& path, const std::string& dtype, bool shuffle = false) {
  DataConfig c;
  c.kind = "tokens";
  c.path = path;
  c.dtype = dtype;
  c.shuffle = shuffle;
  c.seed = 7;
  return c;
}

}  // namespace

// Fails if the index formula changes: (s, d, m, j) must enumerate 0, 1, 2, ... in exactly the
// order step, DP rank, micro-batch, row.
TEST_CASE("sequence index is ((s-1)*dp + d)*M*b + m*b + j", "[data]") {
  DataShape sh{4, 2, 3, 2, 256};
  auto r = DataLoader::open(DataConfig{}, sh);
  REQUIRE(r.loader);
  int64_t want = 0;
  for (int s = 1; s <= 3; ++s)
    for (int d = 0; d < 2; ++d)
      for (int m = 0; m < 3; ++m)
        for (int j = 0; j < 2; ++j) CHECK(r.loader->sequence_index(s, d, m, j) == want++);
}

// Fails if step 1 does not read the first tokens of the file in order, if inputs/targets are not
// the T+1 window split at one, or if the wrap point differs from the documented (tokens-1)/T.
TEST_CASE("token file: sequence i is tokens [i*T, i*T+T], wrapping after (n-1)/T", "[data]") {
  const int T = 4, b = 2, M = 3, dp = 2;
  std::vector<uint16_t> ids(43);
  for (size_t p = 0; p < ids.size(); ++p) ids[p] = uint16_t((p * 7) % 251);
  TempFile f(ids);
  auto r = DataLoader::open(tokens_cfg(f.path, "uint16"), DataShape{T, b, M, dp, 256});
  INFO(r.error);
  REQUIRE(r.loader);
  CHECK(r.loader->sequences_per_epoch() == 10);  // (43 - 1) / 4
  std::vector<int32_t> in(b * T), tg(b * T);
  for (int s = 1; s <= 2; ++s)
    for (int d = 0; d < dp; ++d)
      for (int m = 0; m < M; ++m) {
        REQUIRE(r.loader->load(s, d, m, in.data(), tg.data()).empty());
        for (int j = 0; j < b; ++j) {
          const int64_t i = (((s - 1) * dp + d) * M + m) * b + j, slot = i % 10;
          for (int t = 0; t < T; ++t) {
            REQUIRE(in[j * T + t] == ids[slot * T + t]);
            REQUIRE(tg[j * T + t] == ids[slot * T + t + 1]);
          }
        }
      }
  // Step 1, DP rank 0, micro-batch 0, row 0: the first T+1 tokens of the file.
  REQUIRE(r.loader->load(1, 0, 0, in.data(), tg.data()).empty());
  CHECK(in[0] == ids[0]);
  CHECK(tg[T - 1] == ids[T]);
}

// Fails if uint32 ids above 65535 are misread (byte order, width).
TEST_CASE("token file: uint32 little-endian ids", "[data]") {
  std::vector<uint32_t> ids{70000, 1, 99999, 65536, 5, 6, 7, 8, 9};
  TempFile f(ids);
  auto r = DataLoader::open(tokens_cfg(f.path, "uint32"), DataShape{8, 1, 1, 1, 100000});
  INFO(r.error);
  REQUIRE(r.loader);
  std::vector<int32_t> seq(9);
  REQUIRE(r.loader->read_sequence(0, seq.data()).empty());
  for (size_t k = 0; k < ids.size(); ++k) CHECK(seq[k] == int32_t(ids[k]));
}

// Fails if a bad file is accepted, or its error does not name the key, the file and the problem.
TEST_CASE("token file errors name the file, the position and the id", "[data]") {
  std::vector<uint16_t> ids(20, 3);
  ids[7] = 300;
  TempFile f(ids);
  auto r = DataLoader::open(tokens_cfg(f.path, "uint16"), DataShape{4, 1, 1, 1, 256});
  CHECK(!r.loader);
  CHECK_THAT(r.error, Catch::Contains(f.path) && Catch::Contains("token 7") &&
                          Catch::Contains("is 300") && Catch::Contains("model.vocab is 256"));

  r = DataLoader::open(tokens_cfg("/nonexistent/x.bin", "uint16"), DataShape{4, 1, 1, 1, 256});
  CHECK_THAT(r.error, Catch::Contains("data.path '/nonexistent/x.bin'") && Catch::Contains("cannot open"));

  r = DataLoader::open(tokens_cfg(f.path, "int8"), DataShape{4, 1, 1, 1, 256});
  CHECK_THAT(r.error, Catch::Contains("data.dtype 'int8'"));

  std::vector<uint8_t> odd{1, 2, 3};
  TempFile g(odd);
  r = DataLoader::open(tokens_cfg(g.path, "uint16"), DataShape{4, 1, 1, 1, 256});
  CHECK_THAT(r.error, Catch::Contains("3 bytes is not a whole number of uint16"));

  std::vector<uint16_t> few{1, 2, 3};
  TempFile h(few);
  r = DataLoader::open(tokens_cfg(h.path, "uint16"), DataShape{4, 1, 1, 1, 256});
  CHECK_THAT(r.error, Catch::Contains("3 tokens, fewer than one sequence"));
}

// Fails if the permutation is not a bijection for awkward sizes, or does not depend on its key.
TEST_CASE("data_permute is a seeded bijection of 0..n-1", "[data]") {
  for (int64_t n : {1, 2, 3, 5, 10, 17, 1000, 4097}) {
    std::set<int64_t> seen;
    for (int64_t x = 0; x < n; ++x) {
      const int64_t y = data_permute(x, n, 42);
      REQUIRE(y >= 0);
      REQUIRE(y < n);
      seen.insert(y);
    }
    CHECK(int64_t(seen.size()) == n);
  }
  int moved = 0;
  for (int64_t x = 0; x < 1000; ++x) moved += data_permute(x, 1000, 1) != data_permute(x, 1000, 2);
  CHECK(moved > 900);
}

// Fails if shuffling skips or repeats a slot within an epoch, repeats the first epoch's order, or
// is not reproducible across loader instances.
TEST_CASE("token file: shuffle visits every sequence once per epoch, reproducibly", "[data]") {
  const int T = 2;
  std::vector<uint16_t> ids(2 * 50 + 1);
  for (size_t p = 0; p < ids.size(); ++p) ids[p] = uint16_t(p);
  TempFile f(ids);
  auto a = DataLoader::open(tokens_cfg(f.path, "uint16", true), DataShape{T, 1, 1, 1, 1024});
  auto b = DataLoader::open(tokens_cfg(f.path, "uint16", true), DataShape{T, 1, 1, 1, 1024});
  REQUIRE(a.loader);
  REQUIRE(b.loader);
  std::vector<int32_t> sa(T + 1), sb(T + 1);
  std::set<int32_t> epoch0, epoch1;
  int same_order = 0;
  for (int64_t i = 0; i < 50; ++i) {
    REQUIRE(a.loader->read_sequence(i, sa.data()).empty());
    REQUIRE(b.loader->read_sequence(i, sb.data()).empty());
    CHECK(sa == sb);
    CHECK(sa[0] % T == 0);  // a whole slot: first token at a multiple of T
    epoch0.insert(sa[0]);
    std::vector<int32_t> e1(T + 1);
    REQUIRE(a.loader->read_sequence(i + 50, e1.data()).empty());
    epoch1.insert(e1[0]);
    same_order += e1[0] == sa[0];
  }
  CHECK(epoch0.size() == 50);
  CHECK(epoch1.size() == 50);
  CHECK(same_order < 10);
}

// Fails if synthetic tokens depend on the order they are read in, leave the vocabulary, or lose
// the counting runs that make them learnable.
TEST_CASE("synthetic tokens: counter-based, in range, runs of 8", "[data]") {
  DataConfig c;
  c.seed = 99;
  const int T = 16, V = 50;
  auto r = DataLoader::open(c, DataShape{T, 2, 2, 2, V});
  REQUIRE(r.loader);
  std::vector<int32_t> in1(2 * T), tg1(2 * T), in2(2 * T), tg2(2 * T);
  REQUIRE(r.loader->load(3, 1, 1, in1.data(), tg1.data()).empty());
  REQUIRE(r.loader->load(1, 0, 0, in2.data(), tg2.data()).empty());
  REQUIRE(r.loader->load(3, 1, 1, in2.data(), tg2.data()).empty());
  CHECK(in1 == in2);
  CHECK(tg1 == tg2);
  const int64_t i = r.loader->sequence_index(3, 1, 1, 0);
  for (int t = 0; t < T; ++t) {
    const int64_t p = i * T + t;
    CHECK(in1[t] == data_synthetic_token(99, p, V));
    CHECK(in1[t] >= 0);
    CHECK(in1[t] < V);
    if ((p + 1) % 8 != 0) CHECK(tg1[t] == (in1[t] + 1) % V);
  }
  int differ = 0;
  for (int64_t p = 0; p < 800; p += 8) differ += data_synthetic_token(1, p, V) != data_synthetic_token(2, p, V);
  CHECK(differ > 80);
}
