// Element conversion, accumulation types and the work split shared by the CPU kernels.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "gh_tensor_utils.h"

namespace gh {
namespace cpu {

// Accumulation type: float32 for float32/bfloat16/float16 elements, float64 for float64 ones.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccOf<T>::type;

template <typename T>
inline acc_t<T> to_acc(T x) { return static_cast<acc_t<T>>(x); }
template <>
inline float to_acc<c10::BFloat16>(c10::BFloat16 x) {
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;  // exact widening, vectorizes
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Calls f(T{}) with T the C++ type of a supported gradient dtype.
template <typename F>
inline void dispatch_dtype(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    default: f(c10::Half{}); break;
  }
}

// Work items: (parameter, start, length), at most kSegment elements each. The split depends
// only on the parameter sizes, and every item owns a fixed slot for its partial sums, so the
// result does not depend on the thread count or on scheduling.
constexpr int64_t kSegment = 1 << 16;

struct Segment {
  int64_t param, start, len;
};

// mask (optional, one byte per parameter): only parameters with a nonzero byte get segments.
inline std::vector<Segment> make_segments(const std::vector<FlatParam>& params, const uint8_t* mask = nullptr) {
  std::vector<Segment> segs;
  for (int64_t p = 0; p < static_cast<int64_t>(params.size()); ++p)
    if (mask == nullptr || mask[p])
      for (int64_t s = 0; s < params[p].numel; s += kSegment)
      segs.push_back({p, s, std::min(kSegment, params[p].numel - s)});
  return segs;
}

}  // namespace cpu
}  // namespace gh
