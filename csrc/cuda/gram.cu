// CUDA Gram pass: one block per work item (tensor chunk), all K(K+1)/2 products in float32
// (float64 for float64 gradients)
// (the multi-tensor harness's loop with a Gram functor), a fixed-order block reduction into the
// item's own partial row (column pair_column(a, b), gh_constants.h), and a one-block cleanup
// kernel that sums the rows in float64 in a fixed order. Deterministic: no atomics, and the
// work split depends only on the tensor sizes.
#include "multi_tensor_apply.cuh"

namespace gh {
namespace cuda {
namespace {

template <int K, typename A>
struct Acc {
  static constexpr int NP = K * (K + 1) / 2;
  A s[NP];
  __device__ void zero() {
#pragma unroll
    for (int q = 0; q < NP; ++q) s[q] = A(0);
  }
  __device__ void add(const A* x) {  // x[K]
    int q = 0;
#pragma unroll
    for (int a = 0; a < K; ++a)
#pragma unroll
      for (int b = a; b < K; ++b, ++q) s[q] = fma(x[a], x[b], s[q]);
  }
};

// The harness's functor: all K(K+1)/2 products of one element, accumulated in registers of the
// accumulation type A (float32; float64 for float64 gradients).
template <int K, typename A>
struct GramFunctor {
  static constexpr bool kReadsOut = false;
  static constexpr bool kWritesOut = false;
  Acc<K, A> acc;
  __device__ void operator()(const A (&x)[K], A&) { acc.add(x); }
};

template <typename T, int K>
__global__ void __launch_bounds__(kThreads) gram_partials_kernel(const WorkItem* __restrict__ items, double* __restrict__ partials) {
  using A = typename Vec<T>::Acc;
  using AccK = Acc<K, A>;
  const WorkItem& item = items[blockIdx.x];
  if (item.present & kNotInGram) return;  // its partial row stays zero (memset by the launcher)
  GramFunctor<K, A> f;
  f.acc.zero();
  for_each_element<T, K>(item, f);
  const AccK& acc = f.acc;
  // Fixed-order block reduction: warp shuffles, then warp 0 over the per-warp sums.
  __shared__ A warp_sums[kThreads / 32][AccK::NP];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int q = 0; q < AccK::NP; ++q) {
    A s = acc.s[q];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) warp_sums[warp][q] = s;
  }
  __syncthreads();
  if (warp == 0) {
    double* row = partials + static_cast<int64_t>(blockIdx.x) * kNumPairs;
#pragma unroll
    for (int q = 0; q < AccK::NP; ++q) {
      A s = lane < kThreads / 32 ? warp_sums[lane][q] : A(0);
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
      if (lane == 0) {
        // map the K-local pair index q back to (a, b) and its column
        int a = 0, rem = q;
        while (rem >= K - a) {
          rem -= K - a;
          ++a;
        }
        row[pair_column(a, a + rem)] = static_cast<double>(s);
      }
    }
  }
}

// Threads of the cleanup kernel: its shared buffer is kFinalizeThreads x kNumPairs doubles
// (36 columns for 8 sets: 36 KB), under the 48 KB of static shared memory a block may use.
constexpr int kFinalizeThreads = 128;
static_assert(kFinalizeThreads * kNumPairs * sizeof(double) <= 48 * 1024, "finalize buffer exceeds static shared memory");

template <typename GT>
__global__ void __launch_bounds__(kFinalizeThreads) gram_finalize_kernel(const double* __restrict__ partials, int64_t num_items, int K,
                                                            GT* __restrict__ G) {
  __shared__ double sums[kFinalizeThreads][kNumPairs];
  double local[kNumPairs];
#pragma unroll
  for (int q = 0; q < kNumPairs; ++q) local[q] = 0.0;
  for (int64_t r = threadIdx.x; r < num_items; r += blockDim.x)
#pragma unroll
    for (int q = 0; q < kNumPairs; ++q) local[q] += partials[r * kNumPairs + q];
#pragma unroll
  for (int q = 0; q < kNumPairs; ++q) sums[threadIdx.x][q] = local[q];
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {  // fixed tree order
    if (threadIdx.x < stride)
#pragma unroll
      for (int q = 0; q < kNumPairs; ++q) sums[threadIdx.x][q] += sums[threadIdx.x + stride][q];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    for (int a = 0; a < K; ++a)
      for (int b = a; b < K; ++b) {
        const GT v = static_cast<GT>(sums[0][pair_column(a, b)]);
        G[a * K + b] = v;
        G[b * K + a] = v;
      }
  }
}

}  // namespace

cudaError_t launch_gram_partials(const WorkItem* items, int64_t num_items, int num_sets, int dtype, double* partials,
                                 cudaStream_t stream) {
  if (num_items <= 0) return cudaSuccess;
  // Unused columns (pairs beyond num_sets) must read as zero in the cleanup kernel.
  cudaError_t err = cudaMemsetAsync(partials, 0, sizeof(double) * kNumPairs * num_items, stream);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(num_items)), block(kThreads);
  return dispatch_dtype_and_sets(dtype, num_sets, [&](auto type, auto sets) {
    gram_partials_kernel<typename decltype(type)::type, decltype(sets)::value><<<grid, block, 0, stream>>>(items, partials);
    return cudaGetLastError();
  });
}

cudaError_t launch_gram_finalize(const double* partials, int64_t num_items, int num_sets, void* G, bool G_is_f64,
                                 cudaStream_t stream) {
  if (G_is_f64)
    gram_finalize_kernel<double><<<1, kFinalizeThreads, 0, stream>>>(partials, num_items, num_sets, static_cast<double*>(G));
  else
    gram_finalize_kernel<float><<<1, kFinalizeThreads, 0, stream>>>(partials, num_items, num_sets, static_cast<float*>(G));
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gh
