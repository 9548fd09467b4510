// CUDA combine pass: out = sum_k w[k] * in_k (+ out), one block per work item, 16-byte
// vectors, float32 math, weights read from device memory (no host sync). Each thread reads
// its elements before writing them, so out may alias an input (no __restrict__ on purpose).
#include "gh_cuda_vec.cuh"

namespace gh {
namespace cuda {
namespace {

template <typename T, int K, bool ACC>
__global__ void __launch_bounds__(kThreads) combine_kernel(const WorkItem* __restrict__ items, const float* __restrict__ weights) {
  const WorkItem item = items[blockIdx.x];
  const T* x[K];
  float w[K];
  bool has[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    x[k] = static_cast<const T*>(item.in[k]) + item.start;
    has[k] = (item.present >> k) & 1u;
    w[k] = weights[k];
  }
  T* out = static_cast<T*>(item.out) + item.start;
  constexpr int V = Vec<T>::N;
  int64_t scalar_from = 0;
  if (item.aligned) {
    const int64_t nvec = item.len / V;
    int64_t v = threadIdx.x;
    for (; v + (kUnroll - 1) * kThreads < nvec; v += kUnroll * kThreads) {
      float buf[kUnroll][K][V], o[kUnroll][V];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int k = 0; k < K; ++k) Vec<T>::load(x[k] + (v + u * kThreads) * V, buf[u][k]);
        if (ACC) Vec<T>::load(out + (v + u * kThreads) * V, o[u]);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int e = 0; e < V; ++e) {
          float y = ACC ? o[u][e] : 0.0f;
#pragma unroll
          for (int k = 0; k < K; ++k) y = fmaf(w[k], has[k] ? buf[u][k][e] : 0.0f, y);
          o[u][e] = y;
        }
        Vec<T>::store(out + (v + u * kThreads) * V, o[u]);
      }
    }
    for (; v < nvec; v += kThreads) {
      float buf[K][V], o[V];
#pragma unroll
      for (int k = 0; k < K; ++k) Vec<T>::load(x[k] + v * V, buf[k]);
      if (ACC) Vec<T>::load(out + v * V, o);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        float y = ACC ? o[e] : 0.0f;
#pragma unroll
        for (int k = 0; k < K; ++k) y = fmaf(w[k], has[k] ? buf[k][e] : 0.0f, y);
        o[e] = y;
      }
      Vec<T>::store(out + v * V, o);
    }
    scalar_from = nvec * V;
  }
  for (int64_t i = scalar_from + threadIdx.x; i < item.len; i += kThreads) {
    float y = ACC ? Vec<T>::to_f(out[i]) : 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) y = fmaf(w[k], has[k] ? Vec<T>::to_f(x[k][i]) : 0.0f, y);
    out[i] = Vec<T>::from_f(y);
  }
}

template <typename T, bool ACC>
cudaError_t launch_k(const WorkItem* items, int64_t n, int K, const float* w, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>(n)), block(kThreads);
  switch (K) {
    case 1: combine_kernel<T, 1, ACC><<<grid, block, 0, s>>>(items, w); break;
    case 2: combine_kernel<T, 2, ACC><<<grid, block, 0, s>>>(items, w); break;
    case 3: combine_kernel<T, 3, ACC><<<grid, block, 0, s>>>(items, w); break;
    case 4: combine_kernel<T, 4, ACC><<<grid, block, 0, s>>>(items, w); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_t(const WorkItem* items, int64_t n, int K, const float* w, bool acc, cudaStream_t s) {
  return acc ? launch_k<T, true>(items, n, K, w, s) : launch_k<T, false>(items, n, K, w, s);
}

}  // namespace

cudaError_t launch_combine(const WorkItem* items, int64_t num_items, int num_sets, int dtype, const float* weights,
                           bool accumulate, cudaStream_t stream) {
  if (num_items <= 0) return cudaSuccess;
  switch (dtype) {
    case kFloat32: return launch_t<float>(items, num_items, num_sets, weights, accumulate, stream);
    case kBFloat16: return launch_t<__nv_bfloat16>(items, num_items, num_sets, weights, accumulate, stream);
    case kFloat16: return launch_t<__half>(items, num_items, num_sets, weights, accumulate, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace cuda
}  // namespace gh
