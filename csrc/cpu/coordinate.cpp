// CPU per-coordinate pass (op coordinate_): TrimmedMean and GradDrop per element, one fused pass over
// the K gradient sets into out (+ out), float32 math (float64 for float64 gradients). The harness is the
// combine's (prepare_params, make_segments, parallel_for over fixed segments); this file is the two
// per-element rules. Each element is read before it is written, so out may be one of the inputs.
// Rules and order follow torchjd 0.18 (gh_kernels/weighting/coordinate.py); see NOTE: [Trimmed
// non-finite] there for why a non-finite value makes its coordinate NaN.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "gh_cpu_common.h"
#include "ops_cpu.h"

namespace gh {
namespace cpu {
namespace {

// The per-set loops are unrolled (#pragma GCC unroll) and the per-element functions forced inline, so
// that the element loop is straight-line code GCC vectorizes (without them GCC leaves a call or a loop
// nest per element, 3-10x slower).
#define GH_ALWAYS_INLINE inline __attribute__((always_inline))
// An absent set reads as zeros (as in a stacked Jacobian) from this buffer: all-zero bytes are 0 in every
// supported dtype, and a segment is at most kSegment elements of at most 8 bytes. The element loop then
// has no per-set branch, and GCC vectorizes it.
alignas(64) const double kZeros[kSegment] = {};

// The mean of v without its `trim` smallest and `trim` largest values: a branch-free compare-exchange
// network (min/max, fully unrolled for the compile-time S), then the kept values summed in ascending
// order -- the order torch.sort gives finite values.
template <typename A, int S>
GH_ALWAYS_INLINE A trimmed_mean(A (&v)[S], int trim) {
  A total = 0;
  #pragma GCC unroll 8
  for (int k = 0; k < S; ++k) total += v[k];
  #pragma GCC unroll 8
  for (int a = 0; a < S - 1; ++a)
    #pragma GCC unroll 8
    for (int b = 0; b < S - 1 - a; ++b) {
      const A lo = std::min(v[b], v[b + 1]), hi = std::max(v[b], v[b + 1]);
      v[b] = lo;
      v[b + 1] = hi;
    }
  A kept = 0;
  #pragma GCC unroll 8
  for (int k = 0; k < S; ++k) kept += (k >= trim && k < S - trim) ? v[k] : A(0);
  return kept / static_cast<A>(S - 2 * trim) + static_cast<A>(0) * total;  // NaN when a value is not finite
}

// GradDrop (lines 10-15 of Chen et al.'s Alg. 1): g holds the K gradients' values, u the draw.
template <typename A, int K>
GH_ALWAYS_INLINE A graddrop(const A (&g)[K], A u, const A* leak) {
  A sum = 0, abs_sum = 0;
  #pragma GCC unroll 8
  for (int k = 0; k < K; ++k) sum += g[k];
  #pragma GCC unroll 8
  for (int k = 0; k < K; ++k) abs_sum += std::abs(g[k]);
  const A purity = static_cast<A>(0.5) * (static_cast<A>(1) + sum / abs_sum);
  // Selects, not branches: the element loop stays vectorizable. NaN purity (all zeros) keeps nothing.
  const A up = purity > u ? static_cast<A>(1) : static_cast<A>(0);
  const A down = purity < u ? static_cast<A>(1) : static_cast<A>(0);
  A y = 0;
  #pragma GCC unroll 8
  for (int k = 0; k < K; ++k) {
    const A kept = g[k] > 0 ? up : (g[k] < 0 ? down : static_cast<A>(0));
    y += (leak[k] + (static_cast<A>(1) - leak[k]) * kept) * g[k];
  }
  return y;
}

// One segment with S sets in the kernel's layout (K = S for TrimmedMean; S - 1 for GradDrop, whose last
// set is the draws).
template <typename T, int S, int RULE, bool ACCUMULATE>
void coordinate_segment(const FlatParam& fp, const Segment& s, int trim, const acc_t<T>* leak) {
  using A = acc_t<T>;
  const T* x[S];
  #pragma GCC unroll 8
  for (int k = 0; k < S; ++k)
    x[k] = fp.in[k] == nullptr ? reinterpret_cast<const T*>(kZeros) : static_cast<const T*>(fp.in[k]) + s.start;
  T* out = static_cast<T*>(fp.out) + s.start;
  constexpr int K = S > 1 ? S - 1 : 1;  // GradDrop's gradient sets
  A lk[K];
  #pragma GCC unroll 8
  for (int k = 0; k < K; ++k) lk[k] = leak[k];
  for (int64_t i = 0; i < s.len; ++i) {
    A y;
    if (RULE == kCoordinateTrimmedMean) {
      A v[S];
      #pragma GCC unroll 8
      for (int k = 0; k < S; ++k) v[k] = to_acc(x[k][i]);
      y = trimmed_mean<A, S>(v, trim);
    } else {
      A g[K];
      #pragma GCC unroll 8
      for (int k = 0; k < K; ++k) g[k] = to_acc(x[k][i]);
      y = graddrop<A, K>(g, to_acc(x[S - 1][i]), lk);
    }
    out[i] = static_cast<T>(ACCUMULATE ? to_acc(out[i]) + y : y);
  }
}

template <typename T, int S>
void coordinate_sets(const FlatParam& fp, const Segment& s, int rule, int trim, const acc_t<T>* leak, bool accumulate) {
  if (rule == kCoordinateTrimmedMean)
    accumulate ? coordinate_segment<T, S, kCoordinateTrimmedMean, true>(fp, s, trim, leak)
               : coordinate_segment<T, S, kCoordinateTrimmedMean, false>(fp, s, trim, leak);
  else
    accumulate ? coordinate_segment<T, S, kCoordinateGradDrop, true>(fp, s, trim, leak)
               : coordinate_segment<T, S, kCoordinateGradDrop, false>(fp, s, trim, leak);
}

template <typename T>
void coordinate_item(const FlatParam& fp, const Segment& s, int64_t num_sets, int rule, int trim, const double* leak,
                     bool accumulate) {
  acc_t<T> lk[kMaxSets] = {};
  if (rule == kCoordinateGradDrop)
    for (int k = 0; k + 1 < num_sets; ++k) lk[k] = static_cast<acc_t<T>>(leak[k]);
  switch (num_sets) {
    case 1: coordinate_sets<T, 1>(fp, s, rule, trim, lk, accumulate); break;
    case 2: coordinate_sets<T, 2>(fp, s, rule, trim, lk, accumulate); break;
    case 3: coordinate_sets<T, 3>(fp, s, rule, trim, lk, accumulate); break;
    case 4: coordinate_sets<T, 4>(fp, s, rule, trim, lk, accumulate); break;
    case 5: coordinate_sets<T, 5>(fp, s, rule, trim, lk, accumulate); break;
    case 6: coordinate_sets<T, 6>(fp, s, rule, trim, lk, accumulate); break;
    case 7: coordinate_sets<T, 7>(fp, s, rule, trim, lk, accumulate); break;
    default: coordinate_sets<T, 8>(fp, s, rule, trim, lk, accumulate); break;
  }
}
static_assert(kMaxSets == 8, "coordinate_item lists one case per supported number of sets");

}  // namespace

void coordinate_cpu(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets,
                    c10::string_view rule, int64_t trim, const std::optional<at::Tensor>& leak, bool accumulate) {
  const int code = coordinate_rule_code(rule);
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
