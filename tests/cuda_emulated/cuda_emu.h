// CUDA on the CPU, for tests: enough of the CUDA C++ dialect and runtime that csrc/cuda/*.cu compile
// unchanged with g++ and execute on one OS thread (tests/cuda_emulated/build.py rewrites each
// `kernel<<<grid, block, shmem, stream>>>(args)` into cuemu::launch(...); nothing in csrc/cuda changes).
//
// NOTE: [Emulated execution model]
// - Blocks run one after another. The threads of a block are cooperative fibers (runtime.cpp): a
//   thread runs until it reaches a barrier or returns, then the next runnable thread runs, in
//   thread order. `__shared__` is a function-local static (one block lives at a time).
// - __syncthreads() is a barrier over the block's live threads; __syncwarp() and the warp functions
//   (__shfl_*_sync, __ballot_sync, ...) go through a barrier over the live lanes of the caller's
//   32-lane warp and a double-buffered 32-slot exchange (a lane can be at most one exchange ahead).
//   A thread that has returned leaves both barriers.
// - When no thread can run and some have not returned, the barriers can never complete: the launch
//   reports a deadlock (cudaGetLastError() says cudaErrorLaunchFailure) instead of hanging.
// - __half and __nv_bfloat16 are 16-bit types of their own with round-to-nearest-even conversions.
// - CUDA's float overloads of the math functions are in the global namespace (with plain g++,
//   fma(float, float, float) would pick the C double version: double rounding, other last bits).
// What this cannot see: warp timing, races between blocks, the GPU memory model, register and
// shared-memory limits, nvcc's code generation (tools/check_cuda_registers.py covers registers).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __noinline__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

// ---- vector and index types -------------------------------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }

// ---- the runtime API the launchers use --------------------------------------------------------
enum cudaError_t : int { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 719 };
using cudaError = cudaError_t;
struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace cuemu {
using Body = void (*)(void*);
// Runs `body(ctx)` on every thread of every block (the rewritten launch); errors are sticky until read.
// `kernel` (the kernel's name) is recorded: with $CUEMU_KERNEL_LOG set, the names launched are appended
// to that file at exit, so a test can check that every kernel ran.
void launch_raw(const char* kernel, dim3 grid, dim3 block, Body body, void* ctx);
template <typename F>
void launch(const char* kernel, dim3 grid, dim3 block, size_t /*shared_bytes*/, cudaStream_t /*stream*/, F&& kernel_call) {
  using Fn = std::remove_reference_t<F>;
  launch_raw(kernel, grid, block, [](void* f) { (*static_cast<Fn*>(f))(); }, static_cast<void*>(&kernel_call));
}
cudaError_t take_error();
const uint3& thread_index();
extern uint3 block_index;
extern dim3 block_dim, grid_dim;
// Barriers (runtime.cpp).
void sync_block();
// Publishes `bits` (8 bytes) for the caller's warp, waits for the live lanes, and returns the exchange
// slots of this round (32 entries of 8 bytes).
const uint64_t* warp_exchange(uint64_t bits);
int lane_id();
unsigned live_lanes();  // the caller's warp: lanes that have not returned
}  // namespace cuemu

#define threadIdx (::cuemu::thread_index())
#define blockIdx (::cuemu::block_index)
#define blockDim (::cuemu::block_dim)
#define gridDim (::cuemu::grid_dim)
constexpr int warpSize = 32;

inline cudaError_t cudaGetLastError() { return cuemu::take_error(); }
inline cudaError_t cudaPeekAtLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : e == cudaErrorInvalidValue ? "invalid argument" : "unspecified launch failure";
}
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t = nullptr) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, int = 0, cudaStream_t = nullptr) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

// ---- barriers and warp functions ----------------------------------------------------------------
inline void __syncthreads() { cuemu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { cuemu::warp_exchange(0); }

namespace cuemu {
template <typename T>
inline T exchange_read(const uint64_t* slots, int src) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp exchange of a value over 8 bytes");
  T v;
  std::memcpy(&v, &slots[src], sizeof(T));
  return v;
}
template <typename T>
inline const uint64_t* exchange(T v) {
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return warp_exchange(bits);
}
// Lane `src` within the caller's segment of `width` lanes; out of range gives the caller's own value.
template <typename T>
inline T shuffle(T v, int src, int width, bool in_range) {
  const uint64_t* slots = exchange(v);
  const int lane = lane_id();
  const int base = lane & ~(width - 1);
  return in_range ? exchange_read<T>(slots, base + src) : v;
}
}  // namespace cuemu

