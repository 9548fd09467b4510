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
  bool accumulate) -> ()``: ``out[p] (+)= sum_k weights[k] * tensors[k*P + p]``, in place;
  ``out[p]`` may be one of the inputs.

``combine_`` writes through raw pointers in the C++ and Triton kernels, which autograd cannot
see: an ``ADInplaceOrView`` kernel bumps the version counter of every ``out`` tensor (as
``torch.library.custom_op`` does for mutable arguments), so a tensor saved for backward and then
overwritten raises in backward instead of giving wrong gradients.
"""
from __future__ import annotations

import torch

LIBRARY_NAME = "gh_kernels"
#: One overload of every op per backend (the names of gh_kernels.backends.registry.BACKENDS).
OVERLOADS = ("torch", "cpu", "cuda", "triton")

_lib = torch.library.Library(LIBRARY_NAME, "DEF")


def _gram_fake(tensors, num_sets):
    device = next(t.device for t in tensors if t is not None)
    return torch.empty((num_sets, num_sets), dtype=torch.float32, device=device)


def _weights_fake(gram, method, kappa):
    return torch.empty((2,), dtype=torch.float32, device=gram.device)


def _combine_fake(out, tensors, num_sets, weights, accumulate):
    return None


def bump_versions(tensors) -> None:
    """Tell autograd that ``tensors`` were modified in place."""
    torch.autograd.graph.increment_version([t for t in tensors if t is not None])


def _combine_adinplaceorview(overload):
    def kernel(keyset, out, tensors, num_sets, weights, accumulate):
        with torch._C._AutoDispatchBelowADInplaceOrView():
            overload.redispatch(keyset & torch._C._after_ADInplaceOrView_keyset, out, tensors, num_sets, weights, accumulate)
        bump_versions(out)
    return kernel


for _name in OVERLOADS:
    _lib.define(f"gram.{_name}(Tensor?[] tensors, int num_sets) -> Tensor")
    _lib.define(f"weights.{_name}(Tensor gram, str method, float kappa) -> Tensor")
    _lib.define(f"combine_.{_name}(Tensor(a!)[] out, Tensor?[] tensors, int num_sets, Tensor weights, bool accumulate) -> ()")
    torch.library.register_fake(f"{LIBRARY_NAME}::gram.{_name}", _gram_fake, lib=_lib)
    torch.library.register_fake(f"{LIBRARY_NAME}::weights.{_name}", _weights_fake, lib=_lib)
    torch.library.register_fake(f"{LIBRARY_NAME}::combine_.{_name}", _combine_fake, lib=_lib)
    _lib.impl(f"combine_.{_name}", _combine_adinplaceorview(getattr(torch.ops.gh_kernels.combine_, _name)),
              "ADInplaceOrView", with_keyset=True)


def op(name: str, backend: str):
    """The overload of op ``name`` (``"gram"``, ``"weights"``, ``"combine_"``) that runs ``backend``'s kernel."""
    return getattr(getattr(torch.ops.gh_kernels, name), backend)


def has_kernel(name: str, backend: str, dispatch_key: str) -> bool:
    """Whether op ``name``'s ``backend`` overload has a kernel for ``dispatch_key`` itself."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{LIBRARY_NAME}::{name}.{backend}", dispatch_key)


def register_kernels(backend: str, dispatch_key: str, gram, weights, combine_) -> None:
    """Register a Python backend's three kernels for its overloads under ``dispatch_key``."""
    _lib.impl(f"gram.{backend}", gram, dispatch_key)
    _lib.impl(f"weights.{backend}", weights, dispatch_key)
    _lib.impl(f"combine_.{backend}", combine_, dispatch_key)
