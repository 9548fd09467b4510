"""Pure-torch kernels: the default implementation of every op on every device.

No ``torch.cat`` of gradients and no host synchronization.

* Gram: ``torch.dot`` splits its sum across threads above a size (8192 elements with MKL), so its
  result would change with the thread count. A tensor of at most ``BLOCK`` elements gets one
  ``torch.dot`` (serial at that size); a larger one is cut into rows of ``BLOCK`` elements whose
  float32 sums ATen computes one row per thread in a fixed order. Each pair's pieces are then
  summed in float64 in a fixed order: bitwise the same result for any thread count, and about
  one op per parameter and pair. Half-precision tensors are upcast one parameter at a time.
* Combine: ``y = sum_k w_k * float32(x_k) (+ float32(out))`` into fresh float32 temporaries,
  then ``out.copy_(y)``. Every input is read before any output is written, so ``out`` may alias
  any input (the same tensor in several sets included), and 16-bit gradients get float32
  intermediates (no overflow of ``w*x`` in float16). Parameters are processed in batches of at
  most ``BATCH_ELEMENTS`` elements, which bounds the temporaries.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

BLOCK = 4096
BATCH_ELEMENTS = 1 << 24


def _fixed_order_sum(v: torch.Tensor) -> torch.Tensor:
    """Sum of a float64 vector in an order that does not depend on the thread count."""
    while v.numel() > BLOCK:  # ATen splits one large reduction across threads; rows of BLOCK it does not
        pad = (-v.numel()) % BLOCK
        if pad:
            v = torch.cat([v, v.new_zeros(pad)])
        v = v.view(-1, BLOCK).sum(1)
    return v.sum()


def _split(t: torch.Tensor):
    """A flat float32 tensor as (rows of BLOCK elements or None, the rest): the pieces ``_dot_pieces`` sums."""
    n = t.numel()
    full = n - n % BLOCK if n > BLOCK else 0
    return (t[:full].view(-1, BLOCK) if full else None), t[full:]


def _dot_pieces(a, b, scalars: List[torch.Tensor], rows: List[torch.Tensor]) -> None:
    """Append <a, b> of two split tensors as float32 pieces whose sum is thread-count independent."""
    if a[0] is not None:
        rows.append(torch.linalg.vecdot(a[0], b[0], dim=1))  # one row per thread, each in a fixed order
    if a[1].numel():
        scalars.append(torch.dot(a[1], b[1]))  # at most BLOCK elements: serial


def _as_f32_flat(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1)
    return t if t.dtype == torch.float32 else t.to(torch.float32)


def gram(tensors: Sequence[Optional[torch.Tensor]], num_sets: int) -> torch.Tensor:
    """K x K float32 Gram matrix of ``num_sets`` sets laid out set-major in ``tensors``."""
    K = num_sets
    P = len(tensors) // K
    device = next(t.device for t in tensors if t is not None)
    pairs = [(i, j) for i in range(K) for j in range(i, K)]
    scalars: List[List[torch.Tensor]] = [[] for _ in pairs]
    rows: List[List[torch.Tensor]] = [[] for _ in pairs]
    for p in range(P):
        flats = [None if tensors[k * P + p] is None else _split(_as_f32_flat(tensors[k * P + p])) for k in range(K)]
        for q, (i, j) in enumerate(pairs):
            if flats[i] is not None and flats[j] is not None:
                _dot_pieces(flats[i], flats[j], scalars[q], rows[q])
    zero = torch.zeros((), dtype=torch.float64, device=device)
    sums = []
    for sc, rw in zip(scalars, rows):
        pieces = rw + ([torch.stack(sc)] if sc else [])
        sums.append(_fixed_order_sum(torch.cat(pieces).double()) if pieces else zero)
    vals = torch.stack(sums).to(torch.float32)
    G = torch.zeros(K, K, dtype=torch.float32, device=device)
    iu = torch.triu_indices(K, K, device=device)
    G[iu[0], iu[1]] = vals
    G[iu[1], iu[0]] = vals
    return G


def _batches(ps: List[int], out: Sequence[torch.Tensor]) -> List[List[int]]:
    batches, current, size = [], [], 0
    for p in ps:
        current.append(p)
        size += out[p].numel()
        if size >= BATCH_ELEMENTS:
            batches.append(current)
            current, size = [], 0
    return batches + ([current] if current else [])


def combine_(
    out: Sequence[torch.Tensor],
    tensors: Sequence[Optional[torch.Tensor]],
    num_sets: int,
    weights: torch.Tensor,
    accumulate: bool,
) -> None:
    """``out[p] = sum_k weights[k] * set_k[p]`` (``+=`` when accumulating), in float32, then written."""
    K = num_sets
    P = len(out)
    w = weights.to(torch.float32)
    w_k = [w[k] for k in range(K)]
    groups = {}  # parameters with the same present sets: a few foreach calls per group
    for p in range(P):
        groups.setdefault(tuple(k for k in range(K) if tensors[k * P + p] is not None), []).append(p)
    for present, ps in groups.items():
        for batch in _batches(ps, out):
            outs = [out[p] for p in batch]
            if not present:
                if not accumulate:
                    torch._foreach_zero_(outs)
                continue
            first = present[0]
            y = torch._foreach_mul([tensors[first * P + p].to(torch.float32) for p in batch], w_k[first])
            for k in present[1:]:
                ins = [tensors[k * P + p].to(torch.float32) for p in batch]
                torch._foreach_addcmul_(y, ins, [w_k[k]] * len(batch))
            if accumulate:
                torch._foreach_add_(y, [o.to(torch.float32) for o in outs])
            torch._foreach_copy_(outs, y)


def weights(G: torch.Tensor, method: str, kappa: float) -> torch.Tensor:
    from .methods import solve_weights_torch

    return solve_weights_torch(G, method, kappa)
