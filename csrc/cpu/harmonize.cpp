// CPU fused harmonize (gh_kernels::harmonize_.cpu): one validation of the arguments, the Gram
// pass over the parameters gram_mask selects, the weights, and the combine pass with the weights
// times (scale1, scale2), in one op call. Returns the Gram matrix and the unscaled weights.
#include <ATen/ATen.h>

#include "gh_cpu_common.h"
#include "gh_tensor_utils.h"
#include "ops_cpu.h"

namespace gh {
namespace cpu {

std::tuple<at::Tensor, at::Tensor> harmonize_cpu(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors,
                                                 const std::optional<at::Tensor>& gram_mask, c10::string_view method,
                                                 double kappa, double scale1, double scale2, bool accumulate,
                                                 const std::optional<at::Tensor>& cache_host,
                                                 const std::optional<at::Tensor>& cache_device) {
  (void)cache_host;  // the CPU kernel builds its work split per call (no device copy to cache)
  (void)cache_device;
  TORCH_CHECK(kappa >= 0.0 && kappa <= 1.0, "gh_kernels: kappa must be in [0, 1], got ", kappa);
  const int code = method_code(method);
  auto params = prepare_params(tensors, 2, out, /*with_out=*/true, c10::DeviceType::CPU);
  check_out_aliasing(out, tensors, 2);
  const uint8_t* mask = nullptr;
  at::Tensor mask_bytes;
  if (gram_mask.has_value() && gram_mask->defined()) {
    TORCH_CHECK(gram_mask->device().is_cpu() && gram_mask->numel() == static_cast<int64_t>(out.size()),
                "gh_kernels: gram_mask must be a CPU tensor with one entry per parameter (", out.size(), ")");
    mask_bytes = gram_mask->to(at::kByte).contiguous();
    mask = mask_bytes.data_ptr<uint8_t>();
  }
  // The Gram pass reads the inputs (an input that is a non-contiguous out is read from out's
  // temporary, which holds the same values); nothing is written before the combine below.
  const std::vector<double> G = gram_params(params, 2, mask);
  const at::ScalarType dtype = result_dtype(params);
  at::Tensor w = weights_from_gram(G[0], G[1], G[3], dtype, code, kappa);
  const at::Tensor wd = w.to(at::kDouble);
  const double scaled[2] = {wd.data_ptr<double>()[0] * scale1, wd.data_ptr<double>()[1] * scale2};
  combine_params(params, 2, scaled, accumulate);
  bump_versions(out);
  return {gram_tensor(G, 2, dtype), w};
}

}  // namespace cpu
}  // namespace gh
