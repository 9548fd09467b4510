// CUDA Gram pass: one block per work item (tensor chunk), all K(K+1)/2 products in float32,
// 16-byte loads with kUnroll vectors in flight, a fixed-order block reduction into the item's
// own partial row, and a one-block cleanup kernel that sums the rows in float64 in a fixed
// order. Deterministic: no atomics, and the work split depends only on the tensor sizes.
#include "gh_cuda_vec.cuh"

namespace gh {
namespace cuda {
namespace {

template <int K>
struct Acc {
  static constexpr int NP = K * (K + 1) / 2;
  float s[NP];
  __device__ void zero() {
#pragma unroll
    for (int q = 0; q < NP; ++q) s[q] = 0.0f;
  }
  __device__ void add(const float* x) {  // x[K]
    int q = 0;
#pragma unroll
    for (int a = 0; a < K; ++a)
#pragma unroll
      for (int b = a; b < K; ++b, ++q) s[q] = fmaf(x[a], x[b], s[q]);
  }
};

// Column of pair (a, b), a <= b, in the K = 4 layout of the partial rows.
__host__ __device__ constexpr int pair_column(int a, int b) { return a * 4 - a * (a - 1) / 2 + (b - a); }

template <typename T, int K>
__global__ void __launch_bounds__(kThreads) gram_partials_kernel(const WorkItem* __restrict__ items, float* __restrict__ partials) {
  const WorkItem item = items[blockIdx.x];
  const T* x[K];
  bool has[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    x[k] = static_cast<const T*>(item.in[k]) + item.start;
    has[k] = (item.present >> k) & 1u;
  }
  Acc<K> acc;
  acc.zero();
  constexpr int V = Vec<T>::N;
  int64_t scalar_from = 0;
  if (item.aligned) {
    const int64_t nvec = item.len / V;
    int64_t v = threadIdx.x;
    for (; v + (kUnroll - 1) * kThreads < nvec; v += kUnroll * kThreads) {
      float buf[kUnroll][K][V];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
#pragma unroll
        for (int k = 0; k < K; ++k) Vec<T>::load(x[k] + (v + u * kThreads) * V, buf[u][k]);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
#pragma unroll
        for (int e = 0; e < V; ++e) {
          float val[K];
#pragma unroll
          for (int k = 0; k < K; ++k) val[k] = has[k] ? buf[u][k][e] : 0.0f;
          acc.add(val);
        }
    }
    for (; v < nvec; v += kThreads) {
      float buf[K][V];
#pragma unroll
      for (int k = 0; k < K; ++k) Vec<T>::load(x[k] + v * V, buf[k]);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        float val[K];
#pragma unroll
        for (int k = 0; k < K; ++k) val[k] = has[k] ? buf[k][e] : 0.0f;
        acc.add(val);
      }
    }
    scalar_from = nvec * V;
  }
  for (int64_t i = scalar_from + threadIdx.x; i < item.len; i += kThreads) {
    float val[K];
#pragma unroll
    for (int k = 0; k < K; ++k) val[k] = has[k] ? Vec<T>::to_f(x[k][i]) : 0.0f;
    acc.add(val);
  }
  // Fixed-order block reduction: warp shuffles, then warp 0 over the per-warp sums.
  __shared__ float warp_sums[kThreads / 32][Acc<K>::NP];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int q = 0; q < Acc<K>::NP; ++q) {
    float s = acc.s[q];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) warp_sums[warp][q] = s;
  }
  __syncthreads();
  if (warp == 0) {
    float* row = partials + static_cast<int64_t>(blockIdx.x) * kNumPairs;
#pragma unroll
    for (int q = 0; q < Acc<K>::NP; ++q) {
      float s = lane < kThreads / 32 ? warp_sums[lane][q] : 0.0f;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
      if (lane == 0) {
        // map the K-local pair index q back to (a, b) and its K = 4 column
        int a = 0, rem = q;
        while (rem >= K - a) {
          rem -= K - a;
          ++a;
        }
        row[pair_column(a, a + rem)] = s;
      }
    }
  }
}

__global__ void __launch_bounds__(512) gram_finalize_kernel(const float* __restrict__ partials, int64_t num_items, int K,
                                                            float* __restrict__ G) {
  __shared__ double sums[512][kNumPairs];
  double local[kNumPairs];
#pragma unroll
  for (int q = 0; q < kNumPairs; ++q) local[q] = 0.0;
  for (int64_t r = threadIdx.x; r < num_items; r += blockDim.x)
#pragma unroll
    for (int q = 0; q < kNumPairs; ++q) local[q] += static_cast<double>(partials[r * kNumPairs + q]);
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
        const float v = static_cast<float>(sums[0][pair_column(a, b)]);
        G[a * K + b] = v;
        G[b * K + a] = v;
      }
  }
}

template <typename T>
cudaError_t launch_typed(const WorkItem* items, int64_t n, int K, float* partials, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>(n)), block(kThreads);
  switch (K) {
    case 1: gram_partials_kernel<T, 1><<<grid, block, 0, s>>>(items, partials); break;
    case 2: gram_partials_kernel<T, 2><<<grid, block, 0, s>>>(items, partials); break;
    case 3: gram_partials_kernel<T, 3><<<grid, block, 0, s>>>(items, partials); break;
    case 4: gram_partials_kernel<T, 4><<<grid, block, 0, s>>>(items, partials); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_gram_partials(const WorkItem* items, int64_t num_items, int num_sets, int dtype, float* partials,
                                 cudaStream_t stream) {
  if (num_items <= 0) return cudaSuccess;
  // Unused columns (pairs beyond num_sets) must read as zero in the cleanup kernel.
  cudaError_t err = cudaMemsetAsync(partials, 0, sizeof(float) * kNumPairs * num_items, stream);
  if (err != cudaSuccess) return err;
  switch (dtype) {
    case kFloat32: return launch_typed<float>(items, num_items, num_sets, partials, stream);
    case kBFloat16: return launch_typed<__nv_bfloat16>(items, num_items, num_sets, partials, stream);
    case kFloat16: return launch_typed<__half>(items, num_items, num_sets, partials, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_gram_finalize(const float* partials, int64_t num_items, int num_sets, float* G, cudaStream_t stream) {
  gram_finalize_kernel<<<1, 512, 0, stream>>>(partials, num_items, num_sets, G);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gh
