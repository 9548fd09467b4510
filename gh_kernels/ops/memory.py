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

import bisect
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


def _ranges(ts: Sequence[torch.Tensor]) -> Tuple[list, list, bool]:
    """Lists of ``lo`` and ``hi`` (extent; ``hi <= lo`` for an empty tensor) of tensors, read by map (NOTE:
    [Checks by map]), and whether every tensor is contiguous."""
    lo = list(map(torch.Tensor.data_ptr, ts))
    hi = list(map(operator.add, lo, map(_NBYTES, ts)))
    contiguous = all(map(torch.Tensor.is_contiguous, ts))
    if not contiguous:
        for i, t in enumerate(ts):
            if not t.is_contiguous():  # rare: strided views get their true extent
                lo[i], hi[i] = extent(t)
    return lo, hi, contiguous


def check_out_aliasing(out: Sequence[torch.Tensor], sets: Sequence[Sequence[Optional[torch.Tensor]]],
                       name: str = "out", set_names: Optional[Sequence[str]] = None) -> None:
    """Raise ValueError, naming the indices, when ``out`` shares memory in a way the rules above forbid.

    The outs' ranges are sorted once; each input is located among them by bisection, and only the few
    inputs that touch an out are looked at one by one. Every step runs in C-level loops (sorted, map over
    bisect and operator functions; NOTE: [Checks by map]): small torch ops over the addresses cost a few
    microseconds each, the whole check 4x one ``_foreach_add_`` at 160 tensors.
    """
    if torch.compiler.is_compiling():
        return
    set_names = list(set_names) if set_names is not None else [f"grads[{k}]" for k in range(len(sets))]
    lo, hi, contiguous = _ranges(out)  # NOTE: [Checks by map]
    if not contiguous:
        for p, o in enumerate(out):
            if not o.is_contiguous() and o.numel() and self_overlaps(o):
                raise ValueError(f"{name}[{p}] has elements that share memory (an expand()-ed, stride-0 or as_strided "
                                 "tensor whose elements overlap): it cannot be written; pass a tensor with its own memory")
    if all(map(operator.lt, lo, hi)):
        o_idx, outs = range(len(out)), out
    else:  # empty outs take no memory
        o_idx = [p for p, (a, b) in enumerate(zip(lo, hi)) if a < b]
        outs, lo, hi = [out[p] for p in o_idx], [lo[p] for p in o_idx], [hi[p] for p in o_idx]
    if not outs:
        return
    order = sorted(range(len(outs)), key=lo.__getitem__)
    lo, hi = list(map(lo.__getitem__, order)), list(map(hi.__getitem__, order))
    if any(map(operator.lt, lo[1:], hi)):  # an out starts before the previous one ends
        i = next(i for i, (a, b) in enumerate(zip(lo[1:], hi)) if a < b)
        a, b = sorted((o_idx[order[i]], o_idx[order[i + 1]]))
        raise ValueError(f"{name}[{a}] and {name}[{b}] overlap in memory: every out tensor needs memory of its own")
    ends = [-1] + hi  # ends[j]: the end of the j-th out by address (j >= 1); index 0: no out
    whole, groups = [], []  # sets with no None and no in-place out are checked together, in one pass
    for k, s in enumerate(sets):
        if all(map(operator.is_, s, out)):
            continue  # out is this set (in place): each input is its own parameter's out
        if not any(map(operator.is_, s, itertools.repeat(None))) and not any(map(operator.is_, s, out)):
            whole.append(k)  # the common case (an empty input is skipped below)
        else:
            ps = [p for p, t in enumerate(s) if t is not None and t is not out[p] and t.numel()]
            groups.append((lambda i, k=k, ps=ps: (k, ps[i]), [s[p] for p in ps]))
    if whole:
        n = len(out)
        groups.append((lambda i: (whole[i // n], i % n), list(itertools.chain.from_iterable(sets[k] for k in whole))))
    for where, ts in groups:  # where(i): (set, parameter) of ts[i]
        if not ts:
            continue
        in_lo, in_hi, _ = _ranges(ts)
        # the last out starting before the input ends (outs are disjoint, so their ends are sorted too)
        j = list(map(bisect.bisect_left, itertools.repeat(lo), in_hi))
        if not any(map(operator.gt, map(ends.__getitem__, j), in_lo)):
            continue
        for i in (i for i, (e, a, b) in enumerate(zip(map(ends.__getitem__, j), in_lo, in_hi)) if e > a and b > a):
            (k, p), t = where(i), ts[i]  # (an empty input, b == a, touches nothing)
            q = o_idx[order[j[i] - 1]]
            if not (q == p and same_view(t, out[q])):
                raise ValueError(
                    f"{name}[{q}] overlaps {set_names[k]}[{p}] in memory: {name}[{q}] may be exactly one of the "
                    f"input tensors of parameter {q} (in-place), but must not share memory with anything else")
