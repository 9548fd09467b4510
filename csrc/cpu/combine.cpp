// CPU combine kernel: out = sum_k w[k] * x_k (+ out), one fused in-place pass, float32 math.
// Each element is read before it is written, so out may be one of the inputs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "gh_cpu_common.h"
#include "ops_cpu.h"

namespace gh {
namespace cpu {
namespace {

template <typename T, int M>
void combine_segment(T* out, const T* const* x, const float* w, int64_t n, bool accumulate) {
  if (accumulate) {
    for (int64_t i = 0; i < n; ++i) {
      float s = to_f32(out[i]);
      for (int k = 0; k < M; ++k) s += w[k] * to_f32(x[k][i]);
      out[i] = static_cast<T>(s);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      float s = 0.0f;
      for (int k = 0; k < M; ++k) s += w[k] * to_f32(x[k][i]);
      out[i] = static_cast<T>(s);
    }
  }
}

template <typename T>
void combine_item(const FlatParam& fp, const Segment& s, int64_t K, const float* weights, bool accumulate) {
  const T* x[kMaxSets];
  float w[kMaxSets];
  int m = 0;
  for (int k = 0; k < K; ++k)
    if (fp.in[k] != nullptr) {
      x[m] = static_cast<const T*>(fp.in[k]) + s.start;
      w[m++] = weights[k];
    }
  T* out = static_cast<T*>(fp.out) + s.start;
  switch (m) {
    case 0: combine_segment<T, 0>(out, x, w, s.len, accumulate); break;
    case 1: combine_segment<T, 1>(out, x, w, s.len, accumulate); break;
    case 2: combine_segment<T, 2>(out, x, w, s.len, accumulate); break;
    case 3: combine_segment<T, 3>(out, x, w, s.len, accumulate); break;
    default: combine_segment<T, 4>(out, x, w, s.len, accumulate); break;
  }
}

}  // namespace

void combine_cpu(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets,
                 const at::Tensor& weights, bool accumulate) {
  TORCH_CHECK(weights.device().is_cpu(), "gh_kernels: weights is on ", weights.device(), ", expected CPU");
  TORCH_CHECK(weights.numel() == num_sets, "gh_kernels: weights has ", weights.numel(), " entries, expected num_sets=", num_sets);
  auto params = prepare_params(tensors, num_sets, out, /*with_out=*/true, c10::DeviceType::CPU);
  const at::Tensor w = weights.to(at::kFloat).contiguous();
  const float* wp = w.data_ptr<float>();
  auto segs = make_segments(params);
  at::parallel_for(0, static_cast<int64_t>(segs.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const FlatParam& fp = params[segs[i].param];
      switch (fp.dtype) {
        case at::kFloat: combine_item<float>(fp, segs[i], num_sets, wp, accumulate); break;
        case at::kBFloat16: combine_item<c10::BFloat16>(fp, segs[i], num_sets, wp, accumulate); break;
        default: combine_item<c10::Half>(fp, segs[i], num_sets, wp, accumulate); break;
      }
    }
  });
  finish_out(params);
}

}  // namespace cpu
}  // namespace gh

