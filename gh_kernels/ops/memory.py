"""Memory rules for ``out=``: what a written tensor may share with the inputs and with other outputs.

A combine reads every input element and writes ``out``. The kernels read each element before
writing it, so exactly one aliasing pattern is safe on every backend: ``out[p]`` *is* (the same
memory, shape and strides as) one of the inputs of the same parameter ``p`` (in-place
harmonization, ``out=g2``). Anything else that makes ``out`` share memory gives
backend-dependent, even run-to-run different results, so it is rejected up front, before
anything is written, with an error naming the index:

* an ``out`` tensor whose own elements share memory (``expand()``-ed, stride 0);
* two ``out`` tensors whose memory ranges overlap (``out=[o, o]``, overlapping views);
* an ``out`` tensor overlapping any input other than its own parameter's same view
  (shifted views, another parameter's gradient).

Inputs may overlap each other freely (they are only read). Memory ranges are compared as
``[first byte, last byte]`` of each tensor; interleaved strided views of one buffer (``x[::2]``
and ``x[1::2]``) count as overlapping, a conservative answer. Under ``torch.compile`` tensors have
no addresses to compare and these checks are skipped.
"""
from __future__ import annotations

import itertools
import operator
from typing import Optional, Sequence, Tuple

import torch

_NBYTES = operator.attrgetter("nbytes")


def extent(t: torch.Tensor) -> Tuple[int, int]:
    """``[lo, hi)``: the byte range between t's first and last element (torch strides are >= 0)."""
    lo = t.data_ptr()
    if t.is_contiguous():
        return lo, lo + t.numel() * t.element_size()
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return lo, lo + (last + 1) * t.element_size()


def self_overlaps(t: torch.Tensor) -> bool:
    """NOTE: [Self-overlap]: whether two elements of ``t`` may share memory. Dimensions sorted by stride
    must each step past everything the smaller ones reach (``stride > sum (size - 1) * stride`` of the
    smaller ones); otherwise the answer is "overlaps". torch's own check answers "too hard" for such
    strided views (``as_strided((2, 2), (1, 1))``); reading that as "no overlap" let writes clobber
    each other. The rule is exact for every layout torch produces by slicing, transposing, expanding
    or permuting, and conservative for exotic ``as_strided`` interleavings. The C++ kernels apply the
    same rule (``csrc/include/gh_tensor_utils.h``)."""
    reach = 0
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz > 1):
        if stride <= reach:
            return True
        reach += (size - 1) * stride
    return False


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a and b address exactly the same elements in the same order."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride())


def _ranges(ts: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """int64 tensors of ``lo`` and ``hi`` (extent) for non-empty tensors, read by map (NOTE: [Checks by map])."""
    lo = list(map(torch.Tensor.data_ptr, ts))
    hi = list(map(operator.add, lo, map(_NBYTES, ts)))
    if not all(map(torch.Tensor.is_contiguous, ts)):
        for i, t in enumerate(ts):
            if not t.is_contiguous():  # rare: strided views get their true extent
                lo[i], hi[i] = extent(t)
    return torch.tensor(lo, dtype=torch.int64), torch.tensor(hi, dtype=torch.int64)


def check_out_aliasing(out: Sequence[torch.Tensor], sets: Sequence[Sequence[Optional[torch.Tensor]]],
                       name: str = "out", set_names: Optional[Sequence[str]] = None) -> None:
    """Raise ValueError, naming the indices, when ``out`` shares memory in a way the rules above forbid.

    Vectorized: the outs' ranges are sorted once; each input is located among them with one
    ``searchsorted``, and only the few inputs that touch an out are looked at one by one.
    """
    if torch.compiler.is_compiling():
        return
    set_names = list(set_names) if set_names is not None else [f"grads[{k}]" for k in range(len(sets))]
    if all(map(torch.Tensor.numel, out)):  # NOTE: [Checks by map]
        o_idx, outs = range(len(out)), list(out)
    else:
        o_idx = [p for p, o in enumerate(out) if o.numel()]
        outs = [out[p] for p in o_idx]
    for p, o in ((p, o) for p, o, c in zip(o_idx, outs, map(torch.Tensor.is_contiguous, outs)) if not c):
        if self_overlaps(o):
            raise ValueError(f"{name}[{p}] has elements that share memory (an expand()-ed, stride-0 or as_strided "
                             "tensor whose elements overlap): it cannot be written; pass a tensor with its own memory")
    if not outs:
        return
    lo, hi = _ranges(outs)
    order = torch.argsort(lo)
    lo, hi = lo[order], hi[order]
    clash = (lo[1:] < hi[:-1]).nonzero()
    if len(clash):
        i = int(clash[0, 0])
        a, b = sorted((o_idx[int(order[i])], o_idx[int(order[i + 1])]))
        raise ValueError(f"{name}[{a}] and {name}[{b}] overlap in memory: every out tensor needs memory of its own")
    ins = []
    for k, s in enumerate(sets):
        if not any(map(operator.is_, s, itertools.repeat(None))) and not any(map(operator.is_, s, out)) \
                and all(map(torch.Tensor.numel, s)):
            ins += zip(itertools.repeat(k), range(len(s)), s)  # the common case: no None, no in-place out, no empty
        else:
            ins += [(k, p, t) for p, t in enumerate(s) if t is not None and t is not out[p] and t.numel()]
    if not ins:
        return
    in_lo, in_hi = _ranges([t for _, _, t in ins])
    j = torch.searchsorted(lo, in_hi) - 1  # the last out starting before the input ends; outs are disjoint
    touch = ((j >= 0) & (hi[j.clamp_min(0)] > in_lo)).nonzero()
    for i in touch[:, 0].tolist():
        k, p, t = ins[i]
        q = o_idx[int(order[int(j[i])])]
        if not (q == p and same_view(t, out[q])):
            raise ValueError(
                f"{name}[{q}] overlaps {set_names[k]}[{p}] in memory: {name}[{q}] may be exactly one of the "
                f"input tensors of parameter {q} (in-place), but must not share memory with anything else")
