"""The ops, declared once: schemas, fake (meta) kernels and the in-place bookkeeping.

Every op has one overload per backend, so every backend is reached through the dispatcher
(``torch.compile`` sees one opaque op; ``torch.library.opcheck`` checks each backend):
``torch.ops.gh_kernels.gram.cpu``, ``torch.ops.gh_kernels.combine_.triton``, ... Each backend
registers its kernels for its overloads beside its code (``gh_kernels/backends/<name>/``);
:mod:`gh_kernels.backends.registry` chooses the overload that serves a call.

Layout of ``tensors``: ``num_sets`` gradient sets of ``P`` tensors each, set-major
(``tensors[k * P + p]`` is set ``k``'s gradient of parameter ``p``); ``None`` means zero.

* ``gram.<backend>(Tensor?[] tensors, int num_sets) -> Tensor``: K x K float32 Gram matrix.
* ``weights.<backend>(Tensor gram, str method, float kappa) -> Tensor``: (2,) float32 weights.
* ``combine_.<backend>(Tensor(a!)[] out, Tensor?[] tensors, int num_sets, Tensor weights,
  bool accumulate, Tensor(b!)? nonfinite=None) -> ()``: ``out[p] (+)= sum_k weights[k] * tensors[k*P + p]``,
  in place; ``out[p]`` may be one of the inputs. ``nonfinite`` (one int32 on the gradients' device) is set to 1
  when a written value is non-finite, never cleared (NOTE: [Non-finite flag of the combine] in
  csrc/include/gh_tensor_utils.h).
* ``harmonize_.<backend>(Tensor(a!)[] out, Tensor?[] tensors, Tensor? gram_mask, str method,
  float kappa, float scale1, float scale2, bool accumulate) -> (Tensor, Tensor)``: the three
  above in one call for two sets: the Gram matrix over the parameters ``gram_mask`` (a CPU bool
  tensor, one entry per parameter; all when None) selects, the weights ``w``, and
  ``out[p] (+)= scale1 w1 g1[p] + scale2 w2 g2[p]``. Returns ``(gram, w)``. ``cache_host`` (CPU
  uint8) and ``cache_device`` (uint8 on the gradients' device) are a plan's work-list cache, used by
  the CUDA kernel (see ``csrc/cuda/ops_cuda.cpp``) and ignored by the others.

* ``coordinate_.<backend>(Tensor(a!)[] out, Tensor?[] tensors, int num_sets, str rule, int trim,
  Tensor? leak, bool accumulate) -> ()``: the per-coordinate methods, one pass, in place:
  ``rule="trimmed-mean"``: ``out[p] (+)=`` per element, the mean of the ``num_sets`` values without the
  ``trim`` smallest and ``trim`` largest; ``rule="graddrop"``: the last of the ``num_sets`` sets holds
  uniform draws U (K = num_sets - 1 gradient sets) and ``out[p] (+)= sum_k (leak_k + (1 - leak_k) M_k)
  g_k`` with ``M_k = (P > U and g_k > 0) or (P < U and g_k < 0)``, ``P = (1 + sum g / sum |g|) / 2``
  (GradDrop's lines 10-15; ``leak``: K values on the gradients' device). A set without a gradient
  counts as zeros, as in a stacked Jacobian.

The Gram matrix and the weights are float64 when a gradient is float64, else float32.

``combine_`` and ``harmonize_`` write through raw pointers, which autograd cannot see: the
version counter of every ``out`` tensor is bumped (as ``torch.library.custom_op`` does for
mutable arguments), so a tensor saved for backward and then overwritten raises in backward
instead of giving wrong gradients. The C++ kernels bump in C++; the Python backends get an
``ADInplaceOrView`` kernel registered here.
"""
from __future__ import annotations

import torch

LIBRARY_NAME = "gh_kernels"
#: One overload of every op per backend (the names of gh_kernels.backends.registry.BACKENDS).
OVERLOADS = ("torch", "cpu", "cuda", "triton")
#: Backends whose kernels are Python: they get the version-bumping ADInplaceOrView kernel from here.
PYTHON_KERNELS = ("torch", "triton")

_lib = torch.library.Library(LIBRARY_NAME, "DEF")


def result_dtype(tensors) -> torch.dtype:
    """dtype of the Gram matrix and weights: float64 when a gradient is float64, else float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _fake_device(tensors) -> torch.device:
    """Where a fake kernel's results live: "meta" when a real meta tensor reached the op (so callers that skip
    the Python checks can tell that nothing was computed), else the tensors' (fake) device."""
    present = [t for t in tensors if t is not None]
    return torch.device("meta") if any(t.device.type == "meta" for t in present) else present[0].device


def _gram_fake(tensors, num_sets):
    return torch.empty((num_sets, num_sets), dtype=result_dtype(tensors), device=_fake_device(tensors))


