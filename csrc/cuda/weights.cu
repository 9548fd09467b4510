// CUDA weights: one thread applies docs/METHOD.md's rules (gh_weights.h) to the 2x2 Gram matrix
// (float32, or float64 for float64 gradients), and optionally scales them for the combine.
#include "gh_cuda_launch.h"
#include "gh_weights.h"

namespace gh {
namespace cuda {
namespace {

template <typename Real>
__global__ void weights_kernel(const Real* __restrict__ G, Real* __restrict__ w, double* __restrict__ scaled, int method,
                               Real kappa, double scale1, double scale2) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    solve_weights<Real>(G[0], G[1], G[3], method, kappa, &w[0], &w[1]);
    if (scaled != nullptr) {  // the weights the combine uses, computed as the other backends do: in Real
      scaled[0] = static_cast<double>(w[0] * static_cast<Real>(scale1));
      scaled[1] = static_cast<double>(w[1] * static_cast<Real>(scale2));
    }
  }
}

}  // namespace

cudaError_t launch_weights(const void* G, void* w, bool is_f64, double* scaled, int method, double kappa, double scale1,
                           double scale2, cudaStream_t stream) {
  if (is_f64)
    weights_kernel<double><<<1, 32, 0, stream>>>(static_cast<const double*>(G), static_cast<double*>(w), scaled, method,
                                                 kappa, scale1, scale2);
  else
    weights_kernel<float><<<1, 32, 0, stream>>>(static_cast<const float*>(G), static_cast<float*>(w), scaled, method,
                                                static_cast<float>(kappa), scale1, scale2);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gh
