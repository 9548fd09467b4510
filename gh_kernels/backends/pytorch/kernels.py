"""Pure-torch kernels of the ``"torch"`` backend: every op, on every device, for any number of sets;
float32 accumulation (float64 for float64 gradients).

No ``torch.cat`` of gradients and no host synchronization.

* Gram: ``torch.dot`` splits its sum across threads above a size (8192 elements with MKL), so its
  result would change with the thread count. Sums are instead taken over rows of ``BLOCK``
  elements, which ATen reduces one row per thread in a fixed order, and each pair's row sums are
  added in float64 in a fixed order: bitwise the same result for any thread count.
  NOTE: [Small tensors in rows]: the tensors of at most ``BLOCK`` elements (most of a model's
  parameters, by count) are laid end to end, per set, into zero-padded rows of a batch buffer of
  at most ``BATCH_ELEMENTS`` (one ``torch.cat`` per set and batch, absent sets as zeros), so a
  batch costs K copies and K(K+1)/2 ``vecdot`` calls whatever its tensor count: per-tensor ops
  made the planned call cost 40x one ``_foreach_add_``. A larger tensor is cut into rows of its
  own (its tail in float32), ``ROWS_PER_CALL`` rows per call with 16-bit rows upcast per slice, so
  temporaries stay a few MB even for a 100M-element tensor.
* Combine: ``y = sum_k w_k * float32(x_k) (+ float32(out))`` into fresh float32 temporaries,
  then ``out.copy_(y)``. Every input is read before any output is written, so ``out`` may alias
  any input (the same tensor in several sets included), and 16-bit gradients get float32
  intermediates (no overflow of ``w*x`` in float16). Large contiguous parameters are cut into
  flat chunks of ``CHUNK`` elements and chunks are processed in batches of about
  ``BATCH_ELEMENTS`` elements, which bounds the temporaries. Chunking keeps the result exact: the
  one aliasing the API allows, ``out[p]`` being an input of parameter ``p``, aliases chunk for chunk.
"""
from __future__ import annotations

import itertools
import operator
from typing import List, Optional, Sequence

import torch

from ...weighting.gh import solve_weights_torch
from ...weighting.linalg import constant
from ..compose import harmonize_from

BLOCK = 4096
_DTYPE = operator.attrgetter("dtype")
_flatten = torch._C._nn.flatten_dense_tensors
ROWS_PER_CALL = 256  # rows per vecdot call: a 4 MB product temporary, not one the size of the tensor
CHUNK = 1 << 20
BATCH_ELEMENTS = 1 << 20


def _fixed_order_sum(v: torch.Tensor) -> torch.Tensor:
    """Sum of a float64 vector in an order that does not depend on the thread count."""
    return _fixed_order_sum_rows(v[None])[0]


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


def _layout(tensors, K: int, P: int):
    """Per parameter: its element count and dtype (from the first set that has it), and which sets have it
    (None: every set, the common case, found without a per-parameter loop)."""
    if not any(map(operator.is_, tensors, itertools.repeat(None))):  # identity: `None in` would call Tensor.__eq__
        firsts = tensors[:P]
        return list(map(torch.Tensor.numel, firsts)), list(map(_DTYPE, firsts)), None
    sizes, dtypes, present = [0] * P, [None] * P, []
    for p in range(P):
        have = tuple(k for k in range(K) if tensors[k * P + p] is not None)
        present.append(have)
        if have:
            sizes[p], dtypes[p] = tensors[have[0] * P + p].numel(), tensors[have[0] * P + p].dtype
    return sizes, dtypes, present


def _small_batches(sizes, dtypes, present, K: int):
    """NOTE: [Small tensors in rows]: parameters of 1..BLOCK elements grouped by (dtype, sets present) in
    parameter order, cut into batches of at most BATCH_ELEMENTS elements; and the larger parameters."""
    everyone = tuple(range(K))
    if present is None and len(set(dtypes)) == 1 and max(sizes, default=0) <= BLOCK and min(sizes, default=1) > 0 \
            and sum(sizes) <= BATCH_ELEMENTS:
        return [(dtypes[0], everyone, list(range(len(sizes))))], []  # one batch: no per-parameter loop
    groups, large = {}, []
    for p, (n, dt) in enumerate(zip(sizes, dtypes)):
        if n > BLOCK:
            large.append(p)
        elif n:
            key = (dt, everyone if present is None else present[p])
            batches = groups.setdefault(key, [[0, []]])
            if batches[-1][0] + n > BATCH_ELEMENTS:
                batches.append([0, []])
            batches[-1][0] += n
            batches[-1][1].append(p)
    return [(dt, have, b) for (dt, have), bs in groups.items() for _, b in bs], large


