// CUDA weights: one thread applies docs/METHOD.md's rules (gh_weights.h) to the 2x2 Gram matrix.
#include "gh_cuda_launch.h"
#include "gh_weights.h"

namespace gh {
namespace cuda {
namespace {

__global__ void weights_kernel(const float* __restrict__ G, float* __restrict__ w, int method, float kappa) {
  if (threadIdx.x == 0 && blockIdx.x == 0) solve_weights(G[0], G[1], G[3], method, kappa, &w[0], &w[1]);
}

}  // namespace

cudaError_t launch_weights(const float* G, float* w, int method, float kappa, cudaStream_t stream) {
  weights_kernel<<<1, 32, 0, stream>>>(G, w, method, kappa);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gh
