// Torch-side helpers shared by the CPU and CUDA glue: argument checks and "flat" views.
//
// The kernels see every parameter as K (+1 for combine) flat arrays of one dtype that index
// the same elements. A parameter whose tensors are all contiguous, or all dense with the same
// strides (channels_last, transposed), is used in place; otherwise the inputs are copied to
// contiguous tensors and a non-contiguous out is computed into a contiguous temporary and
// copied back (documented; gradients are dense in practice).
#pragma once
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <c10/util/SmallVector.h>

#include <algorithm>

#include <optional>
#include <string>
#include <vector>

#include "gh_weights.h"

namespace gh {

// The method name of the weights op -> its code (gh_constants.h, kMethodNames).
inline int method_code(c10::string_view method) {
  for (int code = 0; code < kNumMethods; ++code)
    if (method == kMethodNames[code]) return code;
  TORCH_CHECK(false, "gh_kernels: method must be one of 'sum', 'gh', 'gh++', 'gh++released'; got '", std::string(method), "'");
}

// The code of a per-coordinate rule name (gh::CoordinateRule), or an error naming it.
inline int coordinate_rule_code(c10::string_view rule) {
  for (int r = 0; r < kNumCoordinateRules; ++r)
    if (rule == kCoordinateRuleNames[r]) return r;
  TORCH_CHECK(false, "gh_kernels: rule must be 'trimmed-mean' or 'graddrop'; got '", std::string(rule), "'");
}

struct FlatParam {
  int64_t numel = 0;
  at::ScalarType dtype = at::kFloat;
  c10::SmallVector<const void*, kMaxSets> in;  // one per set (inline up to kMaxSets); nullptr: that set has no gradient
  void* out = nullptr;
  std::vector<at::Tensor> keep_alive;  // contiguous copies made for this parameter
  at::Tensor out_temp, out_target;     // out computed into out_temp, then copied into out_target
};

inline bool is_supported(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

// dtype of the Gram matrix and the weights: float64 when any gradient is float64, else float32.
inline at::ScalarType result_dtype(const std::vector<FlatParam>& params) {
  for (const auto& fp : params)
    if (fp.numel > 0 && fp.dtype == at::kDouble) return at::kDouble;
  return at::kFloat;
}

// max_sets of a kernel that takes any number of sets (the CPU Gram and combine).
constexpr int64_t kAnySets = -1;

// Validates the op arguments and returns one FlatParam per parameter. max_sets: the most sets the calling
// kernel takes (kMaxSets for the fixed-width kernels, or kAnySets).
inline std::vector<FlatParam> prepare_params(const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets,
                                             at::TensorList out, bool with_out, c10::DeviceType device_type,
                                             int64_t max_sets = kMaxSets) {
  if (max_sets == kAnySets) {
    TORCH_CHECK(num_sets >= 1, "gh_kernels: num_sets must be >= 1, got ", num_sets);
  } else {
    TORCH_CHECK(num_sets >= 1 && num_sets <= max_sets, "gh_kernels: num_sets must be in [1, ", max_sets,
                "] for these C++ kernels, got ", num_sets);
  }
  const int64_t total = static_cast<int64_t>(tensors.size());
  TORCH_CHECK(total % num_sets == 0, "gh_kernels: tensors has ", total, " entries, not a multiple of num_sets=", num_sets);
  const int64_t P = total / num_sets;
  if (with_out) TORCH_CHECK(static_cast<int64_t>(out.size()) == P, "gh_kernels: out has ", out.size(), " tensors, expected ", P);
  std::vector<FlatParam> params(P);
  std::optional<at::Device> device;
  for (int64_t p = 0; p < P; ++p) {
    FlatParam& fp = params[p];
    fp.in.assign(static_cast<size_t>(num_sets), nullptr);
    c10::SmallVector<at::Tensor, kMaxSets> ins(static_cast<size_t>(num_sets));  // undefined: no gradient for this parameter
    const at::Tensor* ref = nullptr;
    for (int64_t k = 0; k < num_sets; ++k) {
      std::optional<at::Tensor> t = tensors.get(k * P + p);
      if (!t.has_value() || !t->defined()) continue;
      ins[k] = *t;
      TORCH_CHECK(t->device().type() == device_type, "gh_kernels: tensors[", k * P + p, "] is on ", t->device(),
                  ", expected a ", c10::DeviceTypeName(device_type), " tensor");
      TORCH_CHECK(t->layout() == at::kStrided, "gh_kernels: tensors[", k * P + p, "] has layout ", t->layout(),
                  "; gradients must be dense (strided)");
      if (!device.has_value()) device = t->device();
      TORCH_CHECK(t->device() == *device, "gh_kernels: tensors[", k * P + p, "] is on ", t->device(), " but another tensor is on ",
                  *device, ": all gradients must share one device");
      TORCH_CHECK(is_supported(t->scalar_type()), "gh_kernels: tensors[", k * P + p, "] has dtype ", t->scalar_type(),
                  "; supported: float32, bfloat16, float16, float64");
      if (ref == nullptr) {
        ref = &ins[k];
      } else {
        TORCH_CHECK(t->sizes() == ref->sizes(), "gh_kernels: tensors[", k * P + p, "] has shape ", t->sizes(),
                    " but another set has ", ref->sizes(), " for parameter ", p);
        TORCH_CHECK(t->scalar_type() == ref->scalar_type(), "gh_kernels: tensors[", k * P + p, "] has dtype ",
                    t->scalar_type(), " but another set has ", ref->scalar_type(), " for parameter ", p);
        TORCH_CHECK(t->device() == ref->device(), "gh_kernels: tensors[", k * P + p, "] is on ", t->device(),
                    " but another set is on ", ref->device());
      }
    }
    at::Tensor o;
    if (with_out) {
      o = out[p];
      TORCH_CHECK(o.defined(), "gh_kernels: out[", p, "] is undefined");
      TORCH_CHECK(o.device().type() == device_type, "gh_kernels: out[", p, "] is on ", o.device());
      TORCH_CHECK(o.layout() == at::kStrided, "gh_kernels: out[", p, "] has layout ", o.layout(), "; out must be dense (strided)");
      if (!device.has_value()) device = o.device();
      TORCH_CHECK(o.device() == *device, "gh_kernels: out[", p, "] is on ", o.device(), " but the gradients are on ", *device);
      TORCH_CHECK(is_supported(o.scalar_type()), "gh_kernels: out[", p, "] has dtype ", o.scalar_type());
      if (ref != nullptr) {
        TORCH_CHECK(o.sizes() == ref->sizes(), "gh_kernels: out[", p, "] has shape ", o.sizes(), " but the gradients have ", ref->sizes());
        TORCH_CHECK(o.scalar_type() == ref->scalar_type(), "gh_kernels: out[", p, "] has dtype ", o.scalar_type(),
                    " but the gradients have ", ref->scalar_type());
        TORCH_CHECK(o.device() == ref->device(), "gh_kernels: out[", p, "] is on ", o.device(), " but the gradients are on ", ref->device());
      }
      ref = ref ? ref : &o;
    }
    if (ref == nullptr) continue;  // no set has this parameter and there is no out: nothing to do
    fp.numel = ref->numel();
    fp.dtype = ref->scalar_type();
    if (fp.numel == 0) continue;
    // Flat in place when every participant is dense with the same strides.
    bool flat_ok = ref->is_non_overlapping_and_dense();
    for (int64_t k = 0; k < num_sets && flat_ok; ++k)
      if (ins[k].defined()) flat_ok = ins[k].is_non_overlapping_and_dense() && ins[k].strides() == ref->strides();
    if (with_out && flat_ok) flat_ok = o.is_non_overlapping_and_dense() && o.strides() == ref->strides();
    for (int64_t k = 0; k < num_sets; ++k) {
      if (!ins[k].defined()) continue;
      if (flat_ok || ins[k].is_contiguous()) {
        fp.in[k] = ins[k].data_ptr();
      } else {
        fp.keep_alive.push_back(ins[k].contiguous());
        fp.in[k] = fp.keep_alive.back().data_ptr();
      }
    }
    if (with_out) {
      if (flat_ok || o.is_contiguous()) {
        fp.out = o.data_ptr();
      } else {
        // Same layout as the (now contiguous) inputs; starts as a copy of out for accumulate/alias.
        fp.out_temp = o.contiguous();
        fp.out_target = o;
        fp.out = fp.out_temp.data_ptr();
        // An input that is this very out must be read from the same temporary.
        for (int64_t k = 0; k < num_sets; ++k)
          if (ins[k].defined() && ins[k].is_same(o)) fp.in[k] = fp.out;
      }
    }
  }
  return params;
}

// [first byte, one past the last byte] of a non-empty tensor (strides are >= 0).
inline std::pair<uintptr_t, uintptr_t> byte_extent(const at::Tensor& t) {
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  const uintptr_t lo = reinterpret_cast<uintptr_t>(t.data_ptr());
  return {lo, lo + static_cast<uintptr_t>((last + 1) * t.element_size())};
}

// NOTE: [Self-overlap] (gh_kernels/ops/memory.py): dimensions sorted by stride must each step past
// everything the smaller ones reach; otherwise two elements may share memory.
inline bool self_overlaps(const at::Tensor& t) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size)
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.size(d) > 1) dims.emplace_back(t.stride(d), t.size(d));
  std::sort(dims.begin(), dims.end());
  int64_t reach = 0;
  for (const auto& sd : dims) {
    if (sd.first <= reach) return true;
    reach += (sd.second - 1) * sd.first;
  }
  return false;
}

