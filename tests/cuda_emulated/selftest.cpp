// Self-test of the emulation itself (cuda_emu.h, runtime.cpp): warp shuffles of every kind against
// their CUDA definitions, __syncthreads ordering shared-memory writes, returned threads leaving both
// barriers, a partial last warp, and a deadlock reported instead of hanging. Prints "ok" or failures.
#include <cstdio>

#include "cuda_emu.h"

static int failures = 0;
#define CHECK(cond)                                                  \
  do {                                                               \
    if (!(cond)) {                                                   \
      std::printf("FAILED line %d: %s\n", __LINE__, #cond);          \
      ++failures;                                                    \
    }                                                                \
  } while (0)

static int got[4][128];

void shuffles() {
  const int t = threadIdx.x, lane = t & 31;
  const float v = static_cast<float>(t) + 0.5f;
  got[0][t] = static_cast<int>(__shfl_down_sync(0xffffffffu, v, 3));
  got[1][t] = static_cast<int>(__shfl_up_sync(0xffffffffu, v, 5));
  got[2][t] = static_cast<int>(__shfl_xor_sync(0xffffffffu, static_cast<double>(v), 9));
  got[3][t] = static_cast<int>(__shfl_sync(0xffffffffu, t, 31 - lane, 16));
}

void block_barrier() {
  __shared__ int slots[96];
  const int t = threadIdx.x;
  slots[t] = t * 2;
  __syncthreads();
  got[0][t] = slots[(t + 50) % 96];  // written by another warp before the barrier
}

void early_return() {
  __shared__ int count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  if (threadIdx.x >= 40) return;  // 24 lanes of warp 1 and all of warp 2 leave
  atomicAdd(&count, 1);
  const int s = __shfl_down_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);  // warp 1: lanes 0..7 only
  __syncthreads();
  got[0][threadIdx.x] = count;
  got[1][threadIdx.x] = s;
}

void deadlock() {
  if (threadIdx.x == 0)
    __syncthreads();
  else
    __shfl_down_sync(0xffffffffu, 1, 1);  // waits for lane 0, which waits for everyone
}

int main() {
  ::cuemu::launch("shuffles", dim3(2), dim3(128), 0, nullptr, [&] { shuffles(); });
  CHECK(cudaGetLastError() == cudaSuccess);
  for (int t = 0; t < 128; ++t) {
    const int lane = t & 31, w = t - lane;
    CHECK(got[0][t] == (lane + 3 < 32 ? t + 3 : t));
    CHECK(got[1][t] == (lane >= 5 ? t - 5 : t));
    CHECK(got[2][t] == w + (lane ^ 9));
    CHECK(got[3][t] == w + (lane & 16) + ((31 - lane) % 16));
  }
  ::cuemu::launch("block_barrier", dim3(3), dim3(96), 0, nullptr, [&] { block_barrier(); });
  CHECK(cudaGetLastError() == cudaSuccess);
  for (int t = 0; t < 96; ++t) CHECK(got[0][t] == ((t + 50) % 96) * 2);
  ::cuemu::launch("early_return", dim3(1), dim3(96), 0, nullptr, [&] { early_return(); });
  CHECK(cudaGetLastError() == cudaSuccess);
  for (int t = 0; t < 40; ++t) {
    CHECK(got[0][t] == 40);
    if ((t & 31) < 7 || t < 31) CHECK(got[1][t] == t + 1);
  }
  std::fprintf(stderr, "(a deadlock report follows; it is expected)\n");
  ::cuemu::launch("deadlock", dim3(1), dim3(64), 0, nullptr, [&] { deadlock(); });
  CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
  ::cuemu::launch("after", dim3(1), dim3(32), 0, nullptr, [&] { got[0][threadIdx.x] = 7; });  // usable again
  CHECK(cudaGetLastError() == cudaSuccess && got[0][31] == 7);
  ::cuemu::launch("too_big", dim3(1), dim3(2048), 0, nullptr, [&] {});
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  std::printf(failures ? "%d failures\n" : "ok\n", failures);
  return failures ? 1 : 0;
}