def _set_list(tensors, P: int, k: int, batch: List[int]):
    """Set k's tensors of ``batch`` (a slice when the batch is the whole list)."""
    return tensors[k * P:(k + 1) * P] if len(batch) == P else [tensors[k * P + p] for p in batch]


def _flat(ts) -> torch.Tensor:
    """Tensors end to end, in one C++ call: ``torch.cat`` when they are all 1-D (a fifth of a foreach op per
    tensor), else torch's flatten_dense_tensors (as DDP's buckets; a view per tensor)."""
    return torch.cat(ts) if set(map(torch.Tensor.dim, ts)) == {1} else _flatten(ts)


def gram(tensors: Sequence[Optional[torch.Tensor]], num_sets: int) -> torch.Tensor:
    """K x K Gram matrix (float32; float64 when a gradient is float64) of ``num_sets`` sets laid out set-major."""
    K = num_sets
    P = len(tensors) // K
    device = next(t.device for t in tensors if t is not None)
    pairs = [(i, j) for i in range(K) for j in range(i, K)]
    scalars: List[List[torch.Tensor]] = [[] for _ in pairs]
    rows: List[List[torch.Tensor]] = [[] for _ in pairs]
    sizes, dtypes, present = _layout(tensors, K, P)
    batches, large = _small_batches(sizes, dtypes, present, K)
    for dtype, have, batch in batches:  # NOTE: [Small tensors in rows]
        flats = [_split(_flat(_set_list(tensors, P, k, batch))) if k in have else None for k in range(K)]
        for q, (i, j) in enumerate(pairs):
            if flats[i] is not None and flats[j] is not None:
                _dot_pieces(flats[i], flats[j], scalars[q], rows[q])
    for p in large:
        flats = [None if tensors[k * P + p] is None else _split(tensors[k * P + p].reshape(-1)) for k in range(K)]
        for q, (i, j) in enumerate(pairs):
            if flats[i] is not None and flats[j] is not None:
                _dot_pieces(flats[i], flats[j], scalars[q], rows[q])
    dtype = torch.float64 if torch.float64 in dtypes else torch.float32  # the sets share each parameter's dtype
    pieces = [rw + ([torch.stack(sc)] if sc else []) for sc, rw in zip(scalars, rows)]
    if all(len(x) == len(pieces[0]) and all(a.shape == b.shape for a, b in zip(x, pieces[0])) for x in pieces) and pieces[0]:
        # every pair has the same pieces (no absent sets): one batched fixed-order sum for all pairs
        sums = _fixed_order_sum_rows(torch.stack([torch.cat(x) for x in pieces]).double())
    else:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        sums = torch.stack([_fixed_order_sum(torch.cat([v.double() for v in x])) if x else zero for x in pieces])
    return sums.to(dtype)[_pair_index(K, device)].view(K, K)


def _fixed_order_sum_rows(m: torch.Tensor) -> torch.Tensor:
    """Each row's sum of a float64 matrix, in an order that does not depend on the thread count: ATen splits
    one large reduction across threads, rows of BLOCK it does not."""
    while m.shape[1] > BLOCK:
        pad = (-m.shape[1]) % BLOCK
        if pad:
            m = torch.cat([m, m.new_zeros(m.shape[0], pad)], dim=1)
        m = m.view(m.shape[0], -1, BLOCK).sum(2)
    return m.sum(1)


def _pair_index(K: int, device: torch.device) -> torch.Tensor:
    """(K*K,) index of pair (min(a, b), max(a, b)) in the upper-triangle order of gram's pairs (a device
    constant: NOTE: [Device constants])."""
    def build():
        q = {(i, j): n for n, (i, j) in enumerate((i, j) for i in range(K) for j in range(i, K))}
        return torch.tensor([q[min(a, b), max(a, b)] for a in range(K) for b in range(K)], device=device)
    return constant(("gram pair index", K, str(device)), build)


