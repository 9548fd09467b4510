// One harness for the multi-tensor kernels, in the style of apex's multi_tensor_apply: the
// harness walks one work item (a chunk of one parameter in K gradient sets, plus an optional
// out array) with 16-byte vector loads, kUnroll vectors in flight, the present-bit masking and
// a scalar tail; a functor says what to do with one element. A new multi-tensor op is one
// functor and a launcher, not a copied loop.
//
// Functor interface:
//   static constexpr bool kReadsOut, kWritesOut;   // whether `y` is loaded before / stored after
//   template <typename A> __device__ void operator()(const A (&x)[K], A& y);
// A is the accumulation type (Vec<T>::Acc: float32, float64 for double). x[k] is set k's element
// (0 for a set without this gradient); y is out's element (0 when !kReadsOut). Every element is read before it is written, so out may be one of
// the inputs (no __restrict__ on purpose).
//   static constexpr int kMaxValuesInFlight;       // optional: NOTE: [Vectors in flight]
#pragma once
#include <type_traits>

#include "gh_cuda_vec.cuh"

namespace gh {
namespace cuda {

// NOTE: [Vectors in flight] Each thread loads U vectors of every set before it computes (U = kUnroll:
// memory-level parallelism), which holds U * K * V values in registers. A functor whose per-element work
// needs many registers of its own (the per-coordinate sort network) declares kMaxValuesInFlight, and U
// shrinks until U * K * V fits it (at least 1), so that no kernel spills (tools/check_cuda_registers.py).
// Per-element results do not depend on U; the Gram functor declares no limit, so its summation order
// (tests/cuda_emulated/driver.cpp, NOTE: [Kernel orders]) stays U = kUnroll.
template <typename F, typename = void>
struct MaxValuesInFlight {
  static constexpr int value = 1 << 30;
};
template <typename F>
struct MaxValuesInFlight<F, std::void_t<decltype(F::kMaxValuesInFlight)>> {
  static constexpr int value = F::kMaxValuesInFlight;
};
template <typename F, int K, int V>
struct UnrollOf {
  static constexpr int fit = MaxValuesInFlight<F>::value / (K * V);
  static constexpr int value = fit < 1 ? 1 : fit > kUnroll ? kUnroll : fit;
};

template <typename T, int K, typename Functor>
__device__ __forceinline__ void for_each_element(const WorkItem& item, Functor& f) {
  const T* x[K];
  bool has[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    x[k] = static_cast<const T*>(item.in[k]) + item.start;
    has[k] = (item.present >> k) & 1u;
  }
  T* out = Functor::kWritesOut || Functor::kReadsOut ? static_cast<T*>(item.out) + item.start : nullptr;
  using A = typename Vec<T>::Acc;
  constexpr int V = Vec<T>::N;
  constexpr int U = UnrollOf<Functor, K, V>::value;  // NOTE: [Vectors in flight]
  int64_t scalar_from = 0;
  if (item.aligned) {
    const int64_t nvec = item.len / V;
    int64_t v = threadIdx.x;
    for (; v + (U - 1) * kThreads < nvec; v += U * kThreads) {
      A buf[U][K][V], y[U][V];
#pragma unroll
      for (int u = 0; u < U; ++u) {  // every load of the unrolled group first: U vectors in flight
#pragma unroll
        for (int k = 0; k < K; ++k) Vec<T>::load(x[k] + (v + u * kThreads) * V, buf[u][k]);
        if (Functor::kReadsOut) Vec<T>::load(out + (v + u * kThreads) * V, y[u]);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int e = 0; e < V; ++e) {
          A val[K];
#pragma unroll
          for (int k = 0; k < K; ++k) val[k] = has[k] ? buf[u][k][e] : A(0);
          if (!Functor::kReadsOut) y[u][e] = A(0);
          f(val, y[u][e]);
        }
        if (Functor::kWritesOut) Vec<T>::store(out + (v + u * kThreads) * V, y[u]);
      }
    }
    for (; v < nvec; v += kThreads) {
      A buf[K][V], y[V];
#pragma unroll
      for (int k = 0; k < K; ++k) Vec<T>::load(x[k] + v * V, buf[k]);
      if (Functor::kReadsOut) Vec<T>::load(out + v * V, y);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        A val[K];
#pragma unroll
        for (int k = 0; k < K; ++k) val[k] = has[k] ? buf[k][e] : A(0);
        if (!Functor::kReadsOut) y[e] = A(0);
        f(val, y[e]);
      }
      if (Functor::kWritesOut) Vec<T>::store(out + v * V, y);
    }
    scalar_from = nvec * V;
  }
  for (int64_t i = scalar_from + threadIdx.x; i < item.len; i += kThreads) {
    A val[K];
#pragma unroll
    for (int k = 0; k < K; ++k) val[k] = has[k] ? Vec<T>::to_f(x[k][i]) : A(0);
    A y = Functor::kReadsOut ? Vec<T>::to_f(out[i]) : A(0);
    f(val, y);
    if (Functor::kWritesOut) out[i] = Vec<T>::from_f(y);
  }
}

// Host-side dispatch from runtime (dtype, num_sets) to compile-time (T, K): `launch` is a generic
// lambda called as launch(TypeTag<T>{}, std::integral_constant<int, K>{}) for K in [1, kMaxSets].
template <typename T>
struct TypeTag {
  using type = T;
};

template <typename T, typename Launch>
cudaError_t dispatch_sets(int num_sets, Launch&& launch) {
  switch (num_sets) {
    case 1: return launch(TypeTag<T>{}, std::integral_constant<int, 1>{});
    case 2: return launch(TypeTag<T>{}, std::integral_constant<int, 2>{});
    case 3: return launch(TypeTag<T>{}, std::integral_constant<int, 3>{});
    case 4: return launch(TypeTag<T>{}, std::integral_constant<int, 4>{});
    case 5: return launch(TypeTag<T>{}, std::integral_constant<int, 5>{});
    case 6: return launch(TypeTag<T>{}, std::integral_constant<int, 6>{});
    case 7: return launch(TypeTag<T>{}, std::integral_constant<int, 7>{});
    case 8: return launch(TypeTag<T>{}, std::integral_constant<int, 8>{});
    default: return cudaErrorInvalidValue;
  }
}
static_assert(kMaxSets == 8, "dispatch_sets lists one case per supported number of sets");

template <typename Launch>
cudaError_t dispatch_dtype_and_sets(int dtype, int num_sets, Launch&& launch) {
  switch (dtype) {
    case kFloat32: return dispatch_sets<float>(num_sets, launch);
    case kBFloat16: return dispatch_sets<__nv_bfloat16>(num_sets, launch);
    case kFloat16: return dispatch_sets<__half>(num_sets, launch);
    case kFloat64: return dispatch_sets<double>(num_sets, launch);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace cuda
}  // namespace gh
