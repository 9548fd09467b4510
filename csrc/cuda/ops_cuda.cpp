// Torch glue for the CUDA kernels: argument checks, work list (tensor addresses and a
// block -> (tensor, chunk) table in the style of multi_tensor_apply) copied to the device
// asynchronously from pinned memory, and the current stream. Registered in register_cuda.cpp.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstring>
#include <map>
#include <vector>

#include "gh_cuda_launch.h"
#include "gh_tensor_utils.h"
#include "ops_cuda.h"

namespace gh {
namespace cuda {
namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kFloat32;
    case at::kBFloat16: return kBFloat16;
    default: return kFloat16;
  }
}

// Elements per work item: enough items to give every multiprocessor ~16 blocks for large
// lists, at least 16K elements per block, a power of two (so chunk starts stay 16-byte aligned).
int64_t chunk_elements(int64_t total, const at::Device& device) {
  const int sms = at::cuda::getDeviceProperties(device.index())->multiProcessorCount;
  const int64_t target = std::max<int64_t>(1, total / (static_cast<int64_t>(sms) * 16));
  int64_t chunk = 1 << 14;
  while (chunk < target && chunk < (1 << 20)) chunk <<= 1;
  return chunk;
}

struct WorkList {
  at::Tensor device_items;                     // WorkItem array on the device
  std::vector<std::pair<int, int64_t>> groups;  // (dtype code, item count), consecutive in device_items
  int64_t total = 0;
};

WorkList build_worklist(const std::vector<FlatParam>& params, int64_t K, const at::Device& device, bool with_out) {
  int64_t numel = 0;
  for (const auto& fp : params) numel += fp.numel;
  const int64_t chunk = chunk_elements(numel, device);
  std::map<int, std::vector<WorkItem>> by_dtype;
  for (const auto& fp : params) {
    if (fp.numel == 0) continue;
    const void* sub = nullptr;
    uint32_t present = 0;
    for (int k = 0; k < K; ++k)
      if (fp.in[k] != nullptr) {
        present |= 1u << k;
        if (sub == nullptr) sub = fp.in[k];
      }
    if (present == 0) continue;  // handled by the caller (nothing to add)
    const int64_t elem = c10::elementSize(fp.dtype);
    bool aligned = true;
    WorkItem base{};
    for (int k = 0; k < kMaxSets; ++k) {
      base.in[k] = (k < K && fp.in[k] != nullptr) ? fp.in[k] : sub;
      if (k < K) aligned = aligned && reinterpret_cast<uintptr_t>(base.in[k]) % 16 == 0;
    }
    base.out = with_out ? fp.out : nullptr;
    if (with_out) aligned = aligned && reinterpret_cast<uintptr_t>(fp.out) % 16 == 0;
    aligned = aligned && (chunk * elem) % 16 == 0;
    base.present = present;
    base.aligned = aligned ? 1u : 0u;
    auto& items = by_dtype[dtype_code(fp.dtype)];
    for (int64_t s = 0; s < fp.numel; s += chunk) {
      WorkItem it = base;
      it.start = s;
      it.len = std::min(chunk, fp.numel - s);
      items.push_back(it);
    }
  }
  WorkList wl;
  for (auto& kv : by_dtype) wl.total += static_cast<int64_t>(kv.second.size());
  if (wl.total == 0) return wl;
  at::Tensor host = at::empty({wl.total * static_cast<int64_t>(sizeof(WorkItem))},
                              at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto* dst = reinterpret_cast<WorkItem*>(host.data_ptr());
  for (auto& kv : by_dtype) {
    std::memcpy(dst, kv.second.data(), kv.second.size() * sizeof(WorkItem));
    dst += kv.second.size();
    wl.groups.emplace_back(kv.first, static_cast<int64_t>(kv.second.size()));
  }
  // Pinned -> device copy on the current stream: asynchronous, no host synchronization; the
  // caching host allocator keeps `host` alive until the copy has run.
  wl.device_items = host.to(device, /*non_blocking=*/true);
  return wl;
}

at::Device first_device(const c10::List<std::optional<at::Tensor>>& tensors) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    std::optional<at::Tensor> t = tensors.get(i);
    if (t.has_value() && t->defined()) return t->device();
  }
  TORCH_CHECK(false, "gh_kernels: tensors contains no tensor");
}

}  // namespace

