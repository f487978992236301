// activations.cpp: the activation store (contract in activations.h).
#include "model/activations.h"

#include <algorithm>

namespace stp {

template <typename T>
T* ActivationStore<T>::produce(int stage, int mb, int t) {
  const Key k{stage, mb, t};
  auto it = map_.find(k);
  if (it != map_.end()) return it->second.buf.data();
  const TensorDesc& td = desc_->stages[size_t(stage)].tensors[size_t(t)];
  Entry e;
  const size_t n = size_t(td.elems + kGuard);
  auto pooled = pool_.find(n);
  if (pooled != pool_.end()) {
    e.buf = std::move(pooled->second);
    pool_.erase(pooled);
  } else {
    e.buf.resize(n);
  }
  std::fill(e.buf.end() - kGuard, e.buf.end(), guard_value());
  e.waiting = td.readers;
  live_bytes_ += td.elems * int64_t(sizeof(T));
  peak_bytes_ = std::max(peak_bytes_, live_bytes_);
  return map_.emplace(k, std::move(e)).first->second.buf.data();
}

template <typename T>
T* ActivationStore<T>::read(int stage, int mb, int t) {
  auto it = map_.find(Key{stage, mb, t});
  return it == map_.end() ? nullptr : it->second.buf.data();
}

template <typename T>
bool ActivationStore<T>::live(int stage, int mb, int t) const {
  return map_.count(Key{stage, mb, t}) > 0;
}

template <typename T>
std::string ActivationStore<T>::release(int stage, int mb, int t) {
  auto it = map_.find(Key{stage, mb, t});
  const TensorDesc& td = desc_->stages[size_t(stage)].tensors[size_t(t)];
  const std::string name = "s" + std::to_string(stage) + " mb" + std::to_string(mb) + " " + td.name;
  if (it == map_.end()) return "release of " + name + ", which is not live";
  const std::vector<T>& b = it->second.buf;
  const bool intact =
      std::all_of(b.end() - kGuard, b.end(), [](T v) { return v == guard_value(); });
  live_bytes_ -= td.elems * int64_t(sizeof(T));
  pool_.emplace(b.size(), std::move(it->second.buf));
  map_.erase(it);
  if (!intact) return name + ": a unit wrote past its " + std::to_string(td.elems) + " elements";
  return "";
}

template <typename T>
std::string ActivationStore<T>::pass_done(int stage, int mb, UnitRef done) {
  const StageDesc& sd = desc_->stages[size_t(stage)];
  std::vector<int> to_free;
  for (auto it = map_.lower_bound(Key{stage, mb, 0});
       it != map_.end() && std::get<0>(it->first) == stage && std::get<1>(it->first) == mb; ++it) {
    const int t = std::get<2>(it->first);
    const TensorDesc& td = sd.tensors[size_t(t)];
    std::vector<UnitRef>& w = it->second.waiting;
    w.erase(std::remove(w.begin(), w.end(), done), w.end());
    const bool no_readers = td.readers.empty() && td.producer == done && !td.sent;
    const bool all_read = !td.readers.empty() && w.empty();
    if (no_readers || all_read) to_free.push_back(t);
  }
  for (int t : to_free) {
    std::string e = release(stage, mb, t);
    if (!e.empty()) return e;
  }
  return "";
}

template <typename T>
std::vector<std::string> ActivationStore<T>::live_names() const {
  std::vector<std::string> names;
  for (const auto& kv : map_) {
    const auto& [stage, mb, t] = kv.first;
    names.push_back("s" + std::to_string(stage) + " mb" + std::to_string(mb) + " " +
                    desc_->stages[size_t(stage)].tensors[size_t(t)].name);
  }
  return names;
}

template class ActivationStore<float>;
template class ActivationStore<double>;

}  // namespace stp
