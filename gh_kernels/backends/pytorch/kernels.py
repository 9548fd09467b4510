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
* Combine: the small parameters (NOTE: [Small tensors in rows]) as ``y = sum_k w_k * flat_k (+ outs)``
  on each batch's flats in float32 (float64 for float64 gradients), written into the outs by one
  ``split_with_sizes_copy`` (1-D outs: the views are made in C++) or one ``_foreach_copy_``. The
  flats are copies, so every input is read before any output is written and ``out`` may alias any
  input (the same tensor in several sets included); 16-bit gradients get float32 intermediates (no
  overflow of ``w*x`` in float16). The fused ``harmonize_`` builds one :class:`_Layout` per call, so
  the Gram and the combine share the flats: each set's small tensors are read into them once. Large
  parameters: foreach ops into fresh float32 temporaries, then ``out.copy_(y)``, cut into flat chunks
  of ``CHUNK`` elements processed in batches of about ``BATCH_ELEMENTS`` elements, which bounds the
  temporaries. Chunking keeps the result exact: the one aliasing the API allows, ``out[p]`` being an
  input of parameter ``p``, aliases chunk for chunk.
"""
from __future__ import annotations

import itertools
import operator
from typing import List, Optional, Sequence

import torch

from ...weighting.gh import solve_weights_torch
from ...weighting.linalg import constant
from ...ops.validate import check_nonfinite_flag
from ..compose import scaled, select_for_gram, zero_gram


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
    if not full:
        return None, t.to(_acc(t.dtype))  # (no slice: each small op costs host time on every step)
    return t[:full].view(-1, BLOCK), t[full:].to(_acc(t.dtype))


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


def _flat(ts, one_d: Optional[bool] = None) -> torch.Tensor:
    """Tensors end to end, in one C++ call: ``torch.cat`` when they are all 1-D (``one_d``, read when not given;
    a fifth of a foreach op per tensor), else torch's flatten_dense_tensors (as DDP's buckets; a view per tensor)."""
    if one_d is None:
        one_d = all(map((1).__eq__, map(torch.Tensor.dim, ts)))
    return torch.cat(ts) if one_d else _flatten(ts)


class _Layout:
    """One call's work split (NOTE: [Small tensors in rows]): the small parameters' batches, the large ones,
    and each batch's flat per set, built on first use and shared by the Gram and the combine of one
    harmonize_ call (the sets are read into the flats once)."""

    def __init__(self, tensors, K: int, P: int):
        self.tensors, self.K, self.P = tensors, K, P
        self.sizes, self.dtypes, self.present = _layout(tensors, K, P)
        self.batches, self.large = _small_batches(self.sizes, self.dtypes, self.present, K)
        self._flats, self._one_d = {}, {}

    def one_d(self, b: int) -> bool:
        """Whether batch b's parameters are all 1-D (read once, from the first set that has them)."""
        if b not in self._one_d:
            _, have, batch = self.batches[b]
            self._one_d[b] = all(map((1).__eq__, map(torch.Tensor.dim, _set_list(self.tensors, self.P, have[0], batch))))
        return self._one_d[b]

    def sizes_of(self, b: int) -> List[int]:
        batch = self.batches[b][2]
        return self.sizes if len(batch) == self.P else [self.sizes[p] for p in batch]

    def flats(self, b: int) -> List[Optional[torch.Tensor]]:
        """Batch b's tensors of each set end to end (None for a set without them)."""
        if b not in self._flats:
            _, have, batch = self.batches[b]
            one_d = self.one_d(b)
            self._flats[b] = [_flat(_set_list(self.tensors, self.P, k, batch), one_d) if k in have else None
                              for k in range(self.K)]
        return self._flats[b]