// The out= memory rules of gh_kernels/ops/memory.py, checked before anything is written: out[p] may
// be exactly an input of parameter p (same address, shape and strides); any other overlap of an
// out with an out or an input, or an out whose own elements overlap, is an error naming indices.
inline void check_out_aliasing(at::TensorList out, const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets) {
  const int64_t P = static_cast<int64_t>(out.size());
  std::vector<std::tuple<uintptr_t, uintptr_t, int64_t>> outs;  // (lo, hi, p)
  outs.reserve(P);
  for (int64_t p = 0; p < P; ++p) {
    const at::Tensor& o = out[p];
    if (!o.defined() || o.numel() == 0) continue;
    TORCH_CHECK(!o.requires_grad(), "gh_kernels: out[", p, "] requires grad; write into gradient buffers (detached tensors)");
    TORCH_CHECK(!o.is_inference() || c10::InferenceMode::is_enabled(), "gh_kernels: out[", p,
                "] is an inference tensor: it cannot be written in place outside torch.inference_mode()");
    TORCH_CHECK(o.is_contiguous() || !self_overlaps(o), "gh_kernels: out[", p,
                "] has elements that share memory (an expand()-ed, stride-0 or overlapping as_strided tensor)");
    const auto e = byte_extent(o);
    outs.emplace_back(e.first, e.second, p);
  }
  if (outs.empty()) return;
  std::sort(outs.begin(), outs.end());
  for (size_t i = 1; i < outs.size(); ++i)
    TORCH_CHECK(std::get<0>(outs[i]) >= std::get<1>(outs[i - 1]), "gh_kernels: out[", std::get<2>(outs[i - 1]),
                "] and out[", std::get<2>(outs[i]), "] overlap in memory");
  for (int64_t i = 0; i < static_cast<int64_t>(tensors.size()); ++i) {
    const std::optional<at::Tensor> t = tensors.get(i);
    if (!t.has_value() || !t->defined() || t->numel() == 0) continue;
    const int64_t p = i % P;
    const at::Tensor& own = out[p];
    const bool same_view = own.defined() && t->data_ptr() == own.data_ptr() && t->sizes() == own.sizes() &&
                           t->strides() == own.strides();
    if (same_view) continue;
    const auto e = byte_extent(*t);
    // the last out starting before this input ends (outs are disjoint and sorted)
    auto it = std::lower_bound(outs.begin(), outs.end(), e.second,
                               [](const std::tuple<uintptr_t, uintptr_t, int64_t>& a, uintptr_t v) { return std::get<0>(a) < v; });
    if (it == outs.begin()) continue;
    --it;
    TORCH_CHECK(std::get<1>(*it) <= e.first, "gh_kernels: out[", std::get<2>(*it), "] overlaps tensors[", i,
                "] (set ", i / P, ", parameter ", p, ") in memory: out[q] may only be exactly an input of parameter q");
  }
}

