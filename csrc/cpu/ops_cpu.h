// The CPU kernels of the gh_kernels ops (gram.cpp, combine.cpp, weights.cpp, harmonize.cpp); register_cpu.cpp
// registers them with the dispatcher. Schemas: gh_kernels/ops/library.py.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

#include "gh_tensor_utils.h"

namespace gh {
namespace cpu {

at::Tensor gram_cpu(const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets);
void combine_cpu(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets,
                 const at::Tensor& weights, bool accumulate, const std::optional<at::Tensor>& nonfinite);
at::Tensor weights_cpu(const at::Tensor& gram, c10::string_view method, double kappa);
std::tuple<at::Tensor, at::Tensor> harmonize_cpu(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors,
                                                 const std::optional<at::Tensor>& gram_mask, c10::string_view method,
                                                 double kappa, double scale1, double scale2, bool accumulate,
                                                 const std::optional<at::Tensor>& cache_host,
                                                 const std::optional<at::Tensor>& cache_device);

void coordinate_cpu(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets,
                    c10::string_view rule, int64_t trim, const std::optional<at::Tensor>& leak, bool accumulate);

// Building blocks shared by the ops above.
// Gram matrix (row-major K x K, float64) over the parameters mask selects (all when mask is null).
std::vector<double> gram_params(const std::vector<FlatParam>& params, int64_t K, const uint8_t* mask);
// The Gram matrix as a K x K tensor of dtype (float32 or float64).
at::Tensor gram_tensor(const std::vector<double>& G, int64_t K, at::ScalarType dtype);
// out = sum_k weights[k] * in_k (+ out) for every parameter, then copy back non-contiguous outs; *nonfinite
// (when not null) becomes 1 if a written value is non-finite (NOTE: [Non-finite flag of the combine]).
void combine_params(std::vector<FlatParam>& params, int64_t K, const double* weights, bool accumulate,
                    int32_t* nonfinite = nullptr);
// The weights tensor (CPU, num_sets entries) as float64 values.
std::vector<double> weights_on_host(const at::Tensor& weights, int64_t num_sets);
// (w1, w2) from the Gram entries as a (2,) tensor: float64 when dtype is float64, else float32.
at::Tensor weights_from_gram(double n1sq, double c, double n2sq, at::ScalarType dtype, int code, double kappa);

}  // namespace cpu
}  // namespace gh
