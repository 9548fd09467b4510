"""The fused ``harmonize_`` op for backends whose kernels are Python (torch, triton): Gram over the
parameters ``gram_mask`` selects, weights, and one combine with the weights times (scale1, scale2),
built from the backend's own three kernels. (The C++ backends fuse them in C++.) The helpers are
shared with the Triton backend's cached variant (``triton/fused.py``)."""
from __future__ import annotations

import torch

from ..ops.library import result_dtype


def select_for_gram(out, tensors, gram_mask):
    """``tensors`` with the parameters ``gram_mask`` leaves out set to None, or None when no element is left."""
    selected = tensors
    if gram_mask is not None:
        keep = gram_mask.tolist()  # a CPU tensor: no device synchronization
        P = len(out)
        selected = [t if keep[i % P] else None for i, t in enumerate(tensors)]
    return selected if any(t is not None and t.numel() for t in selected) else None


def zero_gram(out, tensors) -> torch.Tensor:
    """The Gram matrix of nothing: zeros in the dtype a Gram of ``tensors`` would have."""
    device = next(t.device for t in list(tensors) + list(out) if t is not None)
    return torch.zeros((2, 2), dtype=result_dtype(tensors), device=device)


def scaled(w: torch.Tensor, scale1: float, scale2: float) -> torch.Tensor:
    """(w1 scale1, w2 scale2) on w's device (no host copy)."""
    return w if scale1 == 1.0 and scale2 == 1.0 else torch.stack((w[0] * scale1, w[1] * scale2))


def harmonize_from(gram, weights, combine_):
    def harmonize_(out, tensors, gram_mask, method, kappa, scale1, scale2, accumulate, cache_host=None, cache_device=None):
        selected = select_for_gram(out, tensors, gram_mask)
        G = gram(selected, 2) if selected is not None else zero_gram(out, tensors)
        w = weights(G, method, kappa)
        combine_(out, tensors, 2, scaled(w, scale1, scale2), accumulate)
        return G, w
    return harmonize_
