"""Pure-torch kernels: the default implementation of every op on every device.

No ``torch.cat`` of gradients and no host synchronization. Dot products run per parameter
(``torch.dot`` on float32 views; half-precision tensors are upcast one parameter at a time,
so the transient copy is at most the largest parameter, never the whole gradient). The
combine uses ``torch._foreach_*`` ops with the weights as 0-dim device tensors, in place.
Non-contiguous tensors are handled by ``reshape`` (a per-parameter copy) in the Gram pass and
by strided in-place ops in the combine.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch


def _as_f32_flat(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1)
    return t if t.dtype == torch.float32 else t.to(torch.float32)


def gram(tensors: Sequence[Optional[torch.Tensor]], num_sets: int) -> torch.Tensor:
    """K x K float32 Gram matrix of ``num_sets`` sets laid out set-major in ``tensors``."""
    K = num_sets
    P = len(tensors) // K
    device = next(t.device for t in tensors if t is not None)
    pairs = [(i, j) for i in range(K) for j in range(i, K)]
    terms: List[List[torch.Tensor]] = [[] for _ in pairs]
    for p in range(P):
        flats = [None if tensors[k * P + p] is None else _as_f32_flat(tensors[k * P + p]) for k in range(K)]
        for q, (i, j) in enumerate(pairs):
            if flats[i] is not None and flats[j] is not None and flats[i].numel() > 0:
                terms[q].append(torch.dot(flats[i], flats[j]))
    zero = torch.zeros((), dtype=torch.float32, device=device)
    vals = torch.stack([torch.stack(t).sum() if t else zero for t in terms])
    G = torch.zeros(K, K, dtype=torch.float32, device=device)
    iu = torch.triu_indices(K, K, device=device)
    G[iu[0], iu[1]] = vals
    G[iu[1], iu[0]] = vals
    return G


def combine_(
    out: Sequence[torch.Tensor],
    tensors: Sequence[Optional[torch.Tensor]],
    num_sets: int,
    weights: torch.Tensor,
    accumulate: bool,
) -> None:
    """``out[p] = sum_k weights[k] * set_k[p]`` (``+= `` when accumulating), in place.

    ``out[p]`` may be the very tensor ``set_k[p]`` (in-place harmonization); every element
    is read before it is written, so aliasing is exact.
    """
    K = num_sets
    P = len(out)
    w = weights.to(torch.float32)
    w_k = [w[k] for k in range(K)]
    # Group parameters by which set (if any) out[p] aliases, so each group is a few foreach calls.
    groups = {}
    for p in range(P):
        o = out[p]
        present = tuple(k for k in range(K) if tensors[k * P + p] is not None)
        alias = next((k for k in present if tensors[k * P + p] is o or _same_memory(tensors[k * P + p], o)), -1)
        groups.setdefault((alias, present), []).append(p)
    for (alias, present), ps in groups.items():
        outs = [out[p] for p in ps]
        if alias >= 0:
            # out holds set_alias: scale it first (by w, or 1 + w when accumulating onto itself).
            torch._foreach_mul_(outs, w_k[alias] + 1 if accumulate else w_k[alias])
        elif not accumulate:
            torch._foreach_zero_(outs)
        for k in present:
            if k == alias:
                continue
            ins = [tensors[k * P + p] for p in ps]
            torch._foreach_addcmul_(outs, ins, [w_k[k]] * len(ps))


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Under torch.compile tensors have no storage to compare: aliasing is recognised by identity there.
    if torch.compiler.is_compiling():
        return False
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.numel() > 0


def weights(G: torch.Tensor, method: str, kappa: float) -> torch.Tensor:
    from .methods import solve_weights_torch

    return solve_weights_torch(G, method, kappa)