def _chunks(out, tensors, num_sets, params=None):
    """(out, [input per set or None]) items of ``params`` (default all): large contiguous parameters as flat
    CHUNK-element pieces."""
    P = len(out)
    for p in range(P) if params is None else params:
        o = out[p]
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


def _combine_lists(outs, ins, have, w_k, acc, dtype, accumulate: bool, chain: bool = False) -> None:
    """outs (+)= sum over the present sets of w_k * ins[k], every input read before an out is written.
    NOTE: [In-place chains]: for whole tensors (``chain``; not chunk views), without accumulation, in the
    accumulation dtype, the sum is built in the outs themselves when no out shares memory with an input
    (copy, scale, addcmul: no temporaries) or when every out is set j's memory (out=g_j: scale it, then add
    the others). The out= rules (ops/memory.py) allow an out to share memory only as exactly its own
    parameter's input, so equal data pointers are the whole test. Otherwise foreach ops into temporaries,
    converted only when the dtype is not the accumulation dtype."""
    if chain and not accumulate and acc == dtype:
        out_ptrs = list(map(torch.Tensor.data_ptr, outs))
        aliased = [k for k in have if any(map(operator.eq, out_ptrs, map(torch.Tensor.data_ptr, ins[k])))]
        first = aliased[0] if len(aliased) == 1 and list(map(torch.Tensor.data_ptr, ins[aliased[0]])) == out_ptrs else None
        if not aliased or first is not None:
            rest = [k for k in have if k != first]
            if first is None:
                first = rest.pop(0)
                torch._foreach_copy_(outs, ins[first])
            torch._foreach_mul_(outs, w_k[first])
            for k in rest:
                torch._foreach_addcmul_(outs, ins[k], [w_k[k]] * len(outs))
            return
    if acc != dtype:
        ins = [None if ts is None else [t.to(acc) for t in ts] for ts in ins]
    y = torch._foreach_mul(ins[have[0]], w_k[have[0]])
    for k in have[1:]:
        torch._foreach_addcmul_(y, ins[k], [w_k[k]] * len(outs))
    if accumulate:
        torch._foreach_add_(y, outs if acc == dtype else [o.to(acc) for o in outs])
    torch._foreach_copy_(outs, y)


def combine_(
    out: Sequence[torch.Tensor],
    tensors: Sequence[Optional[torch.Tensor]],
    num_sets: int,
    weights: torch.Tensor,
    accumulate: bool,
) -> None:
    """``out[p] = sum_k weights[k] * set_k[p]`` (``+=`` when accumulating), in float32 (float64 for float64
    gradients), then written: foreach ops over batches of parameters with the same dtype and sets present."""
    K, P = num_sets, len(out)
    w_by_acc = {}  # accumulation dtype -> the weights in it, converted once and only when a group needs it

    def w_in(acc):
        if acc not in w_by_acc:
            w_by_acc[acc] = list(weights.to(acc))
        return w_by_acc[acc]

    sizes, dtypes, present = _layout(tensors, K, P)
    batches, large = _small_batches(sizes, dtypes, present, K)
    for dtype, have, batch in batches:
        outs = out if len(batch) == P else [out[p] for p in batch]
        if not have:
            if not accumulate:
                torch._foreach_zero_(outs)
            continue
        acc = _acc(dtype)
        ins = [_set_list(tensors, P, k, batch) if k in have else None for k in range(K)]
        _combine_lists(outs, ins, have, w_in(acc), acc, dtype, accumulate, chain=True)
    groups = {}  # large items with the same sets present and dtype
    for o, ins in _chunks(out, tensors, K, large):
        groups.setdefault((tuple(k for k in range(K) if ins[k] is not None), o.dtype), []).append((o, ins))
    for (have, dtype), items in groups.items():
        for batch in _batches(items):
            outs = [o for o, _ in batch]
            if not have:
                if not accumulate:
                    torch._foreach_zero_(outs)
                continue
            acc = _acc(dtype)
            ins = [[i[k] for _, i in batch] if k in have else None for k in range(K)]
            _combine_lists(outs, ins, have, w_in(acc), acc, dtype, accumulate)


def weights(G: torch.Tensor, method: str, kappa: float) -> torch.Tensor:
    return solve_weights_torch(G, method, kappa)


harmonize_ = harmonize_from(gram, weights, combine_)
