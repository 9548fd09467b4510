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

from bisect import bisect_left
from typing import List, Optional, Sequence, Tuple

import torch


def extent(t: torch.Tensor) -> Tuple[int, int]:
    """``[lo, hi)``: the byte range between t's first and last element (torch strides are >= 0)."""
    lo = t.data_ptr()
    if t.is_contiguous():
        return lo, lo + t.numel() * t.element_size()
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return lo, lo + (last + 1) * t.element_size()


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a and b address exactly the same elements in the same order."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride())


def check_out_aliasing(out: Sequence[Optional[torch.Tensor]], sets: Sequence[Sequence[Optional[torch.Tensor]]],
                       name: str = "out", set_names: Optional[Sequence[str]] = None) -> None:
    """Raise ValueError, naming the indices, when ``out`` shares memory in a way the rules above forbid."""
    if torch.compiler.is_compiling():
        return
    set_names = list(set_names) if set_names is not None else [f"grads[{k}]" for k in range(len(sets))]
    spans: List[Tuple[int, int, int]] = []
    for p, o in enumerate(out):
        if o is None or o.numel() == 0:
            continue
        if not o.is_contiguous() and torch._debug_has_internal_overlap(o) == 1:
            raise ValueError(f"{name}[{p}] has elements that share memory (an expand()-ed or stride-0 tensor): "
                             "it cannot be written; pass a tensor with its own memory")
        lo, hi = extent(o)
        spans.append((lo, hi, p))
    spans.sort()
    for (_, hi0, p0), (lo1, _, p1) in zip(spans, spans[1:]):
        if lo1 < hi0:
            a, b = sorted((p0, p1))
            raise ValueError(f"{name}[{a}] and {name}[{b}] overlap in memory: every out tensor needs memory of its own")
    los = [s[0] for s in spans]
    for k, s in enumerate(sets):
        for p, t in enumerate(s):
            if t is None or t.numel() == 0 or (p < len(out) and t is out[p]):
                continue
            lo, hi = extent(t)
            j = bisect_left(los, hi) - 1  # spans are disjoint and sorted: walk back over those ending after lo
            while j >= 0 and spans[j][1] > lo:
                q = spans[j][2]
                if not (q == p and same_view(t, out[q])):
                    raise ValueError(
                        f"{name}[{q}] overlaps {set_names[k]}[{p}] in memory: {name}[{q}] may be exactly one of the "
                        f"input tensors of parameter {q} (in-place), but must not share memory with anything else")
                j -= 1
