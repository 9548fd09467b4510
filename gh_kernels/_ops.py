"""The three ops, declared once: schema, fake (meta) kernel, and the pure-torch default kernel.

Layout of ``tensors``: ``num_sets`` gradient sets of ``P`` tensors each, set-major
(``tensors[k * P + p]`` is set ``k``'s gradient of parameter ``p``); ``None`` means zero.

* ``gh_kernels::gram(Tensor?[] tensors, int num_sets) -> Tensor``: K x K float32 Gram matrix.
* ``gh_kernels::weights(Tensor gram, str method, float kappa) -> Tensor``: (2,) float32 weights.
* ``gh_kernels::combine_(Tensor(a!)[] out, Tensor?[] tensors, int num_sets, Tensor weights,
  bool accumulate) -> ()``: ``out[p] (+)= sum_k weights[k] * tensors[k*P + p]``, in place;
  ``out[p]`` may be one of the inputs.

``combine_`` writes through raw pointers in the C++ and Triton kernels, which autograd cannot
see: an ``ADInplaceOrView`` kernel bumps the version counter of every ``out`` tensor (as
``torch.library.custom_op`` does for mutable arguments), so a tensor saved for backward and then
overwritten raises in backward instead of giving wrong gradients.

The pure-torch kernels are registered under ``CompositeExplicitAutograd`` (every device).
Faster kernels register under the ``CPU``/``CUDA`` keys and take precedence: the C++
extension from ``csrc/`` (``TORCH_LIBRARY_IMPL``), or the Triton kernels for ``CUDA`` when the
extension has no CUDA kernels (see ``backends.py``).
"""
from __future__ import annotations

import torch

from . import torch_backend

LIBRARY_NAME = "gh_kernels"

_lib = torch.library.Library(LIBRARY_NAME, "DEF")
_lib.define("gram(Tensor?[] tensors, int num_sets) -> Tensor")
_lib.define("weights(Tensor gram, str method, float kappa) -> Tensor")
_lib.define(
    "combine_(Tensor(a!)[] out, Tensor?[] tensors, int num_sets, Tensor weights, bool accumulate) -> ()"
)

_lib.impl("gram", torch_backend.gram, "CompositeExplicitAutograd")
_lib.impl("weights", torch_backend.weights, "CompositeExplicitAutograd")
_lib.impl("combine_", torch_backend.combine_, "CompositeExplicitAutograd")


def bump_versions(tensors) -> None:
    """Tell autograd that ``tensors`` were modified in place."""
    torch.autograd.graph.increment_version([t for t in tensors if t is not None])


def with_version_bump(combine_):
    """A combine kernel called outside the dispatcher misses the ADInplaceOrView kernel below: bump here."""
    def combine_and_bump(out, *args):
        combine_(out, *args)
        bump_versions(out)
    return combine_and_bump


def _combine_adinplaceorview(keyset, out, tensors, num_sets, weights, accumulate):
    with torch._C._AutoDispatchBelowADInplaceOrView():
        torch.ops.gh_kernels.combine_.default.redispatch(
            keyset & torch._C._after_ADInplaceOrView_keyset, out, tensors, num_sets, weights, accumulate)
    bump_versions(out)


_lib.impl("combine_", _combine_adinplaceorview, "ADInplaceOrView", with_keyset=True)


@torch.library.register_fake(f"{LIBRARY_NAME}::gram", lib=_lib)
def _gram_fake(tensors, num_sets):
    device = next(t.device for t in tensors if t is not None)
    return torch.empty((num_sets, num_sets), dtype=torch.float32, device=device)


@torch.library.register_fake(f"{LIBRARY_NAME}::weights", lib=_lib)
def _weights_fake(gram, method, kappa):
    return torch.empty((2,), dtype=torch.float32, device=gram.device)


@torch.library.register_fake(f"{LIBRARY_NAME}::combine_", lib=_lib)
def _combine_fake(out, tensors, num_sets, weights, accumulate):
    return None


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``gh_kernels::<op>`` has a kernel registered for ``dispatch_key`` itself."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{LIBRARY_NAME}::{op}", dispatch_key)


def register_python_kernel(op: str, dispatch_key: str, fn) -> None:
    """Register a Python kernel (the Triton launchers) for one dispatch key."""
    _lib.impl(op, fn, dispatch_key)