template <typename T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
  return cuemu::shuffle(v, ((src % width) + width) % width, width, true);
}
template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int seg = cuemu::lane_id() & (width - 1);
  return cuemu::shuffle(v, seg + static_cast<int>(delta), width, seg + static_cast<int>(delta) < width);
}
template <typename T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int seg = cuemu::lane_id() & (width - 1);
  return cuemu::shuffle(v, seg - static_cast<int>(delta), width, seg >= static_cast<int>(delta));
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  const int seg = cuemu::lane_id() & (width - 1);
  return cuemu::shuffle(v, seg ^ mask, width, (seg ^ mask) < width);
}
inline unsigned __ballot_sync(unsigned, int predicate) {
  const uint64_t* slots = cuemu::exchange<int>(predicate != 0);
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l) bits |= (cuemu::exchange_read<int>(slots, l) != 0 ? 1u : 0u) << l;
  return bits & cuemu::live_lanes();  // a returned lane's slot is stale
}
inline int __any_sync(unsigned m, int p) { return __ballot_sync(m, p) != 0; }
inline int __all_sync(unsigned m, int p) { return __ballot_sync(m, p) == cuemu::live_lanes(); }

// Atomics: fibers switch only at barriers, so a read-modify-write cannot be interleaved.
template <typename T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}

// ---- math: CUDA's float overloads in the global namespace ----------------------------------------
using std::abs;
using std::acos;
using std::ceil;
using std::cos;
using std::exp;
using std::fabs;
using std::floor;
using std::fma;
using std::fmax;
using std::fmin;
using std::isfinite;
using std::isinf;
using std::isnan;
using std::log;
using std::pow;
using std::sin;
using std::sqrt;
static_assert(std::is_same<decltype(fma(1.0f, 1.0f, 1.0f)), float>::value, "fma(float, float, float) must be fmaf");
inline float __fdividef(float a, float b) { return a / b; }
inline unsigned int __float_as_uint(float x) {
  unsigned int u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline long long __double_as_longlong(double x) {
  long long u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }

// ---- fp16 and bf16: own types, round-to-nearest-even -----------------------------------------------
namespace cuemu {
inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// float -> binary16, round to nearest even (F. Giesen's float_to_half_fast3_rtne): overflow to inf,
// subnormals through a float addition (exact rounding by the FPU), NaN stays a (quiet) NaN.
inline uint16_t float_to_half_bits(float value) {
  const uint32_t f32infty = 255u << 23, f16max = (127u + 16u) << 23;
  const uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  uint32_t f = float_bits(value);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint16_t o;
  if (f >= f16max) {
    o = f > f32infty ? 0x7e00 : 0x7c00;
  } else if (f < (113u << 23)) {
    o = static_cast<uint16_t>(float_bits(bits_float(f) + bits_float(denorm_magic)) - denorm_magic);
  } else {
    const uint32_t mant_odd = (f >> 13) & 1u;
    f += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu;
    f += mant_odd;
    o = static_cast<uint16_t>(f >> 13);
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float
    const float m = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -m : m;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}
inline uint16_t float_to_bf16_bits(float value) {
  const uint32_t u = float_bits(value);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }
}  // namespace cuemu

struct __half {
  uint16_t bits;
};
struct alignas(4) __half2 {
  __half x, y;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
static_assert(sizeof(__half) == 2 && sizeof(__half2) == 4 && sizeof(__nv_bfloat16) == 2 && sizeof(__nv_bfloat162) == 4,
              "16-bit types must have CUDA's sizes");

inline float __half2float(__half h) { return cuemu::half_bits_to_float(h.bits); }
inline __half __float2half_rn(float f) { return __half{cuemu::float_to_half_bits(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }
inline float __bfloat162float(__nv_bfloat16 b) { return cuemu::bf16_bits_to_float(b.bits); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{cuemu::float_to_bf16_bits(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float2 __bfloat1622float2(__nv_bfloat162 b) { return {__bfloat162float(b.x), __bfloat162float(b.y)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)}; }
