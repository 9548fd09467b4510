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

// NOTE: [Wide work list] (gh_worklist.h): above kMaxSets sets each thread reads the sets' pointers from the
// item's table row, the weights from shared memory, and sums its elements over the K sets in set order, with
// fma(w_k, x_k, y) from 0 or from out as combine_kernel does (an absent set is x_k = 0): each gradient element
// is read once and out written once.
template <typename T, bool ACCUMULATE>
__global__ void __launch_bounds__(kThreads) wide_combine_kernel(const WideItem* __restrict__ items,
                                                                const void* const* __restrict__ table, int K,
                                                                const double* __restrict__ weights, int* nonfinite) {
  using A = typename Vec<T>::Acc;
  const WideItem& item = items[blockIdx.x];
  const void* const* ptrs = table + item.row * (K + 1);
  T* out = static_cast<T*>(const_cast<void*>(ptrs[K])) + item.start;
  __shared__ A w[kMaxWideSets];
  __shared__ const T* x[kMaxWideSets];
  for (int k = threadIdx.x; k < K; k += kThreads) {
    w[k] = static_cast<A>(weights[k]);
    x[k] = ptrs[k] != nullptr ? static_cast<const T*>(ptrs[k]) + item.start : nullptr;
  }
  __syncthreads();
  typename MagnitudeBits<A>::type worst = 0;
  for (int64_t i = threadIdx.x; i < item.len; i += kThreads) {
    A y = ACCUMULATE ? Vec<T>::to_f(out[i]) : A(0);
    for (int k = 0; k < K; ++k) y = fma(w[k], x[k] != nullptr ? Vec<T>::to_f(x[k][i]) : A(0), y);
    out[i] = Vec<T>::from_f(y);
    const auto bits = MagnitudeBits<A>::of(y);
    worst = bits > worst ? bits : worst;
  }
  if (nonfinite != nullptr && worst >= MagnitudeBits<A>::of(Vec<T>::kOverflow)) *nonfinite = 1;
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

cudaError_t launch_wide_combine(const WideItem* items, const void* const* table, int64_t num_items, int num_sets,
                                int dtype, const double* weights, bool accumulate, int* nonfinite, cudaStream_t stream) {
  if (num_items <= 0) return cudaSuccess;
  if (num_sets < 1 || num_sets > kMaxWideSets) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(num_items)), block(kThreads);
  auto go = [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (accumulate)
      wide_combine_kernel<T, true><<<grid, block, 0, stream>>>(items, table, num_sets, weights, nonfinite);
    else
      wide_combine_kernel<T, false><<<grid, block, 0, stream>>>(items, table, num_sets, weights, nonfinite);
    return cudaGetLastError();
  };
  switch (dtype) {
    case kFloat32: return go(TypeTag<float>{});
    case kBFloat16: return go(TypeTag<__nv_bfloat16>{});
    case kFloat16: return go(TypeTag<__half>{});
    case kFloat64: return go(TypeTag<double>{});
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace cuda
}  // namespace gh
