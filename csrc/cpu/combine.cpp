// CPU combine kernel: out = sum_k w[k] * x_k (+ out), one fused in-place pass, float32 math
// (float64 for float64 gradients).
// Each element is read before it is written, so out may be one of the inputs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "gh_cpu_common.h"
#include "ops_cpu.h"

namespace gh {
namespace cpu {
namespace {

template <typename T, int M>
void combine_segment(T* out, const T* const* x, const acc_t<T>* w, int64_t n, bool accumulate) {
  using A = acc_t<T>;
  if (accumulate) {
    for (int64_t i = 0; i < n; ++i) {
      A s = to_acc(out[i]);
      for (int k = 0; k < M; ++k) s += w[k] * to_acc(x[k][i]);
      out[i] = static_cast<T>(s);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      A s = 0;
      for (int k = 0; k < M; ++k) s += w[k] * to_acc(x[k][i]);
      out[i] = static_cast<T>(s);
    }
  }
}

template <typename T>
void combine_item(const FlatParam& fp, const Segment& s, int64_t K, const double* weights, bool accumulate) {
  const T* x[kMaxSets];
  acc_t<T> w[kMaxSets];
  int m = 0;
  for (int k = 0; k < K; ++k)
    if (fp.in[k] != nullptr) {
      x[m] = static_cast<const T*>(fp.in[k]) + s.start;
      w[m++] = static_cast<acc_t<T>>(weights[k]);
    }
  T* out = static_cast<T*>(fp.out) + s.start;
  switch (m) {
    case 0: combine_segment<T, 0>(out, x, w, s.len, accumulate); break;
    case 1: combine_segment<T, 1>(out, x, w, s.len, accumulate); break;
    case 2: combine_segment<T, 2>(out, x, w, s.len, accumulate); break;
    case 3: combine_segment<T, 3>(out, x, w, s.len, accumulate); break;
    case 4: combine_segment<T, 4>(out, x, w, s.len, accumulate); break;
    case 5: combine_segment<T, 5>(out, x, w, s.len, accumulate); break;
    case 6: combine_segment<T, 6>(out, x, w, s.len, accumulate); break;
    case 7: combine_segment<T, 7>(out, x, w, s.len, accumulate); break;
    default: combine_segment<T, 8>(out, x, w, s.len, accumulate); break;
  }
}
static_assert(kMaxSets == 8, "combine_item lists one case per supported number of present sets");

}  // namespace

void combine_params(std::vector<FlatParam>& params, int64_t K, const double* weights, bool accumulate) {
  auto segs = make_segments(params);
  at::parallel_for(0, static_cast<int64_t>(segs.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const FlatParam& fp = params[segs[i].param];
      dispatch_dtype(fp.dtype, [&](auto tag) { combine_item<decltype(tag)>(fp, segs[i], K, weights, accumulate); });
    }
  });
  finish_out(params);
}

std::vector<double> weights_on_host(const at::Tensor& weights, int64_t num_sets) {
  TORCH_CHECK(weights.device().is_cpu(), "gh_kernels: weights is on ", weights.device(), ", expected CPU");
  TORCH_CHECK(weights.numel() == num_sets, "gh_kernels: weights has ", weights.numel(), " entries, expected num_sets=", num_sets);
  const at::Tensor w = weights.to(at::kDouble).contiguous();
  return std::vector<double>(w.data_ptr<double>(), w.data_ptr<double>() + num_sets);
}

void combine_cpu(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets,
                 const at::Tensor& weights, bool accumulate) {
  const std::vector<double> w = weights_on_host(weights, num_sets);
  auto params = prepare_params(tensors, num_sets, out, /*with_out=*/true, c10::DeviceType::CPU);
  check_out_aliasing(out, tensors, num_sets);
  combine_params(params, num_sets, w.data(), accumulate);
  bump_versions(out);
}

}  // namespace cpu
}  // namespace gh
