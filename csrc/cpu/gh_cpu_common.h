// Element conversion and the work split shared by the CPU kernels.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "gh_tensor_utils.h"

namespace gh {
namespace cpu {

template <typename T>
inline float to_f32(T x) { return static_cast<float>(x); }
template <>
inline float to_f32<c10::BFloat16>(c10::BFloat16 x) {
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;  // exact widening, vectorizes
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Work items: (parameter, start, length), at most kSegment elements each. The split depends
// only on the parameter sizes, and every item owns a fixed slot for its partial sums, so the
// result does not depend on the thread count or on scheduling.
constexpr int64_t kSegment = 1 << 16;

struct Segment {
  int64_t param, start, len;
};

inline std::vector<Segment> make_segments(const std::vector<FlatParam>& params) {
  std::vector<Segment> segs;
  for (int64_t p = 0; p < static_cast<int64_t>(params.size()); ++p)
    for (int64_t s = 0; s < params[p].numel; s += kSegment)
      segs.push_back({p, s, std::min(kSegment, params[p].numel - s)});
  return segs;
}

}  // namespace cpu
}  // namespace gh
