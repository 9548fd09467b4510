// CUDA per-coordinate pass (op coordinate_): TrimmedMean and GradDrop per element, one block per work
// item, float32 math (float64 for float64 gradients). The loop is the multi-tensor harness's
// (multi_tensor_apply.cuh: vector loads, present-bit masking, tail); this file is two functors and
// their launcher. Rules and order follow torchjd 0.18 (gh_kernels/weighting/coordinate.py, and its NOTE:
// [Trimmed non-finite]); the CPU kernel is csrc/cpu/coordinate.cpp.
#include "multi_tensor_apply.cuh"

namespace gh {
namespace cuda {
namespace {

// Values each thread keeps loaded (NOTE: [Vectors in flight]): the sort network and GradDrop's per-set
// selects need registers of their own; with kUnroll = 4 vectors of 8 sets of 16-bit values in flight
// (256 values) the kernels spilled up to 308 bytes per thread.
constexpr int kCoordinateValuesInFlight = 64;

// The mean of the S values without the `trim` smallest and largest: a compare-exchange sort in
// registers (fully unrolled; equal values keep their order), the kept values summed in ascending order.
template <int S, bool ACCUMULATE, typename A>
struct TrimmedMeanFunctor {
  static constexpr bool kReadsOut = ACCUMULATE;
  static constexpr bool kWritesOut = true;
  static constexpr int kMaxValuesInFlight = kCoordinateValuesInFlight;
  int trim;
  __device__ void operator()(const A (&x)[S], A& y) const {
    A v[S];
    A total = A(0);
#pragma unroll
    for (int k = 0; k < S; ++k) {
      v[k] = x[k];
      total += x[k];
    }
#pragma unroll
    for (int i = 1; i < S; ++i)
#pragma unroll
      for (int j = i; j > 0; --j)
        if (v[j - 1] > v[j]) {
          const A t = v[j - 1];
          v[j - 1] = v[j];
          v[j] = t;
        }
    A kept = A(0);
#pragma unroll
    for (int k = 0; k < S; ++k)
      if (k >= trim && k < S - trim) kept += v[k];
    y += kept / static_cast<A>(S - 2 * trim) + A(0) * total;  // NaN when a value is not finite
  }
};

// GradDrop (Chen et al., Alg. 1 lines 10-15): x[0..S-2] are the gradients, x[S-1] the uniform draw.
template <int S, bool ACCUMULATE, typename A>
struct GradDropFunctor {
  static constexpr bool kReadsOut = ACCUMULATE;
  static constexpr bool kWritesOut = true;
  static constexpr int kMaxValuesInFlight = kCoordinateValuesInFlight;
  A leak[S];
  __device__ void operator()(const A (&x)[S], A& y) const {
    constexpr int K = S - 1;
    A sum = A(0), abs_sum = A(0);
#pragma unroll
    for (int k = 0; k < K; ++k) sum += x[k];
#pragma unroll
    for (int k = 0; k < K; ++k) abs_sum += x[k] < A(0) ? -x[k] : x[k];
    const A purity = A(0.5) * (A(1) + sum / abs_sum);
    const A u = x[K];
    A r = A(0);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const bool kept = (purity > u && x[k] > A(0)) || (purity < u && x[k] < A(0));
      r += (leak[k] + (A(1) - leak[k]) * (kept ? A(1) : A(0))) * x[k];
    }
    y += r;
  }
};

template <typename T, int S, bool ACCUMULATE>
__global__ void __launch_bounds__(kThreads) trimmed_mean_kernel(const WorkItem* __restrict__ items, int trim) {
  using A = typename Vec<T>::Acc;
  TrimmedMeanFunctor<S, ACCUMULATE, A> f;
  f.trim = trim;
  for_each_element<T, S>(items[blockIdx.x], f);
}

template <typename T, int S, bool ACCUMULATE>
__global__ void __launch_bounds__(kThreads) graddrop_kernel(const WorkItem* __restrict__ items, const double* __restrict__ leak) {
  using A = typename Vec<T>::Acc;
  GradDropFunctor<S, ACCUMULATE, A> f;
#pragma unroll
  for (int k = 0; k < S; ++k) f.leak[k] = k + 1 < S ? static_cast<A>(leak[k]) : A(0);  // read from device memory: no sync
  for_each_element<T, S>(items[blockIdx.x], f);
}

}  // namespace

cudaError_t launch_coordinate(const WorkItem* items, int64_t num_items, int num_sets, int dtype, int rule, int trim,
                              const double* leak, bool accumulate, cudaStream_t stream) {
  if (num_items <= 0) return cudaSuccess;
  if (rule == kCoordinateGradDrop && num_sets < 2) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(num_items)), block(kThreads);
  return dispatch_dtype_and_sets(dtype, num_sets, [&](auto type, auto sets) {
    using T = typename decltype(type)::type;
    constexpr int S = decltype(sets)::value;
    if (rule == kCoordinateTrimmedMean) {
      if (accumulate)
        trimmed_mean_kernel<T, S, true><<<grid, block, 0, stream>>>(items, trim);
      else
        trimmed_mean_kernel<T, S, false><<<grid, block, 0, stream>>>(items, trim);
    } else if (accumulate) {
      graddrop_kernel<T, S, true><<<grid, block, 0, stream>>>(items, leak);
    } else {
      graddrop_kernel<T, S, false><<<grid, block, 0, stream>>>(items, leak);
    }
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace gh
