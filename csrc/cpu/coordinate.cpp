// CPU per-coordinate pass (op coordinate_): TrimmedMean and GradDrop per element, one fused pass over
// the K gradient sets into out (+ out), float32 math (float64 for float64 gradients). The harness is the
// combine's (prepare_params, make_segments, parallel_for over fixed segments); this file is the two
// per-element rules. Each element is read before it is written, so out may be one of the inputs.
// Rules and order follow torchjd 0.18 (gh_kernels/weighting/coordinate.py); see NOTE: [Trimmed
// non-finite] there for why a non-finite value makes its coordinate NaN.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "gh_cpu_common.h"
#include "ops_cpu.h"

namespace gh {
namespace cpu {
namespace {

// The mean of v without its `trim` smallest and `trim` largest values: an insertion sort in registers
// (ascending, as torch.sort orders finite values), then the kept values summed in that order.
template <typename A, int K>
inline A trimmed_mean(A (&v)[K], int trim) {
  A total = 0;
  for (int k = 0; k < K; ++k) total += v[k];
  for (int i = 1; i < K; ++i) {
    const A x = v[i];
    int j = i - 1;
    for (; j >= 0 && v[j] > x; --j) v[j + 1] = v[j];
    v[j + 1] = x;
  }
  A kept = 0;
  for (int k = trim; k < K - trim; ++k) kept += v[k];
  return kept / static_cast<A>(K - 2 * trim) + static_cast<A>(0) * total;  // NaN when a value is not finite
}

// GradDrop (lines 10-15 of Chen et al.'s Alg. 1): g holds the K gradients' values, u the draw.
template <typename A, int K>
inline A graddrop(const A (&g)[K], A u, const A* leak) {
  A sum = 0, abs_sum = 0;
  for (int k = 0; k < K; ++k) sum += g[k];
  for (int k = 0; k < K; ++k) abs_sum += std::abs(g[k]);
  const A purity = static_cast<A>(0.5) * (static_cast<A>(1) + sum / abs_sum);
  A y = 0;
  for (int k = 0; k < K; ++k) {
    const bool kept = (purity > u && g[k] > 0) || (purity < u && g[k] < 0);
    y += (leak[k] + (static_cast<A>(1) - leak[k]) * static_cast<A>(kept)) * g[k];
  }
  return y;
}

// One segment with S sets present in the kernel's layout (K = S for TrimmedMean; S - 1 for GradDrop,
// whose last set is the draws). A set without a gradient reads as zeros, as in a stacked Jacobian.
template <typename T, int S>
void coordinate_segment(const FlatParam& fp, const Segment& s, int rule, int trim, const acc_t<T>* leak, bool accumulate) {
  using A = acc_t<T>;
  const T* x[S];
  for (int k = 0; k < S; ++k) x[k] = fp.in[k] == nullptr ? nullptr : static_cast<const T*>(fp.in[k]) + s.start;
  T* out = static_cast<T*>(fp.out) + s.start;
  constexpr int K = S > 1 ? S - 1 : 1;  // GradDrop's gradient sets
  for (int64_t i = 0; i < s.len; ++i) {
    A y;
    if (rule == kCoordinateTrimmedMean) {
      A v[S];
      for (int k = 0; k < S; ++k) v[k] = x[k] == nullptr ? A(0) : to_acc(x[k][i]);
      y = trimmed_mean<A, S>(v, trim);
    } else {
      A g[K];
      for (int k = 0; k < K; ++k) g[k] = x[k] == nullptr ? A(0) : to_acc(x[k][i]);
      y = graddrop<A, K>(g, to_acc(x[S - 1][i]), leak);
    }
    out[i] = static_cast<T>(accumulate ? to_acc(out[i]) + y : y);
  }
}

template <typename T>
void coordinate_item(const FlatParam& fp, const Segment& s, int64_t num_sets, int rule, int trim, const double* leak,
                     bool accumulate) {
  acc_t<T> lk[kMaxSets] = {};
  if (rule == kCoordinateGradDrop)
    for (int k = 0; k + 1 < num_sets; ++k) lk[k] = static_cast<acc_t<T>>(leak[k]);
  switch (num_sets) {
    case 1: coordinate_segment<T, 1>(fp, s, rule, trim, lk, accumulate); break;
    case 2: coordinate_segment<T, 2>(fp, s, rule, trim, lk, accumulate); break;
    case 3: coordinate_segment<T, 3>(fp, s, rule, trim, lk, accumulate); break;
    case 4: coordinate_segment<T, 4>(fp, s, rule, trim, lk, accumulate); break;
    case 5: coordinate_segment<T, 5>(fp, s, rule, trim, lk, accumulate); break;
    case 6: coordinate_segment<T, 6>(fp, s, rule, trim, lk, accumulate); break;
    case 7: coordinate_segment<T, 7>(fp, s, rule, trim, lk, accumulate); break;
    default: coordinate_segment<T, 8>(fp, s, rule, trim, lk, accumulate); break;
  }
}
static_assert(kMaxSets == 8, "coordinate_item lists one case per supported number of sets");

}  // namespace

void coordinate_cpu(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets,
                    c10::string_view rule, int64_t trim, const std::optional<at::Tensor>& leak, bool accumulate) {
  int code = -1;
  for (int r = 0; r < kNumCoordinateRules; ++r)
    if (rule == kCoordinateRuleNames[r]) code = r;
  TORCH_CHECK(code >= 0, "gh_kernels: rule must be 'trimmed-mean' or 'graddrop'; got '", std::string(rule), "'");
  TORCH_CHECK(code != kCoordinateTrimmedMean || (trim >= 0 && 2 * trim < num_sets), "gh_kernels: trim must satisfy 0 <= 2 * trim < ",
              num_sets, "; got ", trim);
  std::vector<double> lk;
  if (code == kCoordinateGradDrop) {
    TORCH_CHECK(num_sets >= 2, "gh_kernels: graddrop takes the K gradient sets and the draws (num_sets >= 2)");
    TORCH_CHECK(leak.has_value() && leak->defined(), "gh_kernels: graddrop needs leak (K values)");
    lk = weights_on_host(*leak, num_sets - 1);
  }
  if (out.empty()) return;
  auto params = prepare_params(tensors, num_sets, out, /*with_out=*/true, c10::DeviceType::CPU);
  check_out_aliasing(out, tensors, num_sets);
  if (code == kCoordinateGradDrop)
    for (size_t p = 0; p < params.size(); ++p)
      TORCH_CHECK(params[p].numel == 0 || params[p].in[num_sets - 1] != nullptr, "gh_kernels: graddrop's draws (the last set) "
                  "miss parameter ", p);
  auto segs = make_segments(params);
  at::parallel_for(0, static_cast<int64_t>(segs.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const FlatParam& fp = params[segs[i].param];
      dispatch_dtype(fp.dtype, [&](auto tag) {
        coordinate_item<decltype(tag)>(fp, segs[i], num_sets, code, static_cast<int>(trim), lk.data(), accumulate);
      });
    }
  });
  finish_out(params);
  bump_versions(out);
}

}  // namespace cpu
}  // namespace gh
