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

#include "gh_cuda_passes.h"
#include "gh_tensor_utils.h"
#include "ops_cuda.h"

namespace gh {
namespace cuda {
namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kFloat32;
    case at::kBFloat16: return kBFloat16;
    case at::kDouble: return kFloat64;
    default: return kFloat16;
  }
}

struct WorkList {
  at::Tensor device_items;                     // WorkItem array on the device
  std::vector<std::pair<int, int64_t>> groups;  // (dtype code, item count), consecutive in device_items
  int64_t total = 0;
};

// A plan's cached work list (gh_kernels.plan, the training steps): cache_host is a plain CPU byte
// tensor holding the items last uploaded, cache_device the device copy; gh_worklist.h's cache_hit
// decides when the device copy is reused. Otherwise the items are uploaded from a fresh pinned
// buffer (never from cache_host, which may be rewritten while a copy is in flight) into cache_device.
struct PlanCache {
  const at::Tensor* host = nullptr;    // resized and rewritten in place (a mutable argument of the op)
  const at::Tensor* device = nullptr;
};

// The work lists' view of the parameters (gh_worklist.h's ParamView: K set addresses, out, size, dtype) and the
// chunk the device's multiprocessor count gives their total size.
std::vector<ParamView> param_views(const std::vector<FlatParam>& params, const at::Device& device, int64_t* chunk) {
  std::vector<ParamView> views(params.size());
  int64_t numel = 0;
  for (size_t p = 0; p < params.size(); ++p) {
    const FlatParam& fp = params[p];
    if (fp.in.size() > views[p].in.size()) views[p].in.resize(fp.in.size(), nullptr);  // kMaxSets slots, or K
    std::copy(fp.in.begin(), fp.in.end(), views[p].in.begin());
    views[p].out = fp.out;
    views[p].numel = fp.numel;
    views[p].elem_size = static_cast<int64_t>(c10::elementSize(fp.dtype));
    views[p].dtype = dtype_code(fp.dtype);
    numel += fp.numel;
  }
  *chunk = worklist_chunk(numel, at::cuda::getDeviceProperties(device.index())->multiProcessorCount);
  return views;
}

// The items (gh_worklist.h: build_items, torch-free and unit-tested on CPU), then the device copy.
WorkList build_worklist(const std::vector<FlatParam>& params, int64_t K, const at::Device& device, bool with_out,
                        const uint8_t* gram_mask = nullptr, PlanCache cache = {}) {
  int64_t chunk = 0;
  const std::vector<ParamView> views = param_views(params, device, &chunk);
  const HostWorkList host_list = build_items(views, K, with_out, gram_mask, chunk);
  WorkList wl;
  wl.groups = host_list.groups;
  wl.total = static_cast<int64_t>(host_list.items.size());
  if (wl.total == 0) return wl;
  const int64_t bytes = host_list.bytes();
  const bool cached = cache.host != nullptr && cache.device != nullptr && cache.device->device() == device;
  if (cached && cache_hit(cache.host->data_ptr(), cache.host->numel(), cache.device->numel(), host_list)) {
    wl.device_items = *cache.device;  // the plan's copy is current
    return wl;
  }
  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), host_list.items.data(), bytes);
  // Pinned -> device copy on the current stream: asynchronous, no host synchronization; the
  // caching host allocator keeps `host` alive until the copy has run.
  if (cache.host != nullptr && cache.device != nullptr) {
    TORCH_CHECK(cache.device->device() == device, "gh_kernels: cache_device is on ", cache.device->device(),
                " but the gradients are on ", device);
    if (cache.device->numel() < bytes) cache.device->resize_({bytes});
    cache.device->narrow(0, 0, bytes).copy_(host, /*non_blocking=*/true);
    cache.host->resize_({bytes});
    std::memcpy(cache.host->data_ptr(), host_list.items.data(), bytes);
    wl.device_items = *cache.device;
  } else {
    wl.device_items = host.to(device, /*non_blocking=*/true);
  }
  return wl;
}

at::Device first_device(const c10::List<std::optional<at::Tensor>>& tensors) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    std::optional<at::Tensor> t = tensors.get(i);
    if (t.has_value() && t->defined()) return t->device();
  }
  TORCH_CHECK(false, "gh_kernels: tensors contains no tensor");
}

