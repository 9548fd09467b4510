// The CUDA kernels of the gh_kernels ops (torch glue in ops_cuda.cpp, kernels in *.cu);
// register_cuda.cpp registers them with the dispatcher. Schemas: gh_kernels/ops/library.py.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace gh {
namespace cuda {

at::Tensor gram_cuda(const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets);
void combine_cuda(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets,
                  const at::Tensor& weights, bool accumulate, const std::optional<at::Tensor>& nonfinite);
void coordinate_cuda(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets,
                     c10::string_view rule, int64_t trim, const std::optional<at::Tensor>& leak, bool accumulate);
at::Tensor weights_cuda(const at::Tensor& gram, c10::string_view method, double kappa);
std::tuple<at::Tensor, at::Tensor> harmonize_cuda(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors,
                                                  const std::optional<at::Tensor>& gram_mask, c10::string_view method,
                                                  double kappa, double scale1, double scale2, bool accumulate,
                                                  const std::optional<at::Tensor>& cache_host,
                                                  const std::optional<at::Tensor>& cache_device);

}  // namespace cuda
}  // namespace gh