def gram(tensors: Sequence[Optional[torch.Tensor]], num_sets: int) -> torch.Tensor:
    """K x K Gram matrix (float32; float64 when a gradient is float64) of ``num_sets`` sets laid out set-major."""
    return _gram(_Layout(tensors, num_sets, len(tensors) // num_sets))


def _gram(layout: _Layout) -> torch.Tensor:
    tensors, K, P = layout.tensors, layout.K, layout.P
    device = next(t.device for t in tensors if t is not None)
    pairs = [(i, j) for i in range(K) for j in range(i, K)]
    scalars: List[List[torch.Tensor]] = [[] for _ in pairs]
    rows: List[List[torch.Tensor]] = [[] for _ in pairs]
    blocks: List[torch.Tensor] = []  # NOTE: [Gram blocks above 8 sets]: (rows, K, K) products
    for b in range(len(layout.batches)):  # NOTE: [Small tensors in rows]
        if K > BLOCK_GRAM_ABOVE and len(layout.batches[b][1]) == K:
            blocks += _gram_blocks(layout.flats(b))
            continue
        flats = [None if f is None else _split(f) for f in layout.flats(b)]
        for q, (i, j) in enumerate(pairs):
            if flats[i] is not None and flats[j] is not None:
                _dot_pieces(flats[i], flats[j], scalars[q], rows[q])
    for p in layout.large:
        if K > BLOCK_GRAM_ABOVE and all(tensors[k * P + p] is not None for k in range(K)):
            blocks += _gram_blocks([tensors[k * P + p].reshape(-1) for k in range(K)])
            continue
        flats = [None if tensors[k * P + p] is None else _split(tensors[k * P + p].reshape(-1)) for k in range(K)]
        for q, (i, j) in enumerate(pairs):
            if flats[i] is not None and flats[j] is not None:
                _dot_pieces(flats[i], flats[j], scalars[q], rows[q])
    dtype = torch.float64 if torch.float64 in layout.dtypes else torch.float32  # the sets share each parameter's dtype
    if not blocks and not any(rows) and all(len(sc) == 1 for sc in scalars):  # one small batch: a dot per pair
        return torch.stack([sc[0] for sc in scalars]).to(dtype)[_pair_index(K, device)].view(K, K)
    sums = _pair_sums(scalars, rows, device) if any(scalars) or any(rows) or not blocks else None  # (nothing: zeros)
    if blocks:  # NOTE: [Gram blocks above 8 sets], added after the pairs' own sums
        block_sums = _fixed_order_sum_rows(torch.cat(blocks).view(-1, K * K).T.double())[_upper_pairs(K, device)]
        sums = block_sums if sums is None else sums + block_sums
    return sums.to(dtype)[_pair_index(K, device)].view(K, K)


def _pair_sums(scalars, rows, device) -> torch.Tensor:
    """Each pair's pieces (rows of products and scalar dots) summed in float64 in a fixed order."""
    pieces = [rw + ([torch.stack(sc)] if sc else []) for sc, rw in zip(scalars, rows)]
    if all(len(x) == len(pieces[0]) and all(a.shape == b.shape for a, b in zip(x, pieces[0])) for x in pieces) and pieces[0]:
        # every pair has the same pieces (no absent sets): one batched fixed-order sum for all pairs
        return _fixed_order_sum_rows(torch.stack([torch.cat(x) for x in pieces]).double())
    zero = torch.zeros((), dtype=torch.float64, device=device)
    return torch.stack([_fixed_order_sum(torch.cat([v.double() for v in x])) if x else zero for x in pieces])


#: NOTE: [Gram blocks above 8 sets]: above this many sets the products of every pair are formed by one batched
#: matmul per chunk of rows, reading each set once per chunk, instead of K(K+1)/2 ``vecdot`` calls that each read
#: two sets (820 calls at K = 40, each over the whole list). The rows are BLOCK elements (a zero-padded last
#: row), so each (K x BLOCK) x (BLOCK x K) product is one small matmul that ``bmm`` computes on one thread (it
#: splits the batch, not a product): the (rows, K, K) results are then summed in float64 in a fixed order, as the
#: pairs' rows are. Bitwise the same on 1, 2 and 3 threads (tests/test_torch_backend.py).
BLOCK_GRAM_ABOVE = 8
BLOCK_GRAM_ELEMENTS = 1 << 23  # rows x K x BLOCK per matmul call: 32 MB of float32


def _gram_blocks(flats: List[torch.Tensor]) -> List[torch.Tensor]:
    """K flat vectors of one length as (rows, K, K) float32 (float64 for float64) products of BLOCK-element rows."""
    K, n = len(flats), flats[0].numel()
    acc = _acc(flats[0].dtype)
    rows = -(-n // BLOCK)
    per_call = max(1, BLOCK_GRAM_ELEMENTS // (K * BLOCK))
    out = []
    for r in range(0, rows, per_call):
        lo, hi = r * BLOCK, min(n, (r + per_call) * BLOCK)
        count = -(-(hi - lo) // BLOCK)
        X = torch.zeros((K, count * BLOCK), dtype=acc, device=flats[0].device)
        for k, f in enumerate(flats):  # (one copy per set; 16-bit gradients upcast here)
            X[k, :hi - lo] = f[lo:hi]
        X = X.view(K, count, BLOCK).transpose(0, 1)  # (rows, K, BLOCK)
        out.append(torch.bmm(X, X.transpose(1, 2)))
    return out


def _upper_pairs(K: int, device: torch.device) -> torch.Tensor:
    """Flat indices i * K + j of the pairs i <= j in gram's pair order (NOTE: [Device constants])."""
    return constant(("gram upper pairs", K, str(device)),
                    lambda: torch.tensor([i * K + j for i in range(K) for j in range(i, K)], device=device))


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


def _combine_flat(outs, flats, have, w_k, acc, accumulate: bool, sizes: List[int], one_d: bool) -> None:
    """NOTE: [Small tensors in rows] for the combine: ``y = sum_k w_k flat_k (+ outs)`` over one batch's flats
    (copies: every input is read before an out is written, so an out may be any input), then one
    ``_foreach_copy_`` into the outs through views of ``y``. Three foreach ops per set over the tensors
    themselves cost 4x one ``_foreach_add_``; this costs one copy and the views."""
    y = None
    for k in have:
        x = flats[k] if flats[k].dtype == acc else flats[k].to(acc)
        y = x * w_k[k] if y is None else y.addcmul_(x, w_k[k])
    if accumulate:
        o = _flat(outs, one_d)
        y += o if o.dtype == acc else o.to(acc)
    if one_d:  # split in C++ into the outs (no Python view objects); it takes outs of y's dtype only
        torch.split_with_sizes_copy(y if y.dtype == outs[0].dtype else y.to(outs[0].dtype), sizes, out=outs)  # 1-D outs of those sizes: nothing is resized
    else:
        torch._foreach_copy_(outs, [v.view(o.shape) for v, o in zip(y.split(sizes), outs)])


def _combine_lists(outs, ins, have, w_k, acc, dtype, accumulate: bool) -> None:
    """outs (+)= sum over the present sets of w_k * ins[k] for chunks of large parameters: foreach ops into
    temporaries (every input read before an out is written), converted only when the dtype is not the
    accumulation dtype."""
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
    nonfinite: Optional[torch.Tensor] = None,
) -> None:
    """``out[p] = sum_k weights[k] * set_k[p]`` (``+=`` when accumulating), in float32 (float64 for float64
    gradients), then written: the small parameters in flat batches, the large ones by foreach ops over chunks
    with the same dtype and sets present. ``nonfinite``: NOTE: [Non-finite flag of the combine]
    (csrc/include/gh_tensor_utils.h); pure torch cannot fuse the check into the writes, so it costs one
    more read of the written tensors here (their largest magnitude: no overflow of a sum of squares)."""
    if nonfinite is not None and len(out):
        check_nonfinite_flag(nonfinite, out[0].device)
    _combine(out, _Layout(tensors, num_sets, len(out)), weights, accumulate)
    written = [o for o in out if o.numel()]
    if nonfinite is not None and written:
        largest = torch.stack(torch._foreach_norm(written, float("inf")))
        nonfinite.bitwise_or_((~torch.isfinite(largest).all()).to(torch.int32))


def _combine(out, layout: _Layout, weights: torch.Tensor, accumulate: bool) -> None:
    tensors, K, P = layout.tensors, layout.K, layout.P
    w_by_acc = {}  # accumulation dtype -> the weights in it, converted once and only when a group needs it

    def w_in(acc):
        if acc not in w_by_acc:
            w_by_acc[acc] = list(weights.to(acc))
        return w_by_acc[acc]

    for b, (dtype, have, batch) in enumerate(layout.batches):
        outs = out if len(batch) == P else [out[p] for p in batch]
        if not have:
            if not accumulate:
                torch._foreach_zero_(outs)
            continue
        acc = _acc(dtype)
        _combine_flat(outs, layout.flats(b), have, w_in(acc), acc, accumulate, layout.sizes_of(b), layout.one_d(b))
    groups = {}  # large items with the same sets present and dtype
    for o, ins in _chunks(out, tensors, K, layout.large):
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


def harmonize_(out, tensors, gram_mask, method, kappa, scale1, scale2, accumulate, cache_host=None, cache_device=None):
    """Gram, weights and combine of two sets; without a mask the Gram and the combine share one layout and its
    flats (each set's small tensors are read into them once)."""
    layout = _Layout(tensors, 2, len(out))
    selected = select_for_gram(out, tensors, gram_mask)
    if selected is None:
        G = zero_gram(out, tensors)
    else:
        G = _gram(layout) if gram_mask is None else gram(selected, 2)
    w = weights(G, method, kappa)
    _combine(out, layout, scaled(w, scale1, scale2), accumulate)
    return G, w