// NOTE: [Wide work list] (gh_worklist.h): above kMaxSets sets, the items and the pointer table in one device buffer.
struct WideList {
  at::Tensor device;                           // items, then the table
  std::vector<std::pair<int, int64_t>> groups;  // (dtype code, item count)
  int64_t total = 0, item_bytes = 0;
  const WideItem* items() const { return total ? reinterpret_cast<const WideItem*>(device.data_ptr()) : nullptr; }
  const void* const* table() const {
    return total ? reinterpret_cast<const void* const*>(static_cast<const unsigned char*>(device.data_ptr()) + item_bytes)
                 : nullptr;
  }
};

WideList build_wide_list(const std::vector<FlatParam>& params, int64_t K, const at::Device& device, bool with_out) {
  int64_t chunk = 0;
  const std::vector<ParamView> views = param_views(params, device, &chunk);
  const HostWideList host_list = build_wide_items(views, K, with_out, nullptr, chunk);
  WideList wl;
  wl.groups = host_list.groups;
  wl.total = static_cast<int64_t>(host_list.items.size());
  wl.item_bytes = host_list.item_bytes();
  if (wl.total == 0) return wl;
  const std::vector<unsigned char> bytes = host_list.serialize();
  at::Tensor host = at::empty({static_cast<int64_t>(bytes.size())}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), bytes.data(), bytes.size());
  wl.device = host.to(device, /*non_blocking=*/true);  // as build_worklist: asynchronous, from pinned memory
  return wl;
}

const WorkItem* items_of(const WorkList& wl) {
  return wl.total ? reinterpret_cast<const WorkItem*>(wl.device_items.data_ptr()) : nullptr;
}

// The Gram pass over a work list into G (K x K, float32 or float64), on the current stream
// (gh_cuda_passes.h: the launches, shared with the CUDA-on-CPU tests).
void gram_pass(const WorkList& wl, int64_t K, at::Tensor& G) {
  if (wl.total == 0) return;  // G stays zero
  at::Tensor partials = at::empty({gram_partials_count(wl.total)}, G.options().dtype(at::kDouble));
  C10_CUDA_CHECK(run_gram_pass(items_of(wl), wl.groups, static_cast<int>(K), partials.data_ptr<double>(), G.data_ptr(),
                               G.scalar_type() == at::kDouble, at::cuda::getCurrentCUDAStream()));
}

// Zero the outs of parameters no set has: the work list has no item for them (combine and TrimmedMean
// of zeros are zero).
void zero_unreached(std::vector<FlatParam>& params, at::TensorList out, int64_t K) {
  for (size_t p = 0; p < params.size(); ++p) {
    bool any = false;
    for (int k = 0; k < K; ++k) any = any || params[p].in[k] != nullptr;
    if (!any && params[p].numel > 0) (params[p].out_target.defined() ? params[p].out_temp : out[p]).zero_();
  }
}

// out = sum_k w[k] in_k (+ out) over a work list; zero the outs of parameters no set has (unless accumulating).
void combine_pass(std::vector<FlatParam>& params, at::TensorList out, const WorkList& wl, int64_t K, const double* w,
                  bool accumulate, int32_t* nonfinite = nullptr) {
  if (!accumulate) zero_unreached(params, out, K);
  C10_CUDA_CHECK(run_combine_pass(items_of(wl), wl.groups, static_cast<int>(K), w, accumulate, nonfinite,
                                  at::cuda::getCurrentCUDAStream()));
  finish_out(params);
}

}  // namespace

