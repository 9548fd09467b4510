// CUDA combine pass: out = sum_k w[k] * in_k (+ out), one block per work item, float32 math (float64
// for float64 gradients),
// weights read from device memory (no host sync). The loop is the multi-tensor harness's; this
// file is the functor and its launcher.
#include "multi_tensor_apply.cuh"

namespace gh {
namespace cuda {
namespace {

// NOTE: [Non-finite flag of the combine] (gh_tensor_utils.h): `worst` keeps the largest magnitude this thread
// wrote as integer bits (one integer max per element, no predicate: NaN's bits are above inf's, which are above
// every finite value's), compared once at the end with the magnitude that rounds to inf in T; a thread over it
// stores 1 into the flag.
template <typename T, int K, bool ACCUMULATE, typename A>
struct CombineFunctor {
  static constexpr bool kReadsOut = ACCUMULATE;
  static constexpr bool kWritesOut = true;
  A w[K];
  typename MagnitudeBits<A>::type worst = 0;
  __device__ void operator()(const A (&x)[K], A& y) {
#pragma unroll
    for (int k = 0; k < K; ++k) y = fma(w[k], x[k], y);
    const auto bits = MagnitudeBits<A>::of(y);
    worst = bits > worst ? bits : worst;
  }
  __device__ bool nonfinite() const { return worst >= MagnitudeBits<A>::of(Vec<T>::kOverflow); }
};

template <typename T, int K, bool ACCUMULATE>
__global__ void __launch_bounds__(kThreads) combine_kernel(const WorkItem* __restrict__ items, const double* __restrict__ weights,
                                                           int* nonfinite) {
  using A = typename Vec<T>::Acc;
  CombineFunctor<T, K, ACCUMULATE, A> f;
#pragma unroll
  for (int k = 0; k < K; ++k) f.w[k] = static_cast<A>(weights[k]);  // float64 weights, used in the accumulation type
  for_each_element<T, K>(items[blockIdx.x], f);
  if (nonfinite != nullptr && f.nonfinite()) *nonfinite = 1;  // every writer stores the same value
}

}  // namespace

cudaError_t launch_combine(const WorkItem* items, int64_t num_items, int num_sets, int dtype, const double* weights,
                           bool accumulate, int* nonfinite, cudaStream_t stream) {
  if (num_items <= 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(num_items)), block(kThreads);
  return dispatch_dtype_and_sets(dtype, num_sets, [&](auto type, auto sets) {
    using T = typename decltype(type)::type;
    constexpr int K = decltype(sets)::value;
    if (accumulate)
      combine_kernel<T, K, true><<<grid, block, 0, stream>>>(items, weights, nonfinite);
    else
      combine_kernel<T, K, false><<<grid, block, 0, stream>>>(items, weights, nonfinite);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace gh
