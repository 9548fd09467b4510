// CPU weights: docs/METHOD.md's rules from the 2x2 Gram matrix (gh_weights.h), no torch op chain.
#include <ATen/ATen.h>

#include <string>

#include "gh_tensor_utils.h"
#include "ops_cpu.h"

namespace gh {
namespace cpu {

at::Tensor weights_cpu(const at::Tensor& gram, c10::string_view method, double kappa) {
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == 2 && gram.size(1) == 2, "gh_kernels: gram must have shape (2, 2), got ", gram.sizes());
  TORCH_CHECK(kappa >= 0.0 && kappa <= 1.0, "gh_kernels: kappa must be in [0, 1], got ", kappa);
  const int code = method_code(method);
  const at::Tensor G = gram.to(at::kFloat).contiguous();
  const float* g = G.data_ptr<float>();
  at::Tensor w = at::empty({2}, at::TensorOptions().dtype(at::kFloat));
  float* o = w.data_ptr<float>();
  solve_weights(g[0], g[1], g[3], code, static_cast<float>(kappa), &o[0], &o[1]);
  return w;
}

}  // namespace cpu
}  // namespace gh