at::Tensor gram_cuda(const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets) {
  const at::Device device = first_device(tensors);
  c10::cuda::CUDAGuard guard(device);
  auto params = prepare_params(tensors, num_sets, {}, /*with_out=*/false, c10::DeviceType::CUDA, kMaxWideSets);
  if (num_sets > kMaxSets) {  // NOTE: [Wide work list]
    WideList wl = build_wide_list(params, num_sets, device, /*with_out=*/false);
    at::Tensor G = at::zeros({num_sets, num_sets}, at::TensorOptions().dtype(result_dtype(params)).device(device));
    if (wl.total == 0) return G;
    at::Tensor partials = at::empty({wide_gram_partials_count(wl.total, static_cast<int>(num_sets))},
                                    G.options().dtype(at::kDouble));
    C10_CUDA_CHECK(run_wide_gram_pass(wl.items(), wl.table(), wl.groups, static_cast<int>(num_sets),
                                      partials.data_ptr<double>(), G.data_ptr(), G.scalar_type() == at::kDouble,
                                      at::cuda::getCurrentCUDAStream()));
    return G;
  }
  WorkList wl = build_worklist(params, num_sets, device, /*with_out=*/false);
  at::Tensor G = at::zeros({num_sets, num_sets}, at::TensorOptions().dtype(result_dtype(params)).device(device));
  gram_pass(wl, num_sets, G);
  return G;
}

void combine_cuda(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets,
                  const at::Tensor& weights, bool accumulate, const std::optional<at::Tensor>& nonfinite) {
  if (out.empty()) return;
  const at::Device device = out[0].device();
  c10::cuda::CUDAGuard guard(device);
  int32_t* flag = nonfinite_flag(nonfinite, c10::DeviceType::CUDA);
  TORCH_CHECK(weights.device() == device, "gh_kernels: weights is on ", weights.device(), " but out is on ", device);
  TORCH_CHECK(weights.numel() == num_sets, "gh_kernels: weights has ", weights.numel(), " entries, expected num_sets=", num_sets);
  auto params = prepare_params(tensors, num_sets, out, /*with_out=*/true, c10::DeviceType::CUDA, kMaxWideSets);
  check_out_aliasing(out, tensors, num_sets);
  const at::Tensor w = weights.to(at::kDouble).contiguous();
  if (num_sets > kMaxSets) {  // NOTE: [Wide work list]
    WideList wl = build_wide_list(params, num_sets, device, /*with_out=*/true);
    if (!accumulate) zero_unreached(params, out, num_sets);
    C10_CUDA_CHECK(run_wide_combine_pass(wl.items(), wl.table(), wl.groups, static_cast<int>(num_sets),
                                         w.data_ptr<double>(), accumulate, flag, at::cuda::getCurrentCUDAStream()));
    finish_out(params);
    bump_versions(out);
    return;
  }
  WorkList wl = build_worklist(params, num_sets, device, /*with_out=*/true);
  combine_pass(params, out, wl, num_sets, w.data_ptr<double>(), accumulate, flag);
  bump_versions(out);
}

void coordinate_cuda(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets,
                     c10::string_view rule, int64_t trim, const std::optional<at::Tensor>& leak, bool accumulate) {
  const int code = coordinate_rule_code(rule);
  TORCH_CHECK(code != kCoordinateTrimmedMean || (trim >= 0 && 2 * trim < num_sets), "gh_kernels: trim must satisfy "
              "0 <= 2 * trim < ", num_sets, "; got ", trim);
  if (out.empty()) return;
  const at::Device device = out[0].device();
  c10::cuda::CUDAGuard guard(device);
  auto params = prepare_params(tensors, num_sets, out, /*with_out=*/true, c10::DeviceType::CUDA);
  check_out_aliasing(out, tensors, num_sets);
  at::Tensor lk;
  if (code == kCoordinateGradDrop) {
    TORCH_CHECK(num_sets >= 2, "gh_kernels: graddrop takes the K gradient sets and the draws (num_sets >= 2)");
    TORCH_CHECK(leak.has_value() && leak->defined() && leak->numel() == num_sets - 1 && leak->device() == device,
                "gh_kernels: graddrop needs leak: ", num_sets - 1, " values on ", device);
    for (size_t p = 0; p < params.size(); ++p)
      TORCH_CHECK(params[p].numel == 0 || params[p].in[num_sets - 1] != nullptr, "gh_kernels: graddrop's draws (the last "
                  "set) miss parameter ", p);
    lk = leak->to(at::kDouble).contiguous();
  }
  WorkList wl = build_worklist(params, num_sets, device, /*with_out=*/true);
  if (!accumulate) zero_unreached(params, out, num_sets);
  C10_CUDA_CHECK(run_coordinate_pass(items_of(wl), wl.groups, static_cast<int>(num_sets), code, static_cast<int>(trim),
                                     lk.defined() ? lk.data_ptr<double>() : nullptr, accumulate,
                                     at::cuda::getCurrentCUDAStream()));
  finish_out(params);
  bump_versions(out);
}