def _weights_fake(gram, method, kappa):
    return torch.empty((2,), dtype=torch.float64 if gram.dtype == torch.float64 else torch.float32, device=gram.device)


def _combine_fake(out, tensors, num_sets, weights, accumulate, nonfinite=None):
    # combine_ returns nothing a caller could look at: a real meta tensor among real ones (the dispatcher
    # then runs this kernel and nothing is written) is refused here, for the callers to name it.
    types = {t.device.type for t in list(out) + list(tensors) if t is not None}
    if "meta" in types and len(types) > 1:
        raise RuntimeError("gh_kernels: combine_ got meta tensors among tensors with data; nothing was written")
    return None


def _coordinate_fake(out, tensors, num_sets, rule, trim, leak, accumulate):
    return _combine_fake(out, tensors, num_sets, leak, accumulate)


def _harmonize_fake(out, tensors, gram_mask, method, kappa, scale1, scale2, accumulate, cache_host=None, cache_device=None):
    device = _fake_device(list(tensors) + list(out))
    dtype = result_dtype(tensors)
    return torch.empty((2, 2), dtype=dtype, device=device), torch.empty((2,), dtype=dtype, device=device)


def bump_versions(tensors) -> None:
    """Tell autograd that ``tensors`` were modified in place."""
    torch.autograd.graph.increment_version([t for t in tensors if t is not None])


def _bump_after(overload):
    """ADInplaceOrView kernel of an op whose first argument is the list it writes."""
    def kernel(keyset, out, *args):
        with torch._C._AutoDispatchBelowADInplaceOrView():
            result = overload.redispatch(keyset & torch._C._after_ADInplaceOrView_keyset, out, *args)
        bump_versions(out)
        return result
    return kernel


for _name in OVERLOADS:
    _lib.define(f"gram.{_name}(Tensor?[] tensors, int num_sets) -> Tensor")
    _lib.define(f"weights.{_name}(Tensor gram, str method, float kappa) -> Tensor")
    _lib.define(f"combine_.{_name}(Tensor(a!)[] out, Tensor?[] tensors, int num_sets, Tensor weights, bool accumulate, "
                "Tensor(b!)? nonfinite=None) -> ()")
    _lib.define(f"harmonize_.{_name}(Tensor(a!)[] out, Tensor?[] tensors, Tensor? gram_mask, str method, float kappa, "
                "float scale1, float scale2, bool accumulate, Tensor(b!)? cache_host=None, Tensor(c!)? cache_device=None) "
                "-> (Tensor, Tensor)")
    torch.library.register_fake(f"{LIBRARY_NAME}::gram.{_name}", _gram_fake, lib=_lib)
    torch.library.register_fake(f"{LIBRARY_NAME}::weights.{_name}", _weights_fake, lib=_lib)
    torch.library.register_fake(f"{LIBRARY_NAME}::combine_.{_name}", _combine_fake, lib=_lib)
    _lib.define(f"coordinate_.{_name}(Tensor(a!)[] out, Tensor?[] tensors, int num_sets, str rule, int trim, "
                "Tensor? leak, bool accumulate) -> ()")
    torch.library.register_fake(f"{LIBRARY_NAME}::harmonize_.{_name}", _harmonize_fake, lib=_lib)
    torch.library.register_fake(f"{LIBRARY_NAME}::coordinate_.{_name}", _coordinate_fake, lib=_lib)
    if _name in PYTHON_KERNELS:
        for _op in ("combine_", "harmonize_", "coordinate_"):
            _lib.impl(f"{_op}.{_name}", _bump_after(getattr(getattr(torch.ops.gh_kernels, _op), _name)),
                      "ADInplaceOrView", with_keyset=True)


def op(name: str, backend: str):
    """The overload of op ``name`` (``"gram"``, ``"weights"``, ``"combine_"``, ...) that runs ``backend``'s kernel."""
    return getattr(getattr(torch.ops.gh_kernels, name), backend)


def has_kernel(name: str, backend: str, dispatch_key: str) -> bool:
    """Whether op ``name``'s ``backend`` overload has a kernel for ``dispatch_key`` itself."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{LIBRARY_NAME}::{name}.{backend}", dispatch_key)


def register_kernels(backend: str, dispatch_key: str, gram, weights, combine_, harmonize_, coordinate_) -> None:
    """Register a Python backend's kernels for its overloads under ``dispatch_key``."""
    _lib.impl(f"coordinate_.{backend}", coordinate_, dispatch_key)
    _lib.impl(f"gram.{backend}", gram, dispatch_key)
    _lib.impl(f"weights.{backend}", weights, dispatch_key)
    _lib.impl(f"combine_.{backend}", combine_, dispatch_key)
    _lib.impl(f"harmonize_.{backend}", harmonize_, dispatch_key)
