// activations.h: the activation store of one rank -- every tensor of the model's tensor table,
// per (stage, micro-batch), allocated when its producer runs and released when freed.
//
// Contract:
// - Byte accounting is exactly the table's: a live tensor counts elems * sizeof(T) bytes (what the
//   simulator charges). live_bytes() is the current sum, peak_bytes() its high-water mark.
// - Released buffers are kept for reuse by the next tensor of the same size (a caching allocator:
//   training repeats the same shapes every micro-batch, and fresh large allocations cost a page
//   fault per 4 KiB). Pooled buffers are not live bytes; trim() returns them to the system. A
//   produced buffer's contents are unspecified: units overwrite every element of what they produce.
// - Each buffer carries a sentinel guard past its last element; release() reports a unit that
//   wrote past the table's size, naming the tensor.
// - pass_done() applies the lowering's free rule for callers without a lowered program (the
//   reference step, tests): after a unit pass, each tensor of that (stage, mb) is released once
//   every reader listed in the table has run; a tensor with no readers is released right after
//   its producer, unless it is `sent` (the caller copies it to the next stage, then releases it).
// - Errors are values: "" or a message naming stage, micro-batch and tensor.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "model/desc/desc.h"
#include "model/units.h"

namespace stp {

template <typename T>
class ActivationStore final : public TensorSource<T> {
 public:
  explicit ActivationStore(const ModelDesc& desc) : desc_(&desc) {}
  T* produce(int stage, int mb, int t) override;
  T* read(int stage, int mb, int t) override;
  bool live(int stage, int mb, int t) const;
  std::string release(int stage, int mb, int t);
  std::string pass_done(int stage, int mb, UnitRef done);

  int64_t live_bytes() const { return live_bytes_; }
  int64_t peak_bytes() const { return peak_bytes_; }
  void reset_peak() { peak_bytes_ = live_bytes_; }
  std::vector<std::string> live_names() const;  // "s1 mb3 attn2.qkv", for leak reports
  void trim() { pool_.clear(); }

 private:
  using Key = std::tuple<int, int, int>;  // (stage, mb, tensor)
  struct Entry {
    std::vector<T> buf;            // elems + guard
    std::vector<UnitRef> waiting;  // readers that have not run yet
  };
  static constexpr int64_t kGuard = 8;
  static T guard_value() { return T(-31337.25); }
  const ModelDesc* desc_;
  std::map<Key, Entry> map_;
  std::multimap<size_t, std::vector<T>> pool_;  // released buffers by size
  int64_t live_bytes_ = 0, peak_bytes_ = 0;
};

}  // namespace stp