at::Tensor weights_cuda(const at::Tensor& gram, c10::string_view method, double kappa) {
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == 2 && gram.size(1) == 2, "gh_kernels: gram must have shape (2, 2), got ", gram.sizes());
  TORCH_CHECK(kappa >= 0.0 && kappa <= 1.0, "gh_kernels: kappa must be in [0, 1], got ", kappa);
  c10::cuda::CUDAGuard guard(gram.device());
  const bool f64 = gram.scalar_type() == at::kDouble;
  const at::Tensor G = gram.to(f64 ? at::kDouble : at::kFloat).contiguous();
  at::Tensor w = at::empty({2}, G.options());
  C10_CUDA_CHECK(launch_weights(G.data_ptr(), w.data_ptr(), f64, nullptr, method_code(method), kappa, 1.0, 1.0,
                                at::cuda::getCurrentCUDAStream()));
  return w;
}

std::tuple<at::Tensor, at::Tensor> harmonize_cuda(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors,
                                                  const std::optional<at::Tensor>& gram_mask, c10::string_view method,
                                                  double kappa, double scale1, double scale2, bool accumulate,
                                                  const std::optional<at::Tensor>& cache_host,
                                                  const std::optional<at::Tensor>& cache_device) {
  TORCH_CHECK(!out.empty(), "gh_kernels: out is empty");
  TORCH_CHECK(kappa >= 0.0 && kappa <= 1.0, "gh_kernels: kappa must be in [0, 1], got ", kappa);
  const int code = method_code(method);
  const at::Device device = out[0].device();
  c10::cuda::CUDAGuard guard(device);
  auto params = prepare_params(tensors, 2, out, /*with_out=*/true, c10::DeviceType::CUDA);
  check_out_aliasing(out, tensors, 2);
  at::Tensor mask_bytes;
  if (gram_mask.has_value() && gram_mask->defined()) {
    TORCH_CHECK(gram_mask->device().is_cpu() && gram_mask->numel() == static_cast<int64_t>(out.size()),
                "gh_kernels: gram_mask must be a CPU tensor with one entry per parameter (", out.size(), ")");
    mask_bytes = gram_mask->to(at::kByte).contiguous();
  }
  // One work list for both passes (the Gram pass skips kNotInGram items and reads inputs only).
  PlanCache cache;
  if (cache_host.has_value() && cache_device.has_value() && cache_host->defined() && cache_device->defined()) {
    TORCH_CHECK(cache_host->device().is_cpu() && cache_host->scalar_type() == at::kByte && cache_device->scalar_type() == at::kByte,
                "gh_kernels: cache_host must be a CPU uint8 tensor and cache_device a uint8 tensor");
    cache.host = &*cache_host;
    cache.device = &*cache_device;
  }
  WorkList wl = build_worklist(params, 2, device, /*with_out=*/true,
                               mask_bytes.defined() ? mask_bytes.data_ptr<uint8_t>() : nullptr, cache);
  const at::ScalarType dtype = result_dtype(params);
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  at::Tensor G = at::zeros({2, 2}, options);
  at::Tensor w = at::empty({2}, options);
  at::Tensor scaled = at::empty({2}, options.dtype(at::kDouble));
  at::Tensor partials = at::empty({gram_partials_count(wl.total)}, options.dtype(at::kDouble));
  if (!accumulate) zero_unreached(params, out, 2);
  C10_CUDA_CHECK(run_harmonize_passes(items_of(wl), wl.groups, partials.data_ptr<double>(), G.data_ptr(), w.data_ptr(),
                                      dtype == at::kDouble, scaled.data_ptr<double>(), code, kappa, scale1, scale2,
                                      accumulate, at::cuda::getCurrentCUDAStream()));
  finish_out(params);
  bump_versions(out);
  return {G, w};
}

}  // namespace cuda
}  // namespace gh
