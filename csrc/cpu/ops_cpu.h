// The CPU kernels of the gh_kernels ops (gram.cpp, combine.cpp, weights.cpp); register_cpu.cpp
// registers them with the dispatcher. Schemas: gh_kernels/_ops.py.
#pragma once
#include <ATen/ATen.h>

#include <optional>

namespace gh {
namespace cpu {

at::Tensor gram_cpu(const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets);
void combine_cpu(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets,
                 const at::Tensor& weights, bool accumulate);
at::Tensor weights_cpu(const at::Tensor& gram, c10::string_view method, double kappa);

}  // namespace cpu
}  // namespace gh
