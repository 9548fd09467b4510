"""The validated internal layer: run an op with the chosen backend on arguments already checked.

The public functions (``functional.py``) and the step engine validate their arguments
(``validate.py``) and call these; nothing below re-checks. (The fused step runs through
:class:`gh_kernels.plan.Plan`, which holds its ops.) Each function resolves the backend
(:func:`gh_kernels.backends.resolve`) and calls that backend's op overload through the dispatcher.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .. import backends
from .constants import MAX_SETS
from .validate import TensorOrNone, flatten_sets


def gram(sets: Sequence[List[TensorOrNone]], device: torch.device, backend: Optional[str]) -> torch.Tensor:
    """K x K Gram matrix of validated sets on ``device`` (float32; float64 when a gradient is float64)."""
    name = backends.resolve(backend, device, len(sets))
    return backends.kernel(name, "gram")(flatten_sets(sets), len(sets))


def weights(G: torch.Tensor, method: str, kappa: float, backend: Optional[str]) -> torch.Tensor:
    """(2,) weights from a 2x2 Gram matrix, for a checked ``method``/``kappa`` (float64 for a float64 G)."""
    name = backends.resolve(backend, G.device, 2)
    return backends.kernel(name, "weights")(G if G.dtype == torch.float64 else G.to(torch.float32), method, float(kappa))


def combine(w: torch.Tensor, sets: Sequence[List[TensorOrNone]], device: torch.device,
            out: Optional[List[torch.Tensor]], accumulate: bool, backend: Optional[str],
            nonfinite: Optional[torch.Tensor] = None) -> List[TensorOrNone]:
    """``out[p] (+)= sum_k w[k] sets[k][p]`` for float32 (or float64) ``w`` on ``device`` and a validated ``out``
    list, or new tensors when ``out`` is None (``None`` where no set has the parameter). ``nonfinite``: the
    combine's flag (NOTE: [Non-finite flag of the combine])."""
    K = len(sets)
    P = len(sets[0])
    if out is None:
        out = new_outs(sets)
    idx = [p for p in range(P) if out[p] is not None]
    if idx:
        if len(idx) < P:  # only out=None leaves holes; the kernels see the present parameters only
            sub_sets = [[s[p] for p in idx] for s in sets]
            sub_out = [out[p] for p in idx]
        else:
            sub_sets, sub_out = sets, out
        name = backends.resolve(backend, device, K)
        backends.kernel(name, "combine_")(sub_out, flatten_sets(sub_sets), K, w, bool(accumulate), nonfinite)
    return out


def cross_gram(sets: Sequence[List[TensorOrNone]], device: torch.device, backend: Optional[str]) -> torch.Tensor:
    """NOTE: [Cross-batch Gram]: ``J_1 J_2^T`` (K x K) for 2K validated sets (batch 1's K, then batch 2's), from
    gram calls of at most the kernels' MAX_SETS sets: one call when 2K fits, else one per pair of task blocks
    (MAX_SETS / 2 tasks of each batch), whose off-diagonal blocks are the cross matrix's."""
    K = len(sets) // 2
    name = backends.resolve(backend, device, K)
    limit = backends.BACKENDS[name].max_sets
    if limit is None or 2 * K <= limit:
        return gram(sets, device, name)[:K, K:]
    half = limit // 2
    rows = []
    for a in range(0, K, half):
        first = sets[a:min(a + half, K)]
        row = []
        for b in range(0, K, half):
            second = sets[K + b:K + b + half]
            row.append(gram(list(first) + list(second), device, name)[:len(first), len(first):])
        rows.append(torch.cat(row, dim=1))
    return torch.cat(rows, dim=0)


def combine_sets(w: torch.Tensor, sets: Sequence[List[TensorOrNone]], device: torch.device,
                 out: Optional[List[TensorOrNone]], accumulate: bool, backend: Optional[str],
                 nonfinite: Optional[torch.Tensor] = None) -> List[TensorOrNone]:
    """:func:`combine` for any number of sets: above the kernels' MAX_SETS, one call per block of sets (the
    later ones accumulating), unless an ``out`` tensor shares memory with an input of a later block (it would
    be read after being written): then one call on the torch backend. ``out=None``: new tensors, as :func:`combine`."""
    name = backends.resolve(backend, device, min(len(sets), MAX_SETS))
    limit = backends.BACKENDS[name].max_sets
    if limit is None or len(sets) <= limit:
        return combine(w, sets, device, out, accumulate, name, nonfinite)
    out = new_outs(sets) if out is None else out
    # by memory, not by object: a view of a later block's input would be written before it is read (the out=
    # rules leave exact same-memory aliasing of a parameter's own input as the only sharing, so addresses tell)
    later = {t.data_ptr() for s in sets[limit:] for t in s if t is not None and t.numel()}
    if any(o is not None and o.numel() and o.data_ptr() in later for o in out):
        return combine(w, sets, device, out, accumulate, "torch", nonfinite)
    for start in range(0, len(sets), limit):  # the last block writes the final values: it sets the flag
        last = start + limit >= len(sets)
        combine(w[start:start + limit], sets[start:start + limit], device, out, accumulate or start > 0, name,
                nonfinite if last else None)
    return out


def coordinate(rule, sets: Sequence[List[TensorOrNone]], device: torch.device, out: Optional[List[torch.Tensor]],
               backend: Optional[str]) -> List[TensorOrNone]:
    """A per-coordinate method's update (``rule``: a checked :class:`~gh_kernels.weighting.coordinate.CoordinateRule`)
    into a validated ``out``, or new tensors when ``out`` is None (``None`` where no set has the parameter)."""
    if out is None:
        out = new_outs(sets)
    idx = [p for p in range(len(sets[0])) if out[p] is not None]
    if idx:
        sub_sets = sets if len(idx) == len(sets[0]) else [[s[p] for p in idx] for s in sets]
        rule.run([out[p] for p in idx], flatten_sets(sub_sets), False, backend, device)
    return out


def new_outs(sets: Sequence[List[TensorOrNone]]) -> List[TensorOrNone]:
    """Tensors like the inputs, one per parameter (None where no set has the parameter)."""
    like = [next((s[p] for s in sets if s[p] is not None), None) for p in range(len(sets[0]))]
    return [None if t is None else torch.empty_like(t, memory_format=torch.preserve_format) for t in like]
