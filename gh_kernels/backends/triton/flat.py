"""Flat views of gradient tensors for the Triton kernels (the Python twin of the C++ backends'
``csrc/include/gh_tensor_utils.h``).

Every parameter becomes ``K`` input arrays (and an out array) of one dtype that index the same
elements: tensors that are all contiguous, or all dense with the same strides, are used in
place; otherwise inputs are copied to contiguous tensors (one parameter at a time) and a
non-contiguous ``out`` is computed into a contiguous temporary and copied back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch


@dataclass
class FlatParam:
    numel: int
    dtype: torch.dtype
    ins: List[Optional[torch.Tensor]]  # per set: a tensor whose memory is the flat array, or None
    out: Optional[torch.Tensor] = None
    copy_back: Optional[torch.Tensor] = None  # the caller's out, when ``out`` is a temporary


def is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: the elements fill exactly ``numel`` consecutive slots in some order."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def flat_params(tensors: Sequence[Optional[torch.Tensor]], num_sets: int,
                out: Optional[Sequence[torch.Tensor]] = None) -> List[FlatParam]:
    P = len(tensors) // num_sets
    params = []
    for p in range(P):
        ins = [tensors[k * P + p] for k in range(num_sets)]
        ref = next((t for t in ins if t is not None), None)
        o = out[p] if out is not None else None
        if ref is None:
            ref = o
        if ref is None:
            params.append(FlatParam(0, torch.float32, [None] * num_sets))
            continue
        parts = [t for t in ins if t is not None] + ([o] if o is not None else [])
        fp = FlatParam(ref.numel(), ref.dtype, ins)
        if all(t.is_contiguous() for t in parts):  # the common case
            fp.out = o
            params.append(fp)
            continue
        flat_ok = all(is_dense(t) and t.stride() == ref.stride() for t in parts)
        if not flat_ok:
            for k, t in enumerate(ins):
                if t is not None and not t.is_contiguous():
                    fp.ins[k] = t.contiguous()
        fp.out = o
        if o is not None and not flat_ok and not o.is_contiguous():
            fp.out = o.contiguous()  # starts with out's values (accumulate, aliasing)
            fp.copy_back = o
            for k, t in enumerate(ins):
                if t is o:
                    fp.ins[k] = fp.out
        params.append(fp)
    return params


def finish(params: List[FlatParam]) -> None:
    for fp in params:
        if fp.copy_back is not None:
            fp.copy_back.copy_(fp.out)
