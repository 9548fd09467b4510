// The host side of the CUDA multi-tensor work list, torch-free and CUDA-free so that a plain g++
// unit test checks it on a CPU machine (tests/test_worklist_host.py): the WorkItem layout the
// kernels read (and the wide list's, above kMaxSets sets), how parameters are cut into chunks, and
// when a plan's cached device copy is reused.
// The torch glue (csrc/cuda/ops_cuda.cpp) fills ParamView records from tensors and uploads the items.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "gh_constants.h"

namespace gh {
namespace cuda {

enum DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kFloat64 = 3 };

// One work item: a chunk [start, start + len) of one parameter. A set without a gradient for
// this parameter points at another set's memory and has its bit in `present` cleared: the
// kernels use 0 for its values. An item with kNotInGram set in `present` is combined but left
// out of the Gram matrix (Harmonizer's `shared`). `aligned`: every pointer + start is 16-byte aligned.
constexpr uint32_t kNotInGram = 1u << 8;
struct WorkItem {
  const void* in[kMaxSets];
  void* out;
  int64_t start;
  int64_t len;
  uint32_t present;
  uint32_t aligned;
};
static_assert(sizeof(WorkItem) == 8 * kMaxSets + 32, "WorkItem layout is shared with the host glue");

// One parameter as the work list sees it: its sets' addresses (nullptr: no gradient; kMaxSets slots by
// default, K for a wide list), out, size, dtype.
struct ParamView {
  std::vector<const void*> in = std::vector<const void*>(kMaxSets, nullptr);
  void* out = nullptr;
  int64_t numel = 0;
  int64_t elem_size = 4;
  int dtype = kFloat32;
};

// Elements per work item: enough items to give every multiprocessor ~16 blocks for large lists, at
// least 16K elements per block, a power of two (so chunk starts stay 16-byte aligned).
inline int64_t chunk_elements(int64_t total, int multiprocessors) {
  const int64_t target = std::max<int64_t>(1, total / (static_cast<int64_t>(multiprocessors) * 16));
  int64_t chunk = 1 << 14;
  while (chunk < target && chunk < (1 << 20)) chunk <<= 1;
  return chunk;
}

// `base` once per chunk of a parameter of `numel` elements: start and len set, the rest copied.
template <typename Item>
inline void append_chunks(const Item& base, int64_t numel, int64_t chunk, std::vector<Item>* items) {
  for (int64_t s = 0; s < numel; s += chunk) {
    Item it = base;
    it.start = s;
    it.len = std::min(chunk, numel - s);
    items->push_back(it);
  }
}

// Items grouped by dtype code, appended group after group (one launch per group), with the (dtype, count) list.
template <typename Item>
inline void append_groups(const std::map<int, std::vector<Item>>& by_dtype, std::vector<Item>* items,
                          std::vector<std::pair<int, int64_t>>* groups) {
  for (const auto& kv : by_dtype) {
    items->insert(items->end(), kv.second.begin(), kv.second.end());
    groups->emplace_back(kv.first, static_cast<int64_t>(kv.second.size()));
  }
}

// The items of one call, grouped by dtype (one launch per group, consecutive in `items`).
struct HostWorkList {
  std::vector<WorkItem> items;
  std::vector<std::pair<int, int64_t>> groups;  // (dtype code, item count)
  int64_t bytes() const { return static_cast<int64_t>(items.size() * sizeof(WorkItem)); }
};

// gram_mask (optional, one byte per parameter): parameters with a zero byte get kNotInGram.
// Parameters of zero elements, or that no set has, get no item (the caller writes nothing for them).
inline HostWorkList build_items(const std::vector<ParamView>& params, int64_t K, bool with_out, const uint8_t* gram_mask,
                                int64_t chunk) {
  std::map<int, std::vector<WorkItem>> by_dtype;
  for (size_t p = 0; p < params.size(); ++p) {
    const ParamView& pv = params[p];
    if (pv.numel == 0) continue;
    const void* sub = nullptr;
    uint32_t present = 0;
    for (int k = 0; k < K; ++k)
      if (pv.in[k] != nullptr) {
        present |= 1u << k;
        if (sub == nullptr) sub = pv.in[k];
      }
    if (present == 0) continue;
    bool aligned = true;
    WorkItem base{};
    for (int k = 0; k < kMaxSets; ++k) {
      base.in[k] = (k < K && pv.in[k] != nullptr) ? pv.in[k] : sub;
      if (k < K) aligned = aligned && reinterpret_cast<uintptr_t>(base.in[k]) % 16 == 0;
    }
    base.out = with_out ? pv.out : nullptr;
    if (with_out) aligned = aligned && reinterpret_cast<uintptr_t>(pv.out) % 16 == 0;
    aligned = aligned && (chunk * pv.elem_size) % 16 == 0;
    base.present = present | (gram_mask != nullptr && !gram_mask[p] ? kNotInGram : 0u);
    base.aligned = aligned ? 1u : 0u;
    append_chunks(base, pv.numel, chunk, &by_dtype[pv.dtype]);
  }
  HostWorkList wl;
  append_groups(by_dtype, &wl.items, &wl.groups);
  return wl;
}

// NOTE: [Wide work list]: above kMaxSets sets (up to kMaxWideSets) an item cannot carry its sets' addresses.
// Wide items name a row of a pointer table instead: per parameter K input addresses (nullptr: that set has no
// gradient) and then out, K + 1 pointers. The kernels read each set's pointer from the table, and the items and
// the table go to the device as one buffer (items first; the table starts at a 16-byte boundary).
struct WideItem {
  int64_t row;  // the parameter's row in the pointer table
  int64_t start;
  int64_t len;
  uint32_t flags;  // kNotInGram
  uint32_t aligned;  // every present pointer + start is 16-byte aligned (kept for vector loads; unused today)
};
static_assert(sizeof(WideItem) == 32, "WideItem layout is shared with the host glue");

struct HostWideList {
  std::vector<WideItem> items;
  std::vector<const void*> table;  // rows of K + 1 pointers
  std::vector<std::pair<int, int64_t>> groups;  // (dtype code, item count), consecutive in items
  int64_t item_bytes() const { return static_cast<int64_t>(items.size() * sizeof(WideItem)); }
  int64_t bytes() const { return item_bytes() + static_cast<int64_t>(table.size() * sizeof(void*)); }
  // items then table, as uploaded
  std::vector<unsigned char> serialize() const {
    std::vector<unsigned char> b(static_cast<size_t>(bytes()));
    if (!items.empty()) std::memcpy(b.data(), items.data(), static_cast<size_t>(item_bytes()));
    if (!table.empty()) std::memcpy(b.data() + item_bytes(), table.data(), table.size() * sizeof(void*));
    return b;
  }
};

// The wide list of a call (NOTE: [Wide work list]); the same rules as build_items: parameters of zero elements,
// or that no set has, get no item; gram_mask's zero bytes set kNotInGram.
inline HostWideList build_wide_items(const std::vector<ParamView>& params, int64_t K, bool with_out, const uint8_t* gram_mask,
                                     int64_t chunk) {
  std::map<int, std::vector<WideItem>> by_dtype;
  HostWideList wl;
  for (size_t p = 0; p < params.size(); ++p) {
    const ParamView& pv = params[p];
    if (pv.numel == 0) continue;
    bool any = false, aligned = (chunk * pv.elem_size) % 16 == 0;
    for (int64_t k = 0; k < K; ++k)
      if (pv.in[k] != nullptr) {
        any = true;
        aligned = aligned && reinterpret_cast<uintptr_t>(pv.in[k]) % 16 == 0;
      }
    if (!any) continue;
    aligned = aligned && (!with_out || reinterpret_cast<uintptr_t>(pv.out) % 16 == 0);
    const int64_t row = static_cast<int64_t>(wl.table.size()) / (K + 1);
    for (int64_t k = 0; k < K; ++k) wl.table.push_back(pv.in[k]);
    wl.table.push_back(with_out ? pv.out : nullptr);
    WideItem base{};
    base.row = row;
    base.flags = gram_mask != nullptr && !gram_mask[p] ? kNotInGram : 0u;
    base.aligned = aligned ? 1u : 0u;
    append_chunks(base, pv.numel, chunk, &by_dtype[pv.dtype]);
  }
  append_groups(by_dtype, &wl.items, &wl.groups);
  return wl;
}

// A plan's cached work list: `cached` holds the bytes last uploaded (cached_bytes of them) and the
// device copy has room for device_bytes. Items equal to the cached ones (the same tensors at the same
// addresses) reuse the device copy: no upload and no allocation, which a captured CUDA graph needs.
inline bool cache_hit(const void* cached, int64_t cached_bytes, int64_t device_bytes, const HostWorkList& wl) {
  const int64_t bytes = wl.bytes();
  return cached != nullptr && bytes > 0 && cached_bytes == bytes && device_bytes >= bytes &&
         std::memcmp(cached, wl.items.data(), static_cast<size_t>(bytes)) == 0;
}

}  // namespace cuda
}  // namespace gh
