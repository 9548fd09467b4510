"""The fused ``harmonize_`` op for backends whose kernels are Python (torch, triton): Gram over the
parameters ``gram_mask`` selects, weights, and one combine with the weights times (scale1, scale2),
built from the backend's own three kernels. (The C++ backends fuse them in C++.)"""
from __future__ import annotations

import torch

from .._ops import result_dtype


def harmonize_from(gram, weights, combine_):
    def harmonize_(out, tensors, gram_mask, method, kappa, scale1, scale2, accumulate, cache_host=None, cache_device=None):
        P = len(out)
        selected = tensors
        if gram_mask is not None:
            keep = gram_mask.tolist()  # a CPU tensor: no device synchronization
            selected = [t if keep[i % P] else None for i, t in enumerate(tensors)]
        present = [t for t in selected if t is not None and t.numel()]
        if present:
            G = gram(selected, 2)
        else:
            device = next(t.device for t in list(tensors) + list(out) if t is not None)
            G = torch.zeros((2, 2), dtype=result_dtype(tensors), device=device)
        w = weights(G, method, kappa)
        scaled = w if scale1 == 1.0 and scale2 == 1.0 else torch.stack((w[0] * scale1, w[1] * scale2))
        combine_(out, tensors, 2, scaled, accumulate)
        return G, w
    return harmonize_
