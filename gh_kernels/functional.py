"""Public functional API: ``gram``, ``weights``, ``combine``, ``harmonize``.

Shapes and dtypes: a *gradient set* is a list/tuple with one tensor per parameter (``None``
means a zero gradient) or a single tensor. Gradients may be float32, bfloat16, float16 or float64
and must match set-to-set per parameter (shape, dtype); everything lives on one device. All
accumulation is float32 (float64 for float64 gradients); weights and Gram matrices are float32
device tensors (float64 when a gradient is float64). Nothing here synchronizes with the host.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch

from . import _dispatch
from ._validate import GradSet, TensorOrNone, as_set, check_grad_sets, check_out
from .methods import check_method


class HarmonizeOutput(NamedTuple):
    """What :func:`harmonize` computed, as device tensors (nothing is copied to the host)."""

    out: List[TensorOrNone]  #: w1*g1 + w2*g2 per parameter (the ``out`` list, or new tensors)
    weights: torch.Tensor  #: (2,): (w1, w2), float32 (float64 for float64 gradients)
    gram: torch.Tensor  #: (2, 2) Gram matrix of g1 and g2, float32 (float64 for float64 gradients)


def gram(grads: Sequence[GradSet], *, backend: Optional[str] = None) -> torch.Tensor:
    """K x K Gram matrix ``G[i, j] = <grads[i], grads[j]>`` on the sets' device.

    One pass over the data; float32 accumulation and result (float64 when a gradient is float64).
    """
    sets, device = check_grad_sets(grads)
    return _dispatch.gram(sets, device, backend)


def weights(G: torch.Tensor, method: str = "gh", *, kappa: float = 0.5, backend: Optional[str] = None) -> torch.Tensor:
    """Weights ``(w1, w2)`` of docs/METHOD.md from the 2x2 Gram matrix ``G``: (2,) on G's device,
    float32 (float64 for a float64 ``G``).

    ``method``: ``"sum"``, ``"gh"``, ``"gh++"`` (geometric GH++) or ``"gh++released"``;
    ``kappa`` in [0, 1] splits the GH++ turn (0.5: equal shares). No host synchronization.
    See :mod:`gh_kernels.methods` for the edge-case rules (no conflict, zero or non-finite
    gradients: ``(1, 1)``; GH++ near 180 degrees: GH weights).
    """
    check_method(method, kappa)
    if not isinstance(G, torch.Tensor) or G.shape != (2, 2):
        shape = tuple(G.shape) if isinstance(G, torch.Tensor) else type(G).__name__
        raise ValueError(f"G must be the 2x2 Gram matrix of two gradient sets (a tensor of shape (2, 2)); got {shape}")
    if not G.is_floating_point():
        raise TypeError(f"G must be a floating-point tensor, got {G.dtype}")
    return _dispatch.weights(G, method, kappa, backend)


def combine(
    w,
    grads: Sequence[GradSet],
    *,
    out: Optional[Sequence[torch.Tensor]] = None,
    accumulate: bool = False,
    backend: Optional[str] = None,
) -> List[Optional[torch.Tensor]]:
    """``out[p] = sum_k w[k] * grads[k][p]`` (``+ out[p]`` when ``accumulate``), one fused pass.

    ``w``: K weights, a float tensor on the gradients' device (read there, no sync).
    ``out``: per-parameter tensors to write (may be one of the input sets: in place);
    default: new tensors like the inputs (``None`` where every set has ``None``).
    ``out[p]`` may be exactly an input tensor of parameter ``p``; any other memory overlap, an
    ``out`` that requires grad, or a sparse/meta tensor raises before anything is written
    (:mod:`gh_kernels._memory`). Written tensors get their autograd version counter bumped.
    Returns ``out`` (a list).
    """
    sets, device = check_grad_sets(grads)
    K = len(sets)
    if not isinstance(w, torch.Tensor):
        w = torch.as_tensor(w, dtype=torch.float32, device=device)
    if w.shape != (K,):
        raise ValueError(f"w must have shape ({K},) for {K} gradient sets; got {tuple(w.shape)}")
    if w.device != device:
        raise ValueError(f"w is on {w.device} but the gradients are on {device}")
    if not w.is_floating_point():
        raise TypeError(f"w must be a floating-point tensor, got {w.dtype}")
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs out= (the tensors to add to)")
    else:
        out = list(as_set(out, "out"))
        check_out(out, sets)
    w = w if w.dtype == torch.float64 else w.to(torch.float32)
    return _dispatch.combine(w, sets, device, out, accumulate, backend)


def harmonize(
    g1: GradSet,
    g2: GradSet,
    *,
    method: str = "gh",
    kappa: float = 0.5,
    out: Optional[Sequence[torch.Tensor]] = None,
    backend: Optional[str] = None,
) -> HarmonizeOutput:
    """Gram matrix, weights and combine: ``w1*g1 + w2*g2`` per parameter, and what it was computed from.

    ``out``: the tensors to write (``out=g2``, or g1, harmonizes in place); default new tensors.
    Returns ``HarmonizeOutput(out, weights, gram)``. One call of the fused op (Gram pass, weights,
    combine pass), no host sync, no flat copies. For a loop that calls it every step on the same
    lists, :func:`gh_kernels.plan` checks the arguments once instead of every call.
    """
    check_method(method, kappa)
    sets, device = check_grad_sets([g1, g2], set_names=("g1", "g2"))
    if out is not None:
        out = list(as_set(out, "out"))
        check_out(out, sets, set_names=("g1", "g2"))
    out, G, w = _dispatch.harmonize(sets, device, out, method, kappa, backend)
    return HarmonizeOutput(out, w, G)
