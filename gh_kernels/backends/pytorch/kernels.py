"""Pure-torch kernels of the ``"torch"`` backend: every op, on every device, for any number of sets;
float32 accumulation (float64 for float64 gradients).

No ``torch.cat`` of gradients and no host synchronization.

* Gram: ``torch.dot`` splits its sum across threads above a size (8192 elements with MKL), so its
  result would change with the thread count. A tensor of at most ``BLOCK`` elements gets one
  ``torch.dot`` (serial at that size); a larger one is cut into rows of ``BLOCK`` elements whose
  float32 sums ATen computes one row per thread in a fixed order. Each pair's pieces are then
  summed in float64 in a fixed order: bitwise the same result for any thread count, and about
  one op per parameter and pair. Rows are processed ``ROWS_PER_CALL`` at a time and 16-bit rows
  upcast per slice, so temporaries stay a few MB even for a 100M-element tensor.
* Combine: ``y = sum_k w_k * float32(x_k) (+ float32(out))`` into fresh float32 temporaries,
  then ``out.copy_(y)``. Every input is read before any output is written, so ``out`` may alias
  any input (the same tensor in several sets included), and 16-bit gradients get float32
  intermediates (no overflow of ``w*x`` in float16). Large contiguous parameters are cut into
  flat chunks of ``CHUNK`` elements and chunks are processed in batches of about
  ``BATCH_ELEMENTS`` elements, which bounds the temporaries. Chunking keeps the result exact: the
  one aliasing the API allows, ``out[p]`` being an input of parameter ``p``, aliases chunk for chunk.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ...weighting.gh import solve_weights_torch
from ..compose import harmonize_from

BLOCK = 4096
ROWS_PER_CALL = 256  # rows per vecdot call: a 4 MB product temporary, not one the size of the tensor
CHUNK = 1 << 20
BATCH_ELEMENTS = 1 << 20


def _fixed_order_sum(v: torch.Tensor) -> torch.Tensor:
    """Sum of a float64 vector in an order that does not depend on the thread count."""
    while v.numel() > BLOCK:  # ATen splits one large reduction across threads; rows of BLOCK it does not
        pad = (-v.numel()) % BLOCK
        if pad:
            v = torch.cat([v, v.new_zeros(pad)])
        v = v.view(-1, BLOCK).sum(1)
    return v.sum()


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 gradients, float32 for the others."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _split(t: torch.Tensor):
    """A flat tensor as (rows of BLOCK elements in its own dtype, or None; the rest in its accumulation dtype)."""
    n = t.numel()
    full = n - n % BLOCK if n > BLOCK else 0
    return (t[:full].view(-1, BLOCK) if full else None), t[full:].to(_acc(t.dtype))


def _dot_pieces(a, b, scalars: List[torch.Tensor], rows: List[torch.Tensor]) -> None:
    """Append <a, b> of two split tensors as pieces (float32; float64 for float64 gradients) whose sum is
    thread-count independent."""
    if a[0] is not None and len(a[0]) <= ROWS_PER_CALL and a[0].dtype in (torch.float32, torch.float64):
        rows.append(torch.linalg.vecdot(a[0], b[0], dim=1))  # one row per thread, each in a fixed order
    elif a[0] is not None:  # float32 slices of ROWS_PER_CALL rows
        acc = _acc(a[0].dtype)
        rows += [torch.linalg.vecdot(a[0][r:r + ROWS_PER_CALL].to(acc), b[0][r:r + ROWS_PER_CALL].to(acc), dim=1)
                 for r in range(0, len(a[0]), ROWS_PER_CALL)]
    if a[1].numel():
        scalars.append(torch.dot(a[1], b[1]))  # at most BLOCK elements: serial


def gram(tensors: Sequence[Optional[torch.Tensor]], num_sets: int) -> torch.Tensor:
    """K x K Gram matrix (float32; float64 when a gradient is float64) of ``num_sets`` sets laid out set-major."""
    K = num_sets
    P = len(tensors) // K
    device = next(t.device for t in tensors if t is not None)
    pairs = [(i, j) for i in range(K) for j in range(i, K)]
    scalars: List[List[torch.Tensor]] = [[] for _ in pairs]
    rows: List[List[torch.Tensor]] = [[] for _ in pairs]
    for p in range(P):
        flats = [None if tensors[k * P + p] is None else _split(tensors[k * P + p].reshape(-1)) for k in range(K)]
        for q, (i, j) in enumerate(pairs):
            if flats[i] is not None and flats[j] is not None:
                _dot_pieces(flats[i], flats[j], scalars[q], rows[q])
    zero = torch.zeros((), dtype=torch.float64, device=device)
    sums = []
    for sc, rw in zip(scalars, rows):
        pieces = rw + ([torch.stack(sc)] if sc else [])
        sums.append(_fixed_order_sum(torch.cat([x.double() for x in pieces])) if pieces else zero)
    dtype = torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
    vals = torch.stack(sums).to(dtype)
    G = torch.zeros(K, K, dtype=dtype, device=device)
    iu = torch.triu_indices(K, K, device=device)
    G[iu[0], iu[1]] = vals
    G[iu[1], iu[0]] = vals
    return G


def _chunks(out, tensors, num_sets):
    """(out, [input per set or None]) items: large contiguous parameters as flat CHUNK-element pieces."""
    P = len(out)
    for p, o in enumerate(out):
        ins = [tensors[k * P + p] for k in range(num_sets)]
        if o.numel() > CHUNK and o.is_contiguous() and all(t is None or t.is_contiguous() for t in ins):
            flat_o, flat_in = o.view(-1), [None if t is None else t.view(-1) for t in ins]
            for s in range(0, o.numel(), CHUNK):
                yield flat_o[s:s + CHUNK], [None if t is None else t[s:s + CHUNK] for t in flat_in]
        else:
            yield o, ins


def _batches(items):
    batches, current, size = [], [], 0
    for item in items:
        current.append(item)
        size += item[0].numel()
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
    """``out[p] = sum_k weights[k] * set_k[p]`` (``+=`` when accumulating), in float32 (float64 for float64
    gradients), then written."""
    K = num_sets
    w_by_acc = {}  # accumulation dtype -> the weights in it, converted once and only when a group needs it
    groups = {}  # items with the same present sets and accumulation dtype: a few foreach calls per batch
    for o, ins in _chunks(out, tensors, K):
        groups.setdefault((tuple(k for k in range(K) if ins[k] is not None), _acc(o.dtype)), []).append((o, ins))
    for (present, acc), items in groups.items():
        if acc not in w_by_acc:
            w_by_acc[acc] = list(weights.to(acc))
        w_k = w_by_acc[acc]
        for batch in _batches(items):
            outs = [o for o, _ in batch]
            if not present:
                if not accumulate:
                    torch._foreach_zero_(outs)
                continue
            y = torch._foreach_mul([ins[present[0]].to(acc) for _, ins in batch], w_k[present[0]])
            for k in present[1:]:
                torch._foreach_addcmul_(y, [ins[k].to(acc) for _, ins in batch], [w_k[k]] * len(batch))
            if accumulate:
                torch._foreach_add_(y, [o.to(acc) for o in outs])
            torch._foreach_copy_(outs, y)


def weights(G: torch.Tensor, method: str, kappa: float) -> torch.Tensor:
    return solve_weights_torch(G, method, kappa)


harmonize_ = harmonize_from(gram, weights, combine_)
