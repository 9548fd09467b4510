"""Triton combine pass (the ``triton`` overload of ``gh_kernels::combine_``): ``out = sum_k w[k] * x_k
(+ out)``, one launch per dtype group.

The weights are read from device memory in each program's prologue (no host sync). Elements are
read before they are written, so ``out`` may be one of the inputs. With ``nonfinite`` each program counts
the non-finite values it stores and, if any, stores 1 there (NOTE: [Non-finite flag of the combine]).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import triton
import triton.language as tl

from ...ops.constants import MAX_SETS, MAX_WIDE_SETS
from . import anyk, worklist as wl
from ...ops.validate import check_nonfinite_flag
from .common import COL_OUT, COL_START, ROW, load_acc, nonfinite_count, ptr, report_nonfinite, val, work_item
from .flat import finish, flat_params
from .wide import NARROW_SETS, wide_block


@triton.jit
def _combine_tile(p0, p1, p2, p3, po, h0, h1, h2, h3, w0, w1, w2, w3, offs, mask,
                  K: tl.constexpr, ACCUMULATE: tl.constexpr, MASKED: tl.constexpr, FLAG: tl.constexpr):
    y = w0 * val(p0, offs, mask, h0, MASKED)
    if K >= 2:
        y += w1 * val(p1, offs, mask, h1, MASKED)
    if K >= 3:
        y += w2 * val(p2, offs, mask, h2, MASKED)
    if K >= 4:
        y += w3 * val(p3, offs, mask, h3, MASKED)
    if ACCUMULATE:
        y += load_acc(po, offs, mask, MASKED)
    stored = y.to(po.dtype.element_ty)
    if MASKED:
        tl.store(po + offs, stored, mask=mask)
    else:
        tl.store(po + offs, stored)
    if FLAG:  # without a flag no count: a combine for a stateless method does no extra work
        return nonfinite_count(stored, mask, MASKED)
    else:
        return tl.zeros([], dtype=tl.int32)


@triton.jit
def _combine_kernel(table, base, weights, nonfinite, K: tl.constexpr, BLOCK: tl.constexpr,
                    ALIGNED: tl.constexpr, VEC: tl.constexpr, ACCUMULATE: tl.constexpr, FLAG: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    row = table + pid * ROW
    length, p0, p1, p2, p3, h0, h1, h2, h3 = work_item(row, base, K, ALIGNED, VEC)
    po = ptr(row, COL_OUT, tl.load(row + COL_START), base, ALIGNED, VEC)
    w0 = tl.load(weights)
    w1 = w0
    w2 = w0
    w3 = w0
    if K >= 2:
        w1 = tl.load(weights + 1)
    if K >= 3:
        w2 = tl.load(weights + 2)
    if K >= 4:
        w3 = tl.load(weights + 3)
    r = tl.arange(0, BLOCK)
    n_full = length // BLOCK
    bad = tl.zeros([], dtype=tl.int32)
    for i in range(0, n_full):
        bad += _combine_tile(p0, p1, p2, p3, po, h0, h1, h2, h3, w0, w1, w2, w3, i * BLOCK + r, None,
                             K, ACCUMULATE, False, FLAG)
    offs = n_full * BLOCK + r
    bad += _combine_tile(p0, p1, p2, p3, po, h0, h1, h2, h3, w0, w1, w2, w3, offs, offs < length,
                         K, ACCUMULATE, True, FLAG)
    if FLAG:
        report_nonfinite(nonfinite, bad)


class CombineWork(NamedTuple):
    """Everything the combine launches need, built by Python work over the tensors (see fused.py's cache)."""
    params: list          # flat views; non-contiguous outs are copied back after the launches
    launches: list
    cfg: wl.Config
    device: torch.device
    unreached: list       # outs of parameters no set has: zeroed unless accumulating


def plan_combine(out: Sequence[torch.Tensor], tensors: Sequence[Optional[torch.Tensor]], num_sets: int) -> CombineWork:
    if not 1 <= num_sets <= MAX_WIDE_SETS:
        raise ValueError(f"the Triton kernels handle 1 to {MAX_WIDE_SETS} gradient sets, got {num_sets}")
    device = out[0].device
    params = flat_params(tensors, num_sets, out)
    unreached = [fp.out for fp in params if fp.numel and all(t is None for t in fp.ins)]
    width = anyk.width(num_sets) if num_sets > MAX_SETS else MAX_SETS
    launches, _, cfg = wl.build([fp for fp in params if any(t is not None for t in fp.ins)], num_sets, device, with_out=True,
                                width=width)
    return CombineWork(params, launches, cfg, device, unreached)


def run_combine(work: CombineWork, weights: torch.Tensor, num_sets: int, accumulate: bool,
                nonfinite: Optional[torch.Tensor] = None) -> None:
    w = {}  # launch dtype's weight dtype -> the weights in it (float64 for float64 gradients), converted once

    def weights_for(dtype):
        wdtype = torch.float64 if dtype == torch.float64 else torch.float32
        if wdtype not in w:
            w[wdtype] = weights.to(device=work.device, dtype=wdtype).contiguous()
        return w[wdtype]
    if not accumulate and work.unreached:
        torch._foreach_zero_(work.unreached)
    cfg = work.cfg
    if num_sets > MAX_SETS:
        anyk.run_combine(work.launches, cfg, work.device, weights_for, num_sets, accumulate, nonfinite)
        finish(work.params)
        return
    for L in work.launches:
        w_l = weights_for(L.dtype)
        flag = (w_l, False) if nonfinite is None else (nonfinite, True)  # without a flag: any pointer, never written
        if num_sets > NARROW_SETS:
            anyk.combine_anyk_kernel[(L.items,)](L.table, L.base, w_l, flag[0], K=num_sets, W=MAX_SETS,  # the same rows
                                                 BLOCK=wide_block(cfg, work.device), ACCUMULATE=bool(accumulate),
                                                 FLAG=flag[1], num_warps=cfg.num_warps)
            continue
        _combine_kernel[(L.items,)](L.table, L.base, w_l, flag[0], K=num_sets,
                                    BLOCK=wl.block_for(cfg, L.base.element_size()), ALIGNED=L.aligned,
                                    VEC=16 // L.base.element_size(), ACCUMULATE=bool(accumulate), FLAG=flag[1],
                                    num_warps=cfg.num_warps)
    finish(work.params)


def combine_(out: Sequence[torch.Tensor], tensors: Sequence[Optional[torch.Tensor]], num_sets: int,
             weights: torch.Tensor, accumulate: bool, nonfinite: Optional[torch.Tensor] = None) -> None:
    """In-place combine (op ``gh_kernels::combine_``) with the Triton kernel; ``nonfinite``: NOTE: [Non-finite flag
    of the combine] (csrc/include/gh_tensor_utils.h)."""
    if len(out) == 0:
        return
    if nonfinite is not None:
        check_nonfinite_flag(nonfinite, out[0].device)
    run_combine(plan_combine(out, tensors, num_sets), weights, num_sets, accumulate, nonfinite)