// Autograd's version counters of the written tensors (what an ADInplaceOrView kernel does), so that
// a tensor saved for backward and overwritten here makes backward raise.
inline void bump_versions(at::TensorList out) {
  for (const auto& o : out)
    if (o.defined()) o.unsafeGetTensorImpl()->bump_version();
}

// NOTE: [Non-finite flag of the combine]: combine_ takes an optional `nonfinite` tensor (one int32 on the
// gradients' device) and sets it to 1 when a value it writes is non-finite; it never clears it. The check is
// one compare per written element inside the combine pass (no extra pass over the gradients); every writer
// stores the same 1, so the result does not depend on threads or blocks. A stateful method commits its new
// state under it (gh_kernels/weighting/stateful.py): a non-finite head gradient, which the Gram matrix over
// the shared parameters never sees, still keeps the state (GradScaler skips that step).
inline int32_t* nonfinite_flag(const std::optional<at::Tensor>& nonfinite, c10::DeviceType device) {
  if (!nonfinite.has_value() || !nonfinite->defined()) return nullptr;
  const at::Tensor& f = *nonfinite;
  TORCH_CHECK(f.scalar_type() == at::kInt && f.numel() == 1 && f.is_contiguous() && f.device().type() == device,
              "gh_kernels: nonfinite must be one contiguous int32 on the gradients' device; got ", f.scalar_type(), " of ",
              f.numel(), " elements on ", f.device());
  return f.data_ptr<int32_t>();
}

inline void finish_out(std::vector<FlatParam>& params) {
  for (auto& fp : params)
    if (fp.out_target.defined()) fp.out_target.copy_(fp.out_temp);
}

}  // namespace gh
