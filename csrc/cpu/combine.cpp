// CPU combine kernel: out = sum_k w[k] * x_k (+ out) for any K, one fused in-place pass, float32 math
// (float64 for float64 gradients).
// Each element is read before it is written, so out may be one of the inputs. With a `nonfinite` flag the
// pass also reports whether it wrote a non-finite value (NOTE: [Non-finite flag of the combine]).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "gh_cpu_common.h"
#include "ops_cpu.h"

namespace gh {
namespace cpu {
namespace {

// The smallest magnitude of the accumulation type that rounds to inf when stored as T.
template <typename T>
constexpr acc_t<T> overflow_limit() { return std::numeric_limits<acc_t<T>>::infinity(); }
template <>
constexpr float overflow_limit<c10::Half>() { return 65520.0f; }  // halfway above 65504
template <>
constexpr float overflow_limit<c10::BFloat16>() { return 0x1.ffp127f; }  // halfway above the largest bf16

// |x| as signed integer bits: ordered as |x| for finite values, inf above them, NaN above inf.
inline int32_t magnitude_bits(float x) {
  int32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b & 0x7fffffff;
}
inline int64_t magnitude_bits(double x) {
  int64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b & 0x7fffffffffffffffll;
}

// Returns whether a written value is non-finite (NOTE: [Non-finite flag of the combine]): per element one integer
// compare of |s|'s bits with the overflow limit's and an OR, which vectorize with the combine (a float reduction
// or std::isfinite would not: the loop ran 3-9x slower): no extra pass.
template <typename T, int M>
bool combine_segment(T* out, const T* const* x, const acc_t<T>* w, int64_t n, bool accumulate) {
  using A = acc_t<T>;
  const auto limit = magnitude_bits(overflow_limit<T>());
  int bad = 0;
  if (accumulate) {
    for (int64_t i = 0; i < n; ++i) {
      A s = to_acc(out[i]);
      for (int k = 0; k < M; ++k) s += w[k] * to_acc(x[k][i]);
      out[i] = static_cast<T>(s);
      bad |= magnitude_bits(s) >= limit;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      A s = 0;
      for (int k = 0; k < M; ++k) s += w[k] * to_acc(x[k][i]);
      out[i] = static_cast<T>(s);
      bad |= magnitude_bits(s) >= limit;
    }
  }
  return bad != 0;
}

// acc[i] += sum_k w[k] x_k[i] over M sets, in set order (the order of combine_segment's sum).
template <typename T, int M>
void accumulate_sets(acc_t<T>* __restrict__ acc, const T* const* x, const acc_t<T>* w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    acc_t<T> s = acc[i];
    for (int k = 0; k < M; ++k) s += w[k] * to_acc(x[k][i]);
    acc[i] = s;
  }
}

// NOTE: [Wide combine tile]: above kMaxSets present sets, each tile of kCombineTile elements is summed into an
// L1-resident accumulator (float32; float64 for float64 gradients) kMaxSets sets at a time, then written once:
// every gradient element is read once and out is written once, the per-element sum runs in the same order as
// combine_segment's (out, then set 0, 1, ...), and out may still be one of the inputs (a tile's inputs are all
// read before its out is written).
constexpr int64_t kCombineTile = 1024;

template <typename T>
bool combine_wide(T* out, const T* const* x, const acc_t<T>* w, int m, int64_t n, bool accumulate) {
  using A = acc_t<T>;
  const auto limit = magnitude_bits(overflow_limit<T>());
  alignas(64) A acc[kCombineTile];
  int bad = 0;
  for (int64_t t0 = 0; t0 < n; t0 += kCombineTile) {
    const int64_t len = std::min(kCombineTile, n - t0);
    for (int64_t i = 0; i < len; ++i) acc[i] = accumulate ? to_acc(out[t0 + i]) : A(0);
    for (int k0 = 0; k0 < m; k0 += kMaxSets) {
      const T* rows[kMaxSets];
      const int g = std::min(kMaxSets, m - k0);
      for (int k = 0; k < g; ++k) rows[k] = x[k0 + k] + t0;
      switch (g) {
        case 1: accumulate_sets<T, 1>(acc, rows, w + k0, len); break;
        case 2: accumulate_sets<T, 2>(acc, rows, w + k0, len); break;
        case 3: accumulate_sets<T, 3>(acc, rows, w + k0, len); break;
        case 4: accumulate_sets<T, 4>(acc, rows, w + k0, len); break;
        case 5: accumulate_sets<T, 5>(acc, rows, w + k0, len); break;
        case 6: accumulate_sets<T, 6>(acc, rows, w + k0, len); break;
        case 7: accumulate_sets<T, 7>(acc, rows, w + k0, len); break;
        default: accumulate_sets<T, 8>(acc, rows, w + k0, len); break;
      }
    }
    for (int64_t i = 0; i < len; ++i) {
      out[t0 + i] = static_cast<T>(acc[i]);
      bad |= magnitude_bits(acc[i]) >= limit;
    }
  }
  return bad != 0;
}

template <typename T>
bool combine_item(const FlatParam& fp, const Segment& s, int64_t K, const double* weights, bool accumulate) {
  c10::SmallVector<const T*, kMaxSets> x;  // inline up to kMaxSets: no allocation per item on the common path
  c10::SmallVector<acc_t<T>, kMaxSets> w;
  for (int k = 0; k < K; ++k)
    if (fp.in[k] != nullptr) {
      x.push_back(static_cast<const T*>(fp.in[k]) + s.start);
      w.push_back(static_cast<acc_t<T>>(weights[k]));
    }
  const int m = static_cast<int>(x.size());
  T* out = static_cast<T*>(fp.out) + s.start;
  switch (m) {
    case 0: return combine_segment<T, 0>(out, x.data(), w.data(), s.len, accumulate);
    case 1: return combine_segment<T, 1>(out, x.data(), w.data(), s.len, accumulate);
    case 2: return combine_segment<T, 2>(out, x.data(), w.data(), s.len, accumulate);
    case 3: return combine_segment<T, 3>(out, x.data(), w.data(), s.len, accumulate);
    case 4: return combine_segment<T, 4>(out, x.data(), w.data(), s.len, accumulate);
    case 5: return combine_segment<T, 5>(out, x.data(), w.data(), s.len, accumulate);
    case 6: return combine_segment<T, 6>(out, x.data(), w.data(), s.len, accumulate);
    case 7: return combine_segment<T, 7>(out, x.data(), w.data(), s.len, accumulate);
    case 8: return combine_segment<T, 8>(out, x.data(), w.data(), s.len, accumulate);
    default: return combine_wide<T>(out, x.data(), w.data(), m, s.len, accumulate);  // NOTE: [Wide combine tile]
  }
}
static_assert(kMaxSets == 8, "combine_item lists one case per number of present sets up to kMaxSets");

}  // namespace

void combine_params(std::vector<FlatParam>& params, int64_t K, const double* weights, bool accumulate, int32_t* nonfinite) {
  auto segs = make_segments(params);
  at::parallel_for(0, static_cast<int64_t>(segs.size()), 1, [&](int64_t begin, int64_t end) {
    bool bad = false;
    for (int64_t i = begin; i < end; ++i) {
      const FlatParam& fp = params[segs[i].param];
      dispatch_dtype(fp.dtype, [&](auto tag) { bad |= combine_item<decltype(tag)>(fp, segs[i], K, weights, accumulate); });
    }
    // every writer stores the same value: the result does not depend on the threads
    if (bad && nonfinite != nullptr) __atomic_store_n(nonfinite, 1, __ATOMIC_RELAXED);
  });
  finish_out(params);
}

std::vector<double> weights_on_host(const at::Tensor& weights, int64_t num_sets) {
  TORCH_CHECK(weights.device().is_cpu(), "gh_kernels: weights is on ", weights.device(), ", expected CPU");
  TORCH_CHECK(weights.numel() == num_sets, "gh_kernels: weights has ", weights.numel(), " entries, expected num_sets=", num_sets);
  const at::Tensor w = weights.to(at::kDouble).contiguous();
  return std::vector<double>(w.data_ptr<double>(), w.data_ptr<double>() + num_sets);
}

void combine_cpu(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets,
                 const at::Tensor& weights, bool accumulate, const std::optional<at::Tensor>& nonfinite) {
  const std::vector<double> w = weights_on_host(weights, num_sets);
  int32_t* flag = nonfinite_flag(nonfinite, c10::DeviceType::CPU);
  auto params = prepare_params(tensors, num_sets, out, /*with_out=*/true, c10::DeviceType::CPU, /*max_sets=*/kAnySets);
  check_out_aliasing(out, tensors, num_sets);
  combine_params(params, num_sets, w.data(), accumulate, flag);
  bump_versions(out);
}

}  // namespace cpu
}  // namespace gh