at::Tensor gram_cuda(const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets) {
  const at::Device device = first_device(tensors);
  c10::cuda::CUDAGuard guard(device);
  auto params = prepare_params(tensors, num_sets, {}, /*with_out=*/false, c10::DeviceType::CUDA);
  WorkList wl = build_worklist(params, num_sets, device, /*with_out=*/false);
  at::Tensor G = at::zeros({num_sets, num_sets}, at::TensorOptions().dtype(at::kFloat).device(device));
  if (wl.total == 0) return G;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor partials = at::empty({wl.total, kNumPairs}, G.options());
  const auto* items = reinterpret_cast<const WorkItem*>(wl.device_items.data_ptr());
  int64_t offset = 0;
  for (const auto& g : wl.groups) {
    C10_CUDA_CHECK(launch_gram_partials(items + offset, g.second, static_cast<int>(num_sets), g.first,
                                        partials.data_ptr<float>() + offset * kNumPairs, stream));
    offset += g.second;
  }
  C10_CUDA_CHECK(launch_gram_finalize(partials.data_ptr<float>(), wl.total, static_cast<int>(num_sets), G.data_ptr<float>(), stream));
  return G;
}

void combine_cuda(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets,
                  const at::Tensor& weights, bool accumulate) {
  if (out.empty()) return;
  const at::Device device = out[0].device();
  c10::cuda::CUDAGuard guard(device);
  TORCH_CHECK(weights.device() == device, "gh_kernels: weights is on ", weights.device(), " but out is on ", device);
  TORCH_CHECK(weights.numel() == num_sets, "gh_kernels: weights has ", weights.numel(), " entries, expected num_sets=", num_sets);
  auto params = prepare_params(tensors, num_sets, out, /*with_out=*/true, c10::DeviceType::CUDA);
  const at::Tensor w = weights.to(at::kFloat).contiguous();
  if (!accumulate)  // a parameter no set reaches: out = 0
    for (size_t p = 0; p < params.size(); ++p) {
      bool any = false;
      for (int k = 0; k < num_sets; ++k) any = any || params[p].in[k] != nullptr;
      if (!any && params[p].numel > 0) (params[p].out_target.defined() ? params[p].out_temp : out[p]).zero_();
    }
  WorkList wl = build_worklist(params, num_sets, device, /*with_out=*/true);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto* items = wl.total ? reinterpret_cast<const WorkItem*>(wl.device_items.data_ptr()) : nullptr;
  int64_t offset = 0;
  for (const auto& g : wl.groups) {
    C10_CUDA_CHECK(launch_combine(items + offset, g.second, static_cast<int>(num_sets), g.first, w.data_ptr<float>(),
                                  accumulate, stream));
    offset += g.second;
  }
  finish_out(params);
}

at::Tensor weights_cuda(const at::Tensor& gram, c10::string_view method, double kappa) {
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == 2 && gram.size(1) == 2, "gh_kernels: gram must have shape (2, 2), got ", gram.sizes());
  TORCH_CHECK(kappa >= 0.0 && kappa <= 1.0, "gh_kernels: kappa must be in [0, 1], got ", kappa);
  c10::cuda::CUDAGuard guard(gram.device());
  const at::Tensor G = gram.to(at::kFloat).contiguous();
  at::Tensor w = at::empty({2}, G.options());
  C10_CUDA_CHECK(launch_weights(G.data_ptr<float>(), w.data_ptr<float>(), method_code(method), static_cast<float>(kappa),
                                at::cuda::getCurrentCUDAStream()));
  return w;
}

}  // namespace cuda
}  // namespace gh
