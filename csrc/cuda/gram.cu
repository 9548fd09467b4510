// CUDA Gram pass: one block per work item (tensor chunk), all K(K+1)/2 products in float32
// (float64 for float64 gradients)
// (the multi-tensor harness's loop with a Gram functor), a fixed-order block reduction into the
// item's own partial row (column pair_column(a, b), gh_constants.h), and a one-block cleanup
// kernel that sums the rows in float64 in a fixed order. Deterministic: no atomics, and the
// work split depends only on the tensor sizes. Above kMaxSets sets: NOTE: [Wide Gram block].
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

// NOTE: [Wide Gram block]: above kMaxSets sets (wide work list, gh_worklist.h) the K(K+1)/2 products do not fit
// one thread's registers. A block stages kWideGramTile elements of all K sets in shared memory (one read of each
// gradient element), and thread t owns a 4 x 4 block of pairs (task t / lanes of the nb(nb+1)/2 blocks of the
// upper triangle, nb = ceil(K / 4)) for the elements lane, lane + lanes, ... of each tile (lanes = kThreads / tasks):
// 5 shared loads per 16 multiply-adds in the accumulation type, added into float64 after each tile (so a float32
// sum runs over at most kWideGramTile products, however few lanes a large K leaves). After the last tile the
// lanes of a task are summed in lane order (float64) by lane 0 into the item's row (pair q(a, b) = a K - a(a - 1)/2 + b - a, K(K+1)/2 float64 columns). The cleanup kernel sums
// the rows per pair in item order. Deterministic: the orders depend only on K and the work split.
template <typename T>
__global__ void __launch_bounds__(kThreads) wide_gram_partials_kernel(const WideItem* __restrict__ items,
                                                                     const void* const* __restrict__ table, int K,
                                                                     double* __restrict__ partials) {
  using A = typename Vec<T>::Acc;
  const WideItem& item = items[blockIdx.x];
  const int NP = K * (K + 1) / 2;
  double* row = partials + static_cast<int64_t>(blockIdx.x) * NP;
  if (item.flags & kNotInGram) return;  // its row stays zero (memset by the launcher)
  const void* const* ptrs = table + item.row * (K + 1);
  const int nb = (K + 3) / 4, tasks = nb * (nb + 1) / 2, lanes = kThreads / tasks;
  const int task = threadIdx.x / lanes, lane = threadIdx.x % lanes;
  const bool active = task < tasks;
  int bi = 0, rem = active ? task : 0;  // task -> block (bi, bj), bi <= bj, row-major
  while (rem >= nb - bi) {
    rem -= nb - bi;
    ++bi;
  }
  const int bj = bi + rem;
  // The tile (kMaxWideSets x kWideGramTile values of A), then, after the last tile, the per-thread sums
  // (kThreads x 16 float64).
  __shared__ double smem[kThreads * 16];
  static_assert(kMaxWideSets * kWideGramTile * sizeof(A) <= sizeof(smem), "the tile and the per-thread sums share one buffer");
  A* tile = reinterpret_cast<A*>(smem);
  double total[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) total[i][j] = 0.0;
  const int rows = nb * 4;
  for (int64_t t0 = 0; t0 < item.len; t0 += kWideGramTile) {
    for (int idx = threadIdx.x; idx < rows * kWideGramTile; idx += kThreads) {
      const int k = idx / kWideGramTile, e = idx % kWideGramTile;
      const void* p = k < K ? ptrs[k] : nullptr;
      tile[idx] = p != nullptr && t0 + e < item.len ? Vec<T>::to_f(static_cast<const T*>(p)[item.start + t0 + e]) : A(0);
    }
    __syncthreads();
    if (active) {
      A acc[4][4];  // this tile's products (at most kWideGramTile / lanes per accumulator), then into float64
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = A(0);
      for (int e = lane; e < kWideGramTile; e += lanes) {
        A a[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = tile[(bi * 4 + i) * kWideGramTile + e];
#pragma unroll
        for (int j = 0; j < 4; ++j) {  // one b value live at a time (a float64 b[4] spilled on sm_80)
          const A b = tile[(bj * 4 + j) * kWideGramTile + e];
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[i][j] = fma(a[i], b, acc[i][j]);
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) total[i][j] += static_cast<double>(acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) smem[threadIdx.x * 16 + i * 4 + j] = total[i][j];
  __syncthreads();
  if (active && lane == 0)
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int a = bi * 4 + i, b = bj * 4 + j;
        if (a >= K || b >= K || b < a) continue;
        double s = 0.0;
        for (int l = 0; l < lanes; ++l) s += smem[(threadIdx.x + l) * 16 + i * 4 + j];
        row[wide_pair_column(a, b, K)] = s;
      }
}

constexpr int kWideFinalizeThreads = 128;

// One thread per pair: the item rows summed in item order (float64), then G[a][b] = G[b][a].
template <typename GT>
__global__ void __launch_bounds__(kWideFinalizeThreads) wide_gram_finalize_kernel(const double* __restrict__ partials,
                                                                                  int64_t num_items, int K, GT* __restrict__ G) {
  const int NP = K * (K + 1) / 2;
  const int q = blockIdx.x * kWideFinalizeThreads + threadIdx.x;
  if (q >= NP) return;
  double s = 0.0;
  for (int64_t r = 0; r < num_items; ++r) s += partials[r * NP + q];
  int a = 0, rem = q;
  while (rem >= K - a) {
    rem -= K - a;
    ++a;
  }
  const int b = a + rem;
  G[a * K + b] = static_cast<GT>(s);
  G[b * K + a] = static_cast<GT>(s);
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

cudaError_t launch_wide_gram_partials(const WideItem* items, const void* const* table, int64_t num_items, int num_sets,
                                      int dtype, double* partials, cudaStream_t stream) {
  if (num_items <= 0) return cudaSuccess;
  if (num_sets < 1 || num_sets > kMaxWideSets) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(partials, 0, sizeof(double) * wide_pairs(num_sets) * num_items, stream);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(num_items)), block(kThreads);
  switch (dtype) {
    case kFloat32: wide_gram_partials_kernel<float><<<grid, block, 0, stream>>>(items, table, num_sets, partials); break;
    case kBFloat16: wide_gram_partials_kernel<__nv_bfloat16><<<grid, block, 0, stream>>>(items, table, num_sets, partials); break;
    case kFloat16: wide_gram_partials_kernel<__half><<<grid, block, 0, stream>>>(items, table, num_sets, partials); break;
    case kFloat64: wide_gram_partials_kernel<double><<<grid, block, 0, stream>>>(items, table, num_sets, partials); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_wide_gram_finalize(const double* partials, int64_t num_items, int num_sets, void* G, bool G_is_f64,
                                      cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((wide_pairs(num_sets) + kWideFinalizeThreads - 1) / kWideFinalizeThreads));
  if (G_is_f64)
    wide_gram_finalize_kernel<double><<<grid, kWideFinalizeThreads, 0, stream>>>(partials, num_items, num_sets, static_cast<double*>(G));
  else
    wide_gram_finalize_kernel<float><<<grid, kWideFinalizeThreads, 0, stream>>>(partials, num_items, num_sets, static_cast<float*>(G));
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gh
