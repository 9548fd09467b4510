// CPU weights: docs/METHOD.md's rules from the 2x2 Gram matrix (gh_weights.h), no torch op chain.
// float32 weights from a float32 (or 16-bit) Gram matrix, float64 from a float64 one.
#include <ATen/ATen.h>

#include <string>

#include "gh_tensor_utils.h"
#include "ops_cpu.h"

namespace gh {
namespace cpu {

at::Tensor weights_from_gram(double n1sq, double c, double n2sq, at::ScalarType dtype, int code, double kappa) {
  at::Tensor w = at::empty({2}, at::TensorOptions().dtype(dtype == at::kDouble ? at::kDouble : at::kFloat));
  if (dtype == at::kDouble) {
    double* o = w.data_ptr<double>();
    solve_weights<double>(n1sq, c, n2sq, code, kappa, &o[0], &o[1]);
  } else {  // the float32 Gram entries, as the other backends see them
    float* o = w.data_ptr<float>();
    solve_weights<float>(static_cast<float>(n1sq), static_cast<float>(c), static_cast<float>(n2sq), code,
                         static_cast<float>(kappa), &o[0], &o[1]);
  }
  return w;
}

at::Tensor weights_cpu(const at::Tensor& gram, c10::string_view method, double kappa) {
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == 2 && gram.size(1) == 2, "gh_kernels: gram must have shape (2, 2), got ", gram.sizes());
  TORCH_CHECK(kappa >= 0.0 && kappa <= 1.0, "gh_kernels: kappa must be in [0, 1], got ", kappa);
  const int code = method_code(method);
  const at::ScalarType dtype = gram.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor G = gram.to(dtype).to(at::kDouble).contiguous();  // float32 entries stay float32-valued
  const double* g = G.data_ptr<double>();
  return weights_from_gram(g[0], g[1], g[3], dtype, code, kappa);
}

}  // namespace cpu
}  // namespace gh
