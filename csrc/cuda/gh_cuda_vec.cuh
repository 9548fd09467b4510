// 16-byte vector loads/stores with conversion to the accumulation type `Acc`: float32 for float,
// bfloat16 and float16, float64 for double.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "gh_cuda_launch.h"

namespace gh {
namespace cuda {

template <typename T>
struct Vec;

template <>
struct Vec<double> {
  using Acc = double;
  static constexpr int N = 2;
  static constexpr double kOverflow = __builtin_huge_val();  // |x| < kOverflow: finite once stored as T
  __device__ static void load(const double* p, double* v) {
    double2 x = *reinterpret_cast<const double2*>(p);
    v[0] = x.x; v[1] = x.y;
  }
  __device__ static void store(double* p, const double* v) { *reinterpret_cast<double2*>(p) = make_double2(v[0], v[1]); }
  __device__ static double to_f(double x) { return x; }
  __device__ static double from_f(double x) { return x; }
};

template <>
struct Vec<float> {
  using Acc = float;
  static constexpr int N = 4;
  static constexpr float kOverflow = __builtin_huge_valf();
  __device__ static void load(const float* p, float* v) {
    float4 x = *reinterpret_cast<const float4*>(p);
    v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w;
  }
  __device__ static void store(float* p, const float* v) { *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]); }
  __device__ static float to_f(float x) { return x; }
  __device__ static float from_f(float x) { return x; }
};

template <>
struct Vec<__nv_bfloat16> {
  using Acc = float;
  static constexpr int N = 8;
  static constexpr float kOverflow = 0x1.ffp127f;  // halfway above the largest bf16: rounds to inf
  __device__ static void load(const __nv_bfloat16* p, float* v) {
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 f = __bfloat1622float2(h[i]);
      v[2 * i] = f.x;
      v[2 * i + 1] = f.y;
    }
  }
  __device__ static void store(__nv_bfloat16* p, const float* v) {
    uint4 raw;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
    *reinterpret_cast<uint4*>(p) = raw;
  }
  __device__ static float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 from_f(float x) { return __float2bfloat16_rn(x); }
};

template <>
struct Vec<__half> {
  using Acc = float;
  static constexpr int N = 8;
  static constexpr float kOverflow = 65520.0f;  // halfway above 65504: rounds to inf
  __device__ static void load(const __half* p, float* v) {
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 f = __half22float2(h[i]);
      v[2 * i] = f.x;
      v[2 * i + 1] = f.y;
    }
  }
  __device__ static void store(__half* p, const float* v) {
    uint4 raw;
    __half2* h = reinterpret_cast<__half2*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
    *reinterpret_cast<uint4*>(p) = raw;
  }
  __device__ static float to_f(__half x) { return __half2float(x); }
  __device__ static __half from_f(float x) { return __float2half_rn(x); }
};

constexpr int kThreads = 256;  // threads per block of the multi-tensor kernels
constexpr int kUnroll = 4;     // independent 16-byte vectors in flight per thread and set


// The magnitude of x as unsigned integer bits: ordered as |x| for finite values, inf above them, NaN above inf
// (NOTE: [Non-finite flag of the combine]).
template <typename A>
struct MagnitudeBits;
template <>
struct MagnitudeBits<float> {
  using type = unsigned int;
  __device__ static type of(float x) { return __float_as_uint(x) & 0x7fffffffu; }
};
template <>
struct MagnitudeBits<double> {
  using type = unsigned long long;
  __device__ static type of(double x) { return static_cast<type>(__double_as_longlong(x)) & 0x7fffffffffffffffull; }
};

}  // namespace cuda
}  // namespace gh
